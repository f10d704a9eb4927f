#!/usr/bin/env bash
# Classical-benchmark tokens from a FASTA (the original interface):
#   bash run_classical_prep.sh FASTA OUT_DIR [extra prepare_classical_benchmarks.py flags]
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: $0 FASTA OUT_DIR [prepare_classical_benchmarks.py flags...]" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3 )}"
fasta="$1"; out="$2"; shift 2
exec "$py" "$here/prepare_classical_benchmarks.py" --fasta "$fasta" --output_dir "$out" "$@"
