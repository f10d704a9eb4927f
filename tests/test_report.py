"""The results report over real reference runs on real RNA k-mer tokens plus one trained-looking run."""
from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from quixer.common import UserError
from quixer.reference import REFERENCE_MODELS, format_discounts, run_reference
from quixer.scoring import TargetScores
from quixer.windows import all_kmers

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
            "epochs_run": 4, "stop_reason": "early_stop" if seed == 1 else "max_epochs", "converged": seed == 1,
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

    rows = json.loads((out / "results.json").read_text())
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
    assert q["seeds"] == [1, 2] and q["postselection"] == 0.25 and q["converged"] is False
    assert q["stop_reasons"] == ["early_stop", "max_epochs"]
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

    md = (out / "results.md").read_text()
    assert f"| quixer | quixer | {100 * q['gain_share_top1']:.1f} | {100 * q['gain_share_loss']:.1f} |" in md
    assert f"is {100 * ceiling['test_top1']:.2f} % top-1" in md and "fewer than 4 tokens" in md
    assert md.startswith("## real chrX tokens")
    assert captured.out == md
    ng = by_run["ngram"]
    assert f"| ngram (reference) | ngram | – | {100 * ng['test_top1']:.2f} % [" in md
    ngram_src = json.loads((runs_dir / "ngram" / "results.json").read_text())
    assert ng["order"] == ngram_src["order"] and ng["discounts"] == ngram_src["discounts"]
    assert (f"The n-gram (ngram): interpolated modified Kneser-Ney of order {ng['order']}; the order and the discounts "
            f"(D1, D2, D3+ per level, lowest first) chosen on validation: {format_discounts(ng['discounts'])}.") in md
    assert "| quixer | quixer | 2 |" in md and "1/2 early (4/4 ep.)" in md and "| 25.00 % |" in md
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
    from quixer.report import add_gain_shares

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
