#!/usr/bin/env python
"""Gather every run under RUNS_DIR into one results table and three plots.

Reads RUNS_DIR/<run>/results.json (test metrics), config.json (the data directory) and, for
trained models, metrics.jsonl (one JSON object per epoch). Writes to --output_dir:

  results.json           one row per run: model, run, data, parameters, test_top1, test_top5,
                         test_perplexity, test_loss, train_seconds, sequences_per_second
  results.md             the same as a Markdown table (also printed to stdout); references
                         (uniform, unigram, n-gram) first, then models by test top-1
  learning_curves.png    train / val loss and val top-1 per epoch, reference val levels as lines
  test_accuracy.png      test top-1 / top-5 bars per model, reference levels as lines
  test_perplexity.png    test perplexity bars (log scale), reference levels as lines

Subdirectories without results.json (unfinished runs) are skipped with a warning.

Examples:
  python report_results.py runs
  python report_results.py runs --output_dir report --title "chrX RNA, K=512 tokens"
"""
from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C from here on, imports included: one line, exit status 130
    from quixer.interrupts import exit_on_interrupt
    exit_on_interrupt()

import argparse
import sys
from typing import Sequence

from quixer.common import run_cli, setup_logging
from quixer.report import write_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir", metavar="RUNS_DIR", help="directory whose subdirectories are runs (e.g. runs)")
    parser.add_argument("--output_dir", default=None, help="where the table and plots go (default: RUNS_DIR)")
    parser.add_argument("--title", default=None, help="heading of the table and the plots (default: none)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    report = write_report(args.runs_dir, args.output_dir, args.title)
    print(report["markdown"], end="")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
