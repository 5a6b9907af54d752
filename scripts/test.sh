#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite (unit + real Blender/Ray integration).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Debian's `blender` (3.4) for tests/test_blender_binary.py and tests/test_doctor.py (idempotent).
if ! command -v blender >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[test] installing Debian's blender package with apt-get (first time: a few minutes)"
  { apt-get update -q && apt-get install -y -q --no-install-recommends blender; } >/tmp/blendtorch-apt-blender.log 2>&1 \
    || echo "[test] apt-get install blender failed (see /tmp/blendtorch-apt-blender.log); binary tests will fail"
fi
exec .venv/bin/python -m pytest "${@:--q}"
