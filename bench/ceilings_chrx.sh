#!/usr/bin/env bash
# The task's ceiling on the chrX benchmark set: stages 1-3 with default flags (as run_pipeline.sh
# runs them), then the unigram, n-gram, token_ceiling and raw_bases references on the default
# 100,000 test targets, and the report over them: top-1 / perplexity with 95 % intervals, the
# orders chosen on validation, the task's anatomy and the n-gram's share of the achievable gain.
# Usage: bash bench/ceilings_chrx.sh [OUT_DIR]   (default ceilings_chrX; PYTHON picks the interpreter)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="${PYTHON:-.venv/bin/python}"
fasta="../shared/data/grch38_chrX_refseq_rna.fasta.gz"
out="${1:-ceilings_chrX}"
tok="$out/quantized_embeddings_autoregressive"
"$py" prepare_autoregressive_data.py --fasta "$fasta" --output_dir "$out/autoregressive_data"
"$py" lambeq_encoder.py --data_dir "$out/autoregressive_data" --output_dir "$out/lambeq_embeddings_autoregressive"
"$py" quantize_lambeq_embeddings.py --input_dir "$out/lambeq_embeddings_autoregressive" --output_dir "$tok"
for ref in unigram ngram token_ceiling raw_bases; do
  "$py" train_classical_baselines.py --model "$ref" --data_dir "$tok" --output_dir "$out/runs/$ref"
done
"$py" report_results.py "$out/runs" --output_dir "$out" --title "chrX: the task's ceiling"
