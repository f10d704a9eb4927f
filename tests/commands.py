"""Run documented command lines as a user would: extracted from a text, in a prepared directory.

Used for the scripts' ``--help`` examples and the original plan's commands, and meant for any
other text holding commands (e.g. the README's code blocks):

    for cmd in runnable(extract_commands(text)):
        ws.run(cmd, extra="--epochs 1")       # ws = Workspace(tmp_path)

A :class:`Workspace` is a directory that looks like a checkout to the commands: every top-level
script of the repository is linked into it (so ``python prepare_autoregressive_data.py`` and
``bash run_lambeq_gpu.sh`` work there as written) and ``python`` / ``python3`` on its PATH are
this test interpreter. Nothing puts the repository on ``PYTHONPATH``: the scripts find the
``quixer`` package because it is installed.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import REPO

# What a command line starts with (after any VAR=value assignments).
_PROGRAMS = ("python", "python3", "bash", "torchrun")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]+$")  # FASTA, OUT_DIR, DATA_DIR ... in a usage synopsis


def top_level_scripts() -> list[str]:
    """The repository's stage scripts and launchers (top-level ``*.py`` and ``*.sh``)."""
    return sorted(p.name for p in REPO.iterdir() if p.is_file() and p.suffix in (".py", ".sh"))


def extract_commands(text: str) -> list[str]:
    """Every command line in ``text``, in order, normalised (continuations joined, comments dropped).

    A command line is one whose first word, after ``$ `` and ``VAR=value`` assignments, is
    ``python``, ``python3``, ``bash``, ``torchrun`` or ``./something``. A trailing backslash
    continues it on the next line; ``# ...`` outside quotes ends it. The result is the shell
    form of its words (``shlex.join``), so the same command written with other spacing or a
    different comment compares equal.
    """
    commands = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if line.startswith("$ "):
            line = line[2:].lstrip()
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # unbalanced quotes: prose, not a command
            continue
        head = next((w for w in words if not _ASSIGNMENT.match(w)), None)
        if head is not None and (head in _PROGRAMS or head.startswith("./")):
            commands.append(shlex.join(words))
    return commands


def is_synopsis(command: str) -> bool:
    """A usage pattern rather than an example: optional ``[...]`` parts or ALLCAPS placeholders."""
    words = [w for w in shlex.split(command) if not _ASSIGNMENT.match(w)]
    return any(w.startswith("[") or _PLACEHOLDER.match(w) for w in words)


def runnable(commands: list[str]) -> list[str]:
    """The examples among ``commands`` (synopses left out), each once, in first-seen order."""
    return list(dict.fromkeys(c for c in commands if not is_synopsis(c)))


@functools.lru_cache(maxsize=None)
def help_text(script: str) -> str:
    """What ``--help`` prints for a top-level script. A Python script's ``main(["--help"])`` runs
    in this process (the same argparse text a user sees, without a Python start-up per script);
    a shell launcher runs with bash."""
    if script.endswith(".sh"):
        proc = subprocess.run(["bash", str(REPO / script), "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{script} --help failed: {proc.stderr[-2000:]}"
        return proc.stdout
    module = importlib.import_module(script.removesuffix(".py"))
    out, argv0 = io.StringIO(), sys.argv[0]
    sys.argv[0] = script  # argparse names the program after it
    try:
        with contextlib.redirect_stdout(out):
            module.main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0, f"{script} --help exited {exc.code}"
    else:
        raise AssertionError(f"{script} --help did not exit")
    finally:
        sys.argv[0] = argv0
    return out.getvalue()


class Workspace:
    """A working directory in which documented commands run as written (see the module doc)."""

    def __init__(self, root: Path, env: dict | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.extra_env = dict(env or {})
        for name in top_level_scripts():
            link = self.root / name
            if not link.exists():
                link.symlink_to(REPO / name)
        bin_dir = self.root / ".bin"
        bin_dir.mkdir(exist_ok=True)
        for name in ("python", "python3"):  # wrappers, not links: a venv is found from its own path
            wrapper = bin_dir / name
            wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
            wrapper.chmod(0o755)
        self.log: list[tuple[str, subprocess.CompletedProcess, float]] = []  # (command, result, seconds)

    def env(self) -> dict:
        """This interpreter first on PATH (then its own bin directory, for ``torchrun``)."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        path = [str(self.root / ".bin"), str(Path(sys.executable).parent), env.get("PATH", "")]
        env.update(PATH=os.pathsep.join(path), PYTHONUNBUFFERED="1", **self.extra_env)
        return env

    def run(self, command: str, extra: str = "", timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``command`` (plus ``extra``, appended: later flags override earlier ones) with bash in
        the workspace; with ``check`` a non-zero exit fails the test showing the command's stderr."""
        line = f"{command} {extra}".strip()
        start = time.perf_counter()
        proc = subprocess.run(["bash", "-c", line], cwd=self.root, env=self.env(), capture_output=True,
                              text=True, timeout=timeout)
        self.log.append((line, proc, time.perf_counter() - start))
        if check:
            assert proc.returncode == 0, f"`{line}` exited {proc.returncode}:\n{proc.stderr[-4000:]}"
        return proc

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)
