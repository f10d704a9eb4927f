#!/usr/bin/env python
"""What changed between two trainings of the same models on the same test targets.

For the chrX campaign: the 5-epoch table (docs/history) against the 30-epoch official protocol.
Both folders hold ``<model>/seed_<s>/results.json`` and ``metrics.jsonl``. Per model, over the
seeds both hold: the mean test top-1 of each, the per-seed change with a t interval over those
seeds, the validation loss each ended at, and the last epoch's train minus validation loss of the
new runs (near zero: not over-fitted). The interval covers seeds only: the old runs kept no
per-target scores, so the test-group part cannot be paired; both runs scored the same targets
(``targets_sha256`` is checked), which cancels most of it. Prints a markdown table.

    python bench/compare_budgets.py docs/history/benchmark_chrX_5epochs/runs docs/benchmark_chrX/runs
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from scipy import special

from quixer.common import UserError, run_cli
from quixer.report_rows import seed_dirs
from quixer.run_dir import load_metrics


def _seed_runs(model_dir: Path) -> dict[int, Path]:
    return {int(p.name.removeprefix("seed_")): p for p in seed_dirs(model_dir) if (p / "results.json").is_file()}


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def t_interval(values: list[float], level: float = 0.95) -> list[float] | None:
    """mean ± t_{n-1} · s / sqrt(n); None with fewer than 2 values."""
    if len(values) < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = float(special.stdtrit(len(values) - 1, 0.5 + level / 2)) * sd / math.sqrt(len(values))
    return [mean - half, mean + half]


def compare_model(old_dir: Path, new_dir: Path) -> dict | None:
    """The change of one model over the seeds both folders hold; None where they share none."""
    old, new = _seed_runs(old_dir), _seed_runs(new_dir)
    seeds = sorted(set(old) & set(new))
    if not seeds:
        return None
    before = {s: _results(old[s]) for s in seeds}
    after = {s: _results(new[s]) for s in seeds}
    for s in seeds:
        if before[s]["targets_sha256"] != after[s]["targets_sha256"]:
            raise UserError(f"{old[s]} and {new[s]} were scored on different test targets")
    change = [100 * (after[s]["test_top1"] - before[s]["test_top1"]) for s in seeds]
    last_epochs = [load_metrics(new[s])[-1] for s in seeds]
    return {
        "seeds": seeds,
        "old_top1": 100 * statistics.fmean(before[s]["test_top1"] for s in seeds),
        "new_top1": 100 * statistics.fmean(after[s]["test_top1"] for s in seeds),
        "change_per_seed": change,
        "change": statistics.fmean(change),
        "change_interval": t_interval(change),
        "old_val_loss": statistics.fmean(before[s]["val_loss"] for s in seeds),
        "new_val_loss": statistics.fmean(after[s]["val_loss"] for s in seeds),
        "new_val_loss_range": [min(after[s]["val_loss"] for s in seeds), max(after[s]["val_loss"] for s in seeds)],
        "train_minus_val": [e["train_loss"] - e["val_loss"] for e in last_epochs],
    }


def markdown(rows: dict[str, dict]) -> str:
    head = ("| Model | Seeds | Test top-1 before | after | Change per seed, points | Change, points [95 % CI over seeds] "
            "| Val loss before → after (range over seeds) | Last epoch: train − val loss |\n"
            "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |\n")
    lines = []
    for model, r in rows.items():
        ci = r["change_interval"]
        ci_text = f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""
        low, high = r["new_val_loss_range"]
        gaps = ", ".join(f"{g:+.3f}" for g in r["train_minus_val"])
        lines.append(f"| {model} | {', '.join(map(str, r['seeds']))} | {r['old_top1']:.2f} % | {r['new_top1']:.2f} % "
                     f"| {', '.join(f'{c:+.2f}' for c in r['change_per_seed'])} | {r['change']:+.2f}{ci_text} "
                     f"| {r['old_val_loss']:.3f} → {r['new_val_loss']:.3f} ({low:.3f}–{high:.3f}) | {gaps} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", type=Path, help="runs folder of the earlier training (<model>/seed_<s>/)")
    p.add_argument("after", type=Path, help="runs folder of the later training, the same layout")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a table")
    args = p.parse_args(argv)
    for folder in (args.before, args.after):
        if not folder.is_dir():
            raise UserError(f"{folder}: not a folder")
    rows = {}
    for model_dir in sorted(d for d in args.before.iterdir() if d.is_dir()):
        row = compare_model(model_dir, args.after / model_dir.name)
        if row is not None:
            rows[model_dir.name] = row
    if not rows:
        raise UserError(f"{args.before} and {args.after} share no trained model and seed")
    print(json.dumps(rows, indent=1) if args.json else markdown(rows), end="")
    return 0


if __name__ == "__main__":
    run_cli(main)
