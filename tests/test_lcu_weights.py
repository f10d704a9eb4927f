"""bench/lcu_weights.py: a trained Quixer's LCU and polynomial weights beside its postselection."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import train_quixer_hybrid
from tests.helpers import REPO
from tests.token_fixtures import make_token_dir

SCRIPT = REPO / "bench" / "lcu_weights.py"


@pytest.mark.usefixtures("one_torch_thread")
def test_shares_from_a_real_run_agree_with_its_checkpoint(tmp_path):
    tokens = make_token_dir(tmp_path / "tokens")
    runs = tmp_path / "quixer"
    for seed in (7, 8):
        assert train_quixer_hybrid.main(["--data_dir", str(tokens), "--output_dir", str(runs / f"seed_{seed}"),
                                         "--qubits", "2", "--degree", "2", "--ansatz_layers", "2", "--embedding_dim",
                                         "16", "--device", "cpu", "--epochs", "1", "--seed", str(seed)]) == 0
    out = tmp_path / "weights.json"
    done = subprocess.run([sys.executable, str(SCRIPT), str(runs), "--json", str(out)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["runs"]
    assert [r["seed"] for r in rows] == [7, 8] and len(done.stdout.splitlines()) == 2 + 2
    for r in rows:
        state = torch.load(f"{r['run']}/best.pt", map_location="cpu")["model"]
        b = state["lcu_coefficients"].abs().double()
        assert r["position_shares"] == pytest.approx((b / b.sum()).tolist()) and len(r["position_shares"]) == 7
        assert r["last_position_share"] == pytest.approx(float(b[-1] / b.sum()))
        largest = sorted(r["position_shares"], reverse=True)  # fewest positions whose shares reach 90 %
        n = r["positions_for_90_percent"]
        assert sum(largest[:n]) >= 0.9 and (n == 1 or sum(largest[:n - 1]) < 0.9)
        c = state["qsvt_polynomial_coefficients"].abs().double()
        assert r["polynomial_shares"] == pytest.approx((c / c.sum()).tolist()) and len(c) == 3
        results = json.loads((REPO / r["run"] / "results.json").read_text())
        assert r["postselection"] == results["postselection"] and 0 < r["postselection"] <= 1

    # a run still training (best.pt, no results.json yet) is shown, except with --finished
    unfinished = runs / "seed_9"
    unfinished.mkdir()
    (unfinished / "best.pt").write_bytes((runs / "seed_8" / "best.pt").read_bytes())
    for flags, seeds in (((), [7, 8, None]), (("--finished",), [7, 8])):
        done = subprocess.run([sys.executable, str(SCRIPT), str(runs), "--json", str(out), *flags], capture_output=True,
                              text=True, cwd=REPO, timeout=300)
        assert done.returncode == 0 and [r["seed"] for r in json.loads(out.read_text())["runs"]] == seeds


def test_a_folder_without_runs_is_one_line_error(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and done.stderr.strip() == f"error: {tmp_path}: no best.pt, and no seed_*/best.pt under it"
