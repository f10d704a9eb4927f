"""The results report over real reference runs on real RNA k-mer tokens plus trained-looking runs
(per-target scores derived from the n-gram's, so paired differences are known): the numbers, the
layouts it accepts, data identity, the two tracks side by side, and the plots' styles."""
from __future__ import annotations

import gzip
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from quixer.common import UserError
from quixer.data import data_fingerprint
from quixer.reference import REFERENCE_MODELS, format_discounts, run_reference
from quixer.scoring import TargetScores, prefixed
from quixer.windows import all_kmers
from tests.token_fixtures import make_token_dir

ROOT = Path(__file__).resolve().parents[1]
FASTAS = [ROOT / "data" / "sample_rna.fasta.gz", ROOT.parent / "shared" / "data" / "grch38_chrX_refseq_rna.fasta.gz"]
K, W, STRIDE = 6, 32, 16
BASE = {"A": 0, "C": 1, "G": 2, "T": 3}


def read_records(n: int) -> list[str]:
    """The first ``n`` records of the project's real RNA FASTA (gzip, simple parsing)."""
    path = next((p for p in FASTAS if p.is_file()), None)
    if path is None:
        pytest.skip("no real RNA FASTA found")
    records: list[list[str]] = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            if line.startswith(">"):
                if len(records) == n:
                    break
                records.append([])
            elif records:
                records[-1].append(line.strip().upper())
    return ["".join(r) for r in records]


def windows_of(seq: str) -> list[list[int]]:
    """Overlapping 6-mer windows of W k-mers, as k-mer ids (lexicographic over ACGT)."""
    out = []
    for start in range(0, len(seq) - (W + K - 1) + 1, STRIDE):
        span = seq[start:start + W + K - 1]
        if any(b not in BASE for b in span):
            continue
        out.append([sum(BASE[b] << (2 * (K - 1 - j)) for j, b in enumerate(span[i:i + K])) for i in range(W)])
    return out


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """runs/<reference> fitted on real tokens (with the k-mer ids behind them), runs/quixer/seed_{1,2}
    made from the n-gram's scores, runs/unfinished."""
    root = tmp_path_factory.mktemp("report")
    splits: dict[str, list[list[int]]] = {"train": [], "val": [], "test": []}
    for i, seq in enumerate(read_records(15)):  # split by record, never by window
        splits["train" if i % 5 < 3 else "val" if i % 5 == 3 else "test"].extend(windows_of(seq))
    tokens = root / "tokens"
    tokens.mkdir()
    kmer_ids = {}
    for name, rows in splits.items():  # each k-mer's token: its first 4 bases (256 ids)
        assert len(rows) > 20, name
        kmer_ids[name] = torch.tensor(rows, dtype=torch.int16)
        t = torch.tensor(rows, dtype=torch.int64) // 4 ** (K - 4)
        torch.save({"sequences": t, "labels": t[:, -1].clone()}, tokens / f"{name}.pt")
    torch.save({"cluster_centers": torch.zeros(256, 4), "kmers": all_kmers(K),
                "kmer_tokens": torch.arange(4**K) // 4 ** (K - 4)}, tokens / "cluster_centers.pt")
    torch.save({"k": K, "kmer_ids": kmer_ids}, tokens / "kmer_ids.pt")
    runs = root / "runs"
    for name in REFERENCE_MODELS:
        run_reference(name, tokens, runs / name, max_order=4)

    # a Quixer with two seeds, scored on the same test targets as the references (its per-target
    # scores: the n-gram's, shifted, so the paired difference is known)
    ngram_scores = TargetScores.load(runs / "ngram" / "test_scores.npz")
    for seed, shift in ((1, 0.10), (2, 0.30)):
        trained = runs / "quixer" / f"seed_{seed}"
        trained.mkdir(parents=True)
        lines = [json.dumps({"epoch": e, "train_loss": 5.5 - 0.8 * e, "val_loss": 5.6 - 0.7 * e,
                             "val_perplexity": math.exp(5.6 - 0.7 * e), "val_top1": 0.05 * e, "val_top5": 0.2 * e,
                             "epoch_seconds": 3.0, "lr": 1e-3}) for e in range(1, 5)]
        (trained / "metrics.jsonl").write_text("\n".join(lines) + "\n{\"epoch\": 5, \"train_lo")  # cut-off last line
        scores = TargetScores(ngram_scores.nll + shift, ngram_scores.top1 * 0.5, ngram_scores.top5, None, None,
                              None, ngram_scores.key)
        scores.save(trained / "test_scores.npz")
        m = scores.metrics()
        (trained / "results.json").write_text(json.dumps({
            "model": "quixer", "seed": seed, "parameters": 4321, "parameter_breakdown": {"embedding": 4000, "quantum": 321},
            **{f"test_{k}": v for k, v in m.items()}, "targets_sha256": ngram_scores.key, "test_targets": len(scores),
            "train_seconds": 125.0, "train_sequences_per_second": 987.6, "postselection": 0.25,
            "epochs_run": 4, "max_epochs": 4, "best_epoch": 3 if seed == 1 else 4, "protocol": "project",
            "lr_schedule": "plateau", "stop_reason": "early_stop" if seed == 1 else "max_epochs",
            "converged": seed == 1,
            "data_fingerprint": data_fingerprint(tokens),
        }))
        (trained / "config.json").write_text(json.dumps({"model": "quixer", "data_dir": str(tokens)}))
    (runs / "unfinished").mkdir()
    (runs / "unfinished" / "config.json").write_text("{}")
    return runs


def check_png(path: Path, min_w: int = 600, min_h: int = 400) -> None:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width >= min_w and im.height >= min_h, im.size
        arr = np.asarray(im.convert("L"))
    assert arr.std() > 5  # not a blank canvas


def test_report_files_and_numbers(runs_dir, tmp_path, capsys):
    from report_results import main

    out = tmp_path / "report"
    assert main([str(runs_dir), "--output_dir", str(out), "--title", "real chrX tokens"]) == 0
    captured = capsys.readouterr()
    assert "unfinished: no results.json" in captured.err  # skipped with a warning
    for name in ("results.json", "results.md", "learning_curves.png", "test_accuracy.png", "test_perplexity.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp"))
    for png in ("learning_curves.png", "test_accuracy.png", "test_perplexity.png"):
        check_png(out / png)

    report = json.loads((out / "results.json").read_text())
    rows = report["rows"]
    assert report["provenance"]["command"][:2] == ["report_results.py", str(runs_dir)]  # how the report was made
    assert "git_commit" in report["provenance"] and "started" in report["provenance"]
    assert report["diverged"] == [] and report["tokenisation_differences"] == []
    assert [r["run"] for r in rows] == ["uniform", "unigram", "ngram", "token_ceiling", "raw_bases", "quixer"]
    for row in rows[:3]:
        src = json.loads((runs_dir / row["run"] / "results.json").read_text())
        for key in ("model", "parameters", "test_top1", "test_top5", "test_perplexity", "test_loss", "train_seconds",
                    "eval_sequences_per_second"):
            assert row[key] == src[key], (row["run"], key)
        assert row["data"] == str(runs_dir.parent / "tokens") and row["seeds"] == []
        lo, hi = row["test_top1_ci95"]
        assert lo <= row["test_top1"] <= hi and hi - lo < 0.2
    for row in rows:  # every point inside its interval
        for key in ("test_top1", "test_perplexity", "novel_test_top1"):
            if f"{key}_ci95" in row:
                assert row[f"{key}_ci95"][0] <= row[key] <= row[f"{key}_ci95"][1], (row["run"], key)
    by_run = {r["run"]: r for r in rows}
    assert by_run["uniform"]["test_perplexity"] == pytest.approx(256)
    u = by_run["uniform"]  # every target scores the same: a zero-width interval at the point itself
    assert u["test_perplexity_ci95"] == [u["test_perplexity"]] * 2 and u["test_top1_ci95"] == [u["test_top1"]] * 2
    assert by_run["uniform"]["test_top1"] == pytest.approx(1 / 256)  # ties count as expected accuracy
    assert by_run["ngram"]["test_top1"] > by_run["unigram"]["test_top1"] + 0.2  # 3 of the 4 bases are known
    q = by_run["quixer"]
    seeds = [json.loads((runs_dir / "quixer" / f"seed_{s}" / "results.json").read_text()) for s in (1, 2)]
    assert q["seeds"] == [1, 2] and q["postselection"] == 0.25 and q["converged"] == 1  # seeds that converged
    assert q["stop_reasons"] == ["early_stop", "max_epochs"] and q["best_epochs"] == [3, 4]
    assert q["protocol"] == "project" and q["track"] == "quantized"
    assert q["data_label"] == f"tokens ({data_fingerprint(runs_dir.parent / 'tokens')[:8]})"
    assert by_run["ngram"]["order"] == json.loads((runs_dir / "ngram" / "results.json").read_text())["order"]
    assert "discounts" in by_run["ngram"] and "alpha" in by_run["unigram"]
    for key in ("test_top1", "test_loss"):
        assert q[key] == pytest.approx((seeds[0][key] + seeds[1][key]) / 2)
    assert q["test_perplexity"] == math.exp(q["test_loss"])  # of the seed-mean loss, as its interval
    # paired: every replicate has the same groups for both, and both seeds score top-1 at half the n-gram's,
    # so the top-1 difference is -1/2 of the n-gram's with no seed spread; the losses, n-gram + 0.1 and
    # + 0.3, differ by as much between the two seeds as from the n-gram: no sign is shown
    d1 = by_run["ngram"]["quixer_top1_difference"]
    assert d1["mean"] == pytest.approx(-0.5 * by_run["ngram"]["test_top1"])
    assert d1["ci95"][0] < d1["mean"] < d1["ci95"][1] < 0
    dp = by_run["ngram"]["quixer_perplexity_difference"]
    ng_ppl = by_run["ngram"]["test_perplexity"]
    assert dp["mean"] == pytest.approx(ng_ppl * (math.exp(0.2) - 1))
    assert dp["ci95"][0] < 0 < dp["mean"] < dp["ci95"][1]
    assert "quixer_top1_difference" not in q

    # against the ceiling: the token files say the first 4 bases of each k-mer, so the next token's
    # last base is unknown to any model of the tokens, while the raw bases give it away
    ceiling, raw, uni = by_run["token_ceiling"], by_run["raw_bases"], by_run["unigram"]
    assert raw["test_top1"] == pytest.approx(1.0) and raw["test_perplexity"] == pytest.approx(1.0)
    assert uni["test_top1"] < ceiling["test_top1"] < raw["test_top1"]
    assert ceiling["anatomy"]["candidate_tokens_fewer_than_4"] == 1.0 and ceiling["order"] <= 6
    for row in (q, by_run["ngram"], raw):
        assert row["gain_share_top1"] == pytest.approx(
            (row["test_top1"] - uni["test_top1"]) / (ceiling["test_top1"] - uni["test_top1"]))
        assert row["gain_share_loss"] == pytest.approx(
            (row["test_loss"] - uni["test_loss"]) / (ceiling["test_loss"] - uni["test_loss"]))
    assert raw["gain_share_top1"] > 1 and "gain_share_top1" not in ceiling and "gain_share_loss" not in uni
    # each row minus the ceiling, paired: raw_bases passes it (it reads the base the tokens hide), clearly
    for row in (q, by_run["ngram"], raw):
        d = row["ceiling_top1_difference"]
        assert d["mean"] == pytest.approx(row["test_top1"] - ceiling["test_top1"])
        assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
        assert row["ceiling_perplexity_difference"]["mean"] == pytest.approx(
            row["test_perplexity"] - ceiling["test_perplexity"])
    assert raw["ceiling_top1_difference"]["ci95"][0] > 0
    assert "ceiling_top1_difference" not in ceiling and "ceiling_top1_difference" not in uni

    md = (out / "results.md").read_text()
    assert f"| quixer | quixer | {100 * q['gain_share_top1']:.1f} | {100 * q['gain_share_loss']:.1f} |" in md
    assert f"is {100 * ceiling['test_top1']:.2f} % top-1" in md and "fewer than 4 tokens" in md
    assert md.startswith("## real chrX tokens")
    assert captured.out == md
    ng = by_run["ngram"]
    assert f"| ngram (reference, order {ng['order']}) | ngram | – | {100 * ng['test_top1']:.2f} % [" in md
    ngram_src = json.loads((runs_dir / "ngram" / "results.json").read_text())
    assert ng["order"] == ngram_src["order"] and ng["discounts"] == ngram_src["discounts"]
    assert (f"The n-gram (ngram): interpolated modified Kneser-Ney of order {ng['order']}; the order and the discounts "
            f"(D1, D2, D3+ per level, lowest first) chosen on validation: {format_discounts(ng['discounts'])}.") in md
    assert "| quixer | quixer | 2 |" in md and "| 25.00 % |" in md
    assert "| 4/4 epochs, best 3/4, early stop 1 of 2, converged 1 of 2 seeds (project, plateau) |" in md
    # the seed that did not converge, named with what its last two epochs took off the validation
    # loss (5.6 - 0.7 e: 4.2 -> 3.5 -> 2.8, so 1/6 and 1/5; the cut-off fifth line is not an epoch)
    (unconverged,) = q["not_converged"]
    assert unconverged["last_drops"] == pytest.approx([0.7 / 4.2, 0.7 / 3.5])
    assert {k: unconverged[k] for k in ("seed", "stop_reason", "epochs_run")} == {
        "seed": 2, "stop_reason": "max_epochs", "epochs_run": 4}
    assert "| quixer | 2 | max_epochs | 4 | 16.667 % | 20.000 % |" in md and "Seeds that did not converge" in md
    assert "| quixer | quixer | 4,321 | embedding 4,000, quantum 321 | 2.1 min | 988 |" in md
    assert "Quixer minus each model, paired" in md and "gene groups" in md


def test_report_references_only_default_output(runs_dir, tmp_path):
    from quixer.report import write_report

    only = tmp_path / "refs"
    for name in REFERENCE_MODELS:
        (only / name).mkdir(parents=True)
        for f in ("results.json", "config.json"):
            (only / name / f).write_bytes((runs_dir / name / f).read_bytes())
    report = write_report(only)  # output defaults to the runs dir itself
    assert [r["model"] for r in report["rows"]] == list(REFERENCE_MODELS)
    for png in ("learning_curves.png", "test_accuracy.png", "test_perplexity.png"):
        check_png(only / png)
    assert "| Data" not in report["markdown"] and "Postselection" not in report["markdown"]
    # a second report over the same directory ignores its own output files
    assert len(write_report(only)["rows"]) == len(REFERENCE_MODELS)


def test_last_drops_need_three_recorded_epochs(tmp_path):
    from quixer.report_rows import last_drops

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "val_loss": v}) + "\n"
                                                    for e, v in ((2, 1.5), (1, 2.0))))
    assert last_drops(tmp_path) == [] and last_drops(tmp_path, epochs=1) == [0.25]  # read in epoch order
    assert last_drops(tmp_path / "absent") == []


def test_no_results_is_one_line_error(tmp_path):
    from quixer.report import write_report

    (tmp_path / "empty" / "run1").mkdir(parents=True)
    with pytest.raises(UserError, match="no <run>/results.json"):
        write_report(tmp_path / "empty")
    proc = subprocess.run([sys.executable, str(ROOT / "report_results.py"), str(tmp_path / "missing")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'missing'}: runs directory not found"
    assert "Traceback" not in proc.stderr


def test_gain_shares_need_both_ends_on_the_same_targets():
    from quixer.report_rows import add_gain_shares

    rows = [{"model": "unigram", "run": "unigram", "test_top1": 0.1, "test_loss": 5.0, "targets_sha256": "a"},
            {"model": "token_ceiling", "run": "token_ceiling", "test_top1": 0.5, "test_loss": 1.0,
             "targets_sha256": "b"},
            {"model": "lstm", "run": "lstm", "test_top1": 0.3, "test_loss": 2.0, "targets_sha256": "a"}]
    add_gain_shares(rows)
    assert rows[2]["gain_share_top1"] is None and rows[2]["gain_share_loss"] is None  # the ceiling scored other targets
    rows[1]["targets_sha256"] = "a"
    add_gain_shares(rows)
    assert rows[2]["gain_share_top1"] == pytest.approx(0.5) and rows[2]["gain_share_loss"] == pytest.approx(0.75)
    add_gain_shares(rows[1:])  # no unigram
    assert rows[2]["gain_share_top1"] is None


# ---- layouts: rerun into its own output, a model folder or one run as RUNS_DIR, diverged runs ----------------


def _diverge(run: Path, model: str) -> None:
    """What quixer.training leaves when the loss became nan: config.json and diverged.json, no results."""
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": model}))
    (run / "diverged.json").write_text(json.dumps({"message": "training loss became nan at epoch 2",
                                                   "stop_reason": "diverged"}))


def test_layouts_rerun_model_folder_and_diverged_runs(runs_dir, tmp_path, capsys):
    from quixer.report import write_report
    from report_results import main

    runs = tmp_path / "runs"
    shutil.copytree(runs_dir, runs)
    _diverge(runs / "quixer" / "seed_3", "quixer")  # one seed of a row diverged
    _diverge(runs / "lstm" / "seed_42", "lstm")  # every seed of a model
    (runs / "old_report").mkdir()
    (runs / "old_report" / "results.json").write_text("[]")  # not a run: skipped, not an error
    out = runs / "report"  # inside RUNS_DIR: skipped on the second report, which must give the same
    assert main([str(runs), "--output_dir", str(out)]) == 0
    first = [json.loads((out / "results.json").read_text()), (out / "results.md").read_text()]
    assert main([str(runs), "--output_dir", str(out)]) == 0
    second = [json.loads((out / "results.json").read_text()), (out / "results.md").read_text()]
    assert second[0]["rows"] == first[0]["rows"] and second[1] == first[1]
    err = capsys.readouterr().err
    assert "old_report: results.json is not a run's" in err and "report:" not in err.replace("old_report:", "")

    rows, md = first[0]["rows"], first[1]
    assert "lstm" not in {r["run"] for r in rows} and next(r for r in rows if r["run"] == "quixer")["diverged_seeds"] \
        == ["seed_3"]
    assert [(d["run"], d["seed_dir"]) for d in first[0]["diverged"]] == [("lstm", "seed_42"), ("quixer", "seed_3")]
    assert "Diverged (" in md and "lstm seed_42 (training loss became nan at epoch 2)" in md
    assert "quixer seed_3 (training loss" in md and "; diverged: seed_3 |" in md

    folder = write_report(runs / "quixer", tmp_path / "folder")  # a model folder as RUNS_DIR: one row
    assert [(r["run"], r["seeds"]) for r in folder["rows"]] == [("quixer", [1, 2])]
    single = write_report(runs / "quixer" / "seed_2", tmp_path / "single")  # one run as RUNS_DIR
    assert [(r["run"], r["seeds"]) for r in single["rows"]] == [("seed_2", [2])]


def test_a_row_refuses_seeds_of_other_data(runs_dir, tmp_path):
    from quixer.report import write_report

    folder = tmp_path / "runs" / "quixer"
    shutil.copytree(runs_dir / "quixer", folder)
    path = folder / "seed_2" / "results.json"
    results = json.loads(path.read_text())
    results["data_fingerprint"] = "0123456789ab" + "c" * 52
    path.write_text(json.dumps(results))
    with pytest.raises(UserError) as exc:
        write_report(tmp_path / "runs")
    message = str(exc.value)
    assert "\n" not in message and str(folder / "seed_2") in message
    assert "0123456789ab" in message and data_fingerprint(runs_dir.parent / "tokens")[:12] in message


def test_data_labels_tell_pipelines_apart():
    from quixer.report_rows import add_data_labels

    rows = [{"data": "/w/a/out/quantized", "data_fingerprint": "1" * 64},
            {"data": "/w/b/out/quantized", "data_fingerprint": "2" * 64},
            {"data": "/w/b/out/raw_kmer_tokens"}, {}]
    add_data_labels(rows)
    assert [r["data_label"] for r in rows] == ["a/out/quantized (11111111)", "b/out/quantized (22222222)",
                                               "raw_kmer_tokens", "–"]


# ---- two tracks: quantised-like and raw 6-mer tokens of the same windows ------------------------------------


def _track_tokens(root: Path) -> tuple[Path, Path]:
    """tests/token_fixtures.py's tokens of the same real windows: a 6-mer's first 4 bases (256
    quantised-like tokens, with the k-mer ids behind them) and the raw 6-mers (with their vocab)."""
    quantized, raw = make_token_dir(root / "quantized", prefix=4), make_token_dir(root / "raw_kmers", prefix=6)
    kmer_ids = {}
    for split in ("train", "val", "test"):
        obj = torch.load(raw / f"{split}.pt", weights_only=False)
        kmer_ids[split] = obj["sequences"].to(torch.int16)
        torch.save({**obj, "vocab": all_kmers(6)}, raw / f"{split}.pt")
    torch.save({"cluster_centers": torch.zeros(256, 4), "kmers": all_kmers(6), "kmer_tokens": torch.arange(4096) // 16},
               quantized / "cluster_centers.pt")
    torch.save({"k": 6, "kmer_ids": kmer_ids}, quantized / "kmer_ids.pt")
    return quantized, raw


def _trained_like(runs: Path, tokens: Path, factors=(0.9, 0.8)) -> None:
    """runs/lstm/seed_{1,2}: the n-gram's per-target scores, top-1 scaled per seed, loss + 0.2."""
    ngram = TargetScores.load(runs / "ngram" / "test_scores.npz")
    vocab = json.loads((runs / "ngram" / "results.json").read_text())["vocab_size"]
    for seed, factor in zip((1, 2), factors):
        run = runs / "lstm" / f"seed_{seed}"
        run.mkdir(parents=True)
        scores = TargetScores(ngram.nll + 0.2, ngram.top1 * factor, ngram.top5, ngram.novel, ngram.groups, None,
                              ngram.key, ngram.positions_key)
        scores.save(run / "test_scores.npz")
        curve = [{"epoch": e, "train_loss": 4 - e + 0.1 * seed, "val_loss": 4.2 - e, "val_top1": 0.1 * e * factor}
                 for e in range(1, 3 + seed)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
        (run / "results.json").write_text(json.dumps({
            "model": "lstm", "seed": seed, **prefixed("test", scores.metrics()),
            "targets_sha256": ngram.key, "test_targets": len(scores), "data_fingerprint": data_fingerprint(tokens),
            "vocabulary_size": vocab, "epochs_run": 2 + seed, "max_epochs": 4, "best_epoch": 2, "protocol": "official",
            "lr_schedule": "cosine", "stop_reason": "max_epochs", "converged": True}))
        (run / "config.json").write_text(json.dumps({"model": "lstm", "data_dir": str(tokens)}))


@pytest.fixture(scope="module")
def two_tracks(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tracks")
    tokens = _track_tokens(root)
    for tok, runs in zip(tokens, (root / "runs", root / "runs_raw")):
        for name in REFERENCE_MODELS:
            run_reference(name, tok, runs / name, max_order=3)
        _trained_like(runs, tok)
    return root / "runs", root / "runs_raw"


def test_two_tracks_side_by_side(two_tracks, tmp_path):
    from report_results import main

    runs, raw_runs = two_tracks
    out = tmp_path / "both"
    assert main([str(runs), "--raw_runs", str(raw_runs), "--output_dir", str(out)]) == 0  # as run_pipeline.sh calls it
    report = json.loads((out / "results.json").read_text())
    rows = report["rows"]
    quantized = {r["run"]: r for r in rows if r["track"] == "quantized"}
    raw = {r["run"].removesuffix(" (raw 6-mers)"): r for r in rows if r["track"] == "raw"}
    assert set(quantized) == set(raw) == {*REFERENCE_MODELS, "lstm"}
    assert [r["track"] for r in rows] == ["quantized"] * 6 + ["raw"] * 6  # the tracks apart, references first
    assert raw["lstm"]["run"] == "lstm (raw 6-mers)" and raw["ngram"]["order"] >= 1

    # gain shares against each track's own ends; on raw 6-mers the ceiling is raw_bases
    for row, ends in ((quantized["lstm"], (quantized["unigram"], quantized["token_ceiling"])),
                      (raw["lstm"], (raw["unigram"], raw["raw_bases"]))):
        assert row["gain_share_top1"] == pytest.approx((row["test_top1"] - ends[0]["test_top1"]) /
                                                       (ends[1]["test_top1"] - ends[0]["test_top1"]))
    assert "gain_share_top1" not in raw["raw_bases"] and raw["token_ceiling"]["gain_share_top1"] is not None

    # raw minus quantised, paired on the shared positions: the lstm's top-1 is 0.85 of each track's n-gram
    diffs = {d["model"]: d for d in report["tokenisation_differences"]}
    assert set(diffs) == {*REFERENCE_MODELS, "lstm"} and {d["paired_on"] for d in diffs.values()} == {"positions"}
    d1, dp = diffs["lstm"]["top1_difference"], diffs["lstm"]["perplexity_difference"]
    assert d1["mean"] == pytest.approx(0.85 * (raw["ngram"]["test_top1"] - quantized["ngram"]["test_top1"]))
    assert dp["mean"] == pytest.approx(raw["lstm"]["test_perplexity"] - quantized["lstm"]["test_perplexity"])
    for d in (d1, dp):
        assert d["ci95"][0] < d["mean"] < d["ci95"][1]
    assert diffs["uniform"]["top1_difference"]["ci95"] == [1 / 4096 - 1 / 256] * 2  # no spread at all

    md = (out / "results.md").read_text()
    assert "### Tokenisation: raw 6-mers minus quantised tokens" in md
    assert f"| lstm | lstm | {100 * d1['mean']:.2f} [{100 * d1['ci95'][0]:.2f}, {100 * d1['ci95'][1]:.2f}] |" in md
    q_label, r_label = quantized["lstm"]["data_label"], raw["lstm"]["data_label"]
    assert q_label.startswith("quantized (") and r_label.startswith("raw_kmers (") and "| Data |" in md
    assert f"| lstm | lstm (raw 6-mers) | {r_label} | 2 |" in md
    assert "3–4/4 epochs, best 2/2, converged 2 of 2 seeds (official, cosine)" in md
    for png in ("learning_curves.png", "test_accuracy.png", "test_perplexity.png"):
        check_png(out / png)


def test_raw_track_alone(two_tracks, tmp_path, capsys):
    """run_pipeline.sh --tokens raw reports the raw track alone: its rows labelled raw, its own ceiling."""
    from report_results import main

    _, raw_runs = two_tracks
    out = tmp_path / "raw_only"
    assert main(["--raw_runs", str(raw_runs), "--output_dir", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["track"] for r in rows} == {"raw"} and all(r["run"].endswith(" (raw 6-mers)") for r in rows)
    lstm = next(r for r in rows if r["model"] == "lstm")
    ends = {r["model"]: r for r in rows}
    assert lstm["gain_share_top1"] == pytest.approx((lstm["test_top1"] - ends["unigram"]["test_top1"]) /
                                                    (ends["raw_bases"]["test_top1"] - ends["unigram"]["test_top1"]))
    with pytest.raises(UserError, match="nothing to report"):
        main(["--output_dir", str(tmp_path / "none")])


def test_tracks_pair_only_on_the_same_positions(caplog):
    from quixer.report_rows import pairing, track_difference

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(10), 5)

    def scores(positions_key: str, g=groups) -> TargetScores:
        return TargetScores(rng.random(50), rng.random(50), np.ones(50), None, g, None, "k", positions_key)

    assert pairing([scores("p")], [scores("p"), scores("p")]) == "positions"
    assert pairing([scores("p")], [scores("q")]) is None
    assert pairing([scores("")], [scores("")]) == "length and groups" and "positions themselves" in caplog.text
    assert pairing([scores("")], [scores("", np.repeat(np.arange(5), 10))]) is None  # other groups
    assert pairing([scores("p")], [scores("")]) == "length and groups"  # one file from before positions keys
    row = {"model": "lstm", "run": "lstm", "test_top1": 0.5}
    apart = track_difference(row, {**row, "run": "lstm (raw 6-mers)"}, [scores("p")], [scores("q")])
    assert apart["paired_on"] is None and "top1_difference" not in apart
    assert "different positions" in apart["not_paired"]


def test_plot_styles_one_colour_per_model_grey_references():
    from quixer.report_plots import MODEL_COLOURS, REFERENCE_STYLES, model_colour, row_styles, seed_band

    rows = [{"model": "quixer", "track": "quantized"}, {"model": "quixer", "track": "quantized"},
            {"model": "quixer", "track": "raw"}, {"model": "lstm"}, {"model": "ngram", "track": "raw"}]
    styles = row_styles(rows)
    assert {s["color"] for s in styles[:3]} == {model_colour("quixer")} and len({s["marker"] for s in styles[:3]}) == 3
    assert styles[3]["color"] == MODEL_COLOURS["lstm"] and styles[4]["color"] == REFERENCE_STYLES["ngram"]["color"]
    greys = [style["color"] for style in REFERENCE_STYLES.values()]
    assert all(c[1:3] == c[3:5] == c[5:7] for c in greys) and not set(greys) & set(MODEL_COLOURS.values())
    assert len({str(style["linestyle"]) for style in REFERENCE_STYLES.values()}) == len(REFERENCE_STYLES)
    new = model_colour("mamba")  # not in the table: the same colour every time, never grey
    assert new == model_colour("mamba") and new[1:3] != new[3:5] and new not in greys
    # learning curves: mean and min-max over the seeds that ran each epoch (the last record of an epoch counts)
    seeds = [[{"epoch": 1, "val_loss": 3.0}, {"epoch": 2, "val_loss": 9.0}, {"epoch": 2, "val_loss": 2.0}],
             [{"epoch": 1, "val_loss": 5.0}]]
    epochs, mean, lo, hi = seed_band(seeds, "val_loss")
    assert epochs.tolist() == [1, 2] and mean.tolist() == [4.0, 2.0]
    assert lo.tolist() == [3.0, 2.0] and hi.tolist() == [5.0, 2.0]


def test_campaign_readme_table_between_markers(runs_dir, tmp_path):
    """bench/campaign_readme.py writes the summary of a published report between the README's two
    markers (numbers as in results.json, compute summed over seeds) and touches nothing else; a
    README without the markers is a one-line error and stays as it was."""
    from report_results import main

    published = tmp_path / "published"
    assert main([str(runs_dir), "--output_dir", str(published)]) == 0
    (published / "status.txt").write_text("quantized quixer seed 1 finished\n2 finished, 0 running of 2 runs\n")
    readme = tmp_path / "README.md"
    before, after = "# Title\n\nText before.\n", "\nText after.\n"
    readme.write_text(before + "<!-- chrX table: start -->\nold table\n<!-- chrX table: end -->" + after)
    script = [sys.executable, str(ROOT / "bench" / "campaign_readme.py"), str(readme), str(published)]
    for _ in range(2):  # a second publish replaces the block, it does not stack
        assert subprocess.run(script, capture_output=True, text=True).returncode == 0
    text = readme.read_text()
    assert text.startswith(before + "<!-- chrX table: start -->\n| Model |") and text.endswith("<!-- chrX table: end -->" + after)
    assert "old table" not in text and text.count("| Model |") == 1
    assert "Campaign status at this publish: 2 finished, 0 running of 2 runs." in text
    quixer = next(r for r in json.loads((published / "results.json").read_text())["rows"] if r["model"] == "quixer")
    lo, hi = quixer["test_top1_ci95"]
    d = quixer["ceiling_top1_difference"]
    assert (f"| quixer | 2 | {100 * quixer['test_top1']:.2f} % [{100 * lo:.2f}, {100 * hi:.2f}] | "
            f"{quixer['test_perplexity']:.2f} [{quixer['test_perplexity_ci95'][0]:.2f}, "
            f"{quixer['test_perplexity_ci95'][1]:.2f}] | {100 * d['mean']:.2f} [{100 * d['ci95'][0]:.2f}, "
            f"{100 * d['ci95'][1]:.2f}] | 1 of 2 | 0.07 h |") in text  # 2 seeds x 125 s
    assert "| uniform (reference) | – | 0." in text and text.count(" | – | – |") == len(REFERENCE_MODELS)

    unmarked = tmp_path / "plain.md"
    unmarked.write_text("no markers\n")
    bad = subprocess.run([*script[:2], str(unmarked), str(published)], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "chrX table: start" in bad.stderr
    assert unmarked.read_text() == "no markers\n"


def test_learning_curve_losses_name_the_floors_off_scale():
    """The loss panel spans the curves and the references below their top (the ceilings); the
    references above every curve (uniform, unigram) are named in the legend as off scale, as the
    top-1 panel does with its floors, instead of squashing the curves."""
    from quixer.report_plots import _curve_panels, _pyplot, row_styles

    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2)
    seeds = [[{"epoch": e, "train_loss": 3.0 / e, "val_loss": 1.3 + 1.0 / e, "val_top1": 0.3 + 0.01 * e}
              for e in range(1, 6)]]
    refs = [{"model": m, "run": m, "val_loss": loss, "val_top1": top1} for m, loss, top1 in (
        ("uniform", 6.24, 0.002), ("unigram", 6.09, 0.006), ("ngram", 1.375, 0.365),
        ("token_ceiling", 1.344, 0.375), ("raw_bases", 1.125, 0.433))]
    curves = [({"model": "lstm", "run": "lstm"}, seeds)]
    assert _curve_panels(ax_loss, ax_acc, curves, refs, row_styles([{"model": "lstm"}]))
    lo, hi = ax_loss.get_ylim()
    assert lo <= 1.125 and 3.0 <= hi < 6.0
    labels = ax_loss.get_legend_handles_labels()[1]
    assert sum("off scale" in x for x in labels) == 2 and all("off scale" in x for x in labels if "uniform" in x
                                                               or "unigram" in x)
    assert not any("off scale" in x for x in labels if "ceiling" in x or "raw_bases" in x or "ngram" in x)
    assert ax_acc.get_ylim()[1] >= 43.3  # the top-1 panel keeps its ceilings in sight
    plt.close(fig)
