#!/usr/bin/env bash
# The GPU checks in one short run, for a machine with a CUDA GPU (CI has none):
#   1. tests/test_cuda.py: the model on CUDA (Triton kernels, and torch ops) against the CPU: logits,
#      gradients, eval cache, training trajectory, paper-sized circuits, a captured CUDA-graph step;
#   2. bench/bench_quixer.py at batch 32, 256 and 1024, training and eval: the Triton kernels and the
#      torch ops interleaved (--impl kernels), then the Triton step replayed as a CUDA graph;
#   3. what --device auto picks at batch 32 and 1024 (the measured seconds per step on each device);
#   4. bench/bench_classical.py: LSTM and Transformer training steps at batch 32 and 1024;
#   5. only with TOKENS_DIR (bash bench/prepare_chrx_tokens.sh on the CPU side, then carried): Quixer
#      on the chrX tokens as the 50-epoch run (batch 32, small_gaussian, layerwise), one epoch of 300
#      batches per active-layer count, projected to 50 full epochs by bench/project_epochs.py.
# Usage: bash bench/gpu_check.sh [OUT_DIR [TOKENS_DIR]]   (PYTHON picks the interpreter, default python3;
# it needs the package installed: bash setup.sh, or pip install --no-deps -e . beside the pins)
# Writes OUT_DIR/gpu.txt, tests.txt, bench_cuda.jsonl, device_auto.jsonl, bench_classical.jsonl and,
# with TOKENS_DIR, chrx_run/ (config, metrics) and chrx_projection.json.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="${PYTHON:-python3}"
out="${1:-gpu_check}"
tokens="${2:-}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$py" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" \
  | tee -a "$out/gpu.txt"
"$py" -m pytest -q tests/test_cuda.py 2>&1 | tee "$out/tests.txt"
: > "$out/bench_cuda.jsonl"
for batch in 32 256 1024; do
  for args in "--impl kernels" "--gpu-impl triton --cuda-graph"; do
    # shellcheck disable=SC2086
    "$py" bench/bench_quixer.py --device cuda --batch-size "$batch" --steps 30 $args | tee -a "$out/bench_cuda.jsonl"
  done
done
: > "$out/device_auto.jsonl"
for batch in 32 1024; do
  "$py" bench/bench_quixer.py --device auto --batch-size "$batch" --steps 5 | tee -a "$out/device_auto.jsonl"
done
"$py" bench/bench_classical.py --device cuda --batch-sizes 32 1024 | tee "$out/bench_classical.jsonl"
if [ -n "$tokens" ]; then
  rm -rf "$out/chrx_run"
  "$py" train_quixer_hybrid.py --data_dir "$tokens" --output_dir "$out/chrx_run" --device cuda --epochs 4 \
    --max_train_batches 300 --batch_size 32 --init_strategy small_gaussian --use_layerwise_training 2>&1 | tail -n 8
  "$py" bench/project_epochs.py "$out/chrx_run" --epochs 50 | tee "$out/chrx_projection.json"
  rm -f "$out"/chrx_run/*.pt  # checkpoints: not for docs/
fi
