"""The evaluation protocol: token streams from real stage-1 windows, the training schedule, the
scored targets, tie-aware scores and the group bootstrap, each against a brute-force version."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from tests.helpers import SAMPLE_FASTA
from quixer.fasta import iter_fasta, normalise
from quixer.intervals import GroupBootstrap
from quixer.kneser_ney import KneserNeyModel
from quixer.scoring import TargetScores, fixed_distribution_scores, score_logits
from quixer.streams import TokenStreams, TrainSchedule, eval_targets
from quixer.window_sources import WindowSources
from quixer.windows import WindowConfig, kmer_id, prepare_autoregressive_data, split_kmer_ids


# ------------------------------------------------------------------ scores
def brute_expected_top(logits: list[float], target: int, k: int) -> float:
    """Average over every order of the tied scores of [target in the first k]."""
    own = logits[target]
    above = sum(v > own for v in logits)
    tied = [i for i, v in enumerate(logits) if v == own]
    hits = [above + order.index(target) < k for order in itertools.permutations(tied)]
    return sum(hits) / len(hits)


def test_scores_count_ties_as_expected_accuracy():
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 4, (40, 7)).astype(np.float64)  # many ties
    targets = rng.integers(0, 7, 40)
    nll, top1, top5 = score_logits(torch.from_numpy(logits), torch.from_numpy(targets))
    for row, t in enumerate(targets):
        assert top1[row].item() == pytest.approx(brute_expected_top(list(logits[row]), t, 1))
        assert top5[row].item() == pytest.approx(brute_expected_top(list(logits[row]), t, 5))
        p = np.exp(logits[row]) / np.exp(logits[row]).sum()
        assert nll[row].item() == pytest.approx(-np.log(p[t]))
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    fixed = fixed_distribution_scores(p, targets)
    shared = score_logits(torch.from_numpy(np.log(p)).expand(40, 7), torch.from_numpy(targets))
    for a, b in zip(fixed, shared):
        assert np.allclose(a, b.numpy())
    assert fixed_distribution_scores(np.full(512, 1 / 512), np.arange(9))[1] == pytest.approx(np.full(9, 1 / 512))


# ------------------------------------------------------------------ streams from real windows
@pytest.fixture(scope="module")
def overlapping(tmp_path_factory):
    """Stage 1 on 40 sample transcripts with overlapping windows (stride 7 < W) and the split's k-mer ids."""
    out = tmp_path_factory.mktemp("streams") / "s1"
    meta = prepare_autoregressive_data(SAMPLE_FASTA, out, WindowConfig(window_stride=7, max_sequences=40))
    return out, meta


@pytest.mark.parametrize("split", ["train", "test"])
def test_streams_rebuild_each_transcript_kmer_by_kmer(overlapping, split):
    out, meta = overlapping
    sources = WindowSources.from_stage1(out, split, meta)
    streams = TokenStreams.from_windows(torch.from_numpy(split_kmer_ids(out, split).astype(np.int64)), sources)
    seqs = {r.accession: normalise(r.sequence) for r in iter_fasta(SAMPLE_FASTA)}
    assert len(streams.segment_starts) >= len(sources.accessions)
    tokens = streams.tokens.numpy()
    covered = 0
    for t, acc in enumerate(sources.accessions):
        seq = seqs[acc]
        offsets = np.sort(sources.offsets[sources.transcript == t])
        # the transcript's k-mers from its first window to the end of its last, where windows chain
        expected = [kmer_id(seq[p:p + 6]) for p in range(offsets[0], offsets[-1] + 32)]
        found = any(np.array_equal(tokens[s:s + n], expected)
                    for s, n in zip(streams.segment_starts, streams.segment_lengths))
        gaps = np.diff(offsets)
        assert found == bool((gaps <= 32).all()), acc  # one segment exactly when no window gap breaks the chain
        covered += found
    assert covered > 0.8 * len(sources.accessions)
    assert streams.window_starts(32).size == int(np.maximum(streams.segment_lengths - 31, 0).sum())
    if split == "test":  # the novel flag of each token is the flag stage 1 wrote for that k-mer's context
        assert streams.novel.shape == (len(streams),) and streams.novel.mean() > 0.95


def test_chaining_stops_at_gaps_and_disagreements():
    w = 4
    seq = torch.tensor([[0, 1, 2, 3], [2, 3, 4, 5], [9, 9, 9, 9], [6, 7, 8, 9]])
    src = WindowSources(["a", "b"], np.array([0, 0, 0, 1], np.int32), np.array([0, 2, 20, 0]), ["g", "h"], None)
    streams = TokenStreams.from_windows(seq, src)
    assert streams.tokens.tolist() == [0, 1, 2, 3, 4, 5, 9, 9, 9, 9, 6, 7, 8, 9]
    assert streams.segment_starts.tolist() == [0, 6, 10] and streams.segment_lengths.tolist() == [6, 4, 4]
    assert streams.window_starts(w).tolist() == [0, 1, 2, 6, 10]
    bad = seq.clone()
    bad[1, 0] = 7  # its overlap disagrees with the window before: a new segment, nothing invented
    assert TokenStreams.from_windows(bad, src).segment_lengths.tolist() == [4, 4, 4, 4]


def test_train_schedule_uses_every_start_once_per_cycle_and_is_seeded():
    streams = TokenStreams(torch.arange(50), np.array([0, 20]), np.array([20, 30]), None, None)
    starts = streams.window_starts(8)  # 13 + 23 = 36 starts
    sched = TrainSchedule(streams, 8, epoch_size=10, seed=3)
    epochs = [sched.epoch(e) for e in range(8)]  # 80 windows: two full cycles and 8 more
    flat = np.concatenate(epochs)
    assert sorted(flat[:36]) == sorted(starts) and sorted(flat[36:72]) == sorted(starts)
    assert not np.array_equal(flat[:36], flat[36:72])  # a fresh permutation per cycle
    assert np.array_equal(TrainSchedule(streams, 8, 10, 3).epoch(5), epochs[5])
    assert not np.array_equal(TrainSchedule(streams, 8, 10, 4).epoch(5), epochs[5])


def test_eval_targets_are_all_positions_or_one_fixed_sample():
    streams = TokenStreams(torch.arange(300) % 7, np.array([0, 100]), np.array([100, 200]), np.arange(300) % 3 == 0,
                           np.array([5, 6]))
    every = eval_targets(streams, 10, None)
    assert every.starts.tolist() == list(range(0, 91)) + list(range(100, 291))
    assert every.novel.tolist() == [(s + 9) % 3 == 0 for s in every.starts]
    assert every.groups.tolist() == [5] * 91 + [6] * 191
    sample = eval_targets(streams, 10, 50)
    again = eval_targets(streams, 10, 50)
    assert len(sample) == 50 and np.array_equal(sample.starts, again.starts) and sample.key == again.key
    assert set(sample.starts) <= set(every.starts) and sample.key != every.key


def test_ngram_on_streams_counts_each_position_once_within_its_segment():
    rng = np.random.default_rng(4)
    segments = rng.integers(0, 6, (30, 9))
    streams = TokenStreams(torch.from_numpy(segments.reshape(-1)), np.arange(30) * 9, np.full(30, 9), None, None)
    a = KneserNeyModel(6, 4).fit_streams(streams)
    b = KneserNeyModel(6, 4).fit(segments, positions="all")  # each segment as one window: the same counts
    contexts = rng.integers(0, 6, (50, 8))
    for order in range(1, 5):
        assert np.allclose(a.predict_proba(contexts, order), b.predict_proba(contexts, order))


# ------------------------------------------------------------------ the group bootstrap
def test_bootstrap_weights_groups_like_an_explicit_resample():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(12), rng.integers(1, 9, 12))
    n = len(groups)
    seeds = [TargetScores(rng.random(n) * 3, (rng.random(n) < 0.4).astype(float), np.ones(n), groups=groups)
             for _ in range(2)]
    boot = GroupBootstrap(groups, n, replicates=50, seed=3)
    top1, loss = boot.estimate(seeds, "top1"), boot.estimate(seeds, "nll")
    for b, w in enumerate(boot.weights):  # brute force: repeat each group's targets w_g times, for each seed
        picked = np.concatenate([np.flatnonzero(groups == g).repeat(int(w[g])) for g in range(12)])
        assert top1.center + top1.deviations[b] == pytest.approx(np.mean([s.top1[picked].mean() for s in seeds]))
        assert loss.exp().center + loss.exp().deviations[b] == pytest.approx(
            np.exp(np.mean([s.nll[picked].mean() for s in seeds])))
    lo, hi = top1.interval()
    assert lo <= np.mean([s.top1.mean() for s in seeds]) == top1.point <= hi


def test_correlated_groups_widen_the_interval_and_seeds_add_their_spread():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(40), 50)
    per_group = rng.random(40) < 0.5  # whole groups right or wrong: strongly correlated targets
    runs = [TargetScores(np.ones(2000), per_group[groups].astype(float), np.ones(2000), groups=groups)]
    by_group = GroupBootstrap(groups, 2000, replicates=400)
    by_target = GroupBootstrap(None, 2000, replicates=400)
    wide = np.diff(by_group.estimate(runs, "top1").interval())[0]
    narrow = np.diff(by_target.estimate(runs, "top1").interval())[0]
    assert wide > 4 * narrow  # sqrt(50) in theory
    shifted = [TargetScores(np.ones(2000), np.clip(r.top1 + d, 0, 1), np.ones(2000), groups=groups)
               for r, d in ((runs[0], 0.0), (runs[0], 0.3))]
    two_seeds = np.diff(by_group.estimate(shifted, "top1").interval())[0]
    assert two_seeds > wide


def test_report_rows_roundtrip_scores_files(tmp_path):
    s = TargetScores(np.array([1.0, 2.0]), np.array([1.0, 0.0]), np.array([1.0, 1.0]), np.array([True, False]),
                     np.array([3, 4]), np.array([0.2, 0.4]), "abc")
    s.save(tmp_path / "x.npz")
    back = TargetScores.load(tmp_path / "x.npz")
    assert back.key == "abc" and np.array_equal(back.groups, [3, 4]) and back.metrics() == s.metrics()
    assert s.metrics()["novel_top1"] == 1.0 and s.metrics()["novel_fraction"] == 0.5
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(Exception, match="cannot be read"):
        TargetScores.load(tmp_path / "bad.npz")
    assert json.dumps(s.metrics())


def test_positions_key_pairs_token_sets_of_the_same_windows(tmp_path):
    """Quantised and raw tokens of the same windows score the same positions: equal
    positions_key (carried through the scores file), different key."""
    from tests.token_fixtures import make_token_dir
    from quixer.data import load_token_data
    from quixer.scoring import TargetScores
    from quixer.streams import eval_targets

    coarse = load_token_data(make_token_dir(tmp_path / "coarse", prefix=4))
    raw = load_token_data(make_token_dir(tmp_path / "raw", prefix=6))
    a, b = (eval_targets(d.streams("test"), d.window_size, 0) for d in (coarse, raw))
    assert a.positions_key == b.positions_key and a.key != b.key
    assert a.sample(50).positions_key != a.positions_key
    n = len(a)
    path = tmp_path / "scores.npz"
    a.scores(np.zeros(n), np.zeros(n), np.zeros(n)).save(path)
    assert TargetScores.load(path).positions_key == a.positions_key
