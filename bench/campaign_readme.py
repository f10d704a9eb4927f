#!/usr/bin/env python
"""Write the chrX campaign's headline table into the README, between its two marker lines.

Reads a published report (``results.json`` of ``report_results.py``) and the campaign's
``status.txt`` (bench/campaign_status.py), and replaces what lies between
``<!-- chrX table: start -->`` and ``<!-- chrX table: end -->`` in the README with the summary
table and one line on how far the campaign is; the rest of the file is left as it is. Run by
``bash bench/campaign_chrX.sh publish``, so the README's numbers are the published ones.

    python bench/campaign_readme.py README.md docs/benchmark_chrX
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from quixer.common import UserError, atomic_path, run_cli
from quixer.report_markdown import summary_table

START = "<!-- chrX table: start -->"
END = "<!-- chrX table: end -->"


def campaign_block(published: Path) -> str:
    """The table and, from status.txt's last line, how many runs have finished and what they cost."""
    rows = json.loads((published / "results.json").read_text())["rows"]
    status = (published / "status.txt").read_text().strip().splitlines() if (published / "status.txt").is_file() else []
    progress = f"\nCampaign status at this publish: {status[-1]}.\n" if status else ""
    return summary_table(rows) + progress


def replace_block(text: str, block: str, where: str) -> str:
    """``text`` with the lines between the markers replaced by ``block``; one line of error unless
    both markers occur exactly once, in order."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise UserError(f"{where}: needs one line {START!r} and, after it, one line {END!r}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}{END}{tail}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("readme", type=Path, help="the Markdown file holding the two marker lines")
    parser.add_argument("published", type=Path, help="the published report folder (results.json, status.txt)")
    args = parser.parse_args(argv)
    if not (args.published / "results.json").is_file():
        raise UserError(f"{args.published}: no results.json (run bench/campaign_chrX.sh publish)")
    text = replace_block(args.readme.read_text(), campaign_block(args.published), str(args.readme))
    with atomic_path(args.readme) as tmp:
        Path(tmp).write_text(text)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
