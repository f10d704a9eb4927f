"""Plumbing every stage shares: one-line user errors, logging, atomic writes, hashes, seeds.

Stage scripts stay thin by calling :func:`run_cli`, which turns a :class:`UserError` into a
single line on stderr and exit status 2 (no traceback), and by writing every output through
the ``atomic_*`` helpers so a killed run never leaves a half-written file behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: the stage-1 scripts never need it
    import torch

log = logging.getLogger("quixer")


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr with the time; INFO by default, DEBUG with ``--verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> None:
    """Run a stage's ``main(argv)``; a :class:`UserError` exits 2 with ``error: <message>`` on one
    line (line breaks inside a message, e.g. quoted from a library, are folded)."""
    from .interrupts import unwind_on_interrupt

    unwind_on_interrupt()  # start-up is over: a Ctrl-C now unwinds, so atomic writes clean up
    try:
        code = main(argv)
    except UserError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(int(code or 0))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    The rename is atomic on POSIX, so readers see either the old file or the whole new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (if imported) for a deterministic run."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


def rng_state() -> dict:
    """The python / numpy / torch / CUDA generator states (dropout draws from them)."""
    import torch

    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (CUDA only where the device count matches)."""
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
                         "has_gauss": npst["has_gauss"], "gauss": npst["gauss"]})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def resolve_device(name: str = "auto") -> "torch.device":
    """``auto`` -> cuda when available else cpu; ``cuda`` without a GPU is a clear error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda requested but torch sees no CUDA GPU (use --device cpu or auto)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def check_output_dir(out_dir: str | os.PathLike, signature: dict, force: bool = False, stage: str | None = None
                     ) -> bool:
    """Decide what to do with a stage's output directory before any work is done.

    Returns True when ``out_dir`` already holds a finished run with the same ``signature``
    (parameters + input hashes), so the stage can skip. A directory holding a different run of
    this ``stage`` is a :class:`UserError` unless ``force``; one holding anything else (another
    stage's output, a training run, foreign files) is refused even with ``force``: it says what
    the directory holds and deletes nothing.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return False
    meta_path = out_dir / "metadata.json"
    meta = read_json(meta_path) if meta_path.is_file() else None
    ours = isinstance(meta, dict) and "signature" in meta and (stage is None or meta.get("stage") in (stage, None))
    if not ours:
        raise UserError(f"{out_dir}: holds {describe_directory(out_dir)}; this stage replaces only its own earlier "
                        "output (even with --force): choose another output directory")
    if force:
        return False
    if meta.get("signature") == json.loads(json.dumps(signature, default=_json_default)):
        return True
    raise UserError(f"{out_dir}: holds a different run (other parameters or input); pass --force to replace it or choose another output directory")


def describe_directory(path: str | os.PathLike) -> str:
    """What a non-empty directory holds, in a few words, for refusals that must not delete it."""
    path = Path(path)
    names = sorted(p.name for p in path.iterdir())
    run_files = [n for n in ("best.pt", "last.pt", "results.json", "metrics.jsonl") if n in names]
    if "config.json" in names and run_files:
        return f"a training run ({', '.join(['config.json', *run_files])})"
    meta = path / "metadata.json"
    if meta.is_file():
        try:
            stage = json.loads(meta.read_text(encoding="utf-8")).get("stage")
        except (OSError, ValueError, AttributeError):
            stage = None
        if isinstance(stage, str):
            return f"the output of {stage}.py"
    runs = [p for p in path.iterdir() if p.is_dir() and (any(p.glob("config.json")) or any(p.glob("*/config.json")))]
    if runs:
        return f"training runs ({', '.join(sorted(p.name for p in runs)[:3])}{', ...' if len(runs) > 3 else ''})"
    if "results.md" in names and "results.json" in names:
        return "a report (results.json, results.md)"
    return f"{len(names)} file(s) that are not an output of this pipeline ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"


@contextlib.contextmanager
def staged_output_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty sibling temp directory; on success it replaces ``out_dir`` as a whole.

    A failure or kill leaves ``out_dir`` as it was (at worst a hidden ``.name.tmp-*`` sibling).
    """
    import shutil

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "d")
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def add_stage_flags(parser) -> None:
    """``--force`` and ``--verbose``, the same on every data stage."""
    parser.add_argument("--force", action="store_true", help="replace an output directory that holds a different run")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


# Which script writes a file of a given name, when the directory's own metadata does not say.
_WRITERS_BY_NAME = {
    "kmer_embeddings.pt": "lambeq_encoder.py",
    "cluster_centers.pt": "quantize_lambeq_embeddings.py",
    "kmer_ids.pt": "quantize_lambeq_embeddings.py",
    "best.pt": "train_quixer_hybrid.py or train_classical_baselines.py",
    "last.pt": "train_quixer_hybrid.py or train_classical_baselines.py",
}


def torch_file_writer(path: str | os.PathLike) -> str:
    """The script that writes ``path``, for error messages: the stage named in the directory's
    metadata.json, the trainer named by a run's config.json, else a guess from the file name.
    Never raises: it only words an error that is already happening."""
    path = Path(path)
    try:
        meta_path, cfg_path = path.parent / "metadata.json", path.parent / "config.json"
        if meta_path.is_file():
            stage = json.loads(meta_path.read_text(encoding="utf-8")).get("stage")
            if isinstance(stage, str) and stage:
                return f"{stage}.py"
        if cfg_path.is_file():
            if path.parent.parent.name == "trials":
                return "tune_quixer_hybrid.py"
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            return "train_classical_baselines.py" if "model" in cfg else "train_quixer_hybrid.py"
    except (OSError, ValueError, AttributeError):
        pass
    return _WRITERS_BY_NAME.get(path.name, "an earlier stage")


def load_torch_file(path: str | os.PathLike, written_by: str | None = None) -> Any:
    """``torch.load`` on the CPU with tensors only (never unpickling arbitrary objects).

    A missing, truncated, corrupt or foreign file is one :class:`UserError` line naming the file
    and the script that writes it (``written_by``, else :func:`torch_file_writer`); torch's own
    multi-line explanation goes to the debug log only, since its advice (``weights_only=False``)
    is unsafe for files from elsewhere.
    """
    import pickle

    import torch

    path = Path(path)
    writer = written_by or torch_file_writer(path)
    if not path.exists():
        raise UserError(f"{path}: file not found (written by {writer}; run it first)")
    if not path.is_file():
        raise UserError(f"{path}: not a file (written by {writer}; rerun it to replace it)")
    # torch warns about some foreign pickles before failing on them: hold its warnings until
    # the load succeeds, so a failure stays one line.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 (corrupt, truncated, foreign or unreadable)
            log.debug("torch.load(%s) failed: %s: %s", path, type(exc).__name__, exc)
            if isinstance(exc, PermissionError):
                why = "permission denied"
            elif isinstance(exc, pickle.UnpicklingError) and "unsupported global" in str(exc).lower():
                why = "holds Python objects besides tensors (refused: only tensor files are loaded)"
            else:  # torch reports a cut file as RuntimeError, EOFError, OSError or KeyError, depending on where
                why = "truncated, corrupt or not a torch file"
            raise UserError(f"{path}: {why} (written by {writer}; rerun it to replace the file)") from None
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return obj
