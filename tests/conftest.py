"""Fixtures shared by the tests (plain helpers and paths live in tests/helpers.py), and two hooks for
the GPU check: a per-test time limit and skips for tests that need packages the GPU machines lack."""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from tests.helpers import SAMPLE_FASTA


@pytest.fixture(scope="session")
def sample_fasta() -> Path:
    return SAMPLE_FASTA


@pytest.fixture(scope="session")
def stage1_dir(tmp_path_factory) -> Path:
    """Stage 1 run once on the embedded sample, shared read-only by tests of later stages."""
    from quixer.windows import WindowConfig, prepare_autoregressive_data

    out = tmp_path_factory.mktemp("stage1") / "autoregressive_data"
    prepare_autoregressive_data(SAMPLE_FASTA, out, WindowConfig())
    return out


@pytest.fixture
def one_torch_thread():
    """Tiny models run far slower with 2 OpenMP threads on a busy 2-core machine; restore after."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---- the GPU check's safety nets (bench/gpu_check.sh sets both variables) -------------------------

OPTIONAL_PACKAGES = ("lambeq", "discopy", "pytket", "qiskit", "qiskit_aer")


def _seconds_per_test() -> float:
    """``QUIXER_TEST_TIMEOUT`` (seconds per test, 0 or unset: no limit)."""
    try:
        return max(0.0, float(os.environ.get("QUIXER_TEST_TIMEOUT") or 0))
    except ValueError:
        raise pytest.UsageError("QUIXER_TEST_TIMEOUT must be a number of seconds") from None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Fail a test that runs longer than ``QUIXER_TEST_TIMEOUT`` seconds (SIGALRM, main thread).

    Why: pytest-timeout is not installed everywhere (not on the lent GPU machines), and a GPU test
    that hangs must not use up a check's few minutes. The alarm interrupts Python code, not a call
    blocked inside a driver: the check also runs pytest under ``timeout``. Off where pytest-timeout
    is active (``--timeout``) or SIGALRM does not exist.
    """
    seconds = _seconds_per_test()
    if (not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread()
            or item.config.getoption("timeout", default=None)):
        yield
        return

    def expire(signum, frame):
        pytest.fail(f"timed out after {seconds:g} s (QUIXER_TEST_TIMEOUT)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With ``QUIXER_SKIP_MISSING_OPTIONAL=1``, a test that fails because lambeq, pytket or qiskit is
    not installed is reported as skipped. Why: the GPU machines have none of them, and a check
    there should report what it could test; everywhere else (CI) a missing package stays a failure."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("QUIXER_SKIP_MISSING_OPTIONAL") != "1" or call.excinfo is None or not report.failed:
        return
    error = call.excinfo.value
    if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] in OPTIONAL_PACKAGES:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: needs {error.name} (not installed)")
