"""Leak-free splits (quixer/homology.py, stage 1): shared-sequence groups and the exact leakage
statistic, on real chrX transcripts; the statistic against a brute-force set computation."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import BENCHMARK_FASTA, SAMPLE_FASTA
from quixer.fasta import iter_fasta, normalise
from quixer.homology import HomologyConfig, SharedSequenceGrouper, base_codes, dust_scores, kmer_keys
from quixer.window_sources import WindowSources
from quixer.windows import SPLITS, WindowConfig, prepare_autoregressive_data

ISOFORMS = ("NM_000044", "NM_001011645")  # AR transcript variants 1 and 2: different locus= tags
DUP_COPIES = ("NR_034005", "NR_034005_dup1")  # identical copies, different locus= tags
UNRELATED = ("NM_005765", "NM_002893")  # two uppercase mRNAs of different genes


@pytest.fixture(scope="module")
def chrx() -> dict[str, str]:
    return {r.accession: r.sequence for r in iter_fasta(BENCHMARK_FASTA)}


def _groups(sequences: list[str], cfg: HomologyConfig = HomologyConfig(max_group_share=1.0)) -> list[int]:
    grouper = SharedSequenceGrouper(cfg)
    for s in sequences:
        grouper.add(s)
    return grouper.groups([None] * len(sequences), [1] * len(sequences)).labels.tolist()


def _insert(host: str, piece: str) -> str:
    mid = len(host) // 2
    return host[:mid] + piece + host[mid:]


# ------------------------------------------------------------------ the k-mer primitives
def test_kmer_keys_are_the_packed_substrings():
    seq = "ACGTTGCANACGGTAcgtaU"
    keys, valid = kmer_keys(base_codes(seq), 4)
    for i, (key, ok) in enumerate(zip(keys.tolist(), valid.tolist())):
        sub = seq[i:i + 4].upper().replace("U", "T")
        assert ok == ("N" not in sub)
        if ok:
            assert key == int("".join(str("ACGT".index(b)) for b in sub), 4)


def test_dust_separates_repeats_from_real_sequence(chrx):
    assert dust_scores(base_codes("A" * 40))[0] == pytest.approx(15.0)
    assert dust_scores(base_codes("CA" * 20))[0] > 7 and dust_scores(base_codes("CAG" * 14))[0] > 4
    real = dust_scores(base_codes(chrx[UNRELATED[0]]))
    assert np.median(real) < 0.5 and (real > HomologyConfig().max_dust_score).mean() < 0.01


# ------------------------------------------------------------------ grouping on real sequence
def test_real_isoforms_and_dup_copies_join_without_tags(chrx):
    names = [*ISOFORMS, *DUP_COPIES, *UNRELATED]
    labels = _groups([chrx[a] for a in names])
    assert labels[0] == labels[1] and labels[2] == labels[3]
    assert len({labels[0], labels[2], labels[4], labels[5]}) == 4


def test_a_shared_soft_masked_repeat_does_not_join_unrelated_genes(chrx):
    repeat = chrx["NR_003255"][9253:9553]  # 300 soft-masked bases of a real transcript
    assert repeat.islower()
    hosts = [chrx[a] for a in UNRELATED]
    assert len(set(_groups(hosts))) == 2
    assert len(set(_groups([_insert(h, repeat) for h in hosts]))) == 2
    # the control: the same bases unmasked are real shared sequence and do join
    assert len(set(_groups([_insert(h, repeat.upper()) for h in hosts]))) == 1


def test_a_shared_low_complexity_run_does_not_join_unrelated_genes_in_uppercase(chrx):
    rng = np.random.default_rng(0)  # an imperfect polyglutamine tract like AR's (CAG)n, 300 bases
    tract = "".join(rng.choice(["CAG", "CAA", "CAG", "CAG", "CAGCAG"]) for _ in range(100))[:300]
    hosts = [_insert(chrx[a], tract) for a in UNRELATED]
    assert len(set(_groups(hosts))) == 2
    no_dust = HomologyConfig(max_group_share=1.0, max_dust_score=float("inf"))
    assert len(set(_groups(hosts, no_dust))) == 1  # >= 32 shared 32-mers: only the DUST filter keeps them apart


def test_a_repeat_in_very_many_transcripts_is_ignored(chrx):
    piece = chrx[ISOFORMS[0]][3000:3100]  # 69 shared 32-mers, in every transcript below
    first = [chrx[a] for a in list(chrx)[:40]]
    plain = list({label: seq for label, seq in zip(_groups(first), first)}.values())[:10]  # one per gene
    hosts = [_insert(h, piece) for h in plain]
    assert len(set(_groups(hosts, HomologyConfig(max_group_share=1.0, max_kmer_transcripts=5)))) == len(hosts)
    assert len(set(_groups(hosts, HomologyConfig(max_group_share=1.0, max_kmer_transcripts=50)))) < len(hosts)


def test_the_group_cap_refuses_weak_joins_only(chrx):
    piece = chrx[ISOFORMS[0]][3000:3100].upper()  # 69 shared 32-mers: a few % of each host, a weak join
    hosts = [_insert(chrx[a], piece) for a in UNRELATED]
    names = [*hosts, chrx[DUP_COPIES[0]], chrx[DUP_COPIES[1]]]
    grouper = SharedSequenceGrouper(HomologyConfig(max_group_share=0.4))
    for seq in names:
        grouper.add(seq)
    result = grouper.groups([None] * 4, [10, 10, 5, 5])  # each join would pass 40 % of the weight
    assert result.labels[0] != result.labels[1] and result.refused == 1  # weak: refused and counted
    assert result.labels[2] == result.labels[3]  # identical copies: a strong join, never refused
    assert len(set(_groups(names))) == 2  # without the cap the weak join is made


# ------------------------------------------------------------------ the benchmark set
def _bare_headers(src: Path, dst: Path) -> Path:
    with gzip.open(src, "rt") as fin, gzip.open(dst, "wt", compresslevel=1) as fout:
        for line in fin:
            fout.write(">" + line[1:].split()[0] + "\n" if line.startswith(">") else line)
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("headers", ["tagged", "bare"])
def test_chrx_split_meets_the_leakage_limits(tmp_path, headers):
    fasta = BENCHMARK_FASTA if headers == "tagged" else _bare_headers(BENCHMARK_FASTA, tmp_path / "bare.fa.gz")
    meta = prepare_autoregressive_data(fasta, tmp_path / "out", WindowConfig())
    assert meta["leakage"]["context_bases"] == 32
    assert meta["leakage"]["test"]["fraction"] <= 0.03 and meta["leakage"]["val"]["fraction"] <= 0.03
    assert meta["split"]["largest_group_share"] <= 0.05
    assert meta["split"]["shares"] == pytest.approx({"train": 0.70, "val": 0.15, "test": 0.15}, abs=0.03)
    groups = meta["transcript_groups"]
    assert groups[ISOFORMS[0]] == groups[ISOFORMS[1]] and groups[DUP_COPIES[0]] == groups[DUP_COPIES[1]]
    if headers == "tagged":  # the old locus split leaked about a quarter of the test contexts
        old = prepare_autoregressive_data(fasta, tmp_path / "locus", WindowConfig(split_by="locus"))
        assert old["leakage"]["test"]["fraction"] > 0.15


# ------------------------------------------------------------------ the statistic, brute force
@pytest.mark.parametrize("split_by", ["locus", "window"])
def test_leakage_and_novel_flags_equal_a_brute_force_set_computation(tmp_path, split_by):
    cfg = WindowConfig(split_by=split_by, max_sequences=150, window_stride=16)
    out = tmp_path / "out"
    meta = prepare_autoregressive_data(SAMPLE_FASTA, out, cfg)
    seqs = {r.accession: normalise(r.sequence) for r in iter_fasta(SAMPLE_FASTA)}
    train_accs = {line.split()[0] for line in (out / "train" / "sources.txt").read_text().splitlines()}
    if split_by == "window":  # every transcript has train windows: all of them are train transcripts
        train_accs = set(meta["transcript_groups"])
    seen = {s[i:i + 32] for a in train_accs for s in [seqs[a]] for i in range(len(s) - 31)}
    for split in ("val", "test"):
        sources = WindowSources.from_stage1(out, split, meta)
        expected = np.zeros(sources.novel.shape, dtype=bool)
        for row, (t, offset) in enumerate(zip(sources.transcript.tolist(), sources.offsets.tolist())):
            s = seqs[sources.accessions[t]]
            for j in range(32):
                start = offset + j + 5 - 32  # the context of position j: 32 bases ending before its last base
                context = s[max(start, 0):start + 32]
                expected[row, j] = start < 0 or bool(set(context) - set("ACGT")) or context not in seen
        assert np.array_equal(sources.novel, expected)
        leaked = int((~expected[:, -1]).sum())
        assert meta["leakage"][split]["context_in_train"] == leaked
        assert meta["leakage"][split]["fraction"] == pytest.approx(leaked / len(expected))
    # the input does leak, so the check means something
    assert meta["leakage"]["val"]["context_in_train"] + meta["leakage"]["test"]["context_in_train"] > 0


def test_split_is_deterministic_for_a_seed_and_changes_with_it(tmp_path):
    a = prepare_autoregressive_data(SAMPLE_FASTA, tmp_path / "a", WindowConfig(max_sequences=80))
    b = prepare_autoregressive_data(SAMPLE_FASTA, tmp_path / "b", WindowConfig(max_sequences=80))
    c = prepare_autoregressive_data(SAMPLE_FASTA, tmp_path / "c", WindowConfig(max_sequences=80, seed=5))
    assert a["groups"] == b["groups"] and a["transcript_groups"] == c["transcript_groups"]
    assert a["groups"] != c["groups"]
    for split in SPLITS:
        assert (tmp_path / "a" / split / "sources.txt").read_bytes() == (tmp_path / "b" / split / "sources.txt").read_bytes()
    assert json.loads((tmp_path / "a" / "metadata.json").read_text())["split"]["method"] == "homology"
