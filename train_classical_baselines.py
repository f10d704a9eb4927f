#!/usr/bin/env python
"""Stage 4b: classical baselines on the same next-token task as Quixer.

Neural models (trained by the same loop as Quixer, same flags, metrics and run files):
  lstm, transformer, fnet   sizes from --preset (default, paper96, paper128) or the size flags.
  quixer_ablation           Quixer with its quantum block replaced by a classical pooling of the
                            same embeddings (same embedding, head and training).
Reference predictors (no gradient training; fitted on train, chosen on val, scored on the same
test targets as the trained models):
  uniform, unigram, ngram   (interpolated Kneser-Ney, order chosen on validation).
  token_ceiling, raw_bases  the task's ceiling, from the bases behind the tokens: the best any
                            model of the tokens can do (exact inference under a base-level prior),
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
  python train_classical_baselines.py --model lstm --data_dir classical_benchmarks --output_dir runs/lstm_kmers   # raw k-mer tokens
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from quixer.baselines import NEURAL_MODELS, add_classical_model_args
from quixer.common import run_cli, setup_logging
from quixer.reference import DEFAULT_MAX_ORDER, REFERENCE_MODELS
from quixer.training import DEFAULT_QUIXER_DATA_DIR, add_training_args, parse_args, train_classical


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=NEURAL_MODELS + REFERENCE_MODELS, default="lstm",
                        help="baseline to run (default: %(default)s)")
    add_training_args(parser, data_dir=DEFAULT_QUIXER_DATA_DIR, output_dir=None, lr=None)
    parser.add_argument("--dropout", type=float, default=None,
                        help="dropout rate (default: the model's own: LSTM 0.3, Transformer / FNet 0.1)")
    add_classical_model_args(parser)
    g = parser.add_argument_group("reference models")
    g.add_argument("--max_order", type=int, default=DEFAULT_MAX_ORDER,
                   help="ngram, raw_bases, token_ceiling: largest order tried on validation (token_ceiling "
                        "stops at k; default: %(default)s)")
    args = parse_args(parser, argv)
    setup_logging(args.verbose)
    train_classical(args)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
