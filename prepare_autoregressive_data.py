#!/usr/bin/env python3
"""Stage 1: RNA FASTA -> windows of overlapping k-mers, split by shared-sequence group.

  python prepare_autoregressive_data.py --fasta data/sample_rna.fasta.gz --output_dir autoregressive_data

Writes {train,val,test}/sentences.txt (one window of space-separated k-mers per line),
labels.txt (index of the window's last k-mer), sources.txt (ACCESSION OFFSET), for val and
test novel.txt (per window position: 1 if its context is found in no train transcript), and
metadata.json (with the split groups and the leakage statistics). Rerunning with the same input and flags does nothing; other flags on a
finished directory are refused unless --force.
"""
from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C from here on, imports included: one line, exit status 130
    from quixer.interrupts import exit_on_interrupt
    exit_on_interrupt()

import argparse
import logging
import time

from quixer.common import add_stage_flags, peak_rss_mb, run_cli, setup_logging
from quixer.windows import DEFAULT_DATA_DIR, DEFAULT_FASTA, SPLITS, add_window_args, prepare_autoregressive_data, window_config_from_args

log = logging.getLogger("prepare_autoregressive_data")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fasta", default=DEFAULT_FASTA, help=f"input FASTA or FASTA.gz (default: {DEFAULT_FASTA})")
    p.add_argument("--output_dir", default=DEFAULT_DATA_DIR, help=f"output directory (default: {DEFAULT_DATA_DIR})")
    add_window_args(p)
    add_stage_flags(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    start = time.perf_counter()
    meta = prepare_autoregressive_data(args.fasta, args.output_dir, window_config_from_args(args), force=args.force)
    counts = ", ".join(f"{s} {meta['counts'][s]['windows']:,}" for s in SPLITS)
    split, leak = meta["split"], meta["leakage"]
    log.info("%s: %s windows (%s) from %d sequences in %d %s groups (largest %.1f %% of windows); "
             "contexts found in train: val %.2f %%, test %.2f %%; %.1f s, peak memory %.0f MiB", args.output_dir,
             f"{sum(meta['counts'][s]['windows'] for s in SPLITS):,}", counts, meta["records_used"], split["groups"],
             split["method"], 100 * split["largest_group_share"], 100 * leak["val"]["fraction"],
             100 * leak["test"]["fraction"], time.perf_counter() - start, peak_rss_mb())
    return 0


if __name__ == "__main__":
    run_cli(main)
