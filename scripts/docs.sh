#!/usr/bin/env bash
# Build the HTML API reference (pdoc, Google-style docstrings) into docs/api/ (or "$1").
# Open docs/api/index.html afterwards. Uses .venv (run scripts/setup.sh first if it is missing;
# pdoc comes with the test extra). Also checks the docstrings: exits 1 on a lint problem.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  echo "[docs] no .venv: run 'bash scripts/setup.sh' first" >&2
  exit 1
fi
OUT=${1:-docs/api}
[ "$OUT" = docs/api ] && rm -rf docs/api  # no stale pages of removed modules
exec .venv/bin/python docs/build_api.py "$OUT" --lint
