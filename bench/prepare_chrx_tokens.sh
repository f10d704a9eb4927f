#!/usr/bin/env bash
# CPU side of the optional timed chrX run of bench/gpu_check.sh: stages 1-3 of the pipeline (default
# flags, as run_pipeline.sh) on the benchmark set, with the tokens stored as int16 (about 12 MB
# instead of 50: small enough to carry to a lent GPU machine, which need not have lambeq).
# Usage: bash bench/prepare_chrx_tokens.sh [OUT_DIR]   (default gpu_tokens_chrX; PYTHON picks the interpreter)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="${PYTHON:-.venv/bin/python}"
fasta="../shared/data/grch38_chrX_refseq_rna.fasta.gz"
out="${1:-gpu_tokens_chrX}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$py" prepare_autoregressive_data.py --fasta "$fasta" --output_dir "$work/windows"
"$py" lambeq_encoder.py --data_dir "$work/windows" --output_dir "$work/embeddings"
"$py" quantize_lambeq_embeddings.py --input_dir "$work/embeddings" --output_dir "$work/tokens"
mkdir -p "$out"
cp "$work/tokens/cluster_centers.pt" "$out/"
for split in train val test; do
  "$py" -c "import sys, torch; s = torch.load(sys.argv[1])['sequences']; torch.save({'sequences': s.to(torch.int16)}, sys.argv[2])" \
    "$work/tokens/$split.pt" "$out/$split.pt"
done
du -sh "$out"
