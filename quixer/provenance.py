"""How a run was made: code version, package versions, command line, host and times.

A number in a results file is only reproducible with the code and environment that made it, so
every run's ``results.json`` carries this record. Nothing here may fail a run: a missing git or
package is recorded as ``None``.
"""
from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "numpy", "scikit-learn", "scipy", "lambeq", "pytket", "qiskit", "qiskit-aer", "qiskit-aer-gpu",
            "triton", "optuna")
_REPO = Path(__file__).resolve().parents[1]


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def git_state(repo: Path = _REPO) -> dict[str, Any]:
    """The commit of the code that runs, and whether its tracked files differ from it."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages a run's numbers can depend on (None: not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(started: str, command: list[str] | None = None, **resolved: Any) -> dict[str, Any]:
    """The whole record: ``command`` as the script parsed it (default: this process's argv);
    ``resolved`` adds what the run decided at run time (device, simulator)."""
    return {**git_state(), "python": platform.python_version(), "packages": package_versions(),
            "command": command or [Path(sys.argv[0]).name, *sys.argv[1:]], "host": platform.node(),
            "started": started, "finished": now(), **resolved}
