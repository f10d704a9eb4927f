#!/usr/bin/env python3
"""Stage 3: lambeq k-mer embeddings -> K token ids by k-means (512 by default).

  python quantize_lambeq_embeddings.py --input_dir lambeq_embeddings_autoregressive \\
      --output_dir quantized_embeddings_autoregressive
  python quantize_lambeq_embeddings.py --embeddings_dir lambeq_embeddings_autoregressive \\
      --output_dir quantized_embeddings_autoregressive      # the original plan's flag name

k-means (scikit-learn) is fitted on the distinct k-mers that occur in the train split, each
weighted by its train count (k-mers absent from train do not move the centres); every k-mer,
seen in train or not, then gets its nearest train-fitted centre, and every split is mapped
with those centres. Also reads the original full-tensor input ({split}.pt with embeddings
[N, W, D]), clustering its distinct rows.

Writes {split}.pt {sequences int64 [N, W], labels int64 [N] = sequences[:, -1]},
cluster_centers.pt {cluster_centers [K, D], kmers, kmer_tokens, kmer_to_token} and
metadata.json (inertia, cluster sizes, empty clusters, Hamming distance inside clusters vs
random pairs). Rerunning with the same input and flags does nothing; other flags on a
finished directory are refused unless --force.
"""
from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C from here on, imports included: one line, exit status 130
    from quixer.interrupts import exit_on_interrupt
    exit_on_interrupt()

import argparse
import logging

from quixer.common import add_stage_flags, run_cli, setup_logging
from quixer.quantize import DEFAULT_INPUT_DIR, DEFAULT_OUTPUT_DIR, add_quantize_args, config_from_args, quantize_embeddings

log = logging.getLogger("quantize_lambeq_embeddings")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_dir", "--embeddings_dir", dest="input_dir", default=DEFAULT_INPUT_DIR,
                   help=f"stage-2 directory; --embeddings_dir is the original plan's name (default: {DEFAULT_INPUT_DIR})")
    p.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR, help=f"output directory (default: {DEFAULT_OUTPUT_DIR})")
    add_quantize_args(p)
    add_stage_flags(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    quantize_embeddings(args.input_dir, args.output_dir, config_from_args(args), force=args.force)
    return 0


if __name__ == "__main__":
    run_cli(main)
