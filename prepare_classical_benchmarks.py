#!/usr/bin/env python3
"""Classical-benchmark tokens: stage-1 windows as ids over the raw 4^k k-mer vocabulary.

  python prepare_classical_benchmarks.py --fasta data/sample_rna.fasta.gz --output_dir classical_benchmarks
  python prepare_classical_benchmarks.py --data_dir autoregressive_data --output_dir classical_benchmarks

Writes {train,val,test}.pt with sequences [N, W] (int64), labels [N] (= sequences[:, -1]) and
vocab (list of k-mers), and metadata.json. From --fasta the windowing flags apply and give the
same windows and splits as prepare_autoregressive_data.py with the same flags, so the two
commands above give the same tokens: whichever runs second finds the directory up to date.
"""
from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C from here on, imports included: one line, exit status 130
    from quixer.interrupts import exit_on_interrupt
    exit_on_interrupt()

import argparse
import logging

from quixer.common import add_stage_flags, run_cli, setup_logging
from quixer.kmer_tokens import prepare_classical_benchmarks
from quixer.windows import add_window_args, window_config_from_args

log = logging.getLogger("prepare_classical_benchmarks")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--fasta", help="input FASTA or FASTA.gz (windowing flags apply)")
    src.add_argument("--data_dir", help="a prepare_autoregressive_data.py output directory")
    p.add_argument("--output_dir", default="classical_benchmarks", help="output directory (default: classical_benchmarks)")
    add_window_args(p)
    add_stage_flags(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    meta = prepare_classical_benchmarks(args.output_dir, fasta=args.fasta, data_dir=args.data_dir,
                                        cfg=window_config_from_args(args) if args.fasta else None, force=args.force)
    log.info("%s: %s windows per split, vocabulary %d k-mers", args.output_dir, meta["counts"], meta["vocab_size"])
    return 0


if __name__ == "__main__":
    run_cli(main)
