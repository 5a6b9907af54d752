#!/usr/bin/env bash
# The GPU check of issue 14: set up (if needed), then render each engine at 640x480 on the CPU
# and on every GPU (1 and 2 instances per GPU) and print one table (benchmarks/gpu_check.py).
# Exit codes: 0 every instance given a GPU rendered on one; 1 one rendered on the CPU (or failed);
# 2 no GPU on this machine (CPU rows only, the GPU path unchecked); 124 the 300 s limit hit.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
timeout 300 .venv/bin/python benchmarks/gpu_check.py "$@"
