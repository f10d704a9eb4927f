"""The results table and plots over a directory of runs (``runs/<name>/results.json``).

Every run directory written by the trainers or by :mod:`quixer.reference` holds a
``results.json`` (test metrics) and, for trained models, ``metrics.jsonl`` (one JSON object per
epoch). :func:`write_report` gathers them into one table (``results.json``, ``results.md``) and
three PNGs that put every model beside the uniform / unigram / n-gram references: without those
levels no number means anything on a task this close to next-base prediction.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from .common import UserError, atomic_path, atomic_write_json, atomic_write_text, read_json
from .reference import REFERENCE_MODELS

log = logging.getLogger(__name__)

ROW_KEYS = (
    "model", "run", "data", "parameters", "test_top1", "test_top5", "test_perplexity", "test_loss",
    "train_seconds", "sequences_per_second", "postselection",
)
PLOTS = ("learning_curves.png", "test_accuracy.png", "test_perplexity.png")
DPI = 120
_REF_STYLE = {  # reference level lines: colour, label
    "uniform": ("#7f7f7f", "uniform"),
    "unigram": ("#8c564b", "unigram"),
    "ngram": ("#2ca02c", "n-gram"),
}


# ----------------------------------------------------------------------------------------------
# Reading runs


def _finite(value: Any) -> float | None:
    """A number that can be plotted, or None (missing, null, NaN, inf, not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def load_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Per-epoch records of ``run_dir/metrics.jsonl`` ([] if absent); bad lines are skipped with a
    warning (a run still writing may leave a partial last line)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: not valid JSON, line skipped", path, lineno)
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def load_row(run_dir: str | os.PathLike) -> dict[str, Any]:
    """One table row from ``run_dir/results.json`` (plus ``data`` from its ``config.json``)."""
    run_dir = Path(run_dir)
    results = read_json(run_dir / "results.json")
    if not isinstance(results, dict):
        raise UserError(f"{run_dir / 'results.json'}: expected a JSON object")
    row: dict[str, Any] = {key: results.get(key) for key in ROW_KEYS if key in results}
    row["run"] = run_dir.name
    row["model"] = str(results.get("model") or run_dir.name)
    config_path = run_dir / "config.json"
    if "data" not in row and config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            config = {}
        data = config.get("data", config.get("data_dir")) if isinstance(config, dict) else None
        if data is not None:
            row["data"] = str(data)
    return {key: row[key] for key in ROW_KEYS if key in row}


def find_run_dirs(runs_dir: str | os.PathLike) -> list[Path]:
    """Subdirectories of ``runs_dir`` with a ``results.json``; others are skipped with a warning."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir}: runs directory not found")
    found = []
    for sub in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (sub / "results.json").is_file():
            found.append(sub)
        else:
            log.warning("%s: no results.json (unfinished or not a run), skipped", sub)
    if not found:
        raise UserError(f"{runs_dir}: no <run>/results.json found (train a model or run the references first)")
    return found


def is_reference(row: dict[str, Any]) -> bool:
    return row.get("model") in REFERENCE_MODELS


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group by data set; in each, the references (uniform, unigram, n-gram) first, then the
    trained models by test top-1, best first."""

    def key(row: dict[str, Any]) -> tuple:
        top1 = _finite(row.get("test_top1"))
        ref = REFERENCE_MODELS.index(row["model"]) if is_reference(row) else len(REFERENCE_MODELS)
        return (str(row.get("data", "")), ref, -(top1 if top1 is not None else -1.0), row["run"])

    return sorted(rows, key=key)


def collect_rows(runs_dir: str | os.PathLike) -> list[dict[str, Any]]:
    return sort_rows([load_row(d) for d in find_run_dirs(runs_dir)])


# ----------------------------------------------------------------------------------------------
# Markdown


def _pct(value: Any) -> str:
    v = _finite(value)
    return "–" if v is None else f"{100 * v:.2f} %"


def _num(value: Any, digits: int = 2) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isinf(value):
        return "∞"
    v = _finite(value)
    return "–" if v is None else f"{v:,.{digits}f}"


def _count(value: Any) -> str:
    v = _finite(value)
    return "–" if v is None else f"{int(round(v)):,}"


def _duration(value: Any) -> str:
    v = _finite(value)
    if v is None:
        return "–"
    if v < 120:
        return f"{v:.2f} s"
    if v < 7200:
        return f"{v / 60:.1f} min"
    return f"{v / 3600:.2f} h"


def markdown_table(rows: list[dict[str, Any]], title: str | None = None) -> str:
    """The rows as a Markdown table (accuracies in %, 2 decimals)."""
    show_data = len({r.get("data") for r in rows}) > 1
    show_post = any("postselection" in r for r in rows)
    header = ["Model", "Run"] + (["Data"] if show_data else []) + [
        "Parameters", "Test top-1", "Test top-5", "Test perplexity", "Test loss (nats)", "Train time", "Seq/s",
    ] + (["Postselection"] if show_post else [])
    align = ["---", "---"] + (["---"] if show_data else []) + ["---:"] * 7 + (["---:"] if show_post else [])
    lines = []
    if title:
        lines += [f"## {title}", ""]
    lines += ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    for r in rows:
        model = r["model"] + (" (reference)" if is_reference(r) else "")
        cells = [model, r["run"]]
        if show_data:
            cells.append(Path(r["data"]).name if r.get("data") else "–")
        cells += [
            _count(r.get("parameters")), _pct(r.get("test_top1")), _pct(r.get("test_top5")),
            _num(r.get("test_perplexity")), _num(r.get("test_loss"), 4), _duration(r.get("train_seconds")),
            _count(r.get("sequences_per_second")),
        ]
        if show_post:
            cells.append(_pct(r.get("postselection")))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Scored on the last token of each test window (input: the window's other tokens). "
        "Perplexity = exp(mean cross-entropy in nats). Reference parameters count stored table entries. "
        "Seq/s: training throughput (windows per second of optimisation) for trained models, "
        "scoring throughput for the references.",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    _pyplot().close(fig)


def _labels(rows: list[dict[str, Any]]) -> list[str]:
    """Short unique labels: the model name, or ``model / run`` where the model appears twice."""
    models = [r["model"] for r in rows]
    return [r["model"] if models.count(r["model"]) == 1 or r["run"] == r["model"] else f"{r['model']}\n{r['run']}"
            for r in rows]


def _reference_lines(ax, refs: list[dict[str, Any]], key: str, scale: float = 1.0, *, fmt: str, linestyle: str = "-",
                     suffix: str = "") -> None:
    multi = len({r["model"] for r in refs}) != len(refs)
    for r in refs:
        v = _finite(r.get(key))
        if v is None:
            continue
        colour, name = _REF_STYLE.get(r["model"], ("#444444", r["model"]))
        label = f"{name}{' (' + r['run'] + ')' if multi else ''}{suffix}: {fmt.format(v * scale)}"
        ax.axhline(v * scale, color=colour, linestyle=linestyle, linewidth=1.4, label=label, zorder=3)


def plot_learning_curves(curves: list[tuple[str, list[dict[str, Any]]]], refs: list[dict[str, Any]], path: Path,
                         title: str | None = None) -> None:
    """Train / val loss and val top-1 per epoch of every trained run, reference val levels as lines."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = False
    for i, (name, records) in enumerate(curves):
        colour = colours[i % len(colours)]
        for key, style, what in (("train_loss", "-", "train"), ("val_loss", "--", "val")):
            pts = [(r.get("epoch"), _finite(r.get(key))) for r in records]
            pts = [(e, v) for e, v in pts if _finite(e) is not None and v is not None]
            if pts:
                ax_loss.plot(*zip(*pts), style, color=colour, marker="o", markersize=3, label=f"{name} ({what})")
                drawn = True
        pts = [(r.get("epoch"), _finite(r.get("val_top1"))) for r in records]
        pts = [(e, 100 * v) for e, v in pts if _finite(e) is not None and v is not None]
        if pts:
            ax_acc.plot(*zip(*pts), "-", color=colour, marker="o", markersize=3, label=name)
            drawn = True
    _reference_lines(ax_loss, refs, "val_loss", fmt="{:.3f}", linestyle=":", suffix=" val")
    _reference_lines(ax_acc, refs, "val_top1", 100, fmt="{:.1f} %", linestyle=":", suffix=" val")
    none = "" if drawn else "\n(no run has per-epoch metrics: only reference levels)"
    ax_loss.set(title="Loss per epoch (solid: train, dashed: val)" + none, xlabel="epoch",
                ylabel="cross-entropy (nats)")
    ax_acc.set(title="Validation top-1 accuracy per epoch" + none, xlabel="epoch", ylabel="val top-1 (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    _save(fig, path)


def _bar_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows drawn as bars, reference rows drawn as lines); references become bars when alone."""
    refs = [r for r in rows if is_reference(r)]
    models = [r for r in rows if not is_reference(r)]
    return (models or refs), refs


def _annotate(ax, bars, values: list[float | None], fmt: str) -> None:
    for bar, v in zip(bars, values):
        if v is not None:
            ax.annotate(fmt.format(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize=8)


def plot_test_accuracy(rows: list[dict[str, Any]], path: Path, title: str | None = None) -> None:
    plt = _pyplot()
    bars_rows, refs = _bar_rows(rows)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(bars_rows) + 4), 5))
    x = list(range(len(bars_rows)))
    width = 0.38
    top1 = [None if _finite(r.get("test_top1")) is None else 100 * r["test_top1"] for r in bars_rows]
    top5 = [None if _finite(r.get("test_top5")) is None else 100 * r["test_top5"] for r in bars_rows]
    b1 = ax.bar([i - width / 2 for i in x], [v or 0 for v in top1], width, label="top-1", color="#1f77b4", zorder=2)
    b5 = ax.bar([i + width / 2 for i in x], [v or 0 for v in top5], width, label="top-5", color="#ff7f0e", zorder=2)
    _annotate(ax, b1, top1, "{:.1f}")
    _annotate(ax, b5, top5, "{:.1f}")
    _reference_lines(ax, refs, "test_top1", 100, fmt="{:.1f} %", suffix=" top-1")
    _reference_lines(ax, refs, "test_top5", 100, fmt="{:.1f} %", linestyle="--", suffix=" top-5")
    ax.set_xticks(x, _labels(bars_rows))
    ax.set_xlim(-0.9, len(bars_rows) - 0.1)
    ax.set_ylim(0, 105)
    ax.set(ylabel="test accuracy (%)", title="Test accuracy (bars: models; lines: reference levels)")
    if title:
        fig.suptitle(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, path)


def plot_test_perplexity(rows: list[dict[str, Any]], path: Path, title: str | None = None) -> None:
    plt = _pyplot()
    bars_rows, refs = _bar_rows(rows)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.0 * len(bars_rows) + 4), 5))
    x = list(range(len(bars_rows)))
    values = [_finite(r.get("test_perplexity")) for r in bars_rows]
    values = [v if v is not None and v > 0 else None for v in values]
    bars = ax.bar(x, [v or float("nan") for v in values], 0.6, color="#9467bd", label="test perplexity", zorder=2)
    _annotate(ax, bars, values, "{:.2f}")
    _reference_lines(ax, refs, "test_perplexity", fmt="{:.2f}")
    ax.set_yscale("log")
    levels = [v for v in values if v] + [v for v in (_finite(r.get("test_perplexity")) for r in refs) if v and v > 0]
    if levels:
        ax.set_ylim(min(levels) / 1.6, max(levels) * 1.8)
    ax.set_xticks(x, _labels(bars_rows))
    ax.set_xlim(-0.9, len(bars_rows) - 0.1)
    ax.set(ylabel="test perplexity (log scale, lower is better)",
           title="Test perplexity (bars: models; lines: reference levels)")
    if title:
        fig.suptitle(title)
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, path)


# ----------------------------------------------------------------------------------------------


def write_report(runs_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None,
                 title: str | None = None) -> dict[str, Any]:
    """Write ``results.json``, ``results.md`` and the three PNGs; return the rows and paths."""
    runs_dir = Path(runs_dir)
    output_dir = Path(output_dir) if output_dir is not None else runs_dir
    run_dirs = find_run_dirs(runs_dir)
    rows = sort_rows([load_row(d) for d in run_dirs])
    by_run = {d.name: d for d in run_dirs}
    curves = [(label, load_metrics(by_run[r["run"]])) for r, label in zip(rows, _labels(rows))
              if not is_reference(r)]
    curves = [(label.replace("\n", " / "), recs) for label, recs in curves if recs]
    # the references' validation levels, drawn as lines beside the learning curves
    ref_lines = []
    for r in rows:
        if is_reference(r):
            results = read_json(by_run[r["run"]] / "results.json")
            ref_lines.append({**r, "val_loss": results.get("val_loss"), "val_top1": results.get("val_top1")})

    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = markdown_table(rows, title)
    atomic_write_json(output_dir / "results.json", rows)
    atomic_write_text(output_dir / "results.md", markdown)
    plot_learning_curves(curves, ref_lines, output_dir / "learning_curves.png", title)
    plot_test_accuracy(rows, output_dir / "test_accuracy.png", title)
    plot_test_perplexity(rows, output_dir / "test_perplexity.png", title)
    log.info("report of %d runs written to %s", len(rows), output_dir)
    return {
        "rows": rows,
        "markdown": markdown,
        "paths": [output_dir / "results.json", output_dir / "results.md", *(output_dir / p for p in PLOTS)],
    }
