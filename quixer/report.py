"""The results report (report_results.py): ``results.json``, ``results.md`` and three plots.

The rows and their intervals come from :mod:`quixer.report_rows`, the Markdown from
:mod:`quixer.report_markdown`, the plots from :mod:`quixer.report_plots`; a Quixer run with a
hardware estimate gets a line from :mod:`quixer.hardware`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .common import UserError, atomic_write_json, atomic_write_text
from .provenance import now, provenance
from .report_markdown import markdown_report
from .report_plots import write_plots
from .report_rows import PLOTS, Entry, collect_rows

log = logging.getLogger(__name__)


def write_report(runs_dir: str | os.PathLike | None, output_dir: str | os.PathLike | None = None,
                 title: str | None = None, raw_runs: str | os.PathLike | None = None,
                 command: list[str] | None = None) -> dict[str, Any]:
    """Write ``results.json`` (rows, diverged runs, track differences, provenance), ``results.md``
    and the three PNGs; return the rows, the markdown and the paths."""
    started = now()
    if runs_dir is None and raw_runs is None:
        raise UserError("nothing to report: give RUNS_DIR, --raw_runs or both")
    output_dir = Path(output_dir) if output_dir is not None else Path(runs_dir if runs_dir is not None else raw_runs)
    report = collect_rows(runs_dir, raw_runs, skip=[output_dir])
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = markdown_report(report, title, _hardware_links(report.entries, output_dir))
    write_plots(report, output_dir, title)
    atomic_write_text(output_dir / "results.md", markdown)
    atomic_write_json(output_dir / "results.json", {
        "rows": report.rows, "diverged": report.diverged, "tokenisation_differences": report.tokenisation,
        "provenance": provenance(started, command=command)})
    log.info("report of %d rows (%d runs) written to %s", len(report.rows),
             sum(len(e.run_dirs) for e in report.entries), output_dir)
    return {"rows": report.rows, "diverged": report.diverged, "tokenisation_differences": report.tokenisation,
            "markdown": markdown,
            "paths": [output_dir / "results.json", output_dir / "results.md", *(output_dir / p for p in PLOTS)]}


def _hardware_links(entries: list[Entry], output_dir: Path) -> list[str]:
    """One line per Quixer run with a hardware estimate (``estimate_quixer_hardware.py``)."""
    runs = [d for e in entries if e.model == "quixer" for d in e.run_dirs if (d / "hardware.json").is_file()]
    if not runs:
        return []
    from .hardware import hardware_summary_markdown  # the pytket / torch side only when a run has an estimate

    return [line for d in runs if (line := hardware_summary_markdown(d, link_base=output_dir))]
