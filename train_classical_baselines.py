#!/usr/bin/env python
"""Stage 4b: classical baselines on the same next-token task as Quixer.

Neural models (trained by the same loop as Quixer, same flags, metrics and run files):
  lstm, transformer, fnet   sizes from --preset (default, paper96, paper128) or the size flags.
  quixer_ablation           Quixer with its quantum block replaced by a classical pooling of the
                            same embeddings (same embedding, head and training; a 1,777-number block).
  quixer_ablation_matched   the same with a classical block of fewer trainable numbers (71) than
                            Quixer's quantum block (90).
Reference predictors (no gradient training; fitted on train, chosen on val, scored on the same
test targets as the trained models):
  uniform, unigram, ngram   (interpolated Kneser-Ney, order chosen on validation).
  token_ceiling, raw_bases  the task's ceiling, from the bases behind the tokens: the best prediction
                            from the tokens under a base model of order <= k (exact inference),
                            and a next-base model reading the raw bases. They need the k-mer ids
                            of stage 3 (kmer_ids.pt) or raw k-mer tokens.

Output: runs/<model>/ (runs/<model>_<preset>/ for the paper presets) with config.json,
results.json and the per-target scores {val,test}_scores.npz (+ metrics.jsonl, best.pt,
last.pt for the neural models).

Examples:
  python train_classical_baselines.py --model lstm
  python train_classical_baselines.py --model transformer --preset paper128 --epochs 30
  python train_classical_baselines.py --model ngram
  python train_classical_baselines.py --model token_ceiling
  python train_classical_baselines.py --model raw_bases
  python train_classical_baselines.py --model quixer_ablation
  python train_classical_baselines.py --model quixer_ablation_matched --protocol official
  python train_classical_baselines.py --model lstm --data_dir classical_benchmarks --output_dir runs/lstm_kmers   # raw k-mer tokens
  python train_classical_baselines.py --model lstm --data_dir classical_benchmarks --output_dir runs_raw/lstm   # the raw track
"""
from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C from here on, imports included: one line, exit status 130
    from quixer.interrupts import exit_on_interrupt
    exit_on_interrupt()

import argparse
import sys
from typing import Sequence

from quixer.common import run_cli, setup_logging
from quixer.flags import classical_parser, parse_args, train_classical


def build_parser() -> argparse.ArgumentParser:
    """Every flag of this script."""
    return classical_parser(__doc__)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    setup_logging(args.verbose)
    train_classical(args)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
