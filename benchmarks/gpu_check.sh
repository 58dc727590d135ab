#!/usr/bin/env bash
# The GPU check: `pytest -m gpu`, then the GPU figures side by side (benchmarks/gpu_check.py):
# extraction with a ViT-B/16 CLIP vs its bare forward, nvjpeg vs CPU-worker JPEG decoding, the
# cached-MAD / baseline bf16 step ratio of a base-size student, fp32 / bf16, peak GPU memory.
# About 8 minutes at most on one H100/H200 with 16 cores; docs/performance.md holds the figures.
#
#   benchmarks/gpu_check.sh          # on a GPU machine
#   benchmarks/gpu_check.sh --dry    # tiny shapes on the CPU, no pytest (the CPU suite runs this)
#
# PYTHON picks the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"     # this checkout's madcache
status=0
if [[ "${1:-}" != "--dry" ]]; then
    echo "=== pytest -m gpu"
    "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider tests || status=$?
fi
echo "=== GPU figures"
"$PYTHON" benchmarks/gpu_check.py "$@" || status=$?
exit "$status"
