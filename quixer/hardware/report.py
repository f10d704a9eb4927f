"""What a hardware estimate shows: ``hardware.md``, ``hardware_shots.png``, and the one line
the main report (``report_results.py``) gives a run that has an estimate.

Reads only the estimate's JSON: no torch, pytket or qiskit, so the main report stays light.
"""
from __future__ import annotations

import logging
import os
import textwrap
from pathlib import Path

import numpy as np

from ..common import UserError, atomic_path, read_json

log = logging.getLogger("quixer")

HARDWARE_JSON, HARDWARE_MD, HARDWARE_PNG = "hardware.json", "hardware.md", "hardware_shots.png"


def _pct(v: float) -> str:
    return f"{100 * v:.2f} %"


def _int(v: float) -> str:
    return f"{v:,.0f}"


def hardware_markdown(report: dict) -> str:
    """``hardware.md``: the circuit, its compiled cost and the accuracy per shot budget."""
    m, c, res = report["model"], report["circuit"], report["resources"]
    v = c["verification"]
    lines = [
        f"# Quixer on hardware: `{report['run_dir']}`", "",
        f"Model: {m['qubits']} qubits, {m['tokens']} tokens, degree {m['degree']}, {m['ansatz_layers']} ansatz layers.",
        f"Circuit: {c['qubits']} qubits ({c['token_qubits']} token + {c['lcu_qubits']} LCU + {c['polynomial_qubits']} "
        f"polynomial; {c['qubits_with_fresh_lcu_registers']} with a fresh LCU register per power instead of "
        f"mid-circuit measurement), {res['postselection_measurements']} postselected measurements, "
        f"{res['output_measurements']} output measurements, 3 bases.",
        f"Checked on test window {c['verification_window']} by qiskit-aer: state error "
        f"{v['state_max_abs_error']:.1e}, feature error {v['features_max_abs_error']:.1e}, postselection "
        f"{v['postselection_circuit']:.6f} (model {v['postselection_model']:.6f}).", "",
        f"## Resources per circuit (the {res['basis']}-basis circuit; X and Z differ only in their last "
        "single-qubit gates)", "",
        "| gate set | stage | qubits | 2-qubit gates | gates | depth | 2-qubit depth | compile |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    d = res["decomposed"]
    lines.append(f"| pytket decomposition (CX + rotations) | – | {d['qubits']} | {_int(d['two_qubit_gates'])} | "
                 f"{_int(d['gates'])} | {_int(d['depth'])} | {_int(d['two_qubit_depth'])} | – |")
    for g in res["gate_sets"].values():
        compiled = f"{g['compile_seconds']:.1f} s"
        for stage, label, seconds in (("before", "rebased", ""), ("after", "optimised", compiled)):
            s = g[stage]
            lines.append(f"| {g['name']} | {label} | {s['qubits']} | {_int(s['two_qubit_gates'])} | "
                         f"{_int(s['gates'])} | {_int(s['depth'])} | {_int(s['two_qubit_depth'])} | {seconds} |")
    e = res["error_free_run_probability"]
    lines += [
        "", "With only two-qubit gate errors, at a rate of 1e-3 (1e-4) per gate, a run of "
        f"{_int(e['two_qubit_gates'])} two-qubit gates is free of errors with probability {e['0.001']:.1e} "
        f"({e['0.0001']:.1e}).",
        "", "Gates exclude measurements. Blocks compiled one by one (SELECT once, relabelled for each power) and "
        "put back together; optimised = FullPeepholeOptimise (SynthesiseTket on SELECT), rebase, squash, "
        "RemoveRedundancies. No routing (all-to-all connectivity). See `quixer/hardware/resources.py`.", "",
    ]
    return "\n".join(lines + _shots_markdown(report["shots"])) + "\n"


def _shots_markdown(sh: dict) -> list[str]:
    """The finite-shot section of ``hardware.md``: each budget with its 95 % intervals and its paired
    difference from exact features."""
    lines = [
        f"## Test accuracy at finite shots ({_int(sh['windows'])} of {_int(sh['test_windows'])} test windows, "
        f"seed {sh['seed']})", "",
        f"Postselection probability: mean {sh['postselection_mean']:.3f}, median {sh['postselection_median']:.3f}, "
        f"min {sh['postselection_min']:.2e}. S attempts per basis; a shot counts only when postselection "
        f"succeeds; {sh['zero_success_fallback']}.", "",
        "| shots S per basis | top-1 [95 % CI] | top-1 − exact (points) | top-5 | perplexity [95 % CI] | "
        "perplexity − exact | loss | executions (3 S) | mean for S kept (3 S / p) | no kept shot |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sh["rows"]:
        exact = r["shots"] is None
        cells = ["exact" if exact else _int(r["shots"]), _pct(r["top1"]) + _ci(r.get("top1_ci95"), 100),
                 "–" if exact else _difference(r, "top1", 100), _pct(r["top5"]),
                 f"{r['perplexity']:.2f}" + _ci(r.get("perplexity_ci95")),
                 "–" if exact else _difference(r, "perplexity"), f"{r['loss']:.4f}"]
        cells += ["–"] * 3 if exact else [_int(r["executions_per_prediction"]), _int(r["executions_for_s_kept_mean"]),
                                          _pct(r["zero_success_fraction"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + (["", sh["intervals"] + "."] if sh.get("intervals") else [])


def _ci(ci: list | None, scale: float = 1.0) -> str:
    return "" if not ci else f" [{scale * ci[0]:.2f}, {scale * ci[1]:.2f}]"


def _difference(row: dict, metric: str, scale: float = 1.0) -> str:
    """A finite-shot row's metric minus exact with its paired interval ("–" for estimates made
    before intervals were kept)."""
    value = row.get(f"{metric}_minus_exact")
    return "–" if value is None else f"{scale * value:+.2f}{_ci(row.get(f'{metric}_minus_exact_ci95'), scale)}"


def _error_bars(rows: list[dict], key: str, scale: float, value: str | None = None) -> np.ndarray | None:
    """[2, n] distances from each row's ``value`` (default ``key``) to the ends of ``key``'s 95 %
    interval (None: an estimate made before intervals were kept)."""
    value = value or key
    if not all(r.get(f"{key}_ci95") for r in rows):
        return None
    return np.array([[scale * (r[value] - r[f"{key}_ci95"][0]), scale * (r[f"{key}_ci95"][1] - r[value])]
                     for r in rows]).T


def _exact_level(ax, exact: dict, key: str, scale: float, color: str, label: str) -> None:
    """The exact-features level as a dashed line, its 95 % interval as a band."""
    ax.axhline(scale * exact[key], color=color, linestyle="--", label=label)
    ci = exact.get(f"{key}_ci95")
    if ci:
        ax.axhspan(scale * ci[0], scale * ci[1], color=color, alpha=0.12, linewidth=0)


def _shot_levels(acc, ppl, exact: dict, finite: list[dict]) -> None:
    """Top row: each metric at S shots with its interval, the exact level and its interval."""
    s = [r["shots"] for r in finite]
    for key, color, marker in (("top1", "C0", "o"), ("top5", "C1", "^")):
        acc.errorbar(s, [100 * r[key] for r in finite], yerr=_error_bars(finite, key, 100), fmt=f"{marker}-",
                     color=color, capsize=3, label=f"{key}, S shots (95 % CI)")
        _exact_level(acc, exact, key, 100, color, f"{key}, exact features (band: 95 % CI)")
    ppl.errorbar(s, [r["perplexity"] for r in finite], yerr=_error_bars(finite, "perplexity", 1), fmt="o-",
                 color="C2", capsize=3, label="S shots (95 % CI)")
    _exact_level(ppl, exact, "perplexity", 1, "C2", "exact features (band: 95 % CI)")
    acc.set_ylabel("test accuracy (%)")
    ppl.set_ylabel("test perplexity")


def _shot_costs(d_acc, d_ppl, finite: list[dict]) -> None:
    """Bottom row: S shots minus exact features, paired on the same targets (shot noise alone)."""
    s = [r["shots"] for r in finite]
    for ax, key, scale, color, unit in ((d_acc, "top1", 100, "C0", "top-1 (points)"),
                                        (d_ppl, "perplexity", 1, "C2", "perplexity")):
        ax.axhline(0.0, color="#555555", linewidth=1)
        ax.errorbar(s, [scale * r[f"{key}_minus_exact"] for r in finite], fmt="o-", color=color, capsize=3,
                    yerr=_error_bars(finite, f"{key}_minus_exact", scale),
                    label="S shots minus exact (95 % CI, paired)")
        ax.set_ylabel(f"{unit}: S shots − exact")


def plot_shots(rows: list[dict], path: Path, title: str | None = None, caption: str | None = None) -> None:
    """Top-1 / top-5 and perplexity against shots per basis with their 95 % intervals (error bars),
    the exact levels as dashed lines with their intervals as bands, and below, where the rows have
    them, the paired differences from exact; ``caption`` says how the intervals were made."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    exact = next(r for r in rows if r["shots"] is None)
    finite = [r for r in rows if r["shots"] is not None]
    paired = bool(finite) and all("top1_minus_exact" in r for r in finite)
    fig, axes = plt.subplots(1 + paired, 2, figsize=(11, 4.2 * (1 + paired)), squeeze=False)
    _shot_levels(*axes[0], exact, finite)
    if paired:
        _shot_costs(*axes[1], finite)
    for ax in axes.ravel():
        ax.set_xscale("log")
        ax.set_xlabel("shots per basis (attempts, before postselection)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    if caption:
        fig.text(0.5, 0.0, textwrap.fill(caption, 150), ha="center", va="top", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def hardware_summary_markdown(run_dir: str | os.PathLike, link_base: str | os.PathLike | None = None) -> str | None:
    """One markdown line on a run's ``hardware.md`` (key figures), or None without an estimate.

    The link is relative to ``link_base`` (default: the run directory's parent, where
    ``report_results.py`` writes ``results.md`` by default).
    """
    run_dir = Path(run_dir)
    path = run_dir / HARDWARE_JSON
    if not path.is_file():
        return None
    try:
        report = read_json(path)
        c, res, rows = report["circuit"], report["resources"], report["shots"]["rows"]
        exact = next(r for r in rows if r["shots"] is None)
        finite = [r for r in rows if r["shots"] is not None]
    except (UserError, KeyError, TypeError, StopIteration):
        log.warning("%s: unreadable hardware estimate, left out of the report", path)
        return None
    link = os.path.relpath(run_dir / HARDWARE_MD, Path(link_base) if link_base is not None else run_dir.parent)
    gates = " / ".join(f"{_int(g['after']['two_qubit_gates'])} ({key})" for key, g in res["gate_sets"].items())
    line = f"**{run_dir.name} on hardware** ([{HARDWARE_MD}]({link})): {c['qubits']} qubits"
    if gates:
        line += f", {gates} two-qubit gates per circuit after optimisation"
    line += f"; test top-1 {_pct(exact['top1'])} exact"
    if finite:
        line += (f", {' / '.join(_pct(r['top1']) for r in finite)} at {' / '.join(_int(r['shots']) for r in finite)} "
                 f"shots per basis ({' / '.join(_int(r['executions_per_prediction']) for r in finite)} circuit "
                 f"executions per prediction, {' / '.join(_int(r['mean_kept_shots_per_basis']) for r in finite)} "
                 "kept per basis after postselection)")
    return line + "."
