#!/usr/bin/env bash
# The main job: stages 1-4 and the report, on the embedded real-RNA sample by default.
#
#   bash run_pipeline.sh [--fasta FILE] [--out DIR] [--epochs N] [--seeds N] [--eval_targets N]
#                        [--device auto|cpu|cuda] [--jobs 1|2]
#
# Everything goes under --out (default pipeline_out): one directory per stage with the names
# the stage scripts use, runs/<model>/seed_<s>/ per trained model and seed (seeds 42, 43, ...),
# runs/<reference>/ per reference, and results.json, results.md and the PNG plots at the top.
# --epochs is the most epochs a run may take (default 4; early stopping may end it sooner);
# --eval_targets the scored val/test positions (default: the trainers' 100,000, 0 = all).
# Rerunning reuses every stage and run whose input and parameters did not change.
# --jobs 2 (default on 2+ cores) trains in two lanes, one core each: Quixer, its ablation and the
# LSTM in the background (log: train_lane1.log), the references and the Transformer in front.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3 )}"

fasta="$here/data/sample_rna.fasta.gz"
out="pipeline_out"
epochs=4
seeds=1
eval_targets=100000
device="auto"
cores=$(nproc 2>/dev/null || echo 1)
jobs=$([ "$cores" -ge 2 ] && echo 2 || echo 1)
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ "$#" -gt 0 ]; do
  case "$1" in
    --fasta) fasta="${2:?--fasta needs a file}"; shift 2 ;;
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --epochs) epochs="${2:?--epochs needs a number}"; shift 2 ;;
    --seeds) seeds="${2:?--seeds needs a number}"; shift 2 ;;
    --eval_targets) eval_targets="${2:?--eval_targets needs a number}"; shift 2 ;;
    --device) device="${2:?--device needs auto, cpu or cuda}"; shift 2 ;;
    --jobs) jobs="${2:?--jobs needs 1 or 2}"; shift 2 ;;
    -h|--help) help=1; shift ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$epochs" in ''|*[!0-9]*|0) echo "error: --epochs must be a positive integer" >&2; exit 2 ;; esac
case "$seeds" in ''|*[!0-9]*|0) echo "error: --seeds must be a positive integer" >&2; exit 2 ;; esac
case "$eval_targets" in ''|*[!0-9]*) echo "error: --eval_targets must be a number (0 = all)" >&2; exit 2 ;; esac
case "$jobs" in 1|2) ;; *) echo "error: --jobs must be 1 or 2" >&2; exit 2 ;; esac
[ -f "$fasta" ] || { echo "error: $fasta: file not found" >&2; exit 2; }
if [ -n "${help:-}" ]; then usage; exit 0; fi  # after the checks: a shown command line is validated

step() { echo "==> $*" >&2; }
mkdir -p "$out/runs"
data="$out/autoregressive_data"; emb="$out/lambeq_embeddings_autoregressive"
tok="$out/quantized_embeddings_autoregressive"; runs="$out/runs"
start=$SECONDS

step "stage 1: windows from $fasta"
"$py" "$here/prepare_autoregressive_data.py" --fasta "$fasta" --output_dir "$data"
step "stage 2: lambeq k-mer embeddings"
"$py" "$here/lambeq_encoder.py" --data_dir "$data" --output_dir "$emb" --device "$device"
step "stage 3: k-means into 512 tokens"
"$py" "$here/quantize_lambeq_embeddings.py" --input_dir "$emb" --output_dir "$tok"
seed_list=$(seq 42 $((41 + seeds)))
train() {  # train MODEL...: every seed of each, one after the other
  local model s script
  for model in "$@"; do
    script="train_classical_baselines.py --model $model"
    [ "$model" = quixer ] && script="train_quixer_hybrid.py"
    for s in $seed_list; do
      step "stage 4: $model, seed $s (at most $epochs epochs)"
      # shellcheck disable=SC2086
      "$py" "$here"/$script --data_dir "$tok" --epochs "$epochs" --device "$device" --seed "$s" \
        --eval_targets "$eval_targets" --output_dir "$runs/$model/seed_$s" --resume
    done
  done
}
references() {
  local ref
  for ref in uniform unigram ngram token_ceiling raw_bases; do
    step "reference: $ref"
    "$py" "$here/train_classical_baselines.py" --model "$ref" --data_dir "$tok" --eval_targets "$eval_targets" \
      --output_dir "$runs/$ref"
  done
}
# Two lanes of about equal work: Quixer, its ablation and the LSTM; the references and the Transformer.
lane1=(quixer quixer_ablation lstm)
lane2=(transformer)
if [ "$jobs" -eq 2 ]; then
  # one core each: two processes with all threads each would fight over the cores
  threads=$(( cores / 2 > 0 ? cores / 2 : 1 ))
  export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
  log="$out/train_lane1.log"
  step "stage 4: ${lane1[*]} ($seeds seed(s) each) in the background, log in $log"
  train "${lane1[@]}" > "$log" 2>&1 &
  bgpid=$!
  trap '[ -n "${bgpid:-}" ] && kill "$bgpid" 2>/dev/null' EXIT
  references
  train "${lane2[@]}"
  step "waiting for ${lane1[*]}"
  if ! wait "$bgpid"; then
    bgpid=""
    tail -n 5 "$log" >&2
    echo "error: training failed; see $log" >&2
    exit 1
  fi
  bgpid=""
  grep -E "==>|epoch [0-9]+/|test:|already finished" "$log" >&2 || true
else
  references
  train "${lane1[@]}" "${lane2[@]}"
fi
step "report"
"$py" "$here/report_results.py" "$runs" --output_dir "$out"
echo "pipeline finished in $((SECONDS - start)) s; results in $out/results.md" >&2
