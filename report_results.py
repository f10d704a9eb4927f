#!/usr/bin/env python
"""Gather every run under RUNS_DIR (and, with --raw_runs, the raw-token track) into one report.

RUNS_DIR/<name>/ is one row: a run (config.json and results.json, written by the trainers or
the references) or a model folder of seed runs RUNS_DIR/<name>/seed_<s>/; RUNS_DIR may itself be
one run or one model folder. Other folders (the report's own output among them) are skipped,
so the report can be rerun into the same place. Runs that diverged (diverged.json) are listed,
not scored. The seeds of a row must share their data fingerprint. Writes to --output_dir:

  results.json           {"rows": one per row: model, run, track (quantized or raw), data,
                         data_label, seeds, test metrics (means over seeds) with 95 % intervals,
                         epochs_run, best_epochs, stop_reasons, converged (seeds that converged),
                         not_converged (each seed that did not: why it stopped, last_drops: what
                         its last two epochs took off the validation loss, as fractions),
                         protocol, a reference's chosen order / add-alpha, gain shares, Quixer's
                         paired differences; "diverged": the diverged runs;
                         "tokenisation_differences": raw minus quantised per run in both
                         tracks; "provenance": how this report was made}
  results.md             the same as Markdown tables (also printed to stdout): references first
                         (with their chosen order), then models by test top-1, per track; a
                         Stopped column (e.g. "30/30 epochs, best 28/30/30, converged 3 of 3
                         seeds (official, cosine)") and the seeds that did not converge, named
                         with their last two drops; the ceiling and each row's share of the
                         achievable gain; Quixer minus each model, paired; "Tokenisation: raw
                         6-mers minus quantised tokens", paired on the same scored positions;
                         parameters and cost
  learning_curves.png    per track: train / val loss and val top-1 per epoch, mean over seeds
                         with a min-max band, reference val levels as grey lines
  test_accuracy.png      per track: test top-1 per model with its 95 % interval (and on novel
                         contexts), references as grey lines
  test_perplexity.png    per track: test perplexity per model with its 95 % interval

One colour per model in every plot; the raw track keeps the colour and changes the marker.

Examples:
  python report_results.py runs
  python report_results.py runs --output_dir report --title "chrX RNA, K=512 tokens"
  python report_results.py runs --raw_runs runs_raw --output_dir report_tracks   # both tracks side by side
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
    parser.add_argument("runs_dir", metavar="RUNS_DIR", nargs="?", default=None,
                        help="directory whose subdirectories are runs or model folders of seed runs (e.g. runs), "
                             "or one run or model folder itself; may be left out when --raw_runs gives the only "
                             "track")
    parser.add_argument("--raw_runs", metavar="RAW_RUNS_DIR", default=None,
                        help="runs of the raw k-mer track (run_pipeline.sh --tokens both: OUT/runs_raw), reported "
                             "beside RUNS_DIR with raw minus quantised per model (default: none)")
    parser.add_argument("--output_dir", default=None,
                        help="where the table and plots go (default: RUNS_DIR, else RAW_RUNS_DIR)")
    parser.add_argument("--title", default=None, help="heading of the table and the plots (default: none)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    report = write_report(args.runs_dir, args.output_dir, args.title, raw_runs=args.raw_runs,
                          command=["report_results.py", *(sys.argv[1:] if argv is None else argv)])
    print(report["markdown"], end="")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
