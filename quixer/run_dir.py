"""The rules of a run directory: a run is never mixed with another.

:func:`prepare_run_dir` decides, before anything is written, what a training command may do with
its ``--output_dir``: start fresh, resume, extend to more epochs, or nothing (finished); a folder
holding other flags, other data, a diverged run or anything else is refused in one line. Kept
apart from the training loop so that the rules read in one place, and light (no torch at import)
so that the report can share its file names.
"""
from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Callable

from .common import UserError, atomic_write_text, describe_directory, load_torch_file, read_json

log = logging.getLogger("quixer")

DIVERGED_FILE = "diverged.json"  # written instead of results.json when the loss became non-finite
# Flags that do not change what a run computes: they may differ when resuming.
_IGNORED_ON_RESUME = frozenset({"output_dir", "data_dir", "device", "verbose", "resume", "config", "tensorboard",
                                "cuda_graph"})
# Flags added after runs were written: a config.json without them ran with these values.
_LEGACY_VALUES = {"protocol": "project", "selection_targets": 0, "tensorboard": None, "cuda_graph": False}


def _describe_diff(old: dict, new: dict, ignore: frozenset = frozenset()) -> str:
    old = {**_LEGACY_VALUES, **old}
    keys = sorted(k for k in set(old) | set(new)
                  if k not in _IGNORED_ON_RESUME | ignore and old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4]) + (" ..." if len(keys) > 4 else "")


def prepare_run_dir(out: Path, config: dict, resume: bool, fingerprint: str | None = None) -> tuple[str, dict | None]:
    """Decide, without writing, what to do with ``out``: 'fresh', 'resume', 'extend' or 'done';
    for 'resume' and 'extend' also return last.pt's contents, read once for the checks and the resume.

    A directory holding another run (other flags, or other data by ``fingerprint``) is refused.
    The same run finished is 'done' (a rerun does nothing); unfinished, it continues only with
    ``--resume``, so a typo cannot restart over it. A larger ``--epochs`` with ``--resume``
    extends the run ('extend'); ``--resume`` with nothing to resume starts fresh.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    cfg_path = out / "config.json"
    if not cfg_path.exists():
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out}: holds {describe_directory(out)}, not a training run; choose another --output_dir")
        if resume:
            log.info("%s: no run to resume, starting a fresh one", out)
        return "fresh", None
    old, new = read_json(cfg_path), json.loads(json.dumps(config))
    diff = _describe_diff(old, new, ignore=frozenset({"epochs"}))
    if diff:
        raise UserError(f"{out} holds a different run ({diff}); choose another --output_dir")
    last = functools.cache(lambda: load_torch_file(out / "last.pt"))
    _check_run_data(out, fingerprint, last)
    if (out / DIVERGED_FILE).exists():
        why = read_json(out / DIVERGED_FILE).get("message", "")
        raise UserError(f"{out}: this run diverged ({why}); start another --output_dir with a lower --lr")
    finished = _finished_epochs(out)
    if new.get("epochs") != old.get("epochs"):
        return _extension_mode(out, old.get("epochs"), new.get("epochs"), resume, last), last()
    if finished is not None and finished == new.get("epochs"):
        return "done", None
    if not resume:
        raise UserError(f"{out} holds this run, unfinished; pass --resume to continue it or choose another --output_dir")
    return ("resume", last()) if (out / "last.pt").exists() else ("fresh", None)


def _extension_mode(out: Path, old_epochs: int, new_epochs: int, resume: bool, last: Callable[[], dict]) -> str:
    """A run asked for with another --epochs: only more epochs, with --resume, from last.pt."""
    if new_epochs < old_epochs:
        raise UserError(f"{out} holds this run with --epochs {old_epochs}; it cannot be shortened to {new_epochs} "
                        "(choose another --output_dir)")
    if not resume:
        raise UserError(f"{out} holds this run with --epochs {old_epochs}; pass --resume to extend it to {new_epochs}")
    if not (out / "last.pt").exists():
        raise UserError(f"{out}: no last.pt to extend the run from (choose another --output_dir)")
    state = last().get("state") or {}
    if state.get("stop_reason") == "early_stop":
        raise UserError(f"{out}: the run stopped early at epoch {state.get('epoch')} (no lower validation loss for "
                        "--patience epochs); more epochs would not train it further")
    return "extend"


def _finished_epochs(out: Path) -> int | None:
    """The --epochs a finished run (one with results.json) was finished for, else None."""
    path = out / "results.json"
    if not path.exists():
        return None
    results = read_json(path)
    return int(results.get("max_epochs") or results.get("epochs_run") or 0) if isinstance(results, dict) else None


def _check_run_data(out: Path, fingerprint: str | None, last: Callable[[], dict]) -> None:
    """One line, and nothing touched, when ``out`` was trained on other data than ``fingerprint``
    (``last()``: last.pt's contents)."""
    if fingerprint is None:
        return
    recorded = None
    if (out / "results.json").exists():
        recorded = read_json(out / "results.json").get("data_fingerprint")
    elif (out / "last.pt").exists():
        recorded = (last().get("data") or {}).get("fingerprint")
    if recorded is not None and recorded != fingerprint:
        raise UserError(f"{out} was trained on other data (data fingerprint {recorded[:12]}, --data_dir has "
                        f"{fingerprint[:12]}); choose another --output_dir or the run's own --data_dir")


def rewrite_metrics(path: Path, keep_through_epoch: int, new: dict | None = None) -> None:
    """metrics.jsonl without lines past ``keep_through_epoch`` (plus ``new``), written atomically."""
    lines = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and json.loads(line).get("epoch", 0) <= keep_through_epoch:
                lines.append(line)
    if new is not None:
        lines.append(json.dumps(new))
    atomic_write_text(path, "".join(line + "\n" for line in lines))
