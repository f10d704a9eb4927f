"""Ceiling references: the forward algorithm against brute-force enumeration of base strings, the
base streams against their k-mers, and real runs on the embedded sample (raw k-mer tokens and
real stage-3 tokens carrying their k-mer ids)."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import quantize_lambeq_embeddings
from quixer.ceilings import (
    ChainPrior,
    KmerMap,
    TokenLattice,
    base_streams,
    kmer_digits,
    kmer_streams,
    load_kmer_map,
    raw_bases_proba,
    task_anatomy,
    window_bases,
)
from quixer.common import UserError, atomic_torch_save, atomic_write_json
from quixer.data import KMER_IDS_FILE, data_fingerprint, load_token_data
from quixer.encoding import TABLE_FILE, table_sha256
from quixer.kmer_tokens import prepare_classical_benchmarks
from quixer.kneser_ney import KneserNeyModel, ScoredSplit
from quixer.reference import run_reference
from quixer.scoring import TargetScores
from quixer.streams import TokenStreams
from quixer.window_sources import WindowSources
from quixer.windows import SPLITS, all_kmers, load_metadata, split_kmer_ids
from tests.helpers import run_script
from tests.token_fixtures import make_token_dir

EVAL = 1500  # scored val / test targets in the real runs


def markov_bases(rng, n: int, order: int = 2) -> np.ndarray:
    """A base sequence from a random order-``order`` Markov chain (so longer priors differ)."""
    table = rng.dirichlet(np.full(4, 0.4), size=4**order)
    out = list(rng.integers(0, 4, order))
    for _ in range(n - order):
        state = sum(b * 4**i for i, b in enumerate(reversed(out[-order:])))
        out.append(int(rng.choice(4, p=table[state])))
    return np.array(out)


def fitted_bases(rng, max_order: int) -> KneserNeyModel:
    bases = markov_bases(rng, 3000)
    streams = TokenStreams(torch.from_numpy(bases), np.array([0, 1700]), np.array([1700, 1300]), None, None)
    return KneserNeyModel(4, max_order).fit_streams(streams)


def enumerate_paths(model: KneserNeyModel, order: int, token_of: np.ndarray, k: int,
                    length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every base string of ``length``: (strings, prior weight read straight from the model with
    the lower orders for the first bases, tokens of its k-mers)."""
    strings = np.array(list(itertools.product(range(4), repeat=length)))
    width, rows = model.max_order - 1, np.arange(len(strings))
    prior = np.ones(len(strings))
    for j in range(length):
        n = min(order, j + 1)
        ctx = np.zeros((len(strings), width), dtype=np.int64)
        ctx[:, width - (n - 1):] = strings[:, j - (n - 1):j]
        prior *= model.predict_proba(ctx, n)[rows, strings[:, j]]
    weights = 4 ** np.arange(k - 1, -1, -1)
    tokens = token_of[np.stack([strings[:, i:i + k] @ weights for i in range(length - k + 1)], axis=1)]
    return strings, prior, tokens


def brute_force(paths: tuple, context: np.ndarray, k: int, vocab: int) -> tuple[np.ndarray, set]:
    """The next-token distribution given the context tokens, summed over the consistent strings,
    and the set of last k-1 context bases those strings end in."""
    strings, prior, tokens = paths
    ok = (tokens[:, :-1] == context).all(axis=1)
    p = np.bincount(tokens[ok, -1], weights=prior[ok], minlength=vocab)
    length = strings.shape[1]
    return p / p.sum(), {tuple(s) for s in strings[ok, length - k:length - 1]}


def contexts_from(rng, token_of: np.ndarray, k: int, n_tokens: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(k-mer windows [n, n_tokens + 1], their tokens) cut from random base strings."""
    bases = rng.integers(0, 4, (n, n_tokens + k))
    weights = 4 ** np.arange(k - 1, -1, -1)
    kmers = np.stack([bases[:, i:i + k] @ weights for i in range(n_tokens + 1)], axis=1)
    return kmers, token_of[kmers]


@pytest.mark.parametrize("k, n_tokens, vocab, max_order", [(3, 4, 7, 3), (6, 2, 40, 6)])
def test_token_ceiling_equals_brute_force(k, n_tokens, vocab, max_order):
    rng = np.random.default_rng(k)
    token_of = np.concatenate([np.arange(vocab), rng.integers(0, vocab, 4**k - vocab)])
    rng.shuffle(token_of)
    model = fitted_bases(rng, max_order)
    lattice = TokenLattice(token_of, vocab)
    windows, tokens = contexts_from(rng, token_of, k, n_tokens, 6)
    for order in range(1, max_order + 1):
        got = lattice.predict(tokens[:, :-1], ChainPrior.from_model(model, order, k))
        assert got.sum(axis=1) == pytest.approx(np.ones(len(got)), abs=1e-12)
        paths = enumerate_paths(model, order, token_of, k, n_tokens + k)
        for row in range(len(tokens)):
            expected, endings = brute_force(paths, tokens[row, :-1], k, vocab)
            assert got[row] == pytest.approx(expected, rel=1e-9, abs=1e-15), (order, row)
    anatomy = task_anatomy(lattice, windows, tokens[:, :-1])
    endings = [brute_force(paths, tokens[row, :-1], k, vocab)[1] for row in range(len(tokens))]
    assert anatomy["last_bases_pinned"] == pytest.approx(np.mean([len(e) == 1 for e in endings]))
    assert anatomy["mean_consistent_last_bases"] == pytest.approx(np.mean([len(e) for e in endings]))
    follow = [{token_of[(w[-2] % 4 ** (k - 1)) * 4 + b] for b in range(4)} for w in windows]
    assert anatomy["candidate_tokens_fewer_than_4"] == pytest.approx(np.mean([len(f) < 4 for f in follow]))


def test_one_kmer_per_token_is_the_base_model_itself():
    """With the identity map the tokens give every base: the ceiling is the prior's next base."""
    rng = np.random.default_rng(5)
    k, model = 3, fitted_bases(rng, 3)
    windows, tokens = contexts_from(rng, np.arange(64), k, 5, 20)
    bases = window_bases(windows, k)
    for order in (1, 2, 3):
        p_base = model.predict_proba(bases, order)
        via_tokens = TokenLattice(np.arange(64), 64).predict(tokens[:, :-1], ChainPrior.from_model(model, order, k))
        direct = raw_bases_proba(p_base, windows[:, -2], KmerMap(k, np.arange(64), {}, "identity"), 64)
        assert via_tokens == pytest.approx(direct, rel=1e-9, abs=1e-15)
        cand = (windows[:, -2] % 16 * 4)[:, None] + np.arange(4)
        assert np.array_equal(direct[np.arange(20)[:, None], cand], p_base)  # exactly the model's numbers


# ---------------------------------------------------------------------------------------------
# Real runs on the embedded sample


@pytest.fixture(scope="module")
def kmer_tokens(stage1_dir, tmp_path_factory):
    """Raw 6-mer tokens of the sample (the identity map)."""
    out = tmp_path_factory.mktemp("ceil") / "kmers"
    prepare_classical_benchmarks(out, data_dir=stage1_dir)
    return out


@pytest.fixture(scope="module")
def stage3_tokens(stage1_dir, tmp_path_factory):
    """Real stage-3 tokens of the sample, k-means over a stand-in stage-2 table whose geometry is the
    Hamming distance (one-hot bases side by side: lambeq's circuits are too slow for a unit test)."""
    root = tmp_path_factory.mktemp("ceil")
    enc, kmers = root / "emb", all_kmers(6)
    enc.mkdir()
    table = np.eye(4, dtype=np.float32)[kmer_digits(np.arange(4096), 6)].reshape(4096, 24)
    atomic_torch_save(enc / TABLE_FILE, {"kmers": kmers, "embeddings": torch.from_numpy(table)})
    meta = load_metadata(stage1_dir)
    for split in SPLITS:
        ids = torch.from_numpy(split_kmer_ids(stage1_dir, split))
        sources = WindowSources.from_stage1(stage1_dir, split, meta).to_torch()
        atomic_torch_save(enc / f"{split}.pt", {"kmer_ids": ids, "labels": ids[:, -1].long(), "sources": sources})
    atomic_write_json(enc / "metadata.json", {"stage": "lambeq_encoder", "table_sha256": table_sha256(kmers, table)})
    out = root / "tokens"
    assert quantize_lambeq_embeddings.main(["--input_dir", str(enc), "--output_dir", str(out), "--n_clusters", "128",
                                            "--n_init", "1"]) == 0
    return out


def test_base_streams_rebuild_every_kmer(kmer_tokens):
    data = load_token_data(kmer_tokens)
    kmap = load_kmer_map(data)
    assert kmap.k == 6 and kmap.source.startswith("identity")
    kmers = kmer_streams(data, kmap, "train")
    bases = base_streams(kmers, 6)
    ids, b = kmers.tokens.numpy(), bases.tokens.numpy()
    assert len(b) == len(ids) + 5 * len(kmers.segment_starts)
    for seg in range(len(kmers.segment_starts)):
        k0, b0 = kmers.segment_starts[seg], bases.segment_starts[seg]
        assert bases.segment_lengths[seg] == kmers.segment_lengths[seg] + 5
        run = b[b0:b0 + bases.segment_lengths[seg]]
        rebuilt = np.lib.stride_tricks.sliding_window_view(run, 6) @ 4 ** np.arange(5, -1, -1)
        assert np.array_equal(rebuilt, ids[k0:k0 + kmers.segment_lengths[seg]])
    windows = kmers.windows(np.array([0, 7, 40]), 32).numpy()
    assert np.array_equal(window_bases(windows, 6)[1], b[7:7 + 36])  # segment 0: bases from 0


def test_identity_tokens_raw_bases_is_the_base_model_and_the_ceiling_agrees(kmer_tokens, tmp_path):
    raw = run_reference("raw_bases", kmer_tokens, tmp_path / "raw", max_order=8, eval_targets_count=EVAL)
    ceiling = run_reference("token_ceiling", kmer_tokens, tmp_path / "ceil", max_order=8, eval_targets_count=EVAL)
    # each token is one k-mer: the tokens give every base, one path, the ceiling is the base model
    assert len(raw["val_loss_by_order"]) == 8 and len(ceiling["val_loss_by_order"]) == 6
    assert ceiling["val_loss_by_order"] == pytest.approx(raw["val_loss_by_order"][:6], rel=1e-9)
    assert ceiling["anatomy"]["candidate_tokens_fewer_than_4"] == 0 and ceiling["anatomy"]["last_bases_pinned"] == 1
    # raw_bases' per-target scores are the base model's probability of the target's last base
    data = load_token_data(kmer_tokens)
    kmap = load_kmer_map(data)
    model = KneserNeyModel(4, 8).fit_streams(base_streams(kmer_streams(data, kmap, "train"), 6))
    val = ScoredSplit.of(data, "val", EVAL)
    val_windows = kmer_streams(data, kmap, "val").windows(val.scored.starts, 32).numpy()
    tuning = model.tune_discounts(window_bases(val_windows, 6), val_windows[:, -1] % 4)
    assert raw["base_val_loss_by_order"] == tuning.loss and raw["discounts"] == model.discounts(raw["order"])
    # the base model's discounts are chosen order by order: the orders both share are the same model
    assert ceiling["base_val_loss_by_order"] == raw["base_val_loss_by_order"][:6]
    assert ceiling["discounts"] == model.discounts(ceiling["order"])
    test = ScoredSplit.of(data, "test", EVAL)
    windows = kmer_streams(data, kmap, "test").windows(test.scored.starts, 32).numpy()
    p = model.predict_proba(window_bases(windows, 6), raw["order"])
    scores = TargetScores.load(tmp_path / "raw" / "test_scores.npz")
    assert scores.nll == pytest.approx(-np.log(p[np.arange(len(p)), windows[:, -1] % 4]), rel=1e-12)
    assert raw["test_top1"] > 0.3 and raw["vocab_size"] == 4096


@pytest.mark.slow
def test_stage3_tokens_carry_kmer_ids_and_both_ceilings_run(stage3_tokens, tmp_path):
    obj = torch.load(stage3_tokens / KMER_IDS_FILE)
    centres = torch.load(stage3_tokens / "cluster_centers.pt")["kmer_tokens"]
    assert obj["k"] == 6 and obj["kmer_ids"]["train"].dtype == torch.int16
    for split in SPLITS:
        tokens = torch.load(stage3_tokens / f"{split}.pt")["sequences"]
        assert torch.equal(centres[obj["kmer_ids"][split].long()], tokens)
    res = {name: run_reference(name, stage3_tokens, tmp_path / name, eval_targets_count=EVAL)
           for name in ("unigram", "token_ceiling", "raw_bases")}
    for name in ("token_ceiling", "raw_bases"):
        r = res[name]
        assert r["targets_sha256"] == res["unigram"]["targets_sha256"] and r["test_targets"] == EVAL
        assert 0 < r["anatomy"]["candidate_tokens_fewer_than_4"] < 1 and 0 < r["anatomy"]["last_bases_pinned"] < 1
        assert r["test_top1"] > res["unigram"]["test_top1"] + 0.2 and 1 < r["test_perplexity"] < 8
        assert 1 <= r["order"] <= (6 if name == "token_ceiling" else 12) and r["parameters"] > 0
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert set(config["kmer_files_sha256"]) == {KMER_IDS_FILE, "cluster_centers.pt"}
        assert len(r["discounts"]) == len(r["discounts_count_of_counts"]) == r["order"]
        assert all(t <= c + 1e-12 for t, c in zip(r["base_val_loss_by_order"],
                                                   r["base_val_loss_by_order_count_of_counts"]))
        assert r["data_fingerprint"] == data_fingerprint(stage3_tokens) and "git_commit" in r["provenance"]
        assert (tmp_path / name / "val_scores.npz").is_file() and (tmp_path / name / "test_scores.npz").is_file()
    # the raw bases say more than the tokens: 128 tokens of 4,096 k-mers lose a good part of it
    assert res["raw_bases"]["test_loss"] < res["token_ceiling"]["test_loss"] - 0.05
    assert res["raw_bases"]["anatomy"] == res["token_ceiling"]["anatomy"]
    again = run_reference("token_ceiling", stage3_tokens, tmp_path / "token_ceiling", eval_targets_count=EVAL)
    assert again == res["token_ceiling"]


@pytest.mark.slow
def test_without_kmer_ids_one_clear_error_and_stage3_adds_them(stage3_tokens, tmp_path):
    old = make_token_dir(tmp_path / "old", with_centers=True)  # token files only, as before kmer_ids.pt
    with pytest.raises(UserError, match="no kmer_ids.pt .* rerun quantize_lambeq_embeddings.py"):
        run_reference("token_ceiling", old, tmp_path / "runs" / "ceiling")
    assert not (tmp_path / "runs" / "ceiling").exists()
    proc = run_script("train_classical_baselines.py", "--model", "raw_bases", "--data_dir", old,
                      "--output_dir", tmp_path / "runs" / "raw")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "kmer_ids.pt" in lines[0]

    # a stage-3 directory from before: rerunning stage 3 adds kmer_ids.pt and leaves the tokens alone
    copy = tmp_path / "tokens"
    copy.mkdir()
    for p in stage3_tokens.iterdir():
        if p.name != KMER_IDS_FILE:
            (copy / p.name).write_bytes(p.read_bytes())
    with pytest.raises(UserError, match="no kmer_ids.pt"):
        run_reference("raw_bases", copy, tmp_path / "runs" / "raw")
    meta = json.loads((stage3_tokens / "metadata.json").read_text())
    stamps = {p.name: p.stat().st_mtime_ns for p in copy.iterdir()}
    assert quantize_lambeq_embeddings.main(["--input_dir", meta["input_dir"], "--output_dir", str(copy),
                                            "--n_clusters", "128", "--n_init", "1"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir() if p.name in stamps} == stamps
    added, original = torch.load(copy / KMER_IDS_FILE), torch.load(stage3_tokens / KMER_IDS_FILE)
    assert all(torch.equal(added["kmer_ids"][s], original["kmer_ids"][s]) for s in SPLITS)

    # k-mer ids that do not map to the tokens are refused, not trusted
    obj = torch.load(copy / KMER_IDS_FILE)
    obj["kmer_ids"]["val"] = torch.flip(obj["kmer_ids"]["val"], dims=[0])
    torch.save(obj, copy / KMER_IDS_FILE)
    with pytest.raises(UserError, match="do not map to the tokens of val.pt"):
        run_reference("raw_bases", copy, tmp_path / "runs" / "raw")
