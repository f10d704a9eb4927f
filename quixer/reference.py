"""Reference predictors that need no gradient training: uniform, unigram, n-gram and the ceilings.

The next 6-mer shares five bases with the last input k-mer, so the task is close to next-base
prediction. These references put every trained model's number in context: a model is only
interesting if it beats the n-gram on the same tokens.

Task and protocol (as everywhere, :mod:`quixer.streams`): the train windows are chained into
per-transcript token streams and every position of them is training data; validation and test
score the same targets as the trained models (every position with a full window of context,
or the fixed sample), with the same per-target scores (:mod:`quixer.scoring`: top-k counts
ties as expected accuracy under random tie-breaking, so uniform top-1 is exactly 1/V).

Models
------
``uniform``  p(w) = 1/V. Perplexity is exactly V. ``parameters`` = 0.

``unigram``  add-alpha smoothed frequencies of the train tokens (every position of the train
             streams, the targets the trained models draw from): p(w) = (c_w + alpha) / (N + alpha V),
             alpha picked on validation cross-entropy from ``UNIGRAM_ALPHAS``.
             ``parameters`` = V - 1 (free probabilities).

``ngram``    interpolated modified Kneser-Ney (Chen & Goodman 1998) predicting the target from the
             previous n-1 tokens, for every order n = 1 .. ``max_order``; the order is picked on
             validation cross-entropy (the smallest order within ``order_tolerance`` nats of the
             best, so indistinguishable longer contexts do not win by noise). Formula, for a
             context h (its oldest token dropped: h'):

                 P_n(w | h) = (c(h, w) - D(c(h, w)))^+ / c(h)  +  gamma(h) * P_{n-1}(w | h')
                 gamma(h)   = sum_w D(c(h, w)) / c(h)

             where c are raw counts at the highest order and continuation counts
             N1+(. h w) (number of distinct tokens seen before h w) at the lower orders;
             D(c) = D1, D2 or D3+ for c = 1, 2, >= 3, estimated per order from the count-of-counts
             n1..n4 (Y = n1 / (n1 + 2 n2); D1 = 1 - 2Y n2/n1; D2 = 2 - 3Y n3/n2;
             D3+ = 3 - 4Y n4/n3), each clipped to [0.05, k - 0.05] so every token keeps mass.
             A context with c(h) = 0 (unseen) uses P_{n-1} unchanged. The recursion ends in the
             uniform distribution 1/V, so P_n is a proper distribution over all V tokens.

             Training counts: every (context, next) pair of the train token streams, each
             position once, its context cut at the start of its transcript segment.

             ``parameters`` = stored table entries of the chosen order: for each order used
             (1..n), the number of (context, token) pairs with a nonzero count, plus one back-off
             weight per context seen, plus 3 discounts, plus 0 for the uniform floor.

``token_ceiling``, ``raw_bases``  the task's ceiling, read from the bases behind the tokens
             (:mod:`quixer.ceilings`): the Bayes-optimal prediction from the tokens alone under a
             base-level prior, and a next-base model that reads the raw bases. They need the
             k-mer ids of every window (stage 3's ``kmer_ids.pt``, or raw k-mer tokens).

Contexts get exact integer ids (no hashing): each position's context is packed into int64 keys
and sorted once per block of orders (see :class:`KneserNeyModel`); counting is a handful of
``np.unique`` calls.

``DEFAULT_MAX_ORDER`` is 12: on the chrX benchmark with the old locus split the validation
cross-entropy kept falling up to order ~11 (shared exons between loci made long contexts
informative); the order is chosen on validation, so a high cap costs only fitting time.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Sequence

import numpy as np

from .common import UserError, atomic_write_json, read_json, sha256_file
from .data import TokenData, data_fingerprint, load_token_data
from .scoring import TargetScores, fixed_distribution_scores, prefixed, proba_scores
from .streams import DEFAULT_EVAL_TARGETS, EvalTargets, TokenStreams, eval_targets
from .windows import SPLITS

log = logging.getLogger(__name__)

TOKEN_REFERENCES = ("uniform", "unigram", "ngram")
CEILING_REFERENCES = ("token_ceiling", "raw_bases")  # quixer.ceilings: they need the bases behind the tokens
REFERENCE_MODELS = TOKEN_REFERENCES + CEILING_REFERENCES
UNIGRAM_ALPHAS = (0.01, 0.1, 0.5, 1.0, 2.0)
DEFAULT_MAX_ORDER = 12
DEFAULT_ORDER_TOLERANCE = 1e-3
_MIN_DISCOUNT = 0.05
_BATCH_ELEMENTS = 1 << 22  # rows * V per dense probability batch (32 MiB of float64)


# ----------------------------------------------------------------------------------------------
# Data and scores


def _batches(n: int, vocab_size: int) -> Iterator[slice]:
    step = max(1, _BATCH_ELEMENTS // max(vocab_size, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def unigram_proba(tokens: np.ndarray, vocab_size: int, alpha: float) -> np.ndarray:
    """Add-alpha smoothed token frequencies, shape [V]."""
    counts = np.bincount(tokens, minlength=vocab_size).astype(np.float64)
    return (counts + alpha) / (counts.sum() + alpha * vocab_size)


@dataclass
class _Split:
    """One evaluation split: the contexts and targets of its scored positions."""

    contexts: np.ndarray  # int64 [M, W-1]
    targets: np.ndarray  # int64 [M]
    scored: EvalTargets
    name: str  # the split

    @classmethod
    def of(cls, data: TokenData, split: str, max_targets: int | None) -> "_Split":
        streams = data.streams(split)
        scored = eval_targets(streams, data.window_size, max_targets)
        windows = streams.windows(scored.starts, data.window_size).numpy()
        return cls(np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, -1]), scored, split)


# ----------------------------------------------------------------------------------------------
# Interpolated modified Kneser-Ney


def kn_discounts(counts: np.ndarray) -> tuple[float, float, float]:
    """Modified Kneser-Ney discounts (D1, D2, D3+) from the count-of-counts n1..n4.

    Y = n1/(n1+2 n2), D1 = 1 - 2Y n2/n1, D2 = 2 - 3Y n3/n2, D3+ = 3 - 4Y n4/n3, each clipped to
    [0.05, k - 0.05]. Without singletons or doubletons (n1 or n2 = 0) the estimate is undefined
    and (0.5, 1.0, 1.5) is used; with n3 = 0, D3+ = D2.
    """
    n = np.bincount(np.minimum(np.asarray(counts, dtype=np.int64), 5), minlength=6)[1:5].tolist()
    if n[0] == 0 or n[1] == 0:
        return (0.5, 1.0, 1.5)
    y = n[0] / (n[0] + 2 * n[1])
    d1 = 1 - 2 * y * n[1] / n[0]
    d2 = 2 - 3 * y * n[2] / n[1]
    d3 = 3 - 4 * y * n[3] / n[2] if n[2] else d2
    return tuple(float(min(max(d, _MIN_DISCOUNT), k - _MIN_DISCOUNT)) for k, d in ((1, d1), (2, d2), (3, d3)))


@dataclass
class _Table:
    """One order's smoothed counts: pairs sorted by (context id, token), CSR-style."""

    tok: np.ndarray  # int32 [P]
    num: np.ndarray  # float64 [P]  (count - D(count)) / total(context)
    offsets: np.ndarray  # int64 [C + 1]  pairs of context id i are offsets[i]:offsets[i+1] (none: unseen)
    gamma: np.ndarray  # float64 [C] back-off weight
    discounts: tuple[float, float, float]

    @classmethod
    def build(cls, pair_ctx: np.ndarray, pair_tok: np.ndarray, counts: np.ndarray, n_ctx: int) -> "_Table":
        """``pair_ctx`` sorted ascending (then ``pair_tok``), ``counts`` > 0."""
        d = kn_discounts(counts)
        disc = np.array([0.0, *d], dtype=np.float64)[np.minimum(counts, 3)]
        total = np.bincount(pair_ctx, weights=counts, minlength=n_ctx)
        removed = np.bincount(pair_ctx, weights=disc, minlength=n_ctx)
        offsets = np.zeros(n_ctx + 1, dtype=np.int64)
        np.cumsum(np.bincount(pair_ctx, minlength=n_ctx), out=offsets[1:])
        safe = np.where(total > 0, total, 1.0)
        return cls(
            tok=pair_tok.astype(np.int32),
            num=(counts - disc) / safe[pair_ctx],
            offsets=offsets,
            gamma=removed / safe,
            discounts=d,
        )

    @property
    def parameters(self) -> int:
        return int(len(self.tok) + np.count_nonzero(np.diff(self.offsets)) + 3)

    def apply(self, proba: np.ndarray, ctx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``gamma(h) * P + discounted(h, .)`` for rows whose context this table knows (others
        keep ``P``); written into ``out`` (may be ``proba`` itself) or a new array."""
        known = ctx >= 0
        ids = np.where(known, ctx, 0)
        start = self.offsets[ids]
        lens = self.offsets[ids + 1] - start
        has = known & (lens > 0)
        scale = np.where(has, self.gamma[ids], 1.0)
        out = np.multiply(proba, scale[:, None], out=out)
        rows = np.flatnonzero(has)
        if len(rows) == 0:
            return out
        if len(self.gamma) == 1:  # the empty context (order 1): one dense row added to every row
            dense = np.zeros(proba.shape[1])
            dense[self.tok] = self.num
            out += dense[None, :]
            return out
        start, lens = start[rows], lens[rows]
        rep_rows = np.repeat(rows, lens)
        first = np.repeat(start - (np.cumsum(lens) - lens), lens)
        pidx = first + np.arange(int(lens.sum()))
        out[rep_rows, self.tok[pidx]] += self.num[pidx]
        return out


class KneserNeyModel:
    """Interpolated modified Kneser-Ney n-gram tables for every order 1..max_order at once.

    Contexts get exact integer ids per length L (no hashing, no collisions). Each position's
    context is packed into one int64, most recent token most significant (digit = token + 1,
    0 = "before the window start"), so after one ``argsort`` every shorter context is a prefix
    and its ids follow from where the prefix changes. When ``(V+1)^L`` would overflow int64, the
    packing restarts in blocks: a block's key starts with the id of the context it extends
    (``id * (V+1)^j + j more digits``), one sort per block. ``block`` caps the levels per sort
    (1 = one sort per order; the tests compare block sizes, which must give identical tables).
    """

    def __init__(self, vocab_size: int, max_order: int = DEFAULT_MAX_ORDER, block: int | None = None):
        if max_order < 1:
            raise UserError(f"max_order must be >= 1, got {max_order}")
        if block is not None and block < 1:
            raise ValueError("block must be >= 1")
        self.vocab_size = int(vocab_size)
        self.max_order = int(max_order)
        self.block = block
        self.ctx_keys: list[np.ndarray] = []  # per context length L: sorted unique context keys
        self.block_start: list[bool] = []  # per L: key = id(L-1) * (V+1) + digit (else key(L-1) * (V+1) + digit)
        self.raw: list[_Table] = []  # per L: raw counts (used when L is the highest order)
        self.cont: list[_Table] = []  # per L < max_order-1: continuation counts (lower orders)

    @property
    def n_ctx(self) -> list[int]:
        return [len(k) for k in self.ctx_keys]

    def _train_contexts(self, tokens: np.ndarray, first: np.ndarray, positions: np.ndarray
                        ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield per L = 0..max_order-1: (context id, next token) of every counted position
        with at least L tokens before it in its segment (in some fixed order), and the parent
        id (the context without its oldest token) of each level-L context id. Position ``p``'s
        segment starts at ``first[p]``."""
        base = self.vocab_size + 1
        lmax = self.max_order - 1
        targets = tokens[positions]
        self.ctx_keys, self.block_start = [np.zeros(1, dtype=np.int64)], [False]
        yield np.zeros(len(targets), dtype=np.int64), targets, np.zeros(1, dtype=np.int64)
        active = np.arange(len(targets))  # counted positions with a level-L context, and their ids
        active_ids = np.zeros(len(targets), dtype=np.int64)
        L = 0
        while L < lmax:
            n_prev = len(self.ctx_keys[L])
            if n_prev * base >= 2**62:
                raise UserError(f"n-gram tables too large for int64 keys ({n_prev} contexts x {base})")
            j = 1
            while L + j < lmax and (self.block is None or j < self.block) and n_prev * base ** (j + 1) < 2**62:
                j += 1
            at = positions[active]
            comp = active_ids * base**j
            for d in range(1, j + 1):
                src = at - (L + d)
                comp += np.where(src >= first[at], tokens[np.maximum(src, 0)] + 1, 0) * base ** (j - d)
            del at
            order = np.argsort(comp)
            comp = comp[order]
            pos = active[order]
            tgt = targets[pos]
            del order
            for d in range(1, j + 1):
                prefix = comp // base ** (j - d)
                valid = prefix % base != 0
                p = prefix[valid]
                change = np.ones(len(p), dtype=bool)
                np.not_equal(p[1:], p[:-1], out=change[1:])
                ids = np.cumsum(change) - 1
                keys = p[change]
                if d == 1:
                    parent = keys // base
                else:
                    parent = np.searchsorted(self.ctx_keys[L + d - 1], keys // base)
                self.ctx_keys.append(keys)
                self.block_start.append(d == 1)
                yield ids, tgt[valid], parent
            active, active_ids = pos[valid], ids
            L += j

    def fit(self, sequences: np.ndarray, positions: str = "all") -> "KneserNeyModel":
        """Count the (context, next) pairs of windows ``[N, W]``: at every position, contexts cut at
        the window start, or (``positions="last"``) only at each window's last position."""
        x = np.asarray(sequences, dtype=np.int64)
        n, width = x.shape
        if self.max_order > width:
            raise UserError(f"max_order {self.max_order} needs windows of at least that many tokens (W={width})")
        if positions not in ("all", "last"):
            raise UserError(f"positions must be 'all' or 'last', got {positions!r}")
        first = np.repeat(np.arange(n, dtype=np.int64) * width, width)
        counted = np.arange(n * width) if positions == "all" else np.arange(1, n + 1) * width - 1
        return self._fit(x.reshape(-1), first, counted)

    def fit_streams(self, streams: TokenStreams) -> "KneserNeyModel":
        """Count every position of the token streams once, contexts cut at segment starts."""
        first = np.repeat(streams.segment_starts, streams.segment_lengths)
        return self._fit(streams.tokens.numpy(), first, np.arange(len(streams)))

    def _fit(self, tokens: np.ndarray, first: np.ndarray, positions: np.ndarray) -> "KneserNeyModel":
        V = self.vocab_size
        self.raw, self.cont = [], []
        for L, (ids, tgt, parent) in enumerate(self._train_contexts(tokens, first, positions)):
            pk, pc = np.unique(ids * V + tgt, return_counts=True)
            p_ctx = pk // V
            p_tok = pk - p_ctx * V
            self.raw.append(_Table.build(p_ctx, p_tok, pc, len(self.ctx_keys[L])))
            if L > 0:
                # N1+(. h w): each distinct (v h, w) at level L adds one to (h, w) at level L-1.
                ck, cc = np.unique(parent[p_ctx] * V + p_tok, return_counts=True)
                c_ctx = ck // V
                self.cont.append(_Table.build(c_ctx, ck - c_ctx * V, cc, len(self.ctx_keys[L - 1])))
        return self

    def context_ids(self, contexts: np.ndarray) -> list[np.ndarray]:
        """Per context length L = 0..max_order-1, the train id of each row's last L tokens
        (-1 where that context never occurred in training)."""
        c = np.asarray(contexts, dtype=np.int64)
        if c.ndim != 2 or c.shape[1] < self.max_order - 1:
            raise ValueError(f"contexts must be [B, >= {self.max_order - 1}], got {c.shape}")
        if len(c) and (c.min() < 0 or c.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        ids = [np.zeros(len(c), dtype=np.int64)]
        key = np.zeros(len(c), dtype=np.int64)
        base = self.vocab_size + 1
        for L in range(1, self.max_order):
            prev = ids[-1]
            start = np.maximum(prev, 0) if self.block_start[L] else key
            key = start * base + c[:, -L] + 1
            table = self.ctx_keys[L]
            if len(table) == 0:
                ids.append(np.full(len(c), -1, dtype=np.int64))
                continue
            pos = np.minimum(np.searchsorted(table, key), len(table) - 1)
            found = (prev >= 0) & (table[pos] == key)
            ids.append(np.where(found, pos, -1))
        return ids

    def iter_orders(self, contexts: np.ndarray, max_order: int | None = None,
                    orders: Collection[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(n, P_n)`` for n = 1..max_order (only the n in ``orders`` when given), sharing the
        lower-order recursion.

        ``P_n`` is [B, V]: raw counts at level n-1 on top of continuation-count levels below; the
        continuation levels are needed for every higher order, the raw level only for its own.
        """
        top = self.max_order if max_order is None else max_order
        ids = self.context_ids(contexts)
        lower = np.full((len(ids[0]), self.vocab_size), 1.0 / self.vocab_size)
        for L in range(top):
            if orders is None or L + 1 in orders:
                yield L + 1, self.raw[L].apply(lower, ids[L])
            if L + 1 < top:
                self.cont[L].apply(lower, ids[L], out=lower)

    def predict_proba(self, contexts: np.ndarray, order: int) -> np.ndarray:
        """Full next-token distribution [B, V] of the order-``order`` model."""
        if not 1 <= order <= self.max_order:
            raise ValueError(f"order must be in 1..{self.max_order}, got {order}")
        return next(proba for _, proba in self.iter_orders(contexts, order, orders=(order,)))

    def parameters(self, order: int) -> int:
        """Stored entries of the order-``order`` model (see the module docstring)."""
        tables = self.cont[: order - 1] + [self.raw[order - 1]]
        return int(sum(t.parameters for t in tables))

    def discounts(self, order: int) -> list[list[float]]:
        tables = self.cont[: order - 1] + [self.raw[order - 1]]
        return [list(t.discounts) for t in tables]

    def scores_by_order(self, contexts: np.ndarray, targets: np.ndarray,
                        orders: Sequence[int] | None = None) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per order n in ``orders`` (default 1..max_order): per-target (nll, expected top-1,
        expected top-5); only the orders asked for are computed and scored."""
        wanted = set(range(1, self.max_order + 1) if orders is None else orders)
        parts: dict[int, list[tuple]] = {n: [] for n in sorted(wanted)}
        for sl in _batches(len(targets), self.vocab_size):
            for n, proba in self.iter_orders(contexts[sl], max(wanted), wanted):
                parts[n].append(proba_scores(proba, targets[sl]))
        return {n: tuple(np.concatenate([p[i] for p in part]) for i in range(3)) for n, part in parts.items()}


# ----------------------------------------------------------------------------------------------
# Runs


def _check_order(max_order: int, width: int) -> int:
    """``max_order`` capped at the window size (order n needs n-1 of the W-1 input tokens)."""
    if max_order < 1:
        raise UserError(f"--max_order must be >= 1, got {max_order}")
    if max_order > width:
        log.warning("ngram: --max_order %d capped at %d (windows have %d input tokens)", max_order, width, width - 1)
        return width
    return max_order


def _finished_with(output_dir: Path, config: dict) -> bool:
    """True when ``output_dir`` holds finished results of exactly this config (a rerun is a no-op)."""
    if not (output_dir / "results.json").exists() or not (output_dir / "config.json").exists():
        return False
    return read_json(output_dir / "config.json") == json.loads(json.dumps(config))


@dataclass
class _Fitted:
    """A reference fitted on train with its hyperparameters chosen on validation."""

    val: TargetScores
    predict: Callable[[_Split], tuple[np.ndarray, np.ndarray, np.ndarray]]
    parameters: dict[str, int]
    extra: dict[str, Any]


def _fit_fixed(name: str, data: TokenData, val: _Split, alphas: tuple[float, ...]) -> _Fitted:
    """uniform, or unigram with add-alpha chosen on validation: one distribution for every context."""
    V = data.vocab_size
    if name == "uniform":
        p = np.full(V, 1.0 / V)
        return _Fitted(val.scored.scores(*fixed_distribution_scores(p, val.targets)),
                       lambda split: fixed_distribution_scores(p, split.targets), {}, {})
    train = data.streams("train").tokens.numpy()
    best = None
    for alpha in alphas:
        p = unigram_proba(train, V, alpha)
        scores = val.scored.scores(*fixed_distribution_scores(p, val.targets))
        log.info("unigram alpha=%g: val loss %.4f", alpha, scores.metrics()["loss"])
        if best is None or scores.metrics()["loss"] < best[1].metrics()["loss"] - 1e-12:
            best = (alpha, scores, p)
    alpha, scores, p = best
    return _Fitted(scores, lambda split: fixed_distribution_scores(p, split.targets), {"frequencies": V - 1},
                   {"alpha": alpha})


def choose_order(losses: Sequence[float], tolerance: float) -> int:
    """The smallest order (1-based) whose validation loss is within ``tolerance`` nats of the best."""
    return next(n for n in range(1, len(losses) + 1) if losses[n - 1] <= min(losses) + tolerance)


def _fit_ngram(data: TokenData, val: _Split, max_order: int, tolerance: float) -> _Fitted:
    """Kneser-Ney tables of every order from the train streams; the order chosen on validation
    (the smallest within ``tolerance`` nats of the best, so longer contexts do not win by noise)."""
    t0 = time.perf_counter()
    model = KneserNeyModel(data.vocab_size, max_order).fit_streams(data.streams("train"))
    log.info("ngram: orders 1-%d fitted in %.2f s", max_order, time.perf_counter() - t0)
    by_order = [val.scored.scores(*arrays) for arrays in model.scores_by_order(val.contexts, val.targets).values()]
    losses = [s.metrics()["loss"] for s in by_order]
    for n, s in enumerate(by_order, start=1):
        log.info("ngram order=%d: val loss %.4f top1 %.4f", n, losses[n - 1], s.metrics()["top1"])
    order = choose_order(losses, tolerance)
    if order == max_order and max_order < data.window_size:
        log.warning("ngram: the chosen order %d is the largest tried; a larger --max_order may do better", order)

    def predict(split: _Split):
        return model.scores_by_order(split.contexts, split.targets, [order])[order]

    return _Fitted(by_order[order - 1], predict, {"table": model.parameters(order)},
                   {"order": order, "discounts": model.discounts(order), "val_loss_by_order": losses})


def _reference_config(name: str, data_dir: str | Path, data: TokenData, test: _Split, eval_targets_count: int | None,
                      max_order: int, order_tolerance: float,
                      unigram_alphas: tuple[float, ...]) -> tuple[dict, Callable]:
    """The run's settings (equal settings make a rerun a no-op) and the fitter ``fit(val)`` they imply."""
    config = {
        "model": name, "data_dir": str(data_dir), "vocab_size": data.vocab_size, "window_size": data.window_size,
        "n_windows": {s: int(t.shape[0]) for s, t in data.splits.items()}, "eval_targets": eval_targets_count,
        "targets_sha256": test.scored.key,
        "objective": "the next token after W-1 tokens, at the scored positions of the token streams",
        "data_sha256": {s: sha256_file(data.data_dir / f"{s}.pt") for s in SPLITS},
    }
    if name in CEILING_REFERENCES:
        from .ceilings import ceiling_config, ceiling_max_order, fit_ceiling, load_kmer_map

        kmap = load_kmer_map(data)  # before anything is written: no k-mer ids, one error line
        max_order = ceiling_max_order(name, max_order, data.window_size, kmap.k)
        config.update(ceiling_config(name, kmap, max_order, order_tolerance))
        return config, lambda val: fit_ceiling(name, data, kmap, val, test, max_order, order_tolerance)
    if name == "ngram":
        max_order = _check_order(max_order, data.window_size)
        config.update(max_order=max_order, order_tolerance=order_tolerance,
                      smoothing="interpolated modified Kneser-Ney", counts="every position of the train streams")
        return config, lambda val: _fit_ngram(data, val, max_order, order_tolerance)
    if name == "unigram":
        config.update(unigram_alphas=list(unigram_alphas), counts="every token of the train streams")
    return config, lambda val: _fit_fixed(name, data, val, unigram_alphas)


def run_reference(
    name: str,
    data_dir: str | Path,
    output_dir: str | Path,
    *,
    max_order: int = DEFAULT_MAX_ORDER,
    eval_targets_count: int | None = DEFAULT_EVAL_TARGETS,
    order_tolerance: float = DEFAULT_ORDER_TOLERANCE,
    unigram_alphas: tuple[float, ...] = UNIGRAM_ALPHAS,
) -> dict[str, Any]:
    """Fit reference ``name`` on the train streams, choose its hyperparameters on val, score
    the test targets; write ``config.json``, ``results.json`` and the per-target score files
    (the format the trainers write). Returns the results dict."""
    if name not in REFERENCE_MODELS:
        raise UserError(f"unknown reference model {name!r}: choose from {', '.join(REFERENCE_MODELS)}")
    data = load_token_data(data_dir)
    val, test = (_Split.of(data, s, eval_targets_count) for s in ("val", "test"))
    config, fit = _reference_config(name, data_dir, data, test, eval_targets_count, max_order, order_tolerance,
                                    unigram_alphas)
    output_dir = Path(output_dir)
    if _finished_with(output_dir, config):
        log.info("%s: %s already fitted on the same data with the same settings; results.json kept", output_dir, name)
        return read_json(output_dir / "results.json")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").unlink(missing_ok=True)  # never leave results of other settings
    atomic_write_json(output_dir / "config.json", config)

    t0 = time.perf_counter()
    fitted = fit(val)
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    test_scores = test.scored.scores(*fitted.predict(test))
    eval_seconds = time.perf_counter() - t1
    results = {
        "model": name, "seed": None, "data_dir": str(data_dir), "data_fingerprint": data_fingerprint(data_dir),
        "parameters": int(sum(fitted.parameters.values())), "parameter_breakdown": fitted.parameters,
        **prefixed("test", test_scores.metrics()), "test_targets": len(test_scores), "targets_sha256": test.scored.key,
        "train_seconds": train_seconds, "eval_sequences_per_second": len(test_scores) / max(eval_seconds, 1e-9),
        **prefixed("val", fitted.val.metrics()), "vocab_size": data.vocab_size, **fitted.extra,
    }
    fitted.val.save(output_dir / "val_scores.npz")
    test_scores.save(output_dir / "test_scores.npz")
    atomic_write_json(output_dir / "results.json", results)
    log.info("%s: test loss %.4f, perplexity %.2f, top-1 %.2f %%, top-5 %.2f %%", name, results["test_loss"],
             results["test_perplexity"], 100 * results["test_top1"], 100 * results["test_top5"])
    return results
