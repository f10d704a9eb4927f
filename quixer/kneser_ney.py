"""Interpolated modified Kneser-Ney: count tables, discounts tuned on validation, the order choice.

Shared by the n-gram reference (:mod:`quixer.reference`, which states the model's formula and
protocol) and the ceilings (:mod:`quixer.ceilings`, the same model over bases). Contexts get
exact integer ids (no hashing): each position's context is packed into int64 keys and sorted
once per block of orders (:class:`KneserNeyModel`); counting is a handful of ``np.unique`` calls.

``DEFAULT_MAX_ORDER`` is a high cap on purpose: the order is chosen on validation, so a cap
above the useful order costs only fitting time, and shared exons can make long contexts
informative.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterator, Sequence

import numpy as np
from scipy import optimize

from .common import UserError
from .data import TokenData
from .scoring import TargetScores, format_perplexity, proba_scores
from .streams import EvalTargets, TokenStreams, eval_targets

log = logging.getLogger(__name__)

DEFAULT_MAX_ORDER = 12
_MIN_DISCOUNT = 0.05
_GTOL = 1e-5  # L-BFGS stops at this projected gradient of the held-out loss
_BOUNDS = [(_MIN_DISCOUNT, k - _MIN_DISCOUNT) for k in (1, 2, 3)]  # (D1, D2, D3+): every token keeps mass
_BATCH_ELEMENTS = 1 << 22  # rows * V per dense probability batch (32 MiB of float64)


# ----------------------------------------------------------------------------------------------
# Data and scores


def probability_batches(n: int, vocab_size: int) -> Iterator[slice]:
    step = max(1, _BATCH_ELEMENTS // max(vocab_size, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def unigram_proba(tokens: np.ndarray, vocab_size: int, alpha: float) -> np.ndarray:
    """Add-alpha smoothed token frequencies, shape [V]."""
    counts = np.bincount(tokens, minlength=vocab_size).astype(np.float64)
    return (counts + alpha) / (counts.sum() + alpha * vocab_size)


@dataclass
class ScoredSplit:
    """One evaluation split: the contexts and targets of its scored positions."""

    contexts: np.ndarray  # int64 [M, W-1]
    targets: np.ndarray  # int64 [M]
    scored: EvalTargets
    name: str  # the split

    @classmethod
    def of(cls, data: TokenData, split: str, max_targets: int | None) -> "ScoredSplit":
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
    """One order's counts, pairs sorted by (context id, token), CSR-style, and its discounts.

    The counts are kept (not only the smoothed numbers) so that the discounts can be changed
    after fitting: a pair's own mass ``(c - D(c)) / c(h)`` is formed when it is read, and the
    back-off weights are recomputed by :meth:`set_discounts`.
    """

    tok: np.ndarray  # int32 [P]
    count: np.ndarray  # int32 [P] raw or continuation count of each pair (> 0)
    offsets: np.ndarray  # int64 [C + 1]  pairs of context id i are offsets[i]:offsets[i+1] (none: unseen)
    total: np.ndarray  # float64 [C] c(h): the counts of each context summed
    counted: tuple[float, float, float]  # the count-of-counts discounts (kn_discounts)
    discounts: tuple[float, float, float] = (0.0, 0.0, 0.0)  # the discounts in use
    gamma: np.ndarray = field(default_factory=lambda: np.zeros(0))  # float64 [C] back-off weight

    @classmethod
    def build(cls, pair_ctx: np.ndarray, pair_tok: np.ndarray, counts: np.ndarray, n_ctx: int) -> "_Table":
        """``pair_ctx`` sorted ascending (then ``pair_tok``), ``counts`` > 0; count-of-counts discounts."""
        offsets = np.zeros(n_ctx + 1, dtype=np.int64)
        np.cumsum(np.bincount(pair_ctx, minlength=n_ctx), out=offsets[1:])
        table = cls(tok=pair_tok.astype(np.int32), count=counts.astype(np.int32), offsets=offsets,
                    total=np.bincount(pair_ctx, weights=counts, minlength=n_ctx), counted=kn_discounts(counts))
        return table.set_discounts(table.counted)

    def pair_contexts(self) -> np.ndarray:
        """int64 [P]: the context id of every pair."""
        return np.repeat(np.arange(len(self.total), dtype=np.int64), np.diff(self.offsets))

    def set_discounts(self, discounts: Sequence[float]) -> "_Table":
        """Use ``(D1, D2, D3+)``, each in [0.05, k - 0.05] so every token keeps mass."""
        d = tuple(float(x) for x in discounts)
        if len(d) != 3 or not all(lo - 1e-12 <= x <= hi + 1e-12 for (lo, hi), x in zip(_BOUNDS, d)):
            raise ValueError(f"discounts must be 3 values in [{_MIN_DISCOUNT}, k - {_MIN_DISCOUNT}], got {d}")
        self.discounts = d
        removed = np.bincount(self.pair_contexts(), weights=np.array([0.0, *d])[np.minimum(self.count, 3)],
                              minlength=len(self.total))
        self.gamma = removed / np.where(self.total > 0, self.total, 1.0)
        return self

    def own_mass(self, pidx: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        """``(c - D(c)) / c(h)`` of pairs ``pidx`` whose context ids are ``ctx``."""
        c = self.count[pidx]
        return (c - np.array([0.0, *self.discounts])[np.minimum(c, 3)]) / self.total[ctx]

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
            dense[self.tok] = self.own_mass(np.arange(len(self.tok)), np.zeros(len(self.tok), dtype=np.int64))
            out += dense[None, :]
            return out
        start, lens = start[rows], lens[rows]
        rep_rows = np.repeat(rows, lens)
        first = np.repeat(start - (np.cumsum(lens) - lens), lens)
        pidx = first + np.arange(int(lens.sum()))
        out[rep_rows, self.tok[pidx]] += self.own_mass(pidx, ids[rep_rows])
        return out

    def at_targets(self, ctx: np.ndarray, targets: np.ndarray, vocab_size: int) -> "_TargetLevel":
        """What the targets' probabilities need from this table: the rows whose context it knows,
        the target's count there, the context's total and count classes n1, n2, n3+."""
        rows = np.flatnonzero(ctx >= 0)
        rows = rows[self.total[ctx[rows]] > 0]
        ids = ctx[rows]
        pair_ctx = self.pair_contexts()
        classes = np.bincount(pair_ctx * 3 + np.minimum(self.count, 3) - 1, minlength=3 * len(self.total))
        keys = pair_ctx * vocab_size + self.tok
        query = ids * vocab_size + targets[rows]
        pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)  # every known context has a pair
        count = np.where(keys[pos] == query, self.count[pos], 0)
        return _TargetLevel(rows, count.astype(np.float64), np.minimum(count, 3).astype(np.int64),
                            self.total[ids], classes.reshape(-1, 3)[ids].astype(np.float64))


@dataclass
class _TargetLevel:
    """One table read at the targets of a split: enough to give each target's probability at this
    level for any discounts, without the [M, V] distributions (the discount search needs no more)."""

    rows: np.ndarray  # int64 [R] the rows whose context the table knows
    count: np.ndarray  # float64 [R] the target's count in that context (0: never seen there)
    klass: np.ndarray  # int64 [R] min(count, 3): the discount its count takes (0: none)
    total: np.ndarray  # float64 [R] c(h)
    classes: np.ndarray  # float64 [R, 3] n1, n2, n3+ of the context

    def removed(self, d: Sequence[float]) -> np.ndarray:
        """D1 n1 + D2 n2 + D3+ n3+ of each row's context: gamma(h) * c(h)."""
        return self.classes[:, 0] * d[0] + self.classes[:, 1] * d[1] + self.classes[:, 2] * d[2]

    def proba(self, d: Sequence[float], lower: np.ndarray) -> np.ndarray:
        """P(target) at this level [M], from the level below's ``lower`` [M]."""
        out = lower.copy()
        own = self.count - np.array([0.0, *d])[self.klass]
        out[self.rows] = (own + self.removed(d) * lower[self.rows]) / self.total
        return out

    def backward(self, d: Sequence[float], lower: np.ndarray, upstream: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """From dL/dP at this level (``upstream`` [M]): dL/d(D1, D2, D3+), and dL/dP at the level below."""
        u = upstream[self.rows] / self.total
        below = lower[self.rows]
        grad = np.array([np.sum(u * (self.classes[:, k] * below - (self.klass == k + 1))) for k in range(3)])
        down = upstream.copy()
        down[self.rows] = u * self.removed(d)
        return grad, down


def _stack_loss(levels: Sequence[_TargetLevel], discounts: np.ndarray, lower: np.ndarray) -> tuple[float, np.ndarray]:
    """Cross-entropy of the targets under ``levels`` stacked on ``lower`` (one discount row per
    level), and its gradient in the discounts (back-propagated through the levels)."""
    probs = [lower]
    for level, d in zip(levels, discounts):
        probs.append(level.proba(d, probs[-1]))
    top = probs[-1]
    upstream = -1.0 / (top * len(top))
    grads = []
    for i in reversed(range(len(levels))):
        grad, upstream = levels[i].backward(discounts[i], probs[i], upstream)
        grads.append(grad)
    return float(-np.mean(np.log(top))), np.concatenate(grads[::-1])


def _tune_levels(levels: Sequence[_TargetLevel], start: Sequence[Sequence[float]],
                 lower: np.ndarray) -> tuple[list[tuple[float, ...]], float]:
    """The discounts of ``levels`` (stacked on ``lower``) that minimise the targets' cross-entropy,
    and that loss: bounded L-BFGS from ``start`` (deterministic), which is kept unless the search
    lowers the loss. It stops once the projected gradient is below ``_GTOL`` nats per unit of
    discount, so a discount the loss barely depends on stays near its count-of-counts value."""
    x0 = np.array(start, dtype=np.float64).ravel()
    bounds = _BOUNDS * len(levels)
    lo, hi = np.array(bounds).T

    def f(x: np.ndarray) -> tuple[float, np.ndarray]:
        return _stack_loss(levels, np.clip(x, lo, hi).reshape(-1, 3), lower)

    loss0 = f(x0)[0]
    res = optimize.minimize(f, x0, jac=True, method="L-BFGS-B", bounds=bounds, options={"gtol": _GTOL})
    x, loss = (np.clip(res.x, lo, hi), float(res.fun)) if res.fun < loss0 else (x0, loss0)
    return [tuple(float(v) for v in row) for row in x.reshape(-1, 3)], loss


@dataclass
class DiscountTuning:
    """Per order 1..n: the tuning targets' cross-entropy with the count-of-counts discounts (all
    tables) and with the discounts chosen on them."""

    counted_loss: list[float]
    loss: list[float]


class KneserNeyModel:
    """Interpolated modified Kneser-Ney n-gram tables for every order 1..max_order at once.

    Contexts get exact integer ids per length L (no hashing, no collisions). Each position's
    context is packed into one int64, most recent token most significant (digit = token + 1,
    0 = "before the window start"), so after one ``argsort`` every shorter context is a prefix
    and its ids follow from where the prefix changes. When ``(V+1)^L`` would overflow int64, the
    packing restarts in blocks: a block's key starts with the id of the context it extends
    (``id * (V+1)^j + j more digits``), one sort per block. ``block`` caps the levels per sort
    (1 = one sort per order; the tests compare block sizes, which must give identical tables).

    Fitting gives every table its count-of-counts discounts; :meth:`tune_discounts` replaces
    them with discounts chosen on held-out targets.
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

    def _tables(self, order: int) -> list[_Table]:
        """The tables of the order-``order`` model, lowest level first."""
        return self.cont[: order - 1] + [self.raw[order - 1]]

    def discounts(self, order: int) -> list[list[float]]:
        """(D1, D2, D3+) in use per level of the order-``order`` model, lowest level first."""
        return [list(t.discounts) for t in self._tables(order)]

    def counted_discounts(self, order: int) -> list[list[float]]:
        """The count-of-counts estimates (:func:`kn_discounts`) of the same tables."""
        return [list(t.counted) for t in self._tables(order)]

    def tune_discounts(self, contexts: np.ndarray, targets: np.ndarray) -> DiscountTuning:
        """Choose every table's discounts on held-out ``(contexts, targets)`` (validation), order by order.

        The order-n model stacks its top raw-count table on the continuation tables of the levels
        below, so order n adds two tables to order n-1's: its own, and the continuation table of
        level n-2 (order n-1's top used raw counts). Those two tables' 6 discounts are searched
        with everything below fixed, starting at their count-of-counts values, so the lower orders
        are never changed by the higher ones and each order adds a handful of numbers fitted on
        the held-out targets. Only the targets' probabilities are computed (no [M, V] arrays).
        """
        if not len(targets):
            raise UserError("no held-out targets to choose the discounts on")
        V, ids = self.vocab_size, self.context_ids(contexts)
        raw = [t.at_targets(ids[L], targets, V) for L, t in enumerate(self.raw)]
        cont = [t.at_targets(ids[L], targets, V) for L, t in enumerate(self.cont)]
        low = np.full(len(targets), 1.0 / V)
        low_counted, tuning = low, DiscountTuning([], [])
        for n in range(1, self.max_order + 1):
            tables, levels = self._tables(n)[-2 if n > 1 else -1:], (cont[n - 2:n - 1] if n > 1 else []) + [raw[n - 1]]
            tuned, loss = _tune_levels(levels, [t.counted for t in tables], low)
            for table, d in zip(tables, tuned):
                table.set_discounts(d)
            tuning.loss.append(loss)
            tuning.counted_loss.append(_stack_loss(levels, np.array([t.counted for t in tables]), low_counted)[0])
            if n > 1:
                low = cont[n - 2].proba(tables[0].discounts, low)
                low_counted = cont[n - 2].proba(tables[0].counted, low_counted)
        return tuning

    def scores_by_order(self, contexts: np.ndarray, targets: np.ndarray,
                        orders: Sequence[int] | None = None) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per order n in ``orders`` (default 1..max_order): per-target (nll, expected top-1,
        expected top-5); only the orders asked for are computed and scored."""
        wanted = set(range(1, self.max_order + 1) if orders is None else orders)
        parts: dict[int, list[tuple]] = {n: [] for n in sorted(wanted)}
        for sl in probability_batches(len(targets), self.vocab_size):
            for n, proba in self.iter_orders(contexts[sl], max(wanted), wanted):
                parts[n].append(proba_scores(proba, targets[sl]))
        return {n: tuple(np.concatenate([p[i] for p in part]) for i in range(3)) for n, part in parts.items()}


# ----------------------------------------------------------------------------------------------
# Runs


@dataclass
class Fitted:
    """A reference fitted on train with its hyperparameters chosen on validation."""

    val: TargetScores
    predict: Callable[[ScoredSplit], tuple[np.ndarray, np.ndarray, np.ndarray]]
    parameters: dict[str, int]
    extra: dict[str, Any]


def choose_order(losses: Sequence[float], tolerance: float) -> int:
    """The smallest order (1-based) whose validation loss is within ``tolerance`` nats of the best."""
    return next(n for n in range(1, len(losses) + 1) if losses[n - 1] <= min(losses) + tolerance)


DISCOUNT_SELECTION = ("per level (D1, D2, D3+) in [0.05, k - 0.05], from the count-of-counts estimates, by bounded "
                      "L-BFGS on the validation cross-entropy, order by order (order n adds its top table's and the "
                      "continuation table below it; lower levels as chosen for order n-1)")


def format_discounts(levels: Sequence[Sequence[float]]) -> str:
    """Discounts per level for a log line: ``(D1, D2, D3+)`` of each level, lowest first."""
    return " ".join("(" + ", ".join(f"{d:.2f}" for d in level) + ")" for level in levels)


def discount_record(model: KneserNeyModel, order: int) -> dict[str, Any]:
    """The discounts a results.json records for the chosen order, per level, lowest first."""
    return {"discounts": model.discounts(order), "discounts_count_of_counts": model.counted_discounts(order),
            "discount_selection": DISCOUNT_SELECTION}


def log_orders(name: str, by_order: Sequence[TargetScores], counted: Sequence[float] | None = None) -> None:
    """One validation line per order (with the loss under the count-of-counts discounts where given)."""
    for n, scores in enumerate(by_order, start=1):
        m = scores.metrics()
        also = f" (count-of-counts discounts: {counted[n - 1]:.4f})" if counted is not None else ""
        log.info("%s order=%d: val loss %.4f%s, perplexity %s, top-1 %.2f %%", name, n, m["loss"], also,
                 format_perplexity(m["perplexity"]), 100 * m["top1"])
