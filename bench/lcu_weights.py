#!/usr/bin/env python
"""Where a trained Quixer puts its LCU weight, beside how often its circuit postselects.

Quixer's block mixes one unitary per input position, with learned complex coefficients b_w, and
then applies a polynomial in that mixture with coefficients c_k; both steps succeed only with some
probability (postselection). A mixture dominated by one position is close to one unitary, which
succeeds almost surely: if a share s of sum |b_w| sits on one position, the success probability
is near s^2 when the other terms contribute little. Reads each run's ``best.pt`` (the weights) and
``results.json`` (the measured mean postselection on the test windows) and prints per run: the
share of sum |b_w| on the last position and its square, how many positions hold 90 % of it, and
the polynomial's coefficients as shares of sum |c_k|. ``--json`` writes the same figures.

    python bench/lcu_weights.py /work/campaign_chrX/out/runs/quixer /work/campaign_chrX/out/runs_raw/quixer
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from quixer.common import UserError, atomic_write_json, load_torch_file, run_cli
from quixer.report_rows import seed_dirs


def _runs(path: Path, finished: bool) -> list[Path]:
    """``path`` itself when it is a run, else its ``seed_*`` runs, in seed order; with ``finished``
    only those with results.json."""
    if (path / "best.pt").is_file():
        runs = [path]
    else:
        runs = [p for p in seed_dirs(path) if (p / "best.pt").is_file()]
    if not runs:
        raise UserError(f"{path}: no best.pt, and no seed_*/best.pt under it")
    return [r for r in runs if (r / "results.json").is_file()] if finished else runs


def lcu_weights(run: Path) -> dict:
    """The figures of one run (its best checkpoint and results.json)."""
    state = load_torch_file(run / "best.pt")["model"]
    b = state["lcu_coefficients"].abs().double()
    shares = (b / b.sum()).tolist()
    c = state["qsvt_polynomial_coefficients"].abs().double()
    ordered = sorted(shares, reverse=True)
    held, positions = 0.0, 0
    while held < 0.9:
        held += ordered[positions]
        positions += 1
    results = json.loads((run / "results.json").read_text()) if (run / "results.json").is_file() else {}
    return {"run": str(run), "name": "/".join(run.parts[-3:]), "seed": results.get("seed"), "val_loss": results.get("val_loss"),
            "test_top1": results.get("test_top1"), "postselection": results.get("postselection"),
            "last_position_share": shares[-1], "last_position_share_squared": shares[-1] ** 2,
            "positions_for_90_percent": positions, "position_shares": shares,
            "polynomial_shares": (c / c.sum()).tolist()}


def _cell(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown(rows: list[dict]) -> str:
    lines = ["| Run | Seed | Val loss | Test top-1 | Postselection (test mean) | Last position's share of Σ|b| | "
             "Its square | Positions for 90 % | Polynomial Σ|c| shares (degree 0, 1, ...) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        top1 = None if r["test_top1"] is None else f"{100 * r['test_top1']:.2f} %"
        lines.append(f"| {r['name']} | {r['seed'] if r['seed'] is not None else '–'} | {_cell(r['val_loss'], '.4f')} | "
                     f"{top1 or '–'} | {_cell(r['postselection'], '.3f')} | "
                     f"{r['last_position_share']:.3f} | {r['last_position_share_squared']:.3f} | "
                     f"{r['positions_for_90_percent']} | {', '.join(f'{s:.2f}' for s in r['polynomial_shares'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="Quixer runs, or model folders of seed_<s>/ runs")
    parser.add_argument("--json", type=Path, help="also write the figures here (JSON)")
    parser.add_argument("--finished", action="store_true", help="only finished runs (with results.json)")
    args = parser.parse_args(argv)
    rows = [lcu_weights(run) for path in args.runs for run in _runs(path, args.finished)]
    print(markdown(rows))
    if args.json is not None:
        atomic_write_json(args.json, {"runs": rows})
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
