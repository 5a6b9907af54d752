#!/usr/bin/env bash
# Create .venv and install blendtorch-ray with everything it needs (idempotent).
#   TORCH_SPEC   torch requirement to install first (default torch==2.13.0; "skip" to keep yours)
#   PYTHON       interpreter to create the venv with (default python3.11, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
STAMP=.venv/.blendtorch-ray-installed
WANT="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "[setup] .venv is up to date"
  exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -d /opt/wheels ] && export PIP_FIND_LINKS="${PIP_FIND_LINKS:-/opt/wheels}"
.venv/bin/python -m pip install -q --upgrade pip
if [ "$TORCH_SPEC" != "skip" ]; then
  echo "[setup] installing $TORCH_SPEC"
  .venv/bin/python -m pip install -q "$TORCH_SPEC"
fi
echo "[setup] installing blendtorch-ray with bpy, ray, rl, record and test extras (first time: a few minutes)"
.venv/bin/python -m pip install -q -e ".[all]"
echo "$WANT" > "$STAMP"
echo "[setup] done"
