"""Ctrl-C while a stage script starts up (its heavy imports) or runs: one line, exit status 130."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO


@pytest.mark.parametrize("script", ["train_quixer_hybrid.py", "quantize_lambeq_embeddings.py"])
def test_ctrl_c_during_start_up_is_one_line_and_130(script, tmp_path):
    proc = subprocess.Popen([sys.executable, str(REPO / script), "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    time.sleep(0.6)  # inside the imports of torch / scikit-learn, long before --help is printed
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the script started up before the signal arrived")
    assert proc.returncode == 130, err
    assert err.strip() == "error: interrupted" and out == ""


def interrupt_when_ready(code: str) -> tuple[int, str, str]:
    """Run ``code`` in a fresh interpreter, send Ctrl-C once it prints ``ready``; (status, stderr,
    the rest of stdout)."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, err, out


SWALLOWING_IMPORT = """
import sys, time
from quixer.interrupts import exit_on_interrupt
exit_on_interrupt()
print("ready", flush=True)
try:  # a library's bare except around an import (dill has one): it must not swallow the Ctrl-C
    time.sleep(30)
except:  # noqa: E722
    pass
print("swallowed", flush=True)
"""


def test_ctrl_c_during_start_up_is_not_swallowed_by_a_bare_except(tmp_path):
    returncode, err, out = interrupt_when_ready(SWALLOWING_IMPORT)
    assert (returncode, err.strip(), out) == (130, "error: interrupted", "")


UNWINDING_MAIN = """
import sys, time
from quixer.interrupts import exit_on_interrupt
exit_on_interrupt()
from quixer.common import run_cli

def main(argv):
    try:
        print("ready", flush=True)  # inside the try: a Ctrl-C right after it must find the finally block
        time.sleep(30)
    finally:
        print("cleaned up", flush=True)

run_cli(main, [])
"""


def test_ctrl_c_once_the_stage_runs_unwinds_through_finally_blocks(tmp_path):
    returncode, err, out = interrupt_when_ready(UNWINDING_MAIN)
    assert (returncode, err.strip(), out) == (130, "error: interrupted", "cleaned up\n")
