"""bench/compare_budgets.py: per-seed changes between two trainings on the same targets."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from scipy import stats

from tests.helpers import REPO

SCRIPT = REPO / "bench" / "compare_budgets.py"


def _run(folder, model, seed, top1, val_loss, targets="abc", train_loss=None):
    run = folder / model / f"seed_{seed}"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"test_top1": top1, "val_loss": val_loss, "targets_sha256": targets}))
    epochs = [{"epoch": 1, "train_loss": 9.0, "val_loss": 9.0},
              {"epoch": 2, "train_loss": train_loss if train_loss is not None else val_loss, "val_loss": val_loss}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))


def _compare(before, after, *flags):
    return subprocess.run([sys.executable, str(SCRIPT), str(before), str(after), *flags],
                          capture_output=True, text=True, cwd=REPO)


def test_changes_are_paired_by_seed_with_a_t_interval_over_the_shared_seeds(tmp_path):
    old, new = [0.30, 0.31, 0.29], [0.36, 0.38, 0.35]
    for seed, a, b in zip((42, 43, 44), old, new):
        _run(tmp_path / "old", "lstm", seed, a, 1.7)
        _run(tmp_path / "new", "lstm", seed, b, 1.4, train_loss=1.45)
    _run(tmp_path / "new", "lstm", 45, 0.99, 1.0)  # a seed only the new folder holds is left out
    _run(tmp_path / "old", "ngram", 42, 0.36, 1.3)  # no new run: no row
    done = _compare(tmp_path / "old", tmp_path / "new", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert list(rows) == ["lstm"]
    row = rows["lstm"]
    change = 100 * (np.array(new) - np.array(old))
    assert row["seeds"] == [42, 43, 44]
    assert np.allclose(row["change_per_seed"], change)
    expected = stats.t.interval(0.95, df=2, loc=change.mean(), scale=stats.sem(change))
    assert np.allclose(row["change_interval"], expected)
    assert np.isclose(row["new_top1"], 100 * np.mean(new))
    assert np.allclose(row["train_minus_val"], [0.05] * 3)
    table = _compare(tmp_path / "old", tmp_path / "new").stdout
    assert "| lstm | 42, 43, 44 | 30.00 % | 36.33 % |" in table


def test_runs_scored_on_other_targets_are_refused_in_one_line(tmp_path):
    _run(tmp_path / "old", "lstm", 42, 0.3, 1.7, targets="abc")
    _run(tmp_path / "new", "lstm", 42, 0.4, 1.4, targets="def")
    done = _compare(tmp_path / "old", tmp_path / "new")
    assert done.returncode != 0
    assert done.stdout == ""
    assert "different test targets" in done.stderr and len(done.stderr.strip().splitlines()) == 1
