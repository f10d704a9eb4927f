"""The main job end to end (run_pipeline.sh) on a slice of the real sample, and its reuse."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import REPO, sample_slice

REFERENCES = {"uniform", "unigram", "ngram", "token_ceiling", "raw_bases"}
MODELS = REFERENCES | {"quixer_ablation", "quixer_ablation_matched", "lstm", "transformer", "quixer"}
TRAINED = MODELS - REFERENCES


def _run(*args, timeout=900):
    return subprocess.run(["bash", str(REPO / "run_pipeline.sh"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_pipeline_runs_end_to_end_and_reuses_finished_stages(tmp_path):
    fasta = sample_slice(tmp_path / "slice.fa", 70)
    out = tmp_path / "out"
    first = _run("--fasta", fasta, "--out", out, "--epochs", 1, "--seeds", 2, "--eval_targets", 3000)
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    rows = report["rows"]
    assert {r["model"] for r in rows} == MODELS and report["provenance"]["command"][0] == "report_results.py"
    for r in rows:
        assert 0 <= r["test_top1"] <= r["test_top5"] <= 1 and r["test_perplexity"] > 1
        lo, hi = r["test_top1_ci95"]
        assert lo <= r["test_top1"] <= hi and r["test_perplexity_ci95"][0] <= r["test_perplexity"]
        assert 0 < r["novel_fraction"] <= 1 and 0 <= r["novel_test_top1"] <= 1 and r["novel_test_perplexity"] > 1
        assert r["seeds"] == ([42, 43] if r["model"] in TRAINED else [])
        assert r["test_targets"] == rows[0]["test_targets"] and r["targets_sha256"] == rows[0]["targets_sha256"]
        if r["model"] not in ("quixer", "uniform"):
            assert "ci95" in r["quixer_top1_difference"] and "ci95" in r["quixer_perplexity_difference"]
        if r["model"] in TRAINED:  # against the task's ceiling
            assert r["gain_share_top1"] is not None and r["gain_share_loss"] is not None
    ceiling = next(r for r in rows if r["model"] == "token_ceiling")
    assert 0 < ceiling["anatomy"]["candidate_tokens_fewer_than_4"] < 1 and 0 < ceiling["anatomy"]["last_bases_pinned"] < 1
    uniform = next(r for r in rows if r["model"] == "uniform")
    assert abs(uniform["test_perplexity"] - 512) < 1e-6 and abs(uniform["test_top1"] - 1 / 512) < 1e-12
    assert "| quixer |" in first.stdout and (out / "results.md").read_text() in first.stdout
    for png in ("learning_curves.png", "test_accuracy.png", "test_perplexity.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}

    again = _run("--fasta", fasta, "--out", out, "--epochs", 1, "--seeds", 2, "--eval_targets", 3000)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("up to date") >= 3 and again.stderr.count("already fitted") == len(REFERENCES)
    assert again.stderr.count("already finished") == 2 * len(TRAINED)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == stamps

    # both tracks: the same out dir (stages 1-3 and the quantised runs reused), raw 6-mers of the
    # same windows for the references and one LSTM seed, side by side in the report
    both = _run("--fasta", fasta, "--out", out, "--epochs", 1, "--seeds", 1, "--eval_targets", 3000,
                "--models", "lstm", "--tokens", "both")
    assert both.returncode == 0, both.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    raw = [r for r in report["rows"] if r["track"] == "raw"]
    assert {r["model"] for r in raw} == REFERENCES | {"lstm"} and all(r["run"].endswith(" (raw 6-mers)") for r in raw)
    assert len(report["rows"]) == len(MODELS) + len(raw)
    diffs = {d["model"]: d for d in report["tokenisation_differences"]}
    assert set(diffs) == REFERENCES | {"lstm"} and {d["paired_on"] for d in diffs.values()} == {"positions"}
    assert "ci95" in diffs["lstm"]["top1_difference"] and "ci95" in diffs["lstm"]["perplexity_difference"]
    assert "Tokenisation: raw 6-mers minus quantised tokens" in (out / "results.md").read_text()

    # a larger --epochs extends the runs instead of refusing them; --models picks a subset; the two
    # seeds of one model train in the two lanes (seed 42 in the background lane, 43 in front)
    lane_log = out / "train_lane1.log"
    before = lane_log.read_text()
    more = _run("--fasta", fasta, "--out", out, "--epochs", 2, "--seeds", 2, "--models", "lstm", "--eval_targets", 3000,
                "--jobs", 2)
    assert more.returncode == 0, more.stderr[-3000:]
    for seed in (42, 43):
        extended = json.loads((out / "runs" / "lstm" / f"seed_{seed}" / "results.json").read_text())
        assert (extended["epochs_run"], extended["extended_from"]) == (2, [1])
    background = lane_log.read_text()[len(before):]
    assert "stage 4: lstm, seed 42" in background and "stage 4: lstm, seed 43" not in background
    assert "stage 4: lstm, seed 43" in more.stderr
    assert "stage 4: quixer" not in more.stderr


def test_pipeline_flag_errors():
    res = _run("--epochs", "zero")
    assert res.returncode == 2 and res.stderr.strip() == "error: --epochs must be a positive integer"
    res = _run("--fasta", "/nonexistent.fa")
    assert res.returncode == 2 and "not found" in res.stderr
    res = _run("--models", "lstm,gpt")
    assert res.returncode == 2 and "unknown model 'gpt'" in res.stderr
    res = _run("--protocol", "paper")
    assert res.returncode == 2 and res.stderr.strip() == "error: --protocol must be project or official"
    assert _run("--help").returncode == 0
