#!/usr/bin/env bash
# The GPU checks in one short run, for a machine with a CUDA GPU (CI has none):
#   1. tests/test_cuda.py: the model on CUDA against the CPU (logits, gradients, eval cache, training);
#   2. bench/bench_quixer.py on the GPU at the paper's defaults (fast and naive interleaved),
#      then at larger batches.
# Usage: bash bench/gpu_check.sh [OUT_DIR]   (PYTHON picks the interpreter, default python3; it
# needs the package installed: bash setup.sh, or pip install --no-deps -e . beside the pins)
# Writes OUT_DIR/gpu.txt, tests.txt and bench_cuda.jsonl (one JSON line per benchmark).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="${PYTHON:-python3}"
out="${1:-gpu_check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
"$py" -m pytest -q tests/test_cuda.py 2>&1 | tee "$out/tests.txt"
: > "$out/bench_cuda.jsonl"
for args in "--steps 30 --impl both" "--steps 30 --batch-size 256" "--steps 20 --batch-size 1024"; do
    # shellcheck disable=SC2086
    "$py" bench/bench_quixer.py --device cuda $args | tee -a "$out/bench_cuda.jsonl"
done
