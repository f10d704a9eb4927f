#!/usr/bin/env bash
# Classical-benchmark tokens from a FASTA (the original interface):
#   bash run_classical_prep.sh FASTA OUT_DIR [extra prepare_classical_benchmarks.py flags]
#   bash run_classical_prep.sh GRCh38_genomic_dataset/rna_sequences.fasta classical_benchmarks_data
# Python: $PYTHON if set, else the project's .venv, else python3.
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"  # the header above
  exit 0
fi
if [ "$#" -lt 2 ]; then
  echo "usage: $0 FASTA OUT_DIR [prepare_classical_benchmarks.py flags...] (--help)" >&2
  exit 2
fi
# The repository, even when this script is reached through a symlink.
here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
py="${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3 )}"
fasta="$1"; out="$2"; shift 2
exec "$py" "$here/prepare_classical_benchmarks.py" --fasta "$fasta" --output_dir "$out" "$@"
