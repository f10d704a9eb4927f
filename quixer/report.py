"""The results table and plots over a directory of runs, with intervals over groups and seeds.

``RUNS_DIR/<name>/`` is one row: either a run directory itself (``results.json``, written by
the trainers or by :mod:`quixer.reference`) or a directory of runs of one model with different
seeds (``RUNS_DIR/<name>/<seed run>/results.json``, as ``run_pipeline.sh --seeds N`` writes).
A row reports the mean over its seeds of the test metrics, on every scored target and on the
novel-context ones, 95 % intervals from :mod:`quixer.intervals` (a bootstrap over test gene
groups plus the variance between seeds), the parameter count by component, why each run stopped, and,
against Quixer, the paired difference on the very same targets. Every number sits beside the
uniform / unigram / n-gram references: on a task this close to next-base prediction nothing
means anything without them. And against the task's ceiling (:mod:`quixer.ceilings`): each row's
share of the achievable gain, (model - unigram) / (token_ceiling - unigram) in top-1 and in loss,
where 1 is the best any model of the tokens can do.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .common import UserError, atomic_path, atomic_write_json, atomic_write_text, read_json
from .intervals import Estimate, GroupBootstrap, perplexity_interval
from .reference import REFERENCE_MODELS, format_discounts
from .scoring import TargetScores, perplexity

log = logging.getLogger(__name__)

PLOTS = ("learning_curves.png", "test_accuracy.png", "test_perplexity.png")
MEAN_KEYS = ("test_top1", "test_top5", "test_perplexity", "test_loss", "novel_test_top1", "novel_test_top5",
             "novel_test_perplexity", "novel_test_loss", "novel_fraction", "postselection", "train_seconds",
             "train_sequences_per_second", "eval_sequences_per_second")
DPI = 120
_REF_STYLE = {  # reference level lines: colour, label
    "uniform": ("#7f7f7f", "uniform"),
    "unigram": ("#8c564b", "unigram"),
    "ngram": ("#2ca02c", "n-gram"),
    "token_ceiling": ("#d62728", "token ceiling"),
    "raw_bases": ("#e377c2", "raw bases"),
}
GAIN_SHARE_FROM, GAIN_SHARE_TO = "unigram", "token_ceiling"  # the ends of the achievable gain
METHOD_NOTE = (
    "Every model is scored on the same test targets: every position of the test transcripts with a full "
    "window of context, or a fixed sample of them. Novel: the targets whose context (its last 32 bases) "
    "occurs in no train transcript. Values are means over seeds; [95 % intervals] add the variance over test "
    "gene groups (a bootstrap of transcripts sharing sequence) to the variance between seeds (t quantile; with "
    "one seed, groups only); the differences against Quixer are paired (the same groups in every replicate). "
    "Top-k counts ties as expected accuracy under random tie-breaking; perplexity = exp(mean cross-entropy in "
    "nats, over seeds too); parameters are trainable real numbers (a complex one counts twice), references count "
    "stored table entries. Share of the achievable gain: "
    "(model - unigram) / (token ceiling - unigram), in top-1 and in loss: 0 is the unigram, 1 the best any "
    "model of the input tokens can do (the token ceiling)."
)


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


@dataclass
class Entry:
    """One row's runs: a model under ``RUNS_DIR/<name>``, one run per seed."""

    name: str
    run_dirs: list[Path]
    results: list[dict] = field(default_factory=list)

    @property
    def model(self) -> str:
        return str(self.results[0].get("model") or self.name)

    @property
    def is_reference(self) -> bool:
        return self.model in REFERENCE_MODELS

    def scores(self) -> list[TargetScores] | None:
        """The per-target test scores of every seed, or None if a run has none (older runs)."""
        paths = [d / "test_scores.npz" for d in self.run_dirs]
        return [TargetScores.load(p) for p in paths] if all(p.is_file() for p in paths) else None


def _read_results(run_dir: Path) -> dict:
    results = read_json(run_dir / "results.json")
    if not isinstance(results, dict):
        raise UserError(f"{run_dir / 'results.json'}: expected a JSON object")
    return results


def find_entries(runs_dir: str | os.PathLike) -> list[Entry]:
    """Rows under ``runs_dir``: run directories, and directories of seed runs; others are skipped
    with a warning."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir}: runs directory not found")
    entries = []
    for sub in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        runs = [sub] if (sub / "results.json").is_file() else sorted(
            d for d in sub.iterdir() if d.is_dir() and (d / "results.json").is_file())
        if not runs:
            log.warning("%s: no results.json (unfinished or not a run), skipped", sub)
            continue
        entries.append(Entry(sub.name, runs, [_read_results(d) for d in runs]))
    if not entries:
        raise UserError(f"{runs_dir}: no <run>/results.json found (train a model or run the references first)")
    return entries


# ----------------------------------------------------------------------------------------------
# Rows


def _data_of(entry: Entry) -> str | None:
    first = entry.results[0]
    data = first.get("data_dir") or first.get("data")
    if data is None and (entry.run_dirs[0] / "config.json").is_file():
        config = read_json(entry.run_dirs[0] / "config.json")
        data = config.get("data_dir", config.get("data")) if isinstance(config, dict) else None
    return None if data is None else str(data)


def _mean(entry: Entry, key: str) -> float | None:
    values = [_finite(r.get(key)) for r in entry.results]
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def _base_row(entry: Entry) -> dict[str, Any]:
    first = entry.results[0]
    seeds = [r.get("seed") for r in entry.results if r.get("seed") is not None]
    row: dict[str, Any] = {"model": entry.model, "run": entry.name, "data": _data_of(entry), "seeds": seeds,
                           "parameters": first.get("parameters"), "parameter_breakdown": first.get("parameter_breakdown")}
    for key in MEAN_KEYS:
        value = _mean(entry, key)
        if value is not None:
            row[key] = value
    for split in ("test", "novel_test"):  # exp of the seed-mean loss, as its interval is, not a mean of exps
        if f"{split}_loss" in row:
            row[f"{split}_perplexity"] = perplexity(row[f"{split}_loss"])
    for key in ("test_targets", "targets_sha256", "order", "discounts", "k", "anatomy"):
        if key in first:
            row[key] = first[key]
    if not entry.is_reference:
        row["epochs_run"] = [r.get("epochs_run") for r in entry.results]
        row["stop_reasons"] = [r.get("stop_reason") for r in entry.results]
        row["converged"] = all(r.get("converged") for r in entry.results)
    return {k: v for k, v in row.items() if v is not None}


def _add_intervals(rows: list[dict], entries: list[Entry]) -> None:
    """95 % intervals per row (groups and seeds), and Quixer's paired differences against every other row."""
    scored = {e.name: e.scores() for e in entries}
    quixer = next((e for e in entries if e.model == "quixer" and scored[e.name]), None)
    boots: dict[str, GroupBootstrap] = {}
    estimates: dict[str, dict[str, Estimate]] = {}
    for row, entry in zip(rows, entries):
        runs = scored[entry.name]
        if not runs:
            continue
        key = runs[0].key
        if key not in boots:
            boots[key] = GroupBootstrap(runs[0].groups, len(runs[0]))
        boot = boots[key]
        top1, loss = boot.estimate(runs, "top1"), boot.estimate(runs, "nll")
        estimates[entry.name] = {"top1": top1, "perplexity": loss.exp()}
        row["test_top1_ci95"] = top1.interval(0.0, 1.0)
        row["test_perplexity_ci95"] = perplexity_interval(loss)
        if runs[0].novel is not None and runs[0].novel.any():
            row["novel_test_top1_ci95"] = boot.estimate(runs, "top1", runs[0].novel).interval(0.0, 1.0)
    if quixer is None:
        return
    q_key = scored[quixer.name][0].key
    for row, entry in zip(rows, entries):
        if entry is quixer or entry.name not in estimates or scored[entry.name][0].key != q_key:
            continue
        for metric in ("top1", "perplexity"):
            diff = estimates[quixer.name][metric] - estimates[entry.name][metric]
            q, m = row_metric(rows, quixer.name, metric), row.get(f"test_{metric}")
            row[f"quixer_{metric}_difference"] = {"mean": q - m if q is not None and m is not None else None,
                                                  "ci95": diff.interval()}


def row_metric(rows: list[dict], run: str, metric: str) -> float | None:
    return next((r.get(f"test_{metric}") for r in rows if r["run"] == run), None)


def sort_key(row: dict[str, Any]) -> tuple:
    """Per data set: the references (uniform, unigram, n-gram, the ceilings) first, then models by test top-1."""
    top1 = _finite(row.get("test_top1"))
    ref = REFERENCE_MODELS.index(row["model"]) if row["model"] in REFERENCE_MODELS else len(REFERENCE_MODELS)
    return (str(row.get("data", "")), ref, -(top1 if top1 is not None else -1.0), row["run"])


def _same_targets(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Scored on the same targets: equal target hashes, or for older runs without them the same data."""
    if a.get("targets_sha256") and b.get("targets_sha256"):
        return a["targets_sha256"] == b["targets_sha256"]
    return a.get("data") == b.get("data")


def add_gain_shares(rows: list[dict[str, Any]]) -> None:
    """``gain_share_top1`` / ``gain_share_loss`` of every row but the two ends: (row - unigram) /
    (token_ceiling - unigram), both references scored on the row's targets; None without them."""
    for row in rows:
        if row["model"] in (GAIN_SHARE_FROM, GAIN_SHARE_TO):
            continue
        ends = [next((r for r in rows if r["model"] == m and _same_targets(r, row)), None)
                for m in (GAIN_SHARE_FROM, GAIN_SHARE_TO)]
        for metric in ("top1", "loss"):
            values = [_finite(r.get(f"test_{metric}")) if r else None for r in (row, *ends)]
            ok = None not in values and values[2] != values[1]
            row[f"gain_share_{metric}"] = (values[0] - values[1]) / (values[2] - values[1]) if ok else None


def collect_rows(runs_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], list[Entry]]:
    pairs = sorted(((_base_row(e), e) for e in find_entries(runs_dir)), key=lambda pair: sort_key(pair[0]))
    rows, entries = [row for row, _ in pairs], [entry for _, entry in pairs]
    _add_intervals(rows, entries)
    add_gain_shares(rows)
    return rows, entries


def is_reference(row: dict[str, Any]) -> bool:
    return row.get("model") in REFERENCE_MODELS


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


def _ci(ci: Any, scale: float = 100.0, digits: int = 2) -> str:
    if not isinstance(ci, list) or len(ci) != 2 or any(_finite(v) is None for v in ci):
        return ""
    return f" [{scale * ci[0]:.{digits}f}, {scale * ci[1]:.{digits}f}]"


def _stopped(row: dict[str, Any]) -> str:
    reasons = row.get("stop_reasons")
    if not reasons:
        return "–"
    early = sum(1 for r in reasons if r == "early_stop")
    epochs = "/".join(str(e) for e in row.get("epochs_run", []))
    return f"{early}/{len(reasons)} early ({epochs} ep.)"


def _table(header: list[str], align: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"] + \
        ["| " + " | ".join(cells) + " |" for cells in lines]


def _main_table(rows: list[dict[str, Any]]) -> list[str]:
    show_data = len({r.get("data") for r in rows}) > 1
    show_post = any("postselection" in r for r in rows)
    header = ["Model", "Run"] + (["Data"] if show_data else []) + [
        "Seeds", "Test top-1 [95 % CI]", "Test top-5", "Test perplexity [95 % CI]", "Novel top-1", "Novel top-5",
        "Novel perplexity", "Novel share", "Stopped"] + (["Postselection"] if show_post else [])
    lines = []
    for r in rows:
        cells = [r["model"] + (" (reference)" if is_reference(r) else ""), r["run"]]
        if show_data:
            cells.append(Path(r["data"]).name if r.get("data") else "–")
        cells += [str(len(r.get("seeds", []))) if r.get("seeds") else "–",
                  _pct(r.get("test_top1")) + _ci(r.get("test_top1_ci95")), _pct(r.get("test_top5")),
                  _num(r.get("test_perplexity")) + _ci(r.get("test_perplexity_ci95"), 1.0),
                  _pct(r.get("novel_test_top1")), _pct(r.get("novel_test_top5")), _num(r.get("novel_test_perplexity")),
                  _pct(r.get("novel_fraction")), _stopped(r)]
        if show_post:
            cells.append(_pct(r.get("postselection")))
        lines.append(cells)
    return _table(header, ["---"] * (2 + show_data) + ["---:"] * (len(header) - 2 - show_data), lines)


def _paired_table(rows: list[dict[str, Any]]) -> list[str]:
    paired = [r for r in rows if "quixer_top1_difference" in r]
    if not paired:
        return []
    lines = []
    for r in paired:
        d1, dp = r["quixer_top1_difference"], r["quixer_perplexity_difference"]
        lines.append([r["model"], r["run"], _num(None if d1["mean"] is None else 100 * d1["mean"]) + _ci(d1["ci95"]),
                      _num(dp["mean"]) + _ci(dp["ci95"], 1.0)])
    return ["", "Quixer minus each model, paired on the same targets (top-1 in points; a negative perplexity "
            "difference favours Quixer):", ""] + _table(
        ["Model", "Run", "Δ top-1 [95 % CI]", "Δ perplexity [95 % CI]"], ["---", "---", "---:", "---:"], lines)


def _anatomy_line(row: dict[str, Any]) -> str:
    """The task's anatomy a ceiling reference measured, in one sentence ("" where it has none)."""
    a, k = row.get("anatomy") or {}, row.get("k")
    if not a:
        return ""
    return (f" For {_pct(a.get('candidate_tokens_fewer_than_4'))} of its targets the 4 possible next k-mers fall into "
            f"fewer than 4 tokens; the input tokens pin down the last {'k-1' if k is None else k - 1} bases for "
            f"{_pct(a.get('last_bases_pinned'))}.")


def _ngram_lines(rows: list[dict[str, Any]]) -> list[str]:
    """What each n-gram reference chose on validation (its order and discounts), one sentence each."""
    lines = [f"The n-gram ({r['run']}): interpolated modified Kneser-Ney of order {r['order']}; the order and the "
             f"discounts (D1, D2, D3+ per level, lowest first) chosen on validation: {format_discounts(r['discounts'])}."
             for r in rows if r["model"] == "ngram" and "order" in r and r.get("discounts")]
    return [""] + lines if lines else []


def _ceiling_table(rows: list[dict[str, Any]]) -> list[str]:
    """The ceiling references in words, then every row's share of the achievable gain."""
    lines = [""]
    for r in rows:
        if r["model"] == GAIN_SHARE_TO:
            lines.append(f"The task's ceiling ({r['run']}): the best any model of the input tokens can do (exact "
                         f"inference under a base-level prior of order {r.get('order', '?')}) is "
                         f"{_pct(r.get('test_top1'))} top-1, perplexity {_num(r.get('test_perplexity'))}." +
                         _anatomy_line(r))
        elif r["model"] == "raw_bases":
            lines.append(f"A next-base model that reads the raw bases ({r['run']}, order {r.get('order', '?')}) "
                         f"reaches {_pct(r.get('test_top1'))} top-1, perplexity {_num(r.get('test_perplexity'))}: "
                         "it sees more than the tokens say.")
    shared = [r for r in rows if r.get("gain_share_top1") is not None or r.get("gain_share_loss") is not None]
    if not shared:
        return lines if len(lines) > 1 else []
    table = [[r["model"], r["run"], _num(None if r.get("gain_share_top1") is None else 100 * r["gain_share_top1"], 1),
              _num(None if r.get("gain_share_loss") is None else 100 * r["gain_share_loss"], 1)] for r in shared]
    intro = "Share of the achievable gain, (model − unigram) / (token ceiling − unigram), in %:"
    return lines + ["", intro, ""] + _table(["Model", "Run", "top-1", "loss"], ["---", "---", "---:", "---:"], table)


def _cost_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        parts = r.get("parameter_breakdown") or {}
        lines.append([r["model"], r["run"], _count(r.get("parameters")),
                      ", ".join(f"{k} {v:,}" for k, v in parts.items()) or "–", _duration(r.get("train_seconds")),
                      _count(r.get("train_sequences_per_second")), _count(r.get("eval_sequences_per_second"))])
    return ["", "Parameters by component and cost (per seed; train seq/s: windows per second of optimisation, "
            "eval seq/s: scored targets per second):", ""] + _table(
        ["Model", "Run", "Parameters", "Components", "Train time", "Train seq/s", "Eval seq/s"],
        ["---", "---", "---:", "---", "---:", "---:", "---:"], lines)


def markdown_table(rows: list[dict[str, Any]], title: str | None = None, links: list[str] | None = None) -> str:
    """The rows as Markdown: the results with intervals, the ceiling and each row's share of the
    achievable gain, the paired differences, the costs."""
    lines = [f"## {title}", ""] if title else []
    lines += _main_table(rows) + _ngram_lines(rows) + _ceiling_table(rows) + _paired_table(rows) + _cost_table(rows) + ["", METHOD_NOTE]
    if links:
        lines += [""] + links
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


def plot_learning_curves(curves: list[tuple[str, list[list[dict[str, Any]]]]], refs: list[dict[str, Any]], path: Path,
                         title: str | None = None) -> None:
    """Train / val loss and val top-1 per epoch of every trained model (one line per seed, one
    colour per model), reference val levels as lines."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = False
    for i, (name, seeds) in enumerate(curves):
        colour = colours[i % len(colours)]
        for s, records in enumerate(seeds):
            for key, style, what in (("train_loss", "-", "train"), ("val_loss", "--", "val")):
                pts = [(r.get("epoch"), _finite(r.get(key))) for r in records]
                pts = [(e, v) for e, v in pts if _finite(e) is not None and v is not None]
                if pts:
                    ax_loss.plot(*zip(*pts), style, color=colour, marker="o", markersize=3,
                                 label=f"{name} ({what})" if s == 0 else None)
                    drawn = True
            pts = [(r.get("epoch"), _finite(r.get("val_top1"))) for r in records]
            pts = [(e, 100 * v) for e, v in pts if _finite(e) is not None and v is not None]
            if pts:
                ax_acc.plot(*zip(*pts), "-", color=colour, marker="o", markersize=3, label=name if s == 0 else None)
                drawn = True
    _reference_lines(ax_loss, refs, "val_loss", fmt="{:.3f}", linestyle=":", suffix=" val")
    _reference_lines(ax_acc, refs, "val_top1", 100, fmt="{:.1f} %", linestyle=":", suffix=" val")
    none = "" if drawn else "\n(no run has per-epoch metrics: only reference levels)"
    ax_loss.set(title="Loss per epoch (solid: train, dashed: val; one line per seed)" + none, xlabel="epoch",
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


def _errors(rows: list[dict[str, Any]], key: str, values: list[float | None], scale: float) -> np.ndarray:
    """[2, n] distances from each value to its interval ends (0 where there is no interval)."""
    out = np.zeros((2, len(rows)))
    for i, (r, v) in enumerate(zip(rows, values)):
        ci = r.get(key)
        if v is not None and isinstance(ci, list) and all(_finite(c) is not None for c in ci):
            out[:, i] = [max(v - scale * ci[0], 0.0), max(scale * ci[1] - v, 0.0)]
    return out


def _percent(rows: list[dict[str, Any]], key: str) -> list[float | None]:
    return [None if _finite(r.get(key)) is None else 100 * r[key] for r in rows]


def plot_test_accuracy(rows: list[dict[str, Any]], path: Path, title: str | None = None) -> None:
    """Top-1 (with its 95 % interval), novel-context top-1 and top-5 bars per model."""
    plt = _pyplot()
    bars_rows, refs = _bar_rows(rows)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(bars_rows) + 4), 5))
    x = np.arange(len(bars_rows))
    width = 0.27
    series = [("test_top1", "top-1 (95 % CI)", "#1f77b4", "test_top1_ci95"),
              ("novel_test_top1", "top-1, novel contexts", "#17becf", "novel_test_top1_ci95"),
              ("test_top5", "top-5", "#ff7f0e", None)]
    for i, (key, label, colour, ci_key) in enumerate(series):
        values = _percent(bars_rows, key)
        err = _errors(bars_rows, ci_key, values, 100) if ci_key else None
        bars = ax.bar(x + (i - 1) * width, [v or 0 for v in values], width, yerr=err, capsize=3, label=label,
                      color=colour, zorder=2)
        _annotate(ax, bars, values, "{:.1f}")
    _reference_lines(ax, refs, "test_top1", 100, fmt="{:.1f} %", suffix=" top-1")
    _reference_lines(ax, refs, "test_top5", 100, fmt="{:.1f} %", linestyle="--", suffix=" top-5")
    ax.set_xticks(x, _labels(bars_rows))
    ax.set_xlim(-0.9, len(bars_rows) - 0.1)
    ax.set_ylim(0, 105)
    ax.set(ylabel="test accuracy (%)", title="Test accuracy (bars: models, error bars: 95 % CI; lines: references)")
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
    bars = ax.bar(x, [v or float("nan") for v in values], 0.6, color="#9467bd", label="test perplexity (95 % CI)",
                  yerr=_errors(bars_rows, "test_perplexity_ci95", values, 1.0), capsize=3, zorder=2)
    _annotate(ax, bars, values, "{:.2f}")
    _reference_lines(ax, refs, "test_perplexity", fmt="{:.2f}")
    ax.set_yscale("log")
    levels = [v for v in values if v] + [v for v in (_finite(r.get("test_perplexity")) for r in refs) if v and v > 0]
    if levels:
        ax.set_ylim(min(levels) / 1.6, max(levels) * 1.8)
    ax.set_xticks(x, _labels(bars_rows))
    ax.set_xlim(-0.9, len(bars_rows) - 0.1)
    ax.set(ylabel="test perplexity (log scale, lower is better)",
           title="Test perplexity (bars: models, error bars: 95 % CI; lines: references)")
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
    rows, entries = collect_rows(runs_dir)
    curves = [(label.replace("\n", " / "), [load_metrics(d) for d in e.run_dirs])
              for e, r, label in zip(entries, rows, _labels(rows)) if not e.is_reference]
    curves = [(label, seeds) for label, seeds in curves if any(seeds)]
    ref_lines = [{**r, "val_loss": _mean(e, "val_loss"), "val_top1": _mean(e, "val_top1")}
                 for e, r in zip(entries, rows) if e.is_reference]

    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = markdown_table(rows, title, _hardware_links(entries, output_dir))
    atomic_write_json(output_dir / "results.json", rows)
    atomic_write_text(output_dir / "results.md", markdown)
    plot_learning_curves(curves, ref_lines, output_dir / "learning_curves.png", title)
    plot_test_accuracy(rows, output_dir / "test_accuracy.png", title)
    plot_test_perplexity(rows, output_dir / "test_perplexity.png", title)
    log.info("report of %d rows (%d runs) written to %s", len(rows), sum(len(e.run_dirs) for e in entries), output_dir)
    return {
        "rows": rows,
        "markdown": markdown,
        "paths": [output_dir / "results.json", output_dir / "results.md", *(output_dir / p for p in PLOTS)],
    }


def _hardware_links(entries: list[Entry], output_dir: Path) -> list[str]:
    """One line per Quixer run with a hardware estimate (``estimate_quixer_hardware.py``)."""
    runs = [d for e in entries if e.model == "quixer" for d in e.run_dirs if (d / "hardware.json").is_file()]
    if not runs:
        return []
    from .hardware import hardware_summary_markdown

    return [line for d in runs if (line := hardware_summary_markdown(d, link_base=output_dir))]
