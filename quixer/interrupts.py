"""Ctrl-C at any moment of a stage script: one line and exit status 130, never a traceback.

Each script installs this before its heavy imports (torch, lambeq, qiskit take seconds), where
a ``KeyboardInterrupt`` would escape :func:`quixer.common.run_cli` as a long traceback. Two
phases. While the script starts up there is nothing to clean up, and an exception raised inside
an import can be swallowed by a library's bare ``except:`` (dill's does, then fails otherwise),
so the process leaves at once. Once :func:`quixer.common.run_cli` calls the stage, the handler
raises ``SystemExit``, which unwinds like the interrupt did: ``finally`` blocks run, so atomic
writes still leave no half-written output. Only the standard library is imported here.
"""
from __future__ import annotations

import os
import signal
import sys

INTERRUPTED_EXIT_STATUS = 130  # 128 + SIGINT, as shells report it
MESSAGE = "error: interrupted"


def _leave_now(signum, frame) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stderr.write(MESSAGE + "\n")
    sys.stderr.flush()
    os._exit(INTERRUPTED_EXIT_STATUS)


def _unwind(signum, frame) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the clean-up
    print(MESSAGE, file=sys.stderr)
    raise SystemExit(INTERRUPTED_EXIT_STATUS)


def exit_on_interrupt() -> None:
    """Make SIGINT (Ctrl-C) print one line and exit with status 130 (main thread only): at once
    during start-up, by unwinding once :func:`unwind_on_interrupt` has run."""
    signal.signal(signal.SIGINT, _leave_now)


def unwind_on_interrupt() -> None:
    """From here on a Ctrl-C unwinds (``finally`` blocks run); a no-op unless
    :func:`exit_on_interrupt` was installed."""
    if signal.getsignal(signal.SIGINT) is _leave_now:
        signal.signal(signal.SIGINT, _unwind)
