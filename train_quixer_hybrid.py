#!/usr/bin/env python
"""Stage 4a: train the Quixer quantum transformer on the stage-3 tokens.

Reads quantized_embeddings_autoregressive/{train,val,test}.pt (input: the first 31 tokens of
each window, target: the 32nd) and writes runs/quixer/: config.json, metrics.jsonl, best.pt,
last.pt and results.json (test metrics of the best-validation checkpoint).

Examples:
  python train_quixer_hybrid.py --epochs 50
  python train_quixer_hybrid.py --resume                      # continue a killed run
  python train_quixer_hybrid.py --config runs/tune/best_config.json --output_dir runs/quixer_tuned
  torchrun --nproc_per_node 4 train_quixer_hybrid.py --output_dir runs/quixer_ddp   # one process per GPU (DDP)
"""
from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C from here on, imports included: one line, exit status 130
    from quixer.interrupts import exit_on_interrupt
    exit_on_interrupt()

import sys
from typing import Sequence

from quixer.common import run_cli, setup_logging
from quixer.flags import parse_args, quixer_parser, train_quixer


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(quixer_parser(__doc__), argv)
    setup_logging(args.verbose)
    train_quixer(args)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
