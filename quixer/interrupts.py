"""Ctrl-C at any moment of a stage script: one line and exit status 130, never a traceback.

Each script installs this before its heavy imports (torch, lambeq, qiskit take seconds), where
a ``KeyboardInterrupt`` would escape :func:`quixer.common.run_cli` as a long traceback. The
handler raises ``SystemExit``, which unwinds like the interrupt did: ``finally`` blocks run, so
atomic writes still leave no half-written output. Only the standard library is imported here.
"""
from __future__ import annotations

import signal
import sys

INTERRUPTED_EXIT_STATUS = 130  # 128 + SIGINT, as shells report it


def _interrupted(signum, frame) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the clean-up
    print("error: interrupted", file=sys.stderr)
    raise SystemExit(INTERRUPTED_EXIT_STATUS)


def exit_on_interrupt() -> None:
    """Make SIGINT (Ctrl-C) print one line and exit with status 130 (main thread only)."""
    signal.signal(signal.SIGINT, _interrupted)
