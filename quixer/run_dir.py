"""The rules of a run directory: a run is never mixed with another.

:func:`prepare_run_dir` decides, before anything is written, what a training command may do with
its ``--output_dir``: start fresh, resume, extend to more epochs, or nothing (finished); a folder
holding other flags, other data, a diverged run or anything else is refused in one line.
:func:`run_lock` keeps two processes from training into one directory at once. Kept apart from
the training loop so that the rules read in one place, and light (no torch at import) so that the
report can share its file names.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .common import UserError, atomic_write_text, describe_directory, load_torch_file, read_json

log = logging.getLogger("quixer")

DIVERGED_FILE = "diverged.json"  # written instead of results.json when the loss became non-finite
# Flags that do not change what a run computes: they may differ when resuming.
_IGNORED_ON_RESUME = frozenset({"output_dir", "data_dir", "device", "verbose", "resume", "config", "tensorboard",
                                "cuda_graph"})
# Flags added after runs were written: a config.json without them ran with these values.
_LEGACY_VALUES = {"protocol": "project", "selection_targets": 0, "tensorboard": None, "cuda_graph": False}
# A run has converged when early stopping fired, or when it ran its whole budget and each of its
# last two epochs lowered the selection validation loss by less than this fraction.
CONVERGENCE_TOLERANCE = 1e-3
CONVERGENCE_RULE = ("early stopping fired, or the run reached --epochs and each of its last two epochs lowered the "
                    "validation (selection) loss by less than 0.1 %")


def loss_drops(losses: Sequence[float], epochs: int = 2) -> list[float]:
    """How much each of the last ``epochs`` epochs lowered the loss, as a fraction of the loss before
    (negative for a rise); [] when fewer than ``epochs + 1`` losses are recorded. What the convergence
    rule tests, shared by the trainer and the torch-free report."""
    if len(losses) < epochs + 1:
        return []
    last = list(losses[-epochs - 1:])
    return [(prev - cur) / abs(prev) if prev else 0.0 for prev, cur in zip(last, last[1:])]


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


def selection_losses(run_dir: str | os.PathLike) -> list[float]:
    """The per-epoch validation (selection) losses of ``run_dir/metrics.jsonl``, in epoch order
    (NaN where a record has none): what :func:`is_converged` reads, for the trainer and the report."""
    values = [r.get("val_loss") for r in sorted(load_metrics(run_dir), key=lambda r: r.get("epoch", 0))]
    return [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan for v in values]


def is_converged(stop_reason: str, val_losses: Sequence[float], tolerance: float = CONVERGENCE_TOLERANCE) -> bool:
    """:data:`CONVERGENCE_RULE` for a run's stop reason and its per-epoch validation losses."""
    if stop_reason == "early_stop":
        return True
    drops = loss_drops(val_losses)
    return stop_reason == "max_epochs" and bool(drops) and all(d < tolerance for d in drops)


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


def _lock_path(out: Path) -> Path:
    """Where ``out``'s lock lives: outside the user's tree (nothing to clean up there, no folder made
    before the checks), one file per resolved run directory, in a folder of this user's own under
    the temp folder (so processes with different ``$TMPDIR`` do not see each other's locks)."""
    key = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:32]
    folder = Path(tempfile.gettempdir()) / f"quixer-run-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"{key}.lock"


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock while one process trains into it.

    Why: the same command in two terminals, or two pipelines on one ``--out``, would otherwise write
    their checkpoints and metrics over each other's; the second now stops in one line, naming the
    first's pid. The lock is the kernel's (``flock``): it goes with its process however that ends,
    so a killed run leaves nothing that blocks the next. The file is removed on release; a lock taken
    on a file removed meanwhile is dropped and taken again on the new one.
    """
    path = _lock_path(out)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"{out}: another process (pid {holder}) is training this run; wait for it to end or "
                            "choose another --output_dir") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
