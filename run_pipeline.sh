#!/usr/bin/env bash
# The main job: stages 1-4 and the report, on the embedded real-RNA sample by default.
#
#   bash run_pipeline.sh [--fasta FILE] [--out DIR] [--protocol project|official] [--epochs N]
#                        [--seeds N] [--models LIST] [--tokens quantized|raw|both]
#                        [--eval_targets N] [--device auto|cpu|cuda] [--jobs 1|2]
#
# Everything goes under --out (default pipeline_out): one directory per stage with the names
# the stage scripts use, runs/<model>/seed_<s>/ per trained model and seed (seeds 42, 43, ...),
# runs/<reference>/ per reference, and results.json, results.md and the PNG plots at the top.
# --protocol names the trainers' defaults: project (plateau schedule, early stopping; the main
# job's default, with at most --epochs 4) or official (the CQCL/Quixer protocol: 30 epochs of a
# cosine schedule, no early stopping, epochs selected on 10,000 validation targets).
# --epochs is the most epochs a run may take (default: 4, or the protocol's 30 with official).
# --models the trained models, comma-separated (default quixer,quixer_ablation,
# quixer_ablation_matched,lstm,transformer; fnet can be added); the references always run.
# --tokens the track(s): quantized (default: stages 2-3, the 512 lambeq + k-means tokens, runs in
# runs/), raw (the un-quantised control: the 4,096 raw 6-mers of the same windows, tokens in
# raw_kmer_tokens/, runs in runs_raw/) or both; the report shows the tracks side by side.
# --eval_targets the scored val/test positions (default: the trainers' 100,000, 0 = all).
# Rerunning reuses every stage and run whose input and parameters did not change.
# --jobs 2 (default on 2+ cores) trains in two lanes of about equal work, one core each: one in
# the background (log: train_lane1.log), the references and the other runs in front; the seeds of one
# model are shared between the lanes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3 )}"

fasta="$here/data/sample_rna.fasta.gz"
out="pipeline_out"
protocol="project"
epochs=""
seeds=1
models="quixer,quixer_ablation,quixer_ablation_matched,lstm,transformer"
tokens="quantized"
eval_targets=100000
device="auto"
cores=$(nproc 2>/dev/null || echo 1)
jobs=$([ "$cores" -ge 2 ] && echo 2 || echo 1)
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ "$#" -gt 0 ]; do
  case "$1" in
    --fasta) fasta="${2:?--fasta needs a file}"; shift 2 ;;
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --protocol) protocol="${2:?--protocol needs project or official}"; shift 2 ;;
    --epochs) epochs="${2:?--epochs needs a number}"; shift 2 ;;
    --models) models="${2:?--models needs a comma-separated list}"; shift 2 ;;
    --tokens) tokens="${2:?--tokens needs quantized, raw or both}"; shift 2 ;;
    --seeds) seeds="${2:?--seeds needs a number}"; shift 2 ;;
    --eval_targets) eval_targets="${2:?--eval_targets needs a number}"; shift 2 ;;
    --device) device="${2:?--device needs auto, cpu or cuda}"; shift 2 ;;
    --jobs) jobs="${2:?--jobs needs 1 or 2}"; shift 2 ;;
    -h|--help) help=1; shift ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$protocol" in project|official) ;; *) echo "error: --protocol must be project or official" >&2; exit 2 ;; esac
case "$tokens" in quantized) tracks=(quantized) ;; raw) tracks=(raw) ;; both) tracks=(quantized raw) ;;
  *) echo "error: --tokens must be quantized, raw or both" >&2; exit 2 ;; esac
[ -z "$epochs" ] && [ "$protocol" = project ] && epochs=4
case "$epochs" in ''|*[!0-9]*|0) [ -z "$epochs" ] || { echo "error: --epochs must be a positive integer" >&2; exit 2; } ;; esac
IFS=, read -r -a model_list <<< "$models"
for m in "${model_list[@]}"; do
  case "$m" in quixer|quixer_ablation|quixer_ablation_matched|lstm|transformer|fnet) ;;
    *) echo "error: --models: unknown model '$m' (choose from quixer, quixer_ablation, quixer_ablation_matched, lstm, transformer, fnet)" >&2; exit 2 ;;
  esac
done
[ "${#model_list[@]}" -gt 0 ] || { echo "error: --models needs at least one model" >&2; exit 2; }
case "$seeds" in ''|*[!0-9]*|0) echo "error: --seeds must be a positive integer" >&2; exit 2 ;; esac
case "$eval_targets" in ''|*[!0-9]*) echo "error: --eval_targets must be a number (0 = all)" >&2; exit 2 ;; esac
case "$jobs" in 1|2) ;; *) echo "error: --jobs must be 1 or 2" >&2; exit 2 ;; esac
[ -f "$fasta" ] || { echo "error: $fasta: file not found" >&2; exit 2; }
if [ -n "${help:-}" ]; then usage; exit 0; fi  # after the checks: a shown command line is validated

step() { echo "==> $*" >&2; }
mkdir -p "$out"
data="$out/autoregressive_data"; emb="$out/lambeq_embeddings_autoregressive"
start=$SECONDS

step "stage 1: windows from $fasta"
"$py" "$here/prepare_autoregressive_data.py" --fasta "$fasta" --output_dir "$data"
if [ "$tokens" != raw ]; then
  step "stage 2: lambeq k-mer embeddings"
  "$py" "$here/lambeq_encoder.py" --data_dir "$data" --output_dir "$emb" --device "$device"
  step "stage 3: k-means into 512 tokens"
  "$py" "$here/quantize_lambeq_embeddings.py" --input_dir "$emb" --output_dir "$out/quantized_embeddings_autoregressive"
fi
if [ "$tokens" != quantized ]; then
  step "raw 6-mer tokens of the same windows (the un-quantised control)"
  "$py" "$here/prepare_classical_benchmarks.py" --data_dir "$data" --output_dir "$out/raw_kmer_tokens"
fi
seed_list=$(seq 42 $((41 + seeds)))
epoch_flag=(); [ -n "$epochs" ] && epoch_flag=(--epochs "$epochs")
train() {  # train MODEL:SEED...: each run, one after the other
  local run model s script
  for run in "$@"; do
    model="${run%:*}"; s="${run#*:}"
    script="train_classical_baselines.py --model $model"
    [ "$model" = quixer ] && script="train_quixer_hybrid.py"
    step "stage 4: $model, seed $s ($protocol protocol, at most ${epochs:-its} epochs)"
    # shellcheck disable=SC2086
    "$py" "$here"/$script --data_dir "$tok" --protocol "$protocol" "${epoch_flag[@]}" --device "$device" \
      --seed "$s" --eval_targets "$eval_targets" --output_dir "$runs/$model/seed_$s" --resume
  done
}
cost() {  # relative CPU time per epoch of a model (measured on chrX, one core): balances the lanes
  case "$1" in transformer) echo 265 ;; quixer|lstm) echo 130 ;; *) echo 90 ;; esac
}
references() {
  local ref
  for ref in uniform unigram ngram token_ceiling raw_bases; do
    step "reference: $ref"
    "$py" "$here/train_classical_baselines.py" --model "$ref" --data_dir "$tok" --eval_targets "$eval_targets" \
      --output_dir "$runs/$ref"
  done
}
# Two lanes of about equal work: each run (a model and a seed), costliest first, seeds in order,
# joins the lane with less work so far (the references run first in lane 2); the seeds of one model
# share the lanes, so `--seeds 5 --models quixer` keeps both cores busy.
lane1=(); lane2=(); work1=0; work2=30
for run in $(for m in "${model_list[@]}"; do for s in $seed_list; do echo "$(cost "$m") $m:$s"; done; done |
             sort -s -k1,1rn | cut -d' ' -f2); do
  c=$(cost "${run%:*}")
  if [ "$jobs" -eq 2 ] && [ "$work1" -le "$work2" ]; then lane1+=("$run"); work1=$((work1 + c))
  else lane2+=("$run"); work2=$((work2 + c)); fi
done
if [ "$jobs" -eq 2 ]; then
  # one core each: two processes with all threads each would fight over the cores
  threads=$(( cores / 2 > 0 ? cores / 2 : 1 ))
  export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
fi
trap '[ -n "${bgpid:-}" ] && kill "$bgpid" 2>/dev/null' EXIT
train_track() {  # the references and every model of one track, in one or two lanes
  if [ "$jobs" -eq 1 ]; then references; train "${lane2[@]}"; return; fi
  local log="$out/train_lane1.log" first
  step "stage 4 ($track tokens): ${lane1[*]:-nothing} (model:seed) in the background, log in $log"
  echo "==> $(date -u +%FT%TZ) run_pipeline.sh: lane 1, $track tokens" >> "$log"
  train "${lane1[@]}" >> "$log" 2>&1 &
  bgpid=$!
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
  # this invocation's part of the log (a rerun appends to it)
  first=$(grep -n "run_pipeline.sh: lane 1" "$log" | tail -n 1 | cut -d: -f1)
  tail -n "+${first:-1}" "$log" | grep -E "==> stage|epoch [0-9]+/|test:|already finished" >&2 || true
}
for track in "${tracks[@]}"; do
  if [ "$track" = quantized ]; then tok="$out/quantized_embeddings_autoregressive"; runs="$out/runs"
  else tok="$out/raw_kmer_tokens"; runs="$out/runs_raw"; fi
  mkdir -p "$runs"
  train_track
done
step "report"
report=("$out/runs"); [ "$tokens" = raw ] && report=()  # the raw track alone: labelled as raw
[ "$tokens" != quantized ] && report+=(--raw_runs "$out/runs_raw")
"$py" "$here/report_results.py" "${report[@]}" --output_dir "$out"
echo "pipeline finished in $((SECONDS - start)) s; results in $out/results.md" >&2
