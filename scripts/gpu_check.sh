#!/usr/bin/env bash
# The GPU check of issue 14: set up (if needed), then render each engine at 640x480 on the CPU
# and on every GPU (1 and 2 instances per GPU) and print one table (benchmarks/gpu_check.py);
# then the consumer side: batches copied to the GPU on a side stream (tests/test_prefetch.py,
# which needs a CUDA build of torch: the CPU wheel that setup.sh installs skips that test, and
# this script says so).
# Exit codes: 0 every instance given a GPU rendered on one (and the prefetch tests passed);
# 1 one rendered on the CPU (or failed, or a prefetch test failed); 2 no GPU on this machine
# (CPU rows only, the GPU path unchecked); 124 the 240 s render limit hit.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
timeout 240 .venv/bin/python benchmarks/gpu_check.py "$@"
rc=$?
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "[gpu_check] this torch has no CUDA: the prefetch-to-GPU test is skipped." \
       "For it, install a CUDA build of torch into .venv (https://pytorch.org/get-started/locally/)."
fi
timeout 60 .venv/bin/python -m pytest -q -rs tests/test_prefetch.py || { [ "$rc" = 0 ] && rc=1; }
exit "$rc"
