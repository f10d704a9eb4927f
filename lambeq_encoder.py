#!/usr/bin/env python3
"""Stage 2: k-mer windows -> lambeq quantum-circuit embeddings (one table row per k-mer).

  python lambeq_encoder.py --data_dir autoregressive_data --output_dir lambeq_embeddings_autoregressive

Each k-mer is a lambeq circuit: one qubit per base prepared in one of four tetrahedral states
(A, C, G, T pairwise equally distinguishable), then one shared entangling mixer (a lambeq
Sim14 or IQP ansatz with seeded angles, scaled by --mixer_scale turns). Its embedding is the
probability vector of the first log2(D) qubits. All 4^k k-mers are simulated once, in
itertools.product("ACGT", repeat=k) order, so every split indexes into the same table.

Writes kmer_embeddings.pt {kmers, embeddings [4^k, D] float32}, {split}.pt {kmer_ids [N, W]
int16 (int32 when 4^k > 32768), labels [N]} and metadata.json (circuit, backend, timings,
hashes). The full [N, W, D] tensor is quixer.encoding.WindowEmbeddings(...).materialize(),
or {split}_embeddings.pt with --materialize (small data only). Rerunning with the same input
and flags does nothing; other flags on a finished directory are refused unless --force.
"""
from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C from here on, imports included: one line, exit status 130
    from quixer.interrupts import exit_on_interrupt
    exit_on_interrupt()

import argparse
import logging

from quixer.common import add_stage_flags, run_cli, setup_logging
from quixer.encoding import (
    DEFAULT_DATA_DIR,
    DEFAULT_OUTPUT_DIR,
    add_encoder_args,
    encode_windows,
    run_options_from_args,
    spec_overrides_from_args,
)

log = logging.getLogger("lambeq_encoder")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help=f"stage-1 directory (default: {DEFAULT_DATA_DIR})")
    p.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR, help=f"output directory (default: {DEFAULT_OUTPUT_DIR})")
    add_encoder_args(p)
    p.add_argument("--materialize", action="store_true",
                   help="also write the full [N, W, D] {split}_embeddings.pt (small data only)")
    add_stage_flags(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    encode_windows(args.data_dir, args.output_dir, spec_overrides_from_args(args), run_options_from_args(args),
                   force=args.force)
    return 0


if __name__ == "__main__":
    run_cli(main)
