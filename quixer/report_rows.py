"""The report's rows: runs found under directories, intervals over groups and seeds, gain shares.

``RUNS_DIR/<name>/`` is one row: a run (``config.json`` and a ``results.json`` object with a
``model``, written by the trainers or by :mod:`quixer.reference`) or a model folder of seed runs
``seed_<s>/`` (as ``run_pipeline.sh --seeds N`` writes). ``RUNS_DIR`` may itself be one run or
one model folder (one row). Anything else under it is skipped with a warning, the report's own
output directory silently, so a report can be rerun into the same place. Runs marked diverged
(``diverged.json``, no results) are listed, not scored.

A row reports the mean over its seeds of the test metrics, on every scored target and on the
novel-context ones, 95 % intervals from :mod:`quixer.intervals` (a bootstrap over test gene
groups plus the variance between seeds), the parameter count by component, how each seed's
training went, and, against Quixer, the paired difference on the very same targets. Every number
sits beside the uniform / unigram / n-gram references and against the task's ceiling
(:mod:`quixer.ceilings`): each row's share of the achievable gain, (model - unigram) /
(ceiling - unigram), where the ceiling is ``token_ceiling`` on quantised tokens and
``raw_bases`` on raw k-mers, and each row minus that ceiling, paired: the ceilings are exact
inference under a base model of bounded order, estimates that a model reading longer context
can pass.

Two tracks (``raw_runs``: the same windows as raw k-mer tokens) are reported side by side, and
for each run present in both, raw minus quantised with a paired interval, valid only where both
scored the same positions. Written by :mod:`quixer.report` (Markdown: :mod:`quixer.report_markdown`;
plots: :mod:`quixer.report_plots`).
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .common import UserError, read_json
from .intervals import Estimate, GroupBootstrap, perplexity_interval
from .reference import REFERENCE_MODELS
from .run_dir import DIVERGED_FILE, loss_drops, selection_losses
from .scoring import TargetScores, perplexity

log = logging.getLogger(__name__)

PLOTS = ("learning_curves.png", "test_accuracy.png", "test_perplexity.png")
MEAN_KEYS = ("test_top1", "test_top5", "test_perplexity", "test_loss", "novel_test_top1", "novel_test_top5",
             "novel_test_perplexity", "novel_test_loss", "novel_fraction", "postselection", "train_seconds",
             "train_sequences_per_second", "eval_sequences_per_second")
REFERENCE_KEYS = ("order", "discounts", "alpha", "k", "anatomy")  # a reference's chosen settings, as it wrote them
TRACKS = ("quantized", "raw")
GAIN_SHARE_FROM = "unigram"  # the lower end of the achievable gain; the upper end is the track's ceiling
CEILING = {"quantized": "token_ceiling", "raw": "raw_bases"}
GAIN_SHARE_TO = CEILING["quantized"]
_SEED_DIR = re.compile(r"seed_(\d+)")


def _finite(value: Any) -> float | None:
    """A number that can be plotted, or None (missing, null, NaN, inf, not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# ----------------------------------------------------------------------------------------------
# Finding runs


@dataclass
class Entry:
    """One row's runs: a model under ``RUNS_DIR/<name>``, one run per seed, and the seeds that diverged."""

    name: str
    run_dirs: list[Path]
    results: list[dict] = field(default_factory=list)
    diverged: list[Path] = field(default_factory=list)
    track: str = "quantized"

    @property
    def model(self) -> str:
        if self.results:
            return str(self.results[0].get("model") or self.name)
        config = _read_quietly(self.diverged[0] / "config.json") if self.diverged else None
        return str(config.get("model") or self.name) if isinstance(config, dict) else self.name

    @property
    def is_reference(self) -> bool:
        return self.model in REFERENCE_MODELS

    @property
    def label(self) -> str:
        """The run's name in tables and plots: raw-track rows say so (``lstm (raw 6-mers)``)."""
        return self.name if self.track == "quantized" else f"{self.name} ({raw_tokens_name(self.results)})"

    def scores(self) -> list[TargetScores] | None:
        """The per-target test scores of every seed, or None if a run has none (older runs)."""
        paths = [d / "test_scores.npz" for d in self.run_dirs]
        return [TargetScores.load(p) for p in paths] if paths and all(p.is_file() for p in paths) else None


def raw_tokens_name(results: list[dict]) -> str:
    """"raw 6-mers" for a vocabulary of 4^6 k-mers (as the run recorded it), else "raw k-mers"."""
    vocab = next((_finite(r.get(key)) for r in results for key in ("vocabulary_size", "vocab_size")
                  if _finite(r.get(key))), None)
    k = round(math.log(vocab, 4)) if vocab and vocab > 1 else None
    return f"raw {k}-mers" if k and 4**k == vocab else "raw k-mers"


def _read_quietly(path: Path) -> Any:
    """The JSON in ``path``, or None where it is missing or unreadable."""
    try:
        return read_json(path) if path.is_file() else None
    except UserError:
        return None


def _run_results(path: Path) -> dict | None:
    """``results.json`` of a finished run (config.json beside it, an object naming its model), else None."""
    results = _read_quietly(path / "results.json") if (path / "config.json").is_file() else None
    return results if isinstance(results, dict) and "model" in results else None


def _is_diverged(path: Path) -> bool:
    return (path / DIVERGED_FILE).is_file() and not (path / "results.json").is_file()


def seed_dirs(path: Path) -> list[Path]:
    """The ``seed_<s>`` folders of a model folder, in seed order ([] where there is no folder)."""
    if not path.is_dir():
        return []
    found = [d for d in path.iterdir() if d.is_dir() and _SEED_DIR.fullmatch(d.name)]
    return sorted(found, key=lambda d: int(_SEED_DIR.fullmatch(d.name).group(1)))


def _entry(path: Path, track: str) -> tuple[Entry | None, str]:
    """The row of ``path`` (a run, a diverged run or a model folder of seed runs), or (None, why not)."""
    results = _run_results(path)
    if results is not None:
        return Entry(path.name, [path], [results], track=track), ""
    if _is_diverged(path):
        return Entry(path.name, [], diverged=[path], track=track), ""
    runs = [(d, _run_results(d)) for d in seed_dirs(path)]
    entry = Entry(path.name, [d for d, r in runs if r], [r for _, r in runs if r],
                  [d for d, r in runs if r is None and _is_diverged(d)], track)
    for d, r in runs:
        if r is None and d not in entry.diverged:
            log.warning("%s: no results.json (unfinished), left out of the row", d)
    if entry.results or entry.diverged:
        check_same_data(entry)
        return entry, ""
    if (path / "results.json").is_file():
        return None, "results.json is not a run's (no config.json beside it, or no model in it)"
    return None, "no results.json (unfinished or not a run)"


def check_same_data(entry: Entry) -> None:
    """A row's seed runs must have been trained on the same token files: their recorded
    ``data_fingerprint`` (where written) must agree, or the mean over seeds mixes data sets."""
    known = [(d, r["data_fingerprint"]) for d, r in zip(entry.run_dirs, entry.results) if r.get("data_fingerprint")]
    for d, fingerprint in known[1:]:
        if fingerprint != known[0][1]:
            raise UserError(f"{d}: trained on other data than {known[0][0]} (data fingerprint {fingerprint[:12]} vs "
                            f"{known[0][1][:12]}); one row holds the seeds of one data set")


def find_entries(runs_dir: str | os.PathLike, skip: Sequence[str | os.PathLike] = (), track: str = "quantized"
                 ) -> list[Entry]:
    """Rows under ``runs_dir`` (or ``runs_dir`` itself as one row: a run or a model folder); the
    directories in ``skip`` (the report's own output) are passed over, anything else that is not
    a run with a warning. At least one row must have a finished run."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir}: runs directory not found")
    own, _ = _entry(runs_dir, track)
    entries = [own] if own is not None else _entries_under(runs_dir, skip, track)
    if not any(e.results for e in entries):
        diverged = ", ".join(e.name for e in entries)
        raise UserError(f"{runs_dir}: no <run>/results.json found (train a model or run the references first)"
                        + (f"; diverged: {diverged}" if diverged else ""))
    return entries


def _entries_under(runs_dir: Path, skip: Sequence[str | os.PathLike], track: str) -> list[Entry]:
    skipped = {Path(p).resolve() for p in skip}
    entries = []
    for sub in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.resolve() in skipped:
            continue
        entry, why = _entry(sub, track)
        if entry is None:
            log.warning("%s: %s, skipped", sub, why)
        else:
            entries.append(entry)
    return entries


# ----------------------------------------------------------------------------------------------
# Rows


def _data_of(entry: Entry) -> str | None:
    first = entry.results[0]
    data = first.get("data_dir") or first.get("data")
    if data is None:
        config = _read_quietly(entry.run_dirs[0] / "config.json")
        data = config.get("data_dir", config.get("data")) if isinstance(config, dict) else None
    return None if data is None else str(data)


def _mean(entry: Entry, key: str) -> float | None:
    values = [_finite(r.get(key)) for r in entry.results]
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def _common(values: list[Any]) -> Any:
    """The one value every seed has (None if none has it), or the list where they differ."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    return known[0] if all(v == known[0] for v in known) and len(known) == len(values) else values


def last_drops(run_dir: str | os.PathLike, epochs: int = 2) -> list[float]:
    """How much each of the run's last ``epochs`` epochs lowered its validation (selection) loss,
    as a fraction of the loss before: what the convergence rule tests ([] without the records)."""
    losses = selection_losses(run_dir)
    if not all(math.isfinite(v) for v in losses[-epochs - 1:]):
        return []
    return loss_drops(losses, epochs)


def _unconverged(entry: Entry) -> list[dict[str, Any]]:
    """The seeds that did not meet the convergence rule: why they stopped and their last two drops."""
    return [{"seed": r.get("seed"), "stop_reason": r.get("stop_reason"), "epochs_run": r.get("epochs_run"),
             "last_drops": last_drops(d)}
            for d, r in zip(entry.run_dirs, entry.results) if r.get("converged") is False]


def _training(entry: Entry) -> dict[str, Any]:
    """How each seed's training went, from its results.json: epochs, best epoch, why it stopped,
    whether it converged (counted over seeds, and the seeds that did not named), the protocol and
    schedule."""
    rs = entry.results
    return {"epochs_run": [r.get("epochs_run") for r in rs], "max_epochs": _common([r.get("max_epochs") for r in rs]),
            "best_epochs": [r.get("best_epoch") for r in rs], "stop_reasons": [r.get("stop_reason") for r in rs],
            "converged": sum(1 for r in rs if r.get("converged") is True),
            "not_converged": _unconverged(entry),
            "protocol": _common([r.get("protocol") for r in rs]),
            "lr_schedule": _common([r.get("lr_schedule") for r in rs])}


def _base_row(entry: Entry) -> dict[str, Any]:
    first = entry.results[0]
    seeds = [r.get("seed") for r in entry.results if r.get("seed") is not None]
    row: dict[str, Any] = {"model": entry.model, "run": entry.label, "track": entry.track, "data": _data_of(entry),
                           "data_fingerprint": first.get("data_fingerprint"), "seeds": seeds,
                           "parameters": first.get("parameters"),
                           "parameter_breakdown": first.get("parameter_breakdown")}
    for key in MEAN_KEYS:
        value = _mean(entry, key)
        if value is not None:
            row[key] = value
    for split in ("test", "novel_test"):  # exp of the seed-mean loss, as its interval is, not a mean of exps
        if f"{split}_loss" in row:
            row[f"{split}_perplexity"] = perplexity(row[f"{split}_loss"])
    for key in ("test_targets", "targets_sha256") + (REFERENCE_KEYS if entry.is_reference else ()):
        if key in first:
            row[key] = first[key]
    if not entry.is_reference:
        row.update(_training(entry))
    if entry.diverged:
        row["diverged_seeds"] = [d.name for d in entry.diverged]
    return {k: v for k, v in row.items() if v is not None}


def _suffix(path: str, parts: int) -> str:
    names = Path(path).parts
    return str(Path(*names[-parts:])) if names else path


def add_data_labels(rows: list[dict[str, Any]]) -> None:
    """``data_label``: the shortest path suffix that tells the rows' data directories apart, plus
    the first 8 hex digits of the data fingerprint where the run recorded one, so two pipelines
    whose token folders share a last name are not read as one data set."""
    paths = sorted({r["data"] for r in rows if r.get("data")})
    depth = max((len(Path(p).parts) for p in paths), default=1)
    short = {}
    for p in paths:
        n = next((n for n in range(1, depth + 1)
                  if sum(1 for q in paths if _suffix(q, n) == _suffix(p, n)) == 1), depth)
        short[p] = _suffix(p, n)
    for r in rows:
        label = short.get(r.get("data"), "–")
        fingerprint = r.get("data_fingerprint")
        r["data_label"] = f"{label} ({fingerprint[:8]})" if fingerprint else label


def sort_key(row: dict[str, Any]) -> tuple:
    """Per track and data set: the references (uniform, unigram, n-gram, the ceilings) first, then
    models by test top-1."""
    top1 = _finite(row.get("test_top1"))
    ref = REFERENCE_MODELS.index(row["model"]) if row["model"] in REFERENCE_MODELS else len(REFERENCE_MODELS)
    track = TRACKS.index(row.get("track", "quantized"))
    return (track, str(row.get("data", "")), ref, -(top1 if top1 is not None else -1.0), row["run"])


def is_reference(row: dict[str, Any]) -> bool:
    return row.get("model") in REFERENCE_MODELS


def _same_targets(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Scored on the same targets: equal target hashes, or for older runs without them the same data."""
    if a.get("targets_sha256") and b.get("targets_sha256"):
        return a["targets_sha256"] == b["targets_sha256"]
    return a.get("data") == b.get("data")


def add_gain_shares(rows: list[dict[str, Any]]) -> None:
    """``gain_share_top1`` / ``gain_share_loss`` of every row but the two ends: (row - unigram) /
    (ceiling - unigram), both references scored on the row's targets (the ceiling: ``token_ceiling``
    on quantised tokens, ``raw_bases`` on raw k-mers); None without them."""
    for row in rows:
        ceiling = CEILING[row.get("track", "quantized")]
        if row["model"] in (GAIN_SHARE_FROM, ceiling):
            continue
        ends = [next((r for r in rows if r["model"] == m and _same_targets(r, row)), None)
                for m in (GAIN_SHARE_FROM, ceiling)]
        for metric in ("top1", "loss"):
            values = [_finite(r.get(f"test_{metric}")) if r else None for r in (row, *ends)]
            ok = None not in values and values[2] != values[1]
            row[f"gain_share_{metric}"] = (values[0] - values[1]) / (values[2] - values[1]) if ok else None


# ----------------------------------------------------------------------------------------------
# Intervals and paired differences


def _estimates(boot: GroupBootstrap, runs: list[TargetScores]) -> dict[str, Estimate]:
    loss = boot.estimate(runs, "nll")
    return {"top1": boot.estimate(runs, "top1"), "loss": loss, "perplexity": loss.exp()}


def _add_intervals(rows: list[dict], scored: list[list[TargetScores] | None]) -> list[dict[str, Estimate] | None]:
    """95 % intervals per row (groups and seeds); returns each row's estimates (None: no scores)."""
    boots: dict[str, GroupBootstrap] = {}
    estimates: list[dict[str, Estimate] | None] = []
    for row, runs in zip(rows, scored):
        if not runs:
            estimates.append(None)
            continue
        boot = boots.setdefault(runs[0].key, GroupBootstrap(runs[0].groups, len(runs[0])))
        est = _estimates(boot, runs)
        estimates.append(est)
        row["test_top1_ci95"] = est["top1"].interval(0.0, 1.0)
        row["test_perplexity_ci95"] = perplexity_interval(est["loss"])
        if runs[0].novel is not None and runs[0].novel.any():
            row["novel_test_top1_ci95"] = boot.estimate(runs, "top1", runs[0].novel).interval(0.0, 1.0)
    return estimates


def _add_quixer_differences(rows: list[dict], scored: list, estimates: list) -> None:
    """Quixer minus every other row scored on the same targets (so within a track), paired."""
    quixer_of: dict[str, int] = {}
    for i, (row, runs) in enumerate(zip(rows, scored)):
        if row["model"] == "quixer" and runs:
            quixer_of.setdefault(runs[0].key, i)
    for i, (row, runs) in enumerate(zip(rows, scored)):
        q = quixer_of.get(runs[0].key) if runs else None
        if q is None or q == i:
            continue
        for metric in ("top1", "perplexity"):
            diff = estimates[q][metric] - estimates[i][metric]
            row[f"quixer_{metric}_difference"] = {"mean": diff.point, "ci95": diff.interval()}


def _add_ceiling_differences(rows: list[dict], scored: list, estimates: list) -> None:
    """Every row minus its track's ceiling on the same targets, paired. The ceiling is exact only
    under its base model of bounded order, so a model that finds longer-range structure can pass
    it; this difference says which do, with its interval."""
    for i, row in enumerate(rows):
        ceiling = CEILING[row.get("track", "quantized")]
        if row["model"] in ("uniform", GAIN_SHARE_FROM, ceiling) or estimates[i] is None:
            continue
        j = next((k for k, r in enumerate(rows) if r["model"] == ceiling and estimates[k] is not None
                  and scored[k][0].key == scored[i][0].key), None)
        if j is None:
            continue
        for metric in ("top1", "perplexity"):
            diff = estimates[i][metric] - estimates[j][metric]
            row[f"ceiling_{metric}_difference"] = {"mean": diff.point, "ci95": diff.interval()}


def pairing(a: list[TargetScores], b: list[TargetScores]) -> str | None:
    """How two sets of scores (one per seed) can be paired target by target: "positions" when every
    file records the same scored positions (``positions_key``), "length and groups" for files
    written before positions keys existed that have equal lengths and identical group ids (with a
    warning: the positions themselves are not checked), None otherwise."""
    keys = {s.positions_key for s in a + b}
    if len(keys - {""}) > 1:
        return None
    if "" not in keys:
        return "positions"
    first = a[0]
    same = all(len(s) == len(first) and s.groups is not None and first.groups is not None
               and np.array_equal(s.groups, first.groups) for s in a + b)
    if same:
        log.warning("scores without positions keys (written by an older version): paired on equal length and "
                    "identical group ids, the positions themselves unchecked")
    return "length and groups" if same else None


def track_difference(quantized: dict, raw: dict, q_runs: list[TargetScores] | None,
                     r_runs: list[TargetScores] | None) -> dict[str, Any]:
    """Raw minus quantised for one run present in both tracks: top-1 and perplexity with a paired
    interval (a group bootstrap on the shared groups plus both rows' seed variance), or no
    difference where the two did not score the same positions."""
    out: dict[str, Any] = {"model": quantized["model"], "quantized_run": quantized["run"], "raw_run": raw["run"]}
    how = pairing(q_runs, r_runs) if q_runs and r_runs else None
    out["paired_on"] = how
    if how is None:
        out["not_paired"] = ("no per-target scores" if not (q_runs and r_runs) else
                             "the tracks scored different positions")
        return out
    boot = GroupBootstrap(q_runs[0].groups, len(q_runs[0]))
    q, r = _estimates(boot, q_runs), _estimates(boot, r_runs)
    for metric in ("top1", "perplexity"):
        diff = r[metric] - q[metric]
        out[f"{metric}_difference"] = {"mean": diff.point, "ci95": diff.interval()}
    return out


def track_differences(rows: list[dict], entries: list[Entry], scored: list) -> list[dict[str, Any]]:
    """One :func:`track_difference` per run name present in both tracks (the same model)."""
    quantized = {e.name: i for i, e in enumerate(entries) if e.track == "quantized"}
    out = []
    for j, e in enumerate(entries):
        i = quantized.get(e.name) if e.track == "raw" else None
        if i is None:
            continue
        if entries[i].model != e.model:
            log.warning("%s: %s in one track, %s in the other: not compared", e.name, entries[i].model, e.model)
            continue
        out.append(track_difference(rows[i], rows[j], scored[i], scored[j]))
    return out


# ----------------------------------------------------------------------------------------------
# The report


@dataclass
class Report:
    """Everything the report writes: rows (with their entries), diverged runs, track differences."""

    rows: list[dict[str, Any]]
    entries: list[Entry]
    diverged: list[dict[str, Any]]
    tokenisation: list[dict[str, Any]]


def _diverged_records(entries: list[Entry]) -> list[dict[str, Any]]:
    out = []
    for e in entries:
        for d in e.diverged:
            record = _read_quietly(d / DIVERGED_FILE)
            message = record.get("message") if isinstance(record, dict) else None
            seed_dir = d.name if d.name != e.name and _SEED_DIR.fullmatch(d.name) else None
            out.append({"model": e.model, "run": e.label, "track": e.track, "seed_dir": seed_dir, "path": str(d),
                        "message": message})
    return out


def collect_rows(runs_dir: str | os.PathLike | None, raw_runs: str | os.PathLike | None = None,
                 skip: Sequence[str | os.PathLike] = ()) -> Report:
    """The rows of both tracks (or of one: ``runs_dir`` None reports the raw track alone) with
    intervals, gain shares, Quixer's paired differences and the raw-minus-quantised differences."""
    entries = find_entries(runs_dir, skip) if runs_dir is not None else []
    if raw_runs is not None:
        if runs_dir is not None and Path(raw_runs).resolve() == Path(runs_dir).resolve():
            raise UserError(f"{raw_runs}: --raw_runs is RUNS_DIR itself; give the raw track's own runs directory")
        entries += find_entries(raw_runs, skip, track="raw")
    finished = [e for e in entries if e.results]
    rows = [_base_row(e) for e in finished]
    add_data_labels(rows)
    order = sorted(range(len(rows)), key=lambda i: sort_key(rows[i]))
    rows, finished = [rows[i] for i in order], [finished[i] for i in order]
    scored = [e.scores() for e in finished]
    estimates = _add_intervals(rows, scored)
    _add_quixer_differences(rows, scored, estimates)
    _add_ceiling_differences(rows, scored, estimates)
    add_gain_shares(rows)
    return Report(rows, finished, _diverged_records(entries), track_differences(rows, finished, scored))
