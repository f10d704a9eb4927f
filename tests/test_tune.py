"""tune_quixer_hybrid.py: a resumable Optuna study of tiny real Quixer trials, and the
best_config.json -> train_quixer_hybrid.py --config round trip."""
from __future__ import annotations

import json

import optuna
import pytest

import train_quixer_hybrid
import tune_quixer_hybrid
from quixer.common import UserError
from tests.token_fixtures import make_token_dir

TINY_SPACE = {
    "qubits": None,  # not searched: --qubits 2 below
    "degree": {"low": 1, "high": 2},
    "ansatz_layers": {"low": 1, "high": 2},
    "embedding_dim": {"choices": [8, 16]},
    "lr": {"low": 0.001, "high": 0.02, "log": True},
    "dropout": {"low": 0.0, "high": 0.2},
    "init_strategy": {"choices": ["small_gaussian", "centroid"]},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
def test_study_resumes_and_best_config_round_trips(tmp_path):
    tokens = make_token_dir(tmp_path / "tokens", sizes=(320, 96, 96), with_centers=True)
    space = tmp_path / "space.json"
    space.write_text(json.dumps(TINY_SPACE))
    out = tmp_path / "tune"
    argv = ["--data_dir", str(tokens), "--output_dir", str(out), "--epochs_per_trial", "2", "--search_space",
            str(space), "--max_train_batches", "4", "--batch_size", "16", "--device", "cpu", "--seed", "3", "--qubits", "2"]
    assert tune_quixer_hybrid.main(argv + ["--n_trials", "2"]) == 0
    assert (out / "study.db").exists()
    assert tune_quixer_hybrid.main(argv + ["--n_trials", "3"]) == 0  # continues the same study
    study = optuna.load_study(study_name="quixer", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 3  # no repeated draws
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert sorted(t.intermediate_values) == [1, 2]  # validation loss reported per epoch
        trial_dir = out / "trials" / f"trial_{t.number:04d}"
        results = json.loads((trial_dir / "results.json").read_text())
        assert results["epochs_run"] == 2 and "val_loss" in results
        # tuning never touches the test split
        assert not any(k.startswith(("test_", "novel_test")) for k in results) and "test_loss" not in t.user_attrs
        assert not (trial_dir / "test_scores.npz").exists()
    best = json.loads((out / "best_config.json").read_text())
    assert {k: best[k] for k in study.best_params} == study.best_params
    assert "qubits" not in study.best_params and best["qubits"] == 2
    summary = json.loads((out / "study_summary.json").read_text())
    assert summary["best_trial"] == study.best_trial.number
    assert len(summary["provenance"]["git_commit"]) == 40 and summary["data_fingerprint"]

    run = tmp_path / "tuned"
    train_quixer_hybrid.main(["--config", str(out / "best_config.json"), "--output_dir", str(run),
                              "--epochs", "1", "--max_train_batches", "2", "--device", "cpu"])
    config = json.loads((run / "config.json").read_text())
    for key, value in best.items():
        assert config[key] == value, key
    assert json.loads((run / "results.json").read_text())["epochs_run"] == 1

    space.write_text(json.dumps({**TINY_SPACE, "degree": {"low": 1, "high": 3}}))
    with pytest.raises(UserError, match="another search space"):
        tune_quixer_hybrid.main(argv + ["--n_trials", "4"])
    space.write_text(json.dumps({"depth": {"low": 1, "high": 2}}))
    with pytest.raises(UserError, match="unknown parameter"):
        tune_quixer_hybrid.main(argv + ["--n_trials", "4"])
