"""The report's plots: learning curves, test top-1 and test perplexity, one panel per track.

One colour per model name, fixed here (a model absent from the table gets a colour from its
name's hash), so a model looks the same in every plot and every report; a second run of the same
model in a track, and the raw track, change the marker, never the hue. References are grey, each
with its own line style, and never take a model colour. Test metrics are points with their 95 %
interval bars (a forest plot: one row per model, the value and interval written beside its name),
learning curves the mean over seeds with a min–max band. A reference level far outside the
models' range is named in the legend with "off scale" instead of squashing the axis.
"""
from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from .common import atomic_path
from .report_rows import Report, _finite, _mean, is_reference, raw_tokens_name
from .run_dir import load_metrics

DPI = 120
MODEL_COLOURS = {
    "quixer": "#1f77b4", "quixer_ablation": "#ff7f0e", "quixer_ablation_matched": "#9467bd", "lstm": "#2ca02c",
    "transformer": "#d62728", "fnet": "#8c564b",
}
_OTHER_COLOURS = ("#17becf", "#bcbd22", "#e377c2", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")
REFERENCE_STYLES = {  # grey levels and line styles, one per reference (the two ceilings darkest)
    "uniform": {"color": "#b0b0b0", "linestyle": (0, (1, 2))},
    "unigram": {"color": "#8a8a8a", "linestyle": "-."},
    "ngram": {"color": "#5a5a5a", "linestyle": "--"},
    "token_ceiling": {"color": "#000000", "linestyle": "-"},
    "raw_bases": {"color": "#2b2b2b", "linestyle": (0, (6, 2, 1, 2, 1, 2))},
}
MARKERS = {"quantized": ("o", "D", "v", "P"), "raw": ("s", "X", "^", "*")}
BAND = "band: min–max over seeds"
INTERVAL = "95 % CI over test gene groups and seeds"
_RAW_SUFFIX = re.compile(r" \(raw [^)]*\)$")
_OFF_SCALE = 3.0  # a reference further than this factor outside the models' range is drawn in the legend only


def model_colour(model: str) -> str:
    """The model's fixed colour (stable across reports: a table, else a hash of the name)."""
    if model in MODEL_COLOURS:
        return MODEL_COLOURS[model]
    return _OTHER_COLOURS[int(hashlib.sha256(model.encode()).hexdigest()[:8], 16) % len(_OTHER_COLOURS)]


def reference_style(model: str) -> dict[str, Any]:
    return {"linewidth": 1.3, **REFERENCE_STYLES.get(model, {"color": "#707070", "linestyle": ":"})}


def row_styles(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Colour and marker of each row: its model's colour (grey for references), the track's marker,
    the next marker for a second run of the same model in the same track."""
    seen: dict[tuple[str, str], int] = {}
    styles = []
    for r in rows:
        track = r.get("track", "quantized")
        n = seen[(track, r["model"])] = seen.get((track, r["model"]), -1) + 1
        colour = reference_style(r["model"])["color"] if is_reference(r) else model_colour(r["model"])
        styles.append({"color": colour, "marker": MARKERS[track][n % len(MARKERS[track])]})
    return styles


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)


def _tracks(rows: list[dict[str, Any]]) -> list[str]:
    return [t for t in ("quantized", "raw") if any(r.get("track", "quantized") == t for r in rows)]


def _track_title(report: Report, track: str) -> str:
    if track == "quantized":
        return "quantised tokens"
    return raw_tokens_name([r for e in report.entries if e.track == "raw" for r in e.results])


def _reference_levels(ax, refs: list[dict[str, Any]], key: str, scale: float, fmt: str, limits: tuple[float, float],
                      vertical: bool, suffix: str = "") -> None:
    """A grey line per reference at its level; one outside ``limits`` only named in the legend."""
    for r in refs:
        v = _finite(r.get(key))
        if v is None:
            continue
        style = reference_style(r["model"])
        label = f"{_RAW_SUFFIX.sub('', r['run'])}{suffix}: {fmt.format(v * scale)}"
        slack = 1e-9 * max(abs(limits[0]), abs(limits[1]), 1.0)  # a perplexity of 1 may come out as 1 - 1e-16
        if limits[0] - slack <= v * scale <= limits[1] + slack:
            (ax.axvline if vertical else ax.axhline)(v * scale, label=label, zorder=1, **style)
        else:
            ax.plot([], [], label=label + " (off scale)", **style)


# ----------------------------------------------------------------------------------------------
# Test metrics: forest plots


def _interval(r: dict[str, Any], key: str, scale: float) -> tuple[float, float, float] | None:
    """(value, lower, upper) scaled; the value itself at both ends where there is no interval."""
    v = _finite(r.get(key))
    if v is None:
        return None
    ci = r.get(f"{key}_ci95")
    if isinstance(ci, list) and len(ci) == 2 and all(_finite(c) is not None for c in ci):
        return scale * v, scale * ci[0], scale * ci[1]
    return scale * v, scale * v, scale * v


def _value_text(r: dict[str, Any], key: str, iv: tuple[float, float, float], fmt: str) -> str:
    """``22.88 % [22.15, 23.69]``, or the value alone where the row has no interval (no scores)."""
    ends = "{:.2f}"
    has_ci = isinstance(r.get(f"{key}_ci95"), list)
    return fmt.format(iv[0]) + (f" [{ends.format(iv[1])}, {ends.format(iv[2])}]" if has_ci else ", no interval")


def _point(ax, y: float, iv: tuple[float, float, float], style: dict, hollow: bool = False) -> None:
    v, lo, hi = iv
    ax.errorbar([v], [y], xerr=[[v - lo], [hi - v]], fmt=style["marker"], color=style["color"], capsize=3,
                markersize=6 if not hollow else 5, markerfacecolor="white" if hollow else style["color"],
                elinewidth=1.4, zorder=3)


def _axis_limits(spans: list[float], refs: list[float], log: bool, floor: float | None, bounded: bool = False
                 ) -> tuple[float, float]:
    """The models' range with a margin, widened to the references within ``_OFF_SCALE`` of it; for a
    ``bounded`` metric (accuracy in %) to every reference above that band's lower end, so the
    ceilings stay in sight while the floors (uniform, unigram) may fall off the axis."""
    lo, hi = min(spans), max(spans)
    top = math.inf if bounded else hi * _OFF_SCALE
    near = [v for v in refs if lo / _OFF_SCALE <= v <= top] if lo > 0 else refs
    lo, hi = min([lo, *near]), max([hi, *near])
    if log:
        return lo / 1.15, hi * 1.15
    pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.1
    return (max(lo - pad, floor) if floor is not None else lo - pad), hi + pad


def _forest_panel(ax, rows: list[dict[str, Any]], styles: list[dict], spec: dict[str, Any], raw: bool) -> None:
    """One track: a row per model (value and interval beside its name), the references as lines."""
    models = [i for i, r in enumerate(rows) if not is_reference(r)]
    refs = [rows[i] for i in range(len(rows)) if is_reference(rows[i])] if models else []
    shown = models or list(range(len(rows)))
    key, scale, fmt = spec["key"], spec["scale"], spec["fmt"]
    labels, spans = [], []
    for y, i in zip(range(len(shown) - 1, -1, -1), shown):
        iv = _interval(rows[i], key, scale)
        name = _RAW_SUFFIX.sub("", rows[i]["run"]) if raw else rows[i]["run"]
        labels.append((y, name if iv is None else f"{name}\n{_value_text(rows[i], key, iv, fmt)}"))
        if iv is not None:
            _point(ax, y, iv, styles[i])
            spans += [iv[1], iv[2]]
        novel = _interval(rows[i], spec["novel"], scale) if spec.get("novel") else None
        if novel is not None:
            _point(ax, y - 0.3, novel, styles[i], hollow=True)
            spans += [novel[1], novel[2]]
    ax.set_yticks([y for y, _ in labels], [text for _, text in labels], fontsize=8)
    ax.set_ylim(-0.8, len(shown) - 0.4)
    ref_values = [scale * v for r in refs if (v := _finite(r.get(key))) is not None]
    log = spec.get("log_ratio") is not None and spans and min(spans) > 0 and max(spans) / min(spans) > spec["log_ratio"]
    limits = _axis_limits(spans or ref_values or [0.0, 1.0], ref_values, bool(log), spec.get("floor"),
                          spec.get("bounded", False))
    if log:
        ax.set_xscale("log")
    ax.set_xlim(*limits)
    _reference_levels(ax, refs, key, scale, fmt, limits, vertical=True)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(spec["xlabel"])


def _forest_figure(report: Report, spec: dict[str, Any], path: Path, title: str | None) -> None:
    """``spec`` per track panel, side by side; the legend names the references and the markers."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    tracks = _tracks(report.rows)
    per_track = [[r for r in report.rows if r.get("track", "quantized") == t] for t in tracks]
    shown = max(len([r for r in rows if not is_reference(r)]) or len(rows) for rows in per_track)
    height = max(4.0, 1.6 + 0.62 * shown)
    fig, axes = plt.subplots(1, len(tracks), figsize=(7.2 * len(tracks), height), squeeze=False)
    for ax, track, rows in zip(axes[0], tracks, per_track):
        _forest_panel(ax, rows, row_styles(rows), spec, raw=track == "raw")
        ax.set_title(_track_title(report, track), fontsize=10)
        handles, labels = ax.get_legend_handles_labels()
        if spec.get("novel"):
            handles += [Line2D([], [], marker="o", color="#444444", linestyle=""),
                        Line2D([], [], marker="o", color="#444444", markerfacecolor="white", linestyle="")]
            labels += ["top-1, all targets (95 % CI)", "top-1, novel contexts (95 % CI)"]
        if handles:
            ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle((f"{title}\n" if title else "") + spec["title"], fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def plot_test_accuracy(report: Report, path: Path, title: str | None = None) -> None:
    """Test top-1 with its 95 % interval (filled) and on novel contexts (hollow), per model and track."""
    _forest_figure(report, {
        "key": "test_top1", "novel": "novel_test_top1", "scale": 100.0, "fmt": "{:.2f} %", "floor": 0.0,
        "bounded": True, "xlabel": "test top-1 accuracy (%)",
        "title": f"Test top-1 (points: mean over seeds; bars: {INTERVAL}; grey lines: references)"}, path, title)


def plot_test_perplexity(report: Report, path: Path, title: str | None = None) -> None:
    """Test perplexity with its 95 % interval per model and track (log axis only for a wide range)."""
    _forest_figure(report, {
        "key": "test_perplexity", "scale": 1.0, "fmt": "{:.2f}", "floor": 1.0, "log_ratio": 20.0,
        "xlabel": "test perplexity (lower is better)",
        "title": f"Test perplexity (points: exp of the seed-mean loss; bars: {INTERVAL}; grey lines: references)"},
        path, title)


# ----------------------------------------------------------------------------------------------
# Learning curves: mean and band over seeds


def seed_band(seeds: list[list[dict[str, Any]]], key: str, scale: float = 1.0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean, min, max) of ``key`` over the seeds that ran each epoch (a seed's last record
    of an epoch counts, as a resumed run may repeat one)."""
    per_seed = []
    for records in seeds:
        values = {r["epoch"]: scale * v for r in records
                  if _finite(r.get("epoch")) is not None and (v := _finite(r.get(key))) is not None}
        per_seed.append(values)
    epochs = sorted({e for values in per_seed for e in values})
    stacks = [[values[e] for values in per_seed if e in values] for e in epochs]
    return (np.array(epochs, float), np.array([np.mean(s) for s in stacks]), np.array([min(s) for s in stacks]),
            np.array([max(s) for s in stacks]))


def _curve(ax, seeds, key: str, scale: float, style: dict, linestyle: str, label: str | None) -> list[float]:
    epochs, mean, lo, hi = seed_band(seeds, key, scale)
    if not len(epochs):
        return []
    ax.plot(epochs, mean, linestyle=linestyle, marker=style["marker"], markersize=3.5, color=style["color"],
            label=label, zorder=3)
    if len(seeds) > 1:
        ax.fill_between(epochs, lo, hi, color=style["color"], alpha=0.15, linewidth=0, zorder=2)
    return [float(lo.min()), float(hi.max())]


def _curve_panels(ax_loss, ax_acc, curves: list[tuple[dict, list]], refs: list[dict], styles: list[dict]) -> bool:
    """One track's curves: loss (train solid, val dashed) and val top-1, references as grey levels."""
    loss_span, acc_span = [], []
    for (row, seeds), style in zip(curves, styles):
        n = sum(1 for s in seeds if s)
        name = f"{_RAW_SUFFIX.sub('', row['run'])} ({n} seed{'s' if n != 1 else ''})"
        loss_span += _curve(ax_loss, seeds, "train_loss", 1.0, style, "-", name)
        loss_span += _curve(ax_loss, seeds, "val_loss", 1.0, style, "--", None)
        acc_span += _curve(ax_acc, seeds, "val_top1", 100.0, style, "-", name)
    for ax, span, key, scale, fmt in ((ax_loss, loss_span, "val_loss", 1.0, "{:.3f}"),
                                      (ax_acc, acc_span, "val_top1", 100.0, "{:.1f} %")):
        levels = [scale * v for r in refs if (v := _finite(r.get(key))) is not None]
        if ax is ax_loss and span:  # losses above every curve (uniform, unigram) are named off scale, like
            levels = [v for v in levels if v <= max(span)]  # the floors of the top-1 panel
        limits = _axis_limits(span or levels or [0.0, 1.0], levels, False, 0.0, bounded=ax is ax_acc)
        ax.set_ylim(*limits)
        _reference_levels(ax, refs, key, scale, fmt, limits, vertical=False, suffix=" val")
    epochs = [e for _, seeds in curves for records in seeds for r in records
              if (e := _finite(r.get("epoch"))) is not None]
    for ax in (ax_loss, ax_acc) if epochs else ():  # whole epochs, even for a one-epoch run
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    return bool(loss_span or acc_span)


def plot_learning_curves(report: Report, path: Path, title: str | None = None) -> None:
    """Per track: train / val loss and val top-1 per epoch of every trained model, the mean over its
    seeds with a min–max band; the references' validation levels as grey lines."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    tracks = _tracks(report.rows)
    fig, axes = plt.subplots(len(tracks), 2, figsize=(13, 5.2 * len(tracks)), squeeze=False)
    for (ax_loss, ax_acc), track in zip(axes, tracks):
        pairs = [(r, e) for r, e in zip(report.rows, report.entries) if r.get("track", "quantized") == track]
        styles = [s for (r, _), s in zip(pairs, row_styles([r for r, _ in pairs])) if not is_reference(r)]
        curves = [(r, [load_metrics(d) for d in e.run_dirs]) for r, e in pairs if not e.is_reference]
        refs = [{**r, "val_loss": _mean(e, "val_loss"), "val_top1": _mean(e, "val_top1")}
                for r, e in pairs if e.is_reference]
        drawn = _curve_panels(ax_loss, ax_acc, curves, refs, styles)
        none = "" if drawn else "\n(no run has per-epoch metrics: only reference levels)"
        name = _track_title(report, track)
        ax_loss.set(title=f"{name}: loss per epoch (solid: train, dashed: val; mean, {BAND}){none}", xlabel="epoch",
                    ylabel="cross-entropy (nats)")
        ax_acc.set(title=f"{name}: validation top-1 per epoch (mean, {BAND}){none}", xlabel="epoch",
                   ylabel="val top-1 (%)")
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.title.set_fontsize(10)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def write_plots(report: Report, output_dir: Path, title: str | None = None) -> list[Path]:
    """The three PNGs of the report in ``output_dir``."""
    paths = [output_dir / name for name in ("learning_curves.png", "test_accuracy.png", "test_perplexity.png")]
    plot_learning_curves(report, paths[0], title)
    plot_test_accuracy(report, paths[1], title)
    plot_test_perplexity(report, paths[2], title)
    return paths
