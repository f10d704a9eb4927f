"""The campaign driver (bench/campaign_chrX.sh) on a tiny campaign: a phase pinned at a commit
runs in the background from its own worktree, status says what finished, publish copies the
finished runs and writes the README's table, and a fresh campaign directory (another machine) finds them finished."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, sample_slice

SCRIPT = REPO / "bench" / "campaign_chrX.sh"


def _campaign(command: str, env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=timeout)


def _wait_for(path, text: str, seconds: int = 900) -> None:
    """Until the driver's wall.log says ``text`` (or that the phase failed: then its log's tail)."""
    end = time.time() + seconds
    while time.time() < end:
        log = path.read_text() if path.is_file() else ""
        if text in log:
            return
        if "failed" in log:
            logs = sorted((path.parent / "logs").glob("*.log"))
            raise AssertionError("the campaign phase failed:\n" + "\n".join(p.read_text()[-2000:] for p in logs))
        time.sleep(2)
    raise AssertionError(f"{text!r} never appeared in {path}")


@pytest.mark.slow
def test_tiny_campaign_runs_publishes_and_restores(tmp_path):
    fasta = sample_slice(tmp_path / "slice.fa", 40)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    phases = tmp_path / "phases"
    tiny = f"{commit} --protocol official --epochs 1 --eval_targets 2000"
    # after `tiny`, two phases at once: `more` adds a seed to the LSTM, `&beside` trains another model
    phases.write_text(f"# test\ntiny {tiny} --seeds 1 --models lstm\nmore {tiny} --seeds 2 --models lstm\n"
                      f"&beside {tiny} --seeds 1 --models quixer_ablation\n")
    env = dict(os.environ, CAMPAIGN_DIR=str(tmp_path / "c1"), CAMPAIGN_FASTA=str(fasta), CAMPAIGN_PHASES=str(phases),
               CAMPAIGN_PUBLISH=str(tmp_path / "published"), CAMPAIGN_README=str(tmp_path / "README.md"),
               OMP_NUM_THREADS="1", PYTHON=sys.executable)
    (tmp_path / "README.md").write_text("# x\n<!-- chrX table: start -->\n<!-- chrX table: end -->\n")
    try:
        assert _campaign("start", env).returncode == 0
        wall = tmp_path / "c1" / "wall.log"
        _wait_for(wall, "end more")
        _wait_for(wall, "end beside")
        events = [line.split()[1:3] for line in wall.read_text().splitlines()]
        assert events.index(["end", "tiny"]) < events.index(["start", "more"])  # a plain phase waits
        assert events.index(["start", "beside"]) < events.index(["end", "more"])  # &beside starts with more
        status = _campaign("status", env)
        assert "tiny       lstm                     seed 42  finished     1/1 epochs" in status.stdout, status.stdout
        assert "more       lstm                     seed 43  finished     1/1 epochs" in status.stdout
        assert "beside     quixer_ablation          seed 42  finished     1/1 epochs" in status.stdout
        assert "3 finished, 0 running, 0 interrupted, 0 pending of 3 runs" in status.stdout
        refs = _campaign("references", env, timeout=600)
        assert refs.returncode == 0, refs.stderr[-2000:]
        assert _campaign("publish", env).returncode == 0
        published = tmp_path / "published"
        assert {p.name for p in (published / "runs").iterdir()} == {"lstm", "quixer_ablation", "uniform", "unigram",
                                                                    "ngram", "token_ceiling", "raw_bases"}
        assert "token_ceiling" in (published / "results.md").read_text()
        assert "(campaign complete: see status.txt)" in (published / "results.md").read_text().splitlines()[0]
        run = published / "runs" / "lstm" / "seed_42"
        assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl", "results.json",
                                                         "test_scores.npz"]
        results = json.loads((run / "results.json").read_text())
        assert results["protocol"] == "official" and results["provenance"]["git_commit"] == commit
        assert status.stdout.splitlines()[0] == (published / "status.txt").read_text().splitlines()[0]
        readme = (tmp_path / "README.md").read_text()  # publish wrote the table into the README
        converged = sum(json.loads((published / "runs" / "lstm" / f"seed_{s}" / "results.json").read_text())["converged"]
                        for s in (42, 43))
        assert "3 finished, 0 running" in readme
        assert f"| {converged} of 2 |" in readme.split("| lstm | 2 | ")[1].splitlines()[0]
        # another machine: a fresh campaign directory restores the published run and skips it
        env2 = dict(env, CAMPAIGN_DIR=str(tmp_path / "c2"))
        assert _campaign("start", env2).returncode == 0
        _wait_for(tmp_path / "c2" / "wall.log", "end more")
        _wait_for(tmp_path / "c2" / "wall.log", "end beside")
        for phase in ("tiny", "more", "beside"):
            log = (tmp_path / "c2" / "logs" / f"{phase}.log").read_text()
            assert "already finished" in log and "epoch 1/1" not in log
    finally:
        for c in ("c1", "c2"):
            _campaign("stop", dict(env, CAMPAIGN_DIR=str(tmp_path / c)))
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tmp_path / c / f"code-{commit}")],
                           capture_output=True)


def test_epoch_costs_projects_an_epoch_from_a_capped_run(tmp_path):
    """bench/epoch_costs.py trains each model a capped epoch with the real trainers and projects
    the full epoch from the measured throughput: train windows / train seq/s + the rest of the epoch."""
    from tests.token_fixtures import make_token_dir

    tokens = make_token_dir(tmp_path / "tokens", sizes=(2000, 300, 300), max_records=300)
    done = subprocess.run([sys.executable, str(REPO / "bench" / "epoch_costs.py"), str(tokens), "--models",
                           "lstm,quixer_ablation", "--batches", "4", "--eval_targets", "200", "--selection_targets",
                           "100", "--epochs", "7", "--track", "raw"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert [x["model"] for x in lines] == ["lstm", "quixer_ablation"] and {x["track"] for x in lines} == {"raw"}
    for x in lines:
        assert x["train_windows"] == 2000 and x["epochs"] == 7
        projected = x["train_windows"] / x["train_sequences_per_second"] + x["epoch_rest_seconds"]
        assert abs(x["epoch_seconds"] - projected) < 0.2 and x["run_hours"] >= 7 * x["epoch_seconds"] / 3600 - 0.01


def test_status_projects_unmeasured_runs_from_costs(tmp_path):
    """campaign_status.py: runs with epochs of their model count at their measured epoch time,
    runs of a model and track with none at the --costs projection, the rest not at all."""
    phases = tmp_path / "phases"
    phases.write_text("q abc --protocol official --seeds 2 --models lstm,transformer\n"
                      "q4 abc --protocol official --seeds 3 --models transformer\n"  # one more seed, listed once
                      "&r def --protocol official --seeds 1 --tokens raw --models lstm\n")  # beside q4
    run = tmp_path / "c" / "out" / "runs" / "lstm" / "seed_42"
    run.mkdir(parents=True)
    # two slow epochs (the cores were shared), then three at the current rate: 100 s
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "epoch_seconds": 300.0 if e < 3 else 100.0})
                                               + "\n" for e in (1, 2, 3, 4, 5)))
    costs = tmp_path / "costs"
    costs.write_text("# measured by bench/epoch_costs.py\n" + json.dumps({"track": "raw", "model": "lstm",
                                                                            "epoch_seconds": 60.0}) + "\n")
    status = [sys.executable, str(REPO / "bench" / "campaign_status.py"), str(tmp_path / "c"), "--phases", str(phases)]
    plain = subprocess.run(status, capture_output=True, text=True).stdout.splitlines()[-1]
    with_costs = subprocess.run(status + ["--costs", str(costs)], capture_output=True, text=True).stdout.splitlines()[-1]
    # measured: lstm 25 + 30 epochs left at 100 s = 1.5 h; projected: raw lstm 30 epochs at 60 s = 0.5 h;
    # the transformer has neither
    assert plain.endswith("left (runs with a measured epoch time) about 1.5 core-hours")
    assert with_costs.endswith("about 1.5 core-hours, and 0.5 projected for the runs not yet measured (--costs)")
    assert "0 finished, 0 running, 1 interrupted, 5 pending of 6 runs" in with_costs
    listed = subprocess.run(status, capture_output=True, text=True).stdout.splitlines()[:-1]
    assert [line.split()[:4] for line in listed if "transformer" in line] == [
        ["q", "transformer", "seed", "42"], ["q", "transformer", "seed", "43"], ["q4", "transformer", "seed", "44"]]
    assert [line.split()[:2] for line in listed][-1] == ["r", "lstm"]
