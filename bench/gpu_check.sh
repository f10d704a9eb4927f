#!/usr/bin/env bash
# The GPU checks in one short run, for a lent GPU machine (CI has none). That machine has its own
# image (Python 3.12, torch 2.11, triton 3.6, pytest; no lambeq / pytket / qiskit) and no network:
# nothing is installed, the repository is put on PYTHONPATH, every step runs under `timeout`
# inside a budget for the whole check (CHECK_SECONDS, default 360), and what it writes fits 8 files.
#
#   1. environment: GPU, driver, Python, torch, CUDA, triton and which optional packages exist;
#   2. tests/test_cuda.py (-x, QUIXER_TEST_TIMEOUT per test): both GPU simulators against the CPU,
#      the one-launch eval kernel, captured evals, captured steps and --cuda_graph trainer runs against
#      eager ones, the Triton fallback and the capture's safety nets;
#   3. bench/bench_quixer.py, the targets: a training step at batch 32 (Triton and torch ops
#      interleaved, then the Triton step captured as a CUDA graph), captured training at 1,024 and
#      4,096, and the captured one-launch eval at 16 k, 32 k and 64 k sequences per batch;
#   4. only with TOKENS_DIR (bash bench/prepare_chrx_tokens.sh on the CPU side, carried along): Quixer
#      on the chrX tokens as the 50-epoch command (batch 32, small_gaussian) with the captured step
#      (--cuda_graph, which refuses layerwise training: all layers every epoch, an upper bound of the
#      layerwise run), two epochs of 300 batches, projected to 50 full epochs by bench/project_epochs.py;
#   5. what --device auto picks at batch 32 and 1024 (the measured seconds per step on each device);
#   6. bench/bench_classical.py: LSTM and Transformer training steps at batch 32 and 1024;
#   7. CPU tests (tests/test_devices.py, tests/test_model.py); tests that need lambeq, pytket or
#      qiskit are reported as skipped (QUIXER_SKIP_MISSING_OPTIONAL=1).
# Without a GPU, steps 3-6 only import their scripts (--help), so the check runs anywhere.
#
# Usage: bash bench/gpu_check.sh [OUT_DIR [TOKENS_DIR]]   (relative paths: from the repository root;
# PYTHON picks the interpreter, default python3)
# Writes to OUT_DIR at most: gpu.txt (environment, then one line per step: exit code, seconds),
# tests.txt, bench_cuda.jsonl, chrx_projection.json, chrx_run.tar.gz (config, metrics, results and
# log; no checkpoints or scores), device_auto.jsonl, bench_classical.jsonl and log.txt (each step's
# stderr, last lines). Exits 1 if a step failed, timed out or was left out for want of time.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
py="${PYTHON:-python3}"
out="${1:-gpu_check}"
tokens="${2:-}"
budget="${CHECK_SECONDS:-360}"
mkdir -p "$out" && out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
export QUIXER_SKIP_MISSING_OPTIONAL=1 QUIXER_TEST_TIMEOUT="${QUIXER_TEST_TIMEOUT:-120}" QUIXER_IN_GPU_CHECK=1
rm -f "$out"/{gpu.txt,tests.txt,bench_cuda.jsonl,chrx_projection.json,chrx_run.tar.gz,device_auto.jsonl,bench_classical.jsonl,log.txt}
failed=0

note() {  # note NAME TEXT: one status line in gpu.txt (and on the terminal)
  printf '%-40s %s\n' "$1" "$2" | tee -a "$out/gpu.txt"
}

step() {  # step NAME LIMIT DEST CMD...: CMD under timeout (at most what is left of the budget), stdout to DEST
  local name=$1 limit=$2 dest=$3 left=$((budget - SECONDS)) start=$SECONDS rc
  shift 3
  if ((left < 20)); then
    note "$name" "SKIPPED: out of time (CHECK_SECONDS=$budget)"
    failed=1
    return 1
  fi
  ((limit > left)) && limit=$left
  timeout -k 10 "$limit" "$@" >>"$dest" 2>"$work/stderr"
  rc=$?
  { echo "== $name (exit $rc)"; tail -n 120 "$work/stderr"; } >>"$out/log.txt"
  if ((rc == 124 || rc == 137)); then
    note "$name" "TIMED OUT after ${limit}s"
  else
    note "$name" "exit $rc in $((SECONDS - start))s"
  fi
  ((rc == 0)) || failed=1
  return $rc
}

probe() {  # probe SCRIPT: without a GPU, only check that the script imports (from PYTHONPATH)
  step "$1 --help (no GPU)" 60 /dev/null "$py" "$1" --help
}

environment() {
  command -v nvidia-smi >/dev/null && timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader >>"$out/gpu.txt" 2>&1
  step environment 60 "$out/gpu.txt" "$py" -c '
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "-"
print(" ".join(f"{n} {version(n)}" for n in ("triton", "numpy", "pytest", "tqdm", "lambeq", "pytket", "qiskit")))'
  gpu=$("$py" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
  if ! "$py" -c 'import tqdm' 2>/dev/null; then  # imported by quixer.windows/training: progress bars only
    mkdir -p "$work/shim/tqdm"
    printf 'def tqdm(iterable=None, *args, **kwargs):\n    return iterable\n' >"$work/shim/tqdm/__init__.py"
    export PYTHONPATH="$PYTHONPATH:$work/shim"
    note "tqdm" "not installed: a pass-through stand-in (no progress bars)"
  fi
}

tests() {  # tests NAME LIMIT FILES...
  local name=$1 limit=$2
  shift 2
  if ! "$py" -c 'import pytest' 2>/dev/null; then
    note "$name" "skipped: pytest not installed"
    return
  fi
  ((budget - SECONDS < 20)) || echo "## pytest -x $*" >>"$out/tests.txt"
  step "$name" "$limit" "$out/tests.txt" "$py" -m pytest -x -q -rs "$@"
}

bench_cuda() {  # the targets: step at 32; captured training at 1,024 and 4,096; captured eval at 16 k-64 k
  local bench=("$py" bench/bench_quixer.py --device cuda)
  step "bench_quixer b32 --impl kernels" 60 "$out/bench_cuda.jsonl" "${bench[@]}" --batch-size 32 --steps 20 \
    --impl kernels
  local batch
  for batch in 32 1024; do
    step "bench_quixer b$batch --cuda-graph" 60 "$out/bench_cuda.jsonl" "${bench[@]}" --batch-size "$batch" \
      --steps 30 --gpu-impl triton --cuda-graph
  done
  step "bench_quixer b4096 --cuda-graph, eval 16k-64k" 90 "$out/bench_cuda.jsonl" "${bench[@]}" --batch-size 4096 \
    --steps 10 --gpu-impl triton --cuda-graph --eval-batch-sizes 16384 32768 65536
}

chrx() {  # the 50-epoch command, capped, and its projection; the run's small files packed in one archive
  local run="$work/chrx_run"
  if [ ! -f "$tokens/train.pt" ]; then
    note "chrx" "FAILED: no $tokens/train.pt (bash bench/prepare_chrx_tokens.sh $tokens)"
    failed=1
    return
  fi
  step "chrx train (captured, 300 batches/epoch)" 150 "$work/train.log" "$py" train_quixer_hybrid.py \
    --data_dir "$tokens" --output_dir "$run" --device cuda --epochs 2 --max_train_batches 300 --batch_size 32 \
    --init_strategy small_gaussian --cuda_graph &&
    step "chrx projection" 30 "$out/chrx_projection.json" "$py" bench/project_epochs.py "$run" --epochs 50
  mkdir -p "$run" && cp "$work/train.log" "$run/" 2>/dev/null
  tar -czf "$out/chrx_run.tar.gz" -C "$work" --exclude='*.pt' --exclude='*.npz' chrx_run
}

environment
tests "tests (GPU)" 240 tests/test_cuda.py
if [ "$gpu" = 1 ]; then
  bench_cuda
  [ -n "$tokens" ] && chrx
  for batch in 32 1024; do
    step "device auto b$batch" 60 "$out/device_auto.jsonl" \
      "$py" bench/bench_quixer.py --device auto --batch-size "$batch" --steps 5
  done
  step "bench_classical" 60 "$out/bench_classical.jsonl" "$py" bench/bench_classical.py --device cuda --batch-sizes 32 1024
else
  probe bench/bench_quixer.py
  [ -n "$tokens" ] && probe train_quixer_hybrid.py && probe bench/project_epochs.py
  probe bench/bench_classical.py
fi
[ "${CHECK_CPU_TESTS:-1}" = 1 ] && tests "tests (CPU)" 120 tests/test_devices.py tests/test_model.py
note "total" "${SECONDS}s, $(find "$out" -maxdepth 1 -type f | wc -l) files in $out"
exit "$failed"
