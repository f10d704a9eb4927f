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
