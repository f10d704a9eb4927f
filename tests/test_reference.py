"""Reference predictors: exact formulas against slow pure-Python recomputations."""
from __future__ import annotations

import json
import math
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from quixer.common import UserError
from quixer.data import data_fingerprint, load_token_data
from quixer.kneser_ney import KneserNeyModel, ScoredSplit, _stack_loss, choose_order, format_discounts, kn_discounts
from quixer.reference import CEILING_REFERENCES, DEFAULT_ORDER_TOLERANCE, TOKEN_REFERENCES, UNIGRAM_ALPHAS, run_reference
from tests.token_fixtures import make_token_dir

RESULT_KEYS = {
    "model", "parameters", "parameter_breakdown", "test_loss", "test_perplexity", "test_top1", "test_top5",
    "train_seconds", "eval_sequences_per_second", "val_loss", "val_perplexity", "val_top1", "val_top5",
    "test_targets", "targets_sha256",
}

# A tiny hand-made window set over V = 5 (token 4 never occurs: it must still get mass).
TINY = np.array(
    [
        [0, 1, 2, 0, 1, 3],
        [1, 2, 0, 1, 2, 0],
        [0, 0, 1, 2, 3, 1],
        [2, 0, 1, 2, 0, 1],
        [3, 1, 2, 0, 1, 2],
        [0, 1, 3, 0, 1, 2],
    ]
)
TINY_V = 5


def save_splits(directory, splits: dict[str, np.ndarray], n_centers: int | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, seq in splits.items():
        t = torch.as_tensor(np.asarray(seq), dtype=torch.int64)
        torch.save({"sequences": t, "labels": t[:, -1].clone()}, directory / f"{name}.pt")
    if n_centers is not None:
        torch.save({"cluster_centers": torch.zeros(n_centers, 3)}, directory / "cluster_centers.pt")


# ---------------------------------------------------------------------------------------------
# A slow, explicit implementation of interpolated modified Kneser-Ney (dicts and loops).


def slow_discounts(counts: list[int]) -> tuple[float, float, float]:
    n1, n2, n3, n4 = (sum(1 for c in counts if c == k) for k in (1, 2, 3, 4))
    if n1 == 0 or n2 == 0:
        return (0.5, 1.0, 1.5)
    y = n1 / (n1 + 2 * n2)
    d = [1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, (3 - 4 * y * n4 / n3) if n3 else 2 - 3 * y * n3 / n2]
    return tuple(min(max(v, 0.05), k - 0.05) for k, v in zip((1, 2, 3), d))


class SlowKN:
    """``discounts``: (D1, D2, D3+) per level, lowest first (default: the count-of-counts ones)."""

    def __init__(self, windows: np.ndarray, vocab_size: int, order: int, positions: str, discounts=None):
        self.V, self.order, self.discounts = vocab_size, order, discounts
        w = windows.tolist()
        width = len(w[0])
        cols = range(width) if positions == "all" else [width - 1]
        # raw[L][(h, w)] = number of positions whose L previous tokens are h and whose token is w
        self.raw = [Counter() for _ in range(order)]
        left = [defaultdict(set) for _ in range(order)]  # left[L][(h, w)] = {tokens seen before h}
        for row in w:
            for i in cols:
                for L in range(order):
                    if i - L < 0:
                        continue
                    h = tuple(row[i - L:i])
                    self.raw[L][(h, row[i])] += 1
                    if L + 1 < order and i - L - 1 >= 0:
                        left[L][(h, row[i])].add(row[i - L - 1])
        self.cont = [Counter({k: len(v) for k, v in left[L].items()}) for L in range(order)]

    def prob(self, context: list[int], w: int, L: int | None = None) -> float:
        top = self.order - 1
        L = top if L is None else L
        if L < 0:
            return 1.0 / self.V
        counts = self.raw[L] if L == top else self.cont[L]
        h = tuple(context[len(context) - L:]) if L else ()
        row = {tok: c for (hh, tok), c in counts.items() if hh == h and c > 0}
        total = sum(row.values())
        lower = self.prob(context, w, L - 1)
        if total == 0:
            return lower
        d = slow_discounts(list(counts.values())) if self.discounts is None else self.discounts[L]
        disc = lambda c: d[min(c, 3) - 1]  # noqa: E731
        gamma = sum(disc(c) for c in row.values()) / total
        c = row.get(w, 0)
        return (max(c - disc(c), 0.0) if c else 0.0) / total + gamma * lower


def test_discounts_by_hand():
    # n1 = 3, n2 = 2, n3 = 1, n4 = 1 -> Y = 3/7, D1 = 3/7, D2 = 19/14, D3+ = 9/7
    d = kn_discounts(np.array([1, 1, 1, 2, 2, 3, 4, 9]))
    assert d == pytest.approx((3 / 7, 19 / 14, 9 / 7))
    assert kn_discounts(np.array([5, 7, 9])) == (0.5, 1.0, 1.5)  # no singletons: fallback
    assert kn_discounts(np.array([1] + [2] * 10))[0] == pytest.approx(0.05)  # 1 - 20/21, clipped up


@pytest.mark.parametrize("positions", ["all", "last"])
@pytest.mark.parametrize("block", [None, 1])
def test_ngram_matches_slow_reference(positions, block):
    max_order = 4
    model = KneserNeyModel(TINY_V, max_order, block=block).fit(TINY, positions=positions)
    rng = np.random.default_rng(1)
    contexts = np.concatenate([TINY[:, 1:5], rng.integers(0, TINY_V, (6, 4))])  # seen and unseen contexts
    for order in range(1, max_order + 1):
        slow = SlowKN(TINY, TINY_V, order, positions)
        fast = model.predict_proba(contexts, order)
        expected = np.array([[slow.prob(list(c), w) for w in range(TINY_V)] for c in contexts])
        np.testing.assert_allclose(fast, expected, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(fast.sum(axis=1), 1.0, rtol=1e-12)
        assert (fast > 0).all()


@pytest.mark.parametrize("block", [None, 2])
def test_distribution_sums_to_one_on_random_contexts(block):
    rng = np.random.default_rng(0)
    V = 37
    train = rng.integers(0, V, (300, 10))
    train[:, 1:] = (train[:, :-1] + rng.integers(0, 3, (300, 9))) % V  # some structure
    model = KneserNeyModel(V, 5, block=block).fit(train, positions="all")
    contexts = np.concatenate([train[:50, -4:], rng.integers(0, V, (50, 4))])
    for order, proba in model.iter_orders(contexts):
        assert proba.shape == (100, V)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
        assert proba.min() > 0, order


def test_block_sizes_agree():
    """One sort for all orders, one per order, blocks of 2, and blocks forced by int64 overflow
    (V = 2000: (V+1)^5 > 2^62 at order 7) must give the same distributions."""
    rng = np.random.default_rng(3)
    for V, max_order in ((20, 6), (2000, 7)):
        train = rng.integers(0, V, (300, 9))
        train[:, 1:] = (train[:, :-1] + rng.integers(0, 3, (300, 8))) % V  # repeated contexts
        contexts = np.concatenate([train[:40, -7:], rng.integers(0, V, (24, 7))])
        models = [KneserNeyModel(V, max_order, block=b).fit(train) for b in (None, 1, 2)]
        assert models[0].block_start.count(True) == (1 if V == 20 else 2)
        for order in range(1, max_order + 1):
            expected = models[0].predict_proba(contexts, order)
            for m in models[1:]:
                np.testing.assert_allclose(m.predict_proba(contexts, order), expected, rtol=1e-12)
                assert m.parameters(order) == models[0].parameters(order)


# ---------------------------------------------------------------------------------------------
# run_reference on files


def markov_windows(rng, n: int, width: int, trans: np.ndarray) -> np.ndarray:
    """Windows from an order-2 chain: token t depends on the two tokens before it."""
    V = trans.shape[0]
    cum = trans.cumsum(axis=-1)
    out = np.empty((n, width), dtype=np.int64)
    out[:, :2] = rng.integers(0, V, (n, 2))
    for i in range(2, width):
        u = rng.random(n)[:, None]
        out[:, i] = np.minimum((u > cum[out[:, i - 2], out[:, i - 1]]).sum(axis=1), V - 1)
    return out


def test_markov_chain_order_is_recovered(tmp_path):
    rng = np.random.default_rng(7)
    V = 8
    trans = rng.dirichlet(np.full(V, 0.3), size=(V, V))
    splits = {s: markov_windows(rng, n, 16, trans) for s, n in (("train", 2000), ("val", 1500), ("test", 1500))}
    save_splits(tmp_path / "tok", splits)
    ngram = run_reference("ngram", tmp_path / "tok", tmp_path / "runs" / "ngram", max_order=5)
    unigram = run_reference("unigram", tmp_path / "tok", tmp_path / "runs" / "unigram")
    assert ngram["order"] == 3
    assert ngram["test_top1"] > unigram["test_top1"] + 0.15
    assert ngram["test_loss"] < unigram["test_loss"] - 0.3
    # the true chain's cross-entropy is a floor the estimate approaches from above
    test = splits["test"]
    true_ce = -np.log(trans[test[:, -3], test[:, -2], test[:, -1]]).mean()
    assert true_ce - 0.02 < ngram["test_loss"] < true_ce + 0.1


def test_uniform_and_unigram_exact(tmp_path):
    rng = np.random.default_rng(5)
    V = 12  # from cluster_centers.pt: ids 10 and 11 never occur, they still count
    splits = {
        "train": rng.integers(0, 10, (200, 6)) ** 2 % 10,  # skewed frequencies
        "val": rng.integers(0, 10, (80, 6)),
        "test": rng.integers(0, 10, (90, 6)),
    }
    save_splits(tmp_path / "tok", splits, n_centers=V)
    uni = run_reference("uniform", tmp_path / "tok", tmp_path / "u")
    assert uni["test_perplexity"] == pytest.approx(V, rel=1e-12)
    assert uni["test_loss"] == pytest.approx(math.log(V), rel=1e-12)
    assert uni["parameters"] == 0
    assert uni["test_top1"] == pytest.approx(1 / V, rel=1e-12) and uni["test_top5"] == pytest.approx(5 / V, rel=1e-12)

    res = run_reference("unigram", tmp_path / "tok", tmp_path / "g")
    counts = Counter(splits["train"].reshape(-1).tolist())  # every train position is training data
    n = splits["train"].size

    def ce(alpha, targets):
        return -sum(math.log((counts[t] + alpha) / (n + alpha * V)) for t in targets.tolist()) / len(targets)

    best_alpha = min(UNIGRAM_ALPHAS, key=lambda a: ce(a, splits["val"][:, -1]))
    assert res["alpha"] == best_alpha
    assert res["test_perplexity"] == pytest.approx(math.exp(ce(best_alpha, splits["test"][:, -1])), rel=1e-12)
    assert res["parameters"] == V - 1
    top = max(counts.values())
    leaders = [t for t in range(V) if counts[t] == top]  # tied leaders share the top-1 credit
    assert res["test_top1"] == pytest.approx(np.mean(np.isin(splits["test"][:, -1], leaders)) / len(leaders))


def test_files_written_and_errors(tmp_path):
    rng = np.random.default_rng(2)
    splits = {s: rng.integers(0, 6, (40, 8)) for s in ("train", "val", "test")}
    save_splits(tmp_path / "tok", splits)
    for name in TOKEN_REFERENCES:
        out = tmp_path / "runs" / name
        res = run_reference(name, tmp_path / "tok", out, max_order=3)
        on_disk = json.loads((out / "results.json").read_text())
        assert RESULT_KEYS <= set(on_disk)
        assert on_disk["model"] == name and on_disk["test_loss"] == pytest.approx(res["test_loss"])
        config = json.loads((out / "config.json").read_text())
        assert config["model"] == name and config["vocab_size"] == 6 and config["data_dir"] == str(tmp_path / "tok")
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(UserError, match="unknown reference model"):
        run_reference("bigram", tmp_path / "tok", tmp_path / "x")
    for name in CEILING_REFERENCES:  # bare token ids: the bases behind them are unknown
        with pytest.raises(UserError, match="no kmer_ids.pt"):
            run_reference(name, tmp_path / "tok", tmp_path / "runs" / name)
        assert not (tmp_path / "runs" / name).exists()
    capped = run_reference("ngram", tmp_path / "tok", tmp_path / "x", max_order=20)  # W = 8
    assert json.loads((tmp_path / "x" / "config.json").read_text())["max_order"] == 8
    assert len(capped["val_loss_by_order"]) == 8
    with pytest.raises(UserError, match="max_order"):
        run_reference("ngram", tmp_path / "tok", tmp_path / "x", max_order=0)
    with pytest.raises(UserError, match="not found"):
        run_reference("ngram", tmp_path / "missing", tmp_path / "x")


def test_rerun_with_same_data_and_settings_is_a_no_op(tmp_path):
    rng = np.random.default_rng(3)
    splits = {s: rng.integers(0, 6, (40, 8)) for s in ("train", "val", "test")}
    save_splits(tmp_path / "tok", splits)
    out = tmp_path / "runs" / "ngram"
    first = run_reference("ngram", tmp_path / "tok", out, max_order=3)
    stamp = (out / "results.json").stat().st_mtime_ns
    assert run_reference("ngram", tmp_path / "tok", out, max_order=3) == first
    assert (out / "results.json").stat().st_mtime_ns == stamp
    other = run_reference("ngram", tmp_path / "tok", out, max_order=2)  # other settings: fitted again
    assert (out / "results.json").stat().st_mtime_ns != stamp and len(other["val_loss_by_order"]) == 2
    splits["test"] = rng.integers(0, 6, (40, 8))  # other data, same path: fitted again
    save_splits(tmp_path / "tok", splits)
    stamp = (out / "results.json").stat().st_mtime_ns
    run_reference("ngram", tmp_path / "tok", out, max_order=2)
    assert (out / "results.json").stat().st_mtime_ns != stamp


# ---------------------------------------------------------------------------------------------
# Discounts chosen on validation

BOUNDS = ((0.05, 0.95), (0.05, 1.95), (0.05, 2.95))  # D1, D2, D3+: every token keeps mass


def random_discounts(rng, levels: int) -> list[tuple[float, ...]]:
    return [tuple(float(rng.uniform(lo, hi)) for lo, hi in BOUNDS) for _ in range(levels)]


@pytest.mark.parametrize("positions", ["all", "last"])
def test_discounts_set_after_fitting_match_slow_reference(positions):
    """The validation search changes a fitted model's discounts: any in-bounds discounts must
    give the slow formula's distributions, and out-of-bounds ones are refused."""
    rng = np.random.default_rng(4)
    model = KneserNeyModel(TINY_V, 4).fit(TINY, positions=positions)
    contexts = np.concatenate([TINY[:, 1:5], rng.integers(0, TINY_V, (6, 4))])
    for order in range(1, 5):
        chosen = random_discounts(rng, order)
        for table, d in zip(model._tables(order), chosen):
            table.set_discounts(d)
        assert model.discounts(order) == [list(d) for d in chosen]
        slow = SlowKN(TINY, TINY_V, order, positions, discounts=chosen)
        expected = np.array([[slow.prob(list(c), w) for w in range(TINY_V)] for c in contexts])
        np.testing.assert_allclose(model.predict_proba(contexts, order), expected, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="discounts must be"):
        model.raw[0].set_discounts((0.96, 1.0, 1.5))


def test_held_out_loss_and_gradient_are_exact():
    """The search reads only the targets' probabilities: they must be the dense model's, and the
    gradient the loss's (central differences)."""
    rng = np.random.default_rng(6)
    V = 37
    data = rng.integers(0, V, (500, 6))
    data[:, 1:] = (data[:, :-1] + rng.integers(0, 3, (500, 5))) % V
    model = KneserNeyModel(V, 4).fit(data[:300])
    contexts, targets = data[300:, :-1], data[300:, -1]
    ids, tables = model.context_ids(contexts), model._tables(4)
    levels = [t.at_targets(ids[L], targets, V) for L, t in enumerate(tables)]
    uniform = np.full(len(targets), 1 / V)
    x = np.array(random_discounts(rng, 4))
    loss, grad = _stack_loss(levels, x, uniform)
    for table, d in zip(tables, x):
        table.set_discounts(d)
    p = model.predict_proba(contexts, 4)[np.arange(len(targets)), targets]
    assert loss == pytest.approx(-np.log(p).mean(), rel=1e-12)
    eps = 1e-6
    numeric = [(_stack_loss(levels, x + eps * e, uniform)[0] - _stack_loss(levels, x - eps * e, uniform)[0]) / (2 * eps)
               for e in np.eye(x.size).reshape(-1, *x.shape)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-9)
    assert np.abs(grad).max() > 1e-4  # the discounts matter here: the check is not of zeros


@pytest.fixture(scope="module")
def real_tokens(tmp_path_factory):
    """Real transcripts' 6-mers as 256 tokens, split by locus (tests/token_fixtures.py)."""
    return make_token_dir(tmp_path_factory.mktemp("ngram") / "tok", window=16, sizes=(3000, 800, 800),
                          max_records=600, per_record=60, stride=3)


def fitted_and_tuned(tokens, max_order: int = 8):
    data = load_token_data(tokens)
    val = ScoredSplit.of(data, "val", None)
    model = KneserNeyModel(data.vocab_size, max_order).fit_streams(data.streams("train"))
    return data, val, model, model.tune_discounts(val.contexts, val.targets)


def test_tuned_discounts_on_real_data(real_tokens):
    """On real token streams: the tuned validation loss is never above the count-of-counts one
    (and below it somewhere), the recorded losses are the dense model's, the tuned model is a
    proper distribution, and a second fit gives the same numbers to the bit."""
    data, val, model, tuning = fitted_and_tuned(real_tokens)
    counted = KneserNeyModel(data.vocab_size, 8).fit_streams(data.streams("train"))
    dense = {name: [float(a[0].mean()) for a in m.scores_by_order(val.contexts, val.targets).values()]
             for name, m in (("tuned", model), ("counted", counted))}
    assert tuning.loss == pytest.approx(dense["tuned"], rel=1e-10)
    assert tuning.counted_loss == pytest.approx(dense["counted"], rel=1e-10)
    assert all(t <= c + 1e-12 for t, c in zip(tuning.loss, tuning.counted_loss))
    assert min(tuning.loss) < min(tuning.counted_loss) - 0.01
    for order in range(1, 9):
        assert model.counted_discounts(order) == counted.discounts(order)
        for level in model.discounts(order):
            assert all(lo <= d <= hi for (lo, hi), d in zip(BOUNDS, level))
    assert model.discounts(8) != counted.discounts(8)
    rng = np.random.default_rng(0)
    contexts = np.concatenate([val.contexts[:40], rng.integers(0, data.vocab_size, (40, 15))])
    for order, proba in model.iter_orders(contexts):
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
        assert proba.min() > 0, order
    _, _, again, tuning_again = fitted_and_tuned(real_tokens)
    assert tuning_again == tuning and all(again.discounts(n) == model.discounts(n) for n in range(1, 9))


def test_ngram_run_records_its_choices_and_never_reads_test(real_tokens, tmp_path, caplog):
    """results.json and the log state the order and discounts chosen on validation; a second run
    is identical; other test data change the test scores only."""
    caplog.set_level("INFO", logger="quixer.reference")
    first = run_reference("ngram", real_tokens, tmp_path / "a", max_order=8, eval_targets_count=None)
    _, _, model, tuning = fitted_and_tuned(real_tokens)
    order = first["order"]
    assert order == choose_order(first["val_loss_by_order"], DEFAULT_ORDER_TOLERANCE)
    assert first["val_loss_by_order"] == pytest.approx(tuning.loss, rel=1e-10)
    assert first["val_loss_by_order_count_of_counts"] == pytest.approx(tuning.counted_loss, rel=1e-10)
    assert first["val_loss"] == first["val_loss_by_order"][order - 1]
    assert first["discounts"] == model.discounts(order) and len(first["discounts"]) == order
    assert first["discounts_count_of_counts"] == model.counted_discounts(order)
    line = next(r.getMessage() for r in caplog.records if f"order {order} chosen on validation" in r.getMessage())
    assert format_discounts(first["discounts"]) in line

    volatile = {"train_seconds", "eval_sequences_per_second", "provenance", "data_dir"}
    second = run_reference("ngram", real_tokens, tmp_path / "b", max_order=8, eval_targets_count=None)
    assert {k: v for k, v in second.items() if k not in volatile} == {k: v for k, v in first.items() if k not in volatile}

    other = tmp_path / "other_test"  # the same train and val, other test windows
    other.mkdir()
    for split in ("train", "val"):
        (other / f"{split}.pt").write_bytes((real_tokens / f"{split}.pt").read_bytes())
    obj = torch.load(real_tokens / "test.pt")
    obj["sequences"] = (obj["sequences"] * 7 + 3) % 256
    obj["labels"] = obj["sequences"][:, -1].clone()
    torch.save(obj, other / "test.pt")
    moved = run_reference("ngram", other, tmp_path / "c", max_order=8, eval_targets_count=None)
    chosen = ("order", "discounts", "discounts_count_of_counts", "val_loss_by_order", "val_loss", "val_top1")
    assert {k: moved[k] for k in chosen} == {k: first[k] for k in chosen}
    assert moved["test_loss"] != first["test_loss"] and moved["data_fingerprint"] != first["data_fingerprint"]


def test_references_record_provenance_and_data(real_tokens, tmp_path):
    """Every reference's results.json says how it was made and on which tokens, as the trainers' do."""
    command = ["train_classical_baselines.py", "--model", "uniform"]
    for name in TOKEN_REFERENCES:
        res = run_reference(name, real_tokens, tmp_path / name, max_order=3, command=command)
        assert res["data_fingerprint"] == data_fingerprint(real_tokens)
        made = res["provenance"]
        assert made["command"] == command and made["started"] <= made["finished"]
        assert {"git_commit", "python", "packages", "host"} <= set(made)
    # results from before provenance was recorded are not kept by a rerun
    path = tmp_path / "uniform" / "results.json"
    old = json.loads(path.read_text())
    del old["provenance"]
    path.write_text(json.dumps(old))
    assert "provenance" in run_reference("uniform", real_tokens, tmp_path / "uniform", command=command)
