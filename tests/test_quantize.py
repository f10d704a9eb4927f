"""Stage 3: weighted k-means on the k-mer table, train-only fit, both input formats, user errors."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import run_script
from quixer.common import UserError, atomic_torch_save, atomic_write_json, sha256_file
from quixer.encoding import TABLE_FILE, encode_windows, table_sha256
from quixer.quantize import QuantizeConfig, mean_hamming, quantize_embeddings
from quixer.window_sources import WindowSources

import quantize_lambeq_embeddings

SPLITS = ("train", "val", "test")


def _kmers(k: int) -> list[str]:
    return ["".join(p) for p in itertools.product("ACGT", repeat=k)]


def _one_hot_table(k: int) -> np.ndarray:
    """A synthetic table whose geometry is the Hamming distance: one-hot bases side by side."""
    digits = np.array([["ACGT".index(b) for b in km] for km in _kmers(k)])
    return np.eye(4, dtype=np.float32)[digits].reshape(len(digits), -1)


def make_encoder_dir(path: Path, table: np.ndarray, ids: dict[str, np.ndarray], kmers=None, record_hashes=True) -> Path:
    """A hand-made stage-2 directory in the table format."""
    kmers = kmers if kmers is not None else _kmers(int(round(np.log(len(table)) / np.log(4))))
    path.mkdir(parents=True)
    atomic_torch_save(path / TABLE_FILE, {"kmers": kmers, "embeddings": torch.tensor(table, dtype=torch.float32)})
    for split, a in ids.items():
        t = torch.from_numpy(a.astype(np.int16))
        atomic_torch_save(path / f"{split}.pt", {"kmer_ids": t, "labels": t[:, -1].long()})
    meta = {"stage": "lambeq_encoder", "table_sha256": table_sha256(kmers, table.astype(np.float32))}
    if record_hashes:
        meta["files"] = {p.name: sha256_file(p) for p in sorted(path.glob("*.pt"))}
    atomic_write_json(path / "metadata.json", meta)
    return path


def _random_ids(rng, vocab: int | np.ndarray, n: int, w: int = 8) -> np.ndarray:
    pool = np.arange(vocab) if np.isscalar(vocab) else np.asarray(vocab)
    return rng.choice(pool, size=(n, w))


@pytest.fixture(scope="module")
def real_stage2(stage1_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q_stage2") / "emb"
    encode_windows(stage1_dir, out, {"embedding_dim": 16})
    return out


@pytest.fixture(scope="module")
def quantized(real_stage2, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q_stage3") / "quantized"
    assert quantize_lambeq_embeddings.main(["--input_dir", str(real_stage2), "--output_dir", str(out),
                                            "--n_clusters", "64", "--n_init", "2"]) == 0
    return out


# --------------------------------------------------------------------------- end to end
def test_outputs_on_real_embeddings(real_stage2, quantized):
    meta = json.loads((quantized / "metadata.json").read_text())
    enc_meta = json.loads((real_stage2 / "metadata.json").read_text())
    table = torch.load(real_stage2 / TABLE_FILE)["embeddings"].double().numpy()
    centres_obj = torch.load(quantized / "cluster_centers.pt")
    centres = centres_obj["cluster_centers"]
    tokens = centres_obj["kmer_tokens"]
    assert centres.dtype == torch.float32 and centres.shape == (64, 16)
    assert tokens.shape == (4096,) and centres_obj["kmers"] == _kmers(6)
    assert centres_obj["kmer_to_token"] == dict(zip(_kmers(6), tokens.tolist()))
    # every k-mer gets its nearest centre (numpy reference)
    d2 = ((table[:, None, :] - centres.double().numpy()[None]) ** 2).sum(-1)
    assert np.mean(d2.argmin(1) == tokens.numpy()) > 0.999  # float32 centres may flip exact ties
    carried = torch.load(quantized / "kmer_ids.pt")  # the k-mers behind the tokens, for the ceiling references
    assert carried["k"] == 6
    for split in SPLITS:
        obj = torch.load(quantized / f"{split}.pt")
        seq, labels = obj["sequences"], obj["labels"]
        ids = torch.load(real_stage2 / f"{split}.pt")["kmer_ids"].long()
        assert seq.dtype == torch.int64 and labels.dtype == torch.int64
        assert torch.equal(seq, tokens[ids]) and torch.equal(labels, seq[:, -1])
        assert carried["kmer_ids"][split].dtype == torch.int16 and torch.equal(carried["kmer_ids"][split].long(), ids)
        assert meta["splits"][split]["windows"] == len(seq)
    # the fit is weighted by train occurrences: the reported inertia is the sum over every train position
    train_ids = torch.load(real_stage2 / "train.pt")["kmer_ids"].long().reshape(-1).numpy()
    per_position = ((table[train_ids] - centres.double().numpy()[tokens.numpy()[train_ids]]) ** 2).sum()
    assert meta["inertia"] == pytest.approx(per_position, rel=1e-4)
    occ = meta["cluster_sizes_train_occurrences"]["sizes"]
    assert sum(occ) == len(train_ids) and len(occ) == 64
    assert sum(meta["cluster_sizes_distinct_kmers"]["sizes"]) == meta["train_kmers_distinct"]
    assert meta["empty_clusters"] == sum(1 for s in meta["cluster_sizes_distinct_kmers"]["sizes"] if s == 0)
    assert meta["hamming_within_cluster"] < 0.8 * meta["hamming_random_pairs"]
    assert meta["input_table_sha256"] == enc_meta["table_sha256"]


def test_window_sources_travel_from_stage1_to_the_tokens(stage1_dir, real_stage2, quantized):
    meta = json.loads((stage1_dir / "metadata.json").read_text())
    for split in SPLITS:
        expected = WindowSources.from_stage1(stage1_dir, split, meta)
        for path in (real_stage2 / f"{split}.pt", quantized / f"{split}.pt"):
            obj = torch.load(path)
            got = WindowSources.from_torch(obj["sources"], path, len(expected), 32)
            assert got.accessions == expected.accessions and got.groups == expected.groups
            assert np.array_equal(got.transcript, expected.transcript) and np.array_equal(got.offsets, expected.offsets)
            assert (got.novel is None) == (split == "train")
            if got.novel is not None:
                assert np.array_equal(got.novel, expected.novel) and got.novel[:, -1].mean() > 0.9


def test_rerun_is_a_no_op_other_flags_refused_force_replaces(real_stage2, quantized):
    before = {p.name: p.stat().st_mtime_ns for p in quantized.iterdir()}
    args = ["--input_dir", str(real_stage2), "--output_dir", str(quantized), "--n_clusters", "64", "--n_init", "2"]
    assert quantize_lambeq_embeddings.main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in quantized.iterdir()} == before
    with pytest.raises(UserError, match="different run"):
        quantize_lambeq_embeddings.main(args[:-4] + ["--n_clusters", "32", "--n_init", "1"])


def test_mean_hamming_reference():
    kmers = ["AAA", "AAC", "TTT", "TTG"]
    # all ordered pairs: d(AAA,AAC)=1, d(AAA,TTT)=3, d(AAA,TTG)=3, d(AAC,TTT)=3, d(AAC,TTG)=3, d(TTT,TTG)=1
    assert mean_hamming(kmers) == pytest.approx(14 / 6)
    assert mean_hamming(kmers, np.array([0, 0, 1, 1])) == pytest.approx(1.0)


# --------------------------------------------------------------------------- fit semantics
def test_fit_uses_train_only_and_unseen_kmers_get_their_nearest_centre(tmp_path):
    rng = np.random.default_rng(0)
    table = _one_hot_table(3)
    seen = np.arange(0, 48)  # k-mers starting with T (48..63) never occur in train
    train = _random_ids(rng, seen, 60)
    val_a, val_b = _random_ids(rng, 64, 20), _random_ids(rng, 64, 20)
    test = _random_ids(rng, 64, 20)
    cfg = QuantizeConfig(n_clusters=8, n_init=2)
    outs = []
    for name, val in (("a", val_a), ("b", val_b)):
        enc = make_encoder_dir(tmp_path / f"enc_{name}", table, {"train": train, "val": val, "test": test})
        quantize_embeddings(enc, tmp_path / f"out_{name}", cfg)
        outs.append(tmp_path / f"out_{name}")
    ca = torch.load(outs[0] / "cluster_centers.pt")
    cb = torch.load(outs[1] / "cluster_centers.pt")
    assert torch.equal(ca["cluster_centers"], cb["cluster_centers"])  # val never reaches the fit
    centres = ca["cluster_centers"].double().numpy()
    d2 = ((table[:, None, :] - centres[None]) ** 2).sum(-1)
    tokens = ca["kmer_tokens"].numpy()
    assert np.allclose(d2[np.arange(64), tokens], d2.min(1))  # unseen ones included
    meta = json.loads((outs[0] / "metadata.json").read_text())
    assert meta["train_kmers_distinct"] == len(np.unique(train))
    assert meta["splits"]["val"]["positions_with_kmers_unseen_in_train"] == int(np.sum(val_a >= 48))
    assert meta["splits"]["train"]["positions_with_kmers_unseen_in_train"] == 0


def test_full_tensor_format_gives_the_same_partition(tmp_path):
    """The original {split}.pt with embeddings [N, W, D]: distinct rows clustered like the table."""
    rng = np.random.default_rng(1)
    digits = np.array([["ACGT".index(b) for b in km] for km in _kmers(3)])
    table = (digits[:, :1] * 10.0 + rng.normal(0, 0.1, (64, 2))).astype(np.float32)  # 4 blobs by first base
    ids = {s: _random_ids(rng, 64, 30) for s in SPLITS}
    enc = make_encoder_dir(tmp_path / "enc", table, ids)
    full = tmp_path / "full"
    full.mkdir()
    for split in SPLITS:
        atomic_torch_save(full / f"{split}.pt", {"embeddings": torch.from_numpy(table[ids[split]])})
    cfg = QuantizeConfig(n_clusters=4, n_init=2)
    quantize_embeddings(enc, tmp_path / "q_table", cfg)
    quantize_embeddings(full, tmp_path / "q_full", cfg)
    meta = json.loads((tmp_path / "q_full" / "metadata.json").read_text())
    assert meta["input_format"] == "full" and meta["hamming_within_cluster"] is None
    assert not (tmp_path / "q_full" / "kmer_ids.pt").exists()  # no k-mer table, no k-mer ids to carry
    assert torch.load(tmp_path / "q_table" / "kmer_ids.pt")["k"] == 3
    for split in SPLITS:
        a = torch.load(tmp_path / "q_table" / f"{split}.pt")["sequences"].numpy().ravel()
        b = torch.load(tmp_path / "q_full" / f"{split}.pt")["sequences"].numpy().ravel()
        pairs = set(zip(a.tolist(), b.tolist()))
        assert len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))  # same partition up to renaming
        first_base = digits[ids[split], 0].ravel()
        assert len(set(zip(first_base.tolist(), b.tolist()))) == 4  # the blobs are the clusters


# --------------------------------------------------------------------------- user errors
@pytest.fixture()
def small_enc(tmp_path) -> Path:
    rng = np.random.default_rng(2)
    ids = {s: _random_ids(rng, 64, 10) for s in SPLITS}
    return make_encoder_dir(tmp_path / "enc", _one_hot_table(3), ids)


def test_more_clusters_than_distinct_kmers(small_enc, tmp_path):
    n_distinct = len(np.unique(torch.load(small_enc / "train.pt")["kmer_ids"].numpy()))
    with pytest.raises(UserError, match=f"more than the {n_distinct} distinct"):
        quantize_embeddings(small_enc, tmp_path / "out", QuantizeConfig(n_clusters=n_distinct + 1))
    assert not (tmp_path / "out").exists()


def test_embedding_dims_differ_between_splits(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    for split, d in zip(SPLITS, (4, 5, 4)):
        atomic_torch_save(full / f"{split}.pt", {"embeddings": torch.rand(3, 8, d)})
    with pytest.raises(UserError, match="dimensions differ"):
        quantize_embeddings(full, tmp_path / "out", QuantizeConfig(n_clusters=2))


def test_missing_split_file(small_enc, tmp_path):
    (small_enc / "test.pt").unlink()
    with pytest.raises(UserError, match="missing split file.*test.pt"):
        quantize_embeddings(small_enc, tmp_path / "out", QuantizeConfig(n_clusters=2))


def test_split_file_from_another_run_is_detected(small_enc, tmp_path):
    t = torch.load(small_enc / "val.pt")
    t["kmer_ids"] = torch.flip(t["kmer_ids"], [0])
    atomic_torch_save(small_enc / "val.pt", t)
    with pytest.raises(UserError, match="does not match the sha256"):
        quantize_embeddings(small_enc, tmp_path / "out", QuantizeConfig(n_clusters=2))


def test_table_hash_mismatch_and_ids_out_of_range(tmp_path):
    rng = np.random.default_rng(3)
    ids = {s: _random_ids(rng, 64, 10) for s in SPLITS}
    enc = make_encoder_dir(tmp_path / "enc", _one_hot_table(3), ids, record_hashes=False)
    obj = torch.load(enc / TABLE_FILE)
    obj["embeddings"] = obj["embeddings"] * 2
    atomic_torch_save(enc / TABLE_FILE, obj)
    with pytest.raises(UserError, match="table hash differs"):
        quantize_embeddings(enc, tmp_path / "out", QuantizeConfig(n_clusters=2))
    big = {s: a + (64 if s == "val" else 0) for s, a in ids.items()}
    enc2 = make_encoder_dir(tmp_path / "enc2", _one_hot_table(3), big, record_hashes=False)
    with pytest.raises(UserError, match="outside the table of 64"):
        quantize_embeddings(enc2, tmp_path / "out", QuantizeConfig(n_clusters=2))


def test_output_dir_checks(small_enc, tmp_path):
    with pytest.raises(UserError, match="must differ"):
        quantize_embeddings(small_enc, small_enc, QuantizeConfig(n_clusters=2))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an output of this pipeline"):
        quantize_embeddings(small_enc, foreign, QuantizeConfig(n_clusters=2))
    quantize_embeddings(small_enc, tmp_path / "out", QuantizeConfig(n_clusters=2))
    with pytest.raises(UserError, match="different run"):
        quantize_embeddings(small_enc, tmp_path / "out", QuantizeConfig(n_clusters=3))
    quantize_embeddings(small_enc, tmp_path / "out", QuantizeConfig(n_clusters=3), force=True)
    assert json.loads((tmp_path / "out" / "metadata.json").read_text())["parameters"]["n_clusters"] == 3


def test_not_an_encoder_directory(tmp_path):
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    for split in SPLITS:
        atomic_torch_save(bogus / f"{split}.pt", {"sequences": torch.zeros(2, 3, dtype=torch.long)})
    (bogus / TABLE_FILE).write_bytes(b"not a torch file")
    atomic_write_json(bogus / "metadata.json", {"stage": "prepare_autoregressive_data"})
    with pytest.raises(UserError, match="not from lambeq_encoder.py"):
        quantize_embeddings(bogus, tmp_path / "out", QuantizeConfig(n_clusters=2))


def test_cli_reports_one_line(tmp_path):
    proc = run_script("quantize_lambeq_embeddings.py", "--input_dir", tmp_path / "nope", "--output_dir", tmp_path / "o",
                      timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'nope'}: not a directory (run lambeq_encoder.py first)"
