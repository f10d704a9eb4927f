#!/usr/bin/env bash
# Stage 2 launcher (the original interface): lambeq k-mer embeddings of a stage-1 directory.
#
#   bash run_lambeq_gpu.sh DATA_DIR OUT_DIR DIM WORKERS DEVICE [lambeq_encoder.py flags...]
#   bash run_lambeq_gpu.sh autoregressive_data lambeq_embeddings_autoregressive 64 4 cuda
#   bash run_lambeq_gpu.sh autoregressive_data lambeq_embeddings_autoregressive 64 1 cpu
#
# DIM is the embedding dimension (a power of two <= 2^k, 64 for 6-mers), WORKERS the CPU
# threads, DEVICE auto | cpu | cuda. Extra lambeq_encoder.py flags can follow, e.g.
# --backend aer --shots 8192. Python: $PYTHON if set, else the project's .venv, else python3.
#
# DEVICE cuda on a machine where torch sees no CUDA GPU runs on the CPU after one warning line
# (the same embeddings to float rounding; only slower), so the original plan's commands run
# anywhere. The device and the worker count do not change the output, so a second call that
# differs only in them (e.g. the cpu line above after the cuda one) finds the directory up to
# date and does nothing. lambeq_encoder.py --device cuda itself stays strict: an error.
set -euo pipefail

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"  # the header above
    exit 0
fi
if [ "$#" -lt 5 ]; then
    echo "usage: bash run_lambeq_gpu.sh DATA_DIR OUT_DIR DIM WORKERS DEVICE [lambeq_encoder.py flags...] (--help)" >&2
    echo "  e.g. bash run_lambeq_gpu.sh autoregressive_data lambeq_embeddings_autoregressive 64 4 cuda" >&2
    exit 2
fi

# The repository, even when this script is reached through a symlink.
here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
if [ -n "${PYTHON:-}" ]; then
    python="$PYTHON"
elif [ -x "$here/.venv/bin/python" ]; then
    python="$here/.venv/bin/python"
else
    python="python3"
fi

data_dir="$1"; out_dir="$2"; dim="$3"; workers="$4"; device="$5"
shift 5
if [ "$device" = "cuda" ] && ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "run_lambeq_gpu.sh: warning: DEVICE cuda but torch sees no CUDA GPU; running on the CPU instead" >&2
    device="cpu"
fi
exec "$python" "$here/lambeq_encoder.py" --data_dir "$data_dir" --output_dir "$out_dir" \
    --embedding_dim "$dim" --workers "$workers" --device "$device" "$@"
