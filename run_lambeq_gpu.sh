#!/usr/bin/env bash
# Stage 2 launcher (the original interface): lambeq k-mer embeddings of a stage-1 directory.
#
#   ./run_lambeq_gpu.sh DATA_DIR OUT_DIR DIM WORKERS DEVICE
#   ./run_lambeq_gpu.sh autoregressive_data lambeq_embeddings_autoregressive 64 4 cuda
#
# DIM is the embedding dimension (a power of two <= 2^k, 64 for 6-mers), WORKERS the CPU
# threads, DEVICE auto | cpu | cuda. Extra lambeq_encoder.py flags can follow, e.g.
# --backend aer --shots 8192. Python: $PYTHON if set, else the project's .venv, else python3.
set -euo pipefail

if [ "$#" -lt 5 ]; then
    echo "usage: $0 DATA_DIR OUT_DIR DIM WORKERS DEVICE [lambeq_encoder.py flags...]" >&2
    echo "  e.g. $0 autoregressive_data lambeq_embeddings_autoregressive 64 4 cuda" >&2
    exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -n "${PYTHON:-}" ]; then
    python="$PYTHON"
elif [ -x "$here/.venv/bin/python" ]; then
    python="$here/.venv/bin/python"
else
    python="python3"
fi

data_dir="$1"; out_dir="$2"; dim="$3"; workers="$4"; device="$5"
shift 5
exec "$python" "$here/lambeq_encoder.py" --data_dir "$data_dir" --output_dir "$out_dir" \
    --embedding_dim "$dim" --workers "$workers" --device "$device" "$@"
