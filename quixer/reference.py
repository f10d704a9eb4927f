"""Reference predictors that need no gradient training: uniform, unigram and n-gram.

The next 6-mer shares five bases with the last input k-mer, so the task is close to next-base
prediction. These references put every trained model's number in context: a model is only
interesting if it beats the n-gram on the same tokens.

Task (as everywhere): input ``sequences[:, :-1]``, target ``sequences[:, -1]``. Only the last
position of each validation / test window is scored.

Models
------
``uniform``  p(w) = 1/V. Perplexity is exactly V. ``parameters`` = 0.

``unigram``  add-alpha smoothed frequencies of the train *targets* (the last token of every train
             window, the same distribution the test scores): p(w) = (c_w + alpha) / (N + alpha V),
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

             Training counts: ``positions="all"`` counts every (context, next) pair inside each
             train window (all of it is train data; each window position that has n-1 tokens of
             left context inside the window); ``positions="last"`` counts only the target
             position of each window (with stride-1 windows that already covers each n-gram of a
             transcript about once, whereas "all" counts overlapping windows' n-grams repeatedly).
             ``positions="auto"`` (default) fits both and keeps the one with the lower validation
             cross-entropy.

             ``parameters`` = stored table entries of the chosen order: for each order used
             (1..n), the number of (context, token) pairs with a nonzero count, plus one back-off
             weight per context seen, plus 3 discounts, plus 0 for the uniform floor.

Contexts get exact integer ids (no hashing): each position's context is packed into int64 keys
and sorted once per block of orders (see :class:`KneserNeyModel`); counting is a handful of
``np.unique`` calls. On the chrX benchmark (158k train windows of 32 tokens, V = 512) fitting all
orders up to 12 takes about 10 s on 2 CPU cores, and the tables take about 0.6 GB.

``DEFAULT_MAX_ORDER`` is 12: on that benchmark the validation cross-entropy keeps falling up to
order ~11 (repeats and shared exons between loci make long contexts informative), so a cap of 6
would leave the reference needlessly weak.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .common import UserError, atomic_write_json, read_json, sha256_file
from .windows import SPLITS

log = logging.getLogger(__name__)

REFERENCE_MODELS = ("uniform", "unigram", "ngram")
UNIGRAM_ALPHAS = (0.01, 0.1, 0.5, 1.0, 2.0)
DEFAULT_MAX_ORDER = 12
DEFAULT_ORDER_TOLERANCE = 1e-3
_MIN_DISCOUNT = 0.05
_BATCH_ELEMENTS = 1 << 22  # rows * V per dense probability batch (32 MiB of float64)


# ----------------------------------------------------------------------------------------------
# Data


def _load_splits(data_dir: str | Path) -> tuple[dict[str, np.ndarray], int]:
    """Token windows of every split as int64 numpy arrays, and the vocabulary size (the shared
    loader :func:`quixer.data.load_token_data` validates them and resolves V)."""
    from .data import load_token_data

    data = load_token_data(data_dir)
    splits = {s: np.ascontiguousarray(data.splits[s].numpy(), dtype=np.int64) for s in SPLITS}
    return splits, int(data.vocab_size)


# ----------------------------------------------------------------------------------------------
# Metrics over full distributions


@dataclass
class Scores:
    """Sums over scored windows; ``finish`` turns them into the reported metrics."""

    nll: float = 0.0
    top1: int = 0
    top5: int = 0
    count: int = 0

    def add(self, proba: np.ndarray, targets: np.ndarray) -> None:
        rank, p_t = target_rank(proba, targets, limit=5, return_proba=True)
        self.nll += float(-np.log(np.maximum(p_t, 1e-300)).sum())
        self.top1 += int((rank == 0).sum())
        self.top5 += int((rank < 5).sum())
        self.count += len(targets)

    def finish(self) -> dict[str, float]:
        loss = self.nll / max(self.count, 1)
        return {
            "loss": loss,
            "perplexity": math.exp(loss),
            "top1": self.top1 / max(self.count, 1),
            "top5": self.top5 / max(self.count, 1),
        }


def target_rank(proba: np.ndarray, targets: np.ndarray, limit: int | None = None, return_proba: bool = False):
    """0-based rank of each target under a deterministic order: higher probability first, ties by
    lower token id (the order ``argmax`` and a stable sort of ``-proba`` use).

    With ``limit``, ranks >= limit are only guaranteed to stay >= limit (ties are resolved only
    where they can matter), which saves a pass over the [B, V] matrix.
    """
    rows = np.arange(len(targets))
    p_t = proba[rows, targets]
    rank = np.count_nonzero(proba > p_t[:, None], axis=1)
    near = np.flatnonzero(rank < limit) if limit is not None else rows
    if len(near):
        sub = proba[near]
        ties = (sub == p_t[near, None]) & (np.arange(proba.shape[1])[None, :] < targets[near, None])
        rank[near] += np.count_nonzero(ties, axis=1)
    return (rank, p_t) if return_proba else rank


def _batches(n: int, vocab_size: int) -> Iterator[slice]:
    step = max(1, _BATCH_ELEMENTS // max(vocab_size, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


# ----------------------------------------------------------------------------------------------
# Uniform and unigram


def unigram_proba(targets: np.ndarray, vocab_size: int, alpha: float) -> np.ndarray:
    """Add-alpha smoothed target frequencies, shape [V]."""
    counts = np.bincount(targets, minlength=vocab_size).astype(np.float64)
    return (counts + alpha) / (counts.sum() + alpha * vocab_size)


def _score_fixed(p: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Metrics of one context-free distribution ``p`` [V] on ``targets`` (no [N, V] matrix)."""
    order = np.lexsort((np.arange(len(p)), -p))  # rank order: probability desc, then id asc
    rank = np.empty(len(p), dtype=np.int64)
    rank[order] = np.arange(len(p))
    loss = float(-np.log(p[targets]).mean())
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "top1": float((rank[targets] == 0).mean()),
        "top5": float((rank[targets] < 5).mean()),
    }


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

    def _train_contexts(self, x: np.ndarray, cols: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield per L = 0..max_order-1: (context id, next token) of every (row, col) position
        with at least L tokens before it in its window (in some fixed order), and the parent id
        (the context without its oldest token) of each level-L context id."""
        base = self.vocab_size + 1
        lmax = self.max_order - 1
        n_cols = len(cols)
        targets = x[:, cols].ravel()
        self.ctx_keys, self.block_start = [np.zeros(1, dtype=np.int64)], [False]
        yield np.zeros(len(targets), dtype=np.int64), targets, np.zeros(1, dtype=np.int64)
        active = np.arange(len(targets))  # flat positions with a level-L context, and their ids
        active_ids = np.zeros(len(targets), dtype=np.int64)
        L = 0
        while L < lmax:
            n_prev = len(self.ctx_keys[L])
            if n_prev * base >= 2**62:
                raise UserError(f"n-gram tables too large for int64 keys ({n_prev} contexts x {base})")
            j = 1
            while L + j < lmax and (self.block is None or j < self.block) and n_prev * base ** (j + 1) < 2**62:
                j += 1
            row, col = np.divmod(active, n_cols)
            comp = active_ids * base**j
            for d in range(1, j + 1):
                src = cols[col] - (L + d)
                comp += np.where(src >= 0, x[row, np.maximum(src, 0)] + 1, 0) * base ** (j - d)
            del row, col
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
        """Count every order's (context, next) pairs in ``sequences`` [N, W] (see module doc)."""
        x = np.asarray(sequences, dtype=np.int64)
        width = x.shape[1]
        if self.max_order > width:
            raise UserError(f"max_order {self.max_order} needs windows of at least that many tokens (W={width})")
        if positions == "all":
            cols = np.arange(width)
        elif positions == "last":
            cols = np.array([width - 1])
        else:
            raise UserError(f"positions must be 'all' or 'last', got {positions!r}")
        V = self.vocab_size
        self.raw, self.cont = [], []
        for L, (ids, tgt, parent) in enumerate(self._train_contexts(x, cols)):
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

    def iter_orders(self, contexts: np.ndarray, max_order: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(n, P_n)`` for n = 1..max_order, sharing the lower-order recursion.

        ``P_n`` is [B, V]: raw counts at level n-1 on top of continuation-count levels below.
        """
        top = self.max_order if max_order is None else max_order
        ids = self.context_ids(contexts)
        lower = np.full((len(ids[0]), self.vocab_size), 1.0 / self.vocab_size)
        for L in range(top):
            yield L + 1, self.raw[L].apply(lower, ids[L])
            if L + 1 < top:
                self.cont[L].apply(lower, ids[L], out=lower)

    def predict_proba(self, contexts: np.ndarray, order: int) -> np.ndarray:
        """Full next-token distribution [B, V] of the order-``order`` model."""
        if not 1 <= order <= self.max_order:
            raise ValueError(f"order must be in 1..{self.max_order}, got {order}")
        for n, proba in self.iter_orders(contexts, order):
            if n == order:
                return proba
        raise AssertionError("unreachable")

    def parameters(self, order: int) -> int:
        """Stored entries of the order-``order`` model (see the module docstring)."""
        tables = self.cont[: order - 1] + [self.raw[order - 1]]
        return int(sum(t.parameters for t in tables))

    def discounts(self, order: int) -> list[list[float]]:
        tables = self.cont[: order - 1] + [self.raw[order - 1]]
        return [list(t.discounts) for t in tables]

    def score_all_orders(self, sequences: np.ndarray) -> list[dict[str, float]]:
        """Metrics of every order 1..max_order on the last position of each window."""
        seq = np.asarray(sequences, dtype=np.int64)
        scores = [Scores() for _ in range(self.max_order)]
        for sl in _batches(len(seq), self.vocab_size):
            chunk = seq[sl]
            for n, proba in self.iter_orders(chunk[:, :-1]):
                scores[n - 1].add(proba, chunk[:, -1])
        return [s.finish() for s in scores]

    def score(self, sequences: np.ndarray, order: int) -> dict[str, float]:
        seq = np.asarray(sequences, dtype=np.int64)
        scores = Scores()
        for sl in _batches(len(seq), self.vocab_size):
            chunk = seq[sl]
            scores.add(self.predict_proba(chunk[:, :-1], order), chunk[:, -1])
        return scores.finish()


# ----------------------------------------------------------------------------------------------
# Runs


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in metrics.items()}


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


def run_reference(
    name: str,
    data_dir: str | Path,
    output_dir: str | Path,
    *,
    max_order: int = DEFAULT_MAX_ORDER,
    positions: str = "auto",
    order_tolerance: float = DEFAULT_ORDER_TOLERANCE,
    unigram_alphas: tuple[float, ...] = UNIGRAM_ALPHAS,
) -> dict[str, Any]:
    """Fit reference ``name`` on train, choose its hyperparameters on val, score test, and write
    ``output_dir/config.json`` and ``output_dir/results.json``. Returns the results dict."""
    if name not in REFERENCE_MODELS:
        raise UserError(f"unknown reference model {name!r}: choose from {', '.join(REFERENCE_MODELS)}")
    if positions not in ("auto", "all", "last"):
        raise UserError(f"positions must be auto, all or last, got {positions!r}")
    splits, V = _load_splits(data_dir)
    train, val, test = (splits[s] for s in SPLITS)
    width = train.shape[1]
    config = {
        "model": name,
        "data": str(data_dir),
        "vocab_size": V,
        "window_size": width,
        "n_windows": {s: int(len(splits[s])) for s in SPLITS},
        "objective": "last position of each window (input sequences[:, :-1], target sequences[:, -1])",
    }
    if name == "ngram":
        max_order = _check_order(max_order, width)
        config.update(max_order=max_order, positions=positions, order_tolerance=order_tolerance,
                      smoothing="interpolated modified Kneser-Ney")
    elif name == "unigram":
        config.update(unigram_alphas=list(unigram_alphas), counts="train targets (last token of each window)")
    config["data_sha256"] = {s: sha256_file(Path(data_dir) / f"{s}.pt") for s in SPLITS}
    output_dir = Path(output_dir)
    if _finished_with(output_dir, config):
        log.info("%s: %s already fitted on the same data with the same settings; results.json kept", output_dir, name)
        return read_json(output_dir / "results.json")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").unlink(missing_ok=True)  # never leave results of other settings
    atomic_write_json(output_dir / "config.json", config)

    extra: dict[str, Any] = {}
    t0 = time.perf_counter()
    if name == "uniform":
        p = np.full(V, 1.0 / V)
        parameters = 0
        val_m = _score_fixed(p, val[:, -1])
        train_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        test_m = _score_fixed(p, test[:, -1])
        eval_seconds = time.perf_counter() - t1
    elif name == "unigram":
        best = None
        for alpha in unigram_alphas:
            p = unigram_proba(train[:, -1], V, alpha)
            m = _score_fixed(p, val[:, -1])
            log.info("unigram alpha=%g: val loss %.4f", alpha, m["loss"])
            if best is None or m["loss"] < best[1]["loss"] - 1e-12:
                best = (alpha, m, p)
        alpha, val_m, p = best
        extra["alpha"] = alpha
        parameters = V - 1
        train_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        test_m = _score_fixed(p, test[:, -1])
        eval_seconds = time.perf_counter() - t1
    else:
        candidates = ["all", "last"] if positions == "auto" else [positions]
        per_mode = {}
        for mode in candidates:
            tf = time.perf_counter()
            model = KneserNeyModel(V, max_order).fit(train, positions=mode)
            fit_s = time.perf_counter() - tf
            val_scores = model.score_all_orders(val)
            for n, m in enumerate(val_scores, start=1):
                log.info("ngram positions=%s order=%d: val loss %.4f top1 %.4f", mode, n, m["loss"], m["top1"])
            log.info("ngram positions=%s: fitted in %.2f s", mode, fit_s)
            per_mode[mode] = (model, val_scores)
        best_loss = min(m["loss"] for _, scores in per_mode.values() for m in scores)
        chosen = None
        for n in range(1, max_order + 1):  # smallest order within tolerance of the best
            for mode in candidates:
                if per_mode[mode][1][n - 1]["loss"] <= best_loss + order_tolerance:
                    chosen = (mode, n)
                    break
            if chosen:
                break
        mode, order = chosen
        if order == max_order and max_order < width:
            log.warning("ngram: the chosen order %d is the largest tried; a larger --max_order may do better", order)
        model = per_mode[mode][0]
        val_m = per_mode[mode][1][order - 1]
        parameters = model.parameters(order)
        extra.update(
            order=order,
            positions=mode,
            discounts=model.discounts(order),
            val_loss_by_order={m: [s["loss"] for s in per_mode[m][1]] for m in candidates},
        )
        train_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        test_m = model.score(test, order)
        eval_seconds = time.perf_counter() - t1

    results = {
        "model": name,
        "parameters": int(parameters),
        **_prefixed("test", test_m),
        "train_seconds": train_seconds,
        "sequences_per_second": len(test) / max(eval_seconds, 1e-9),
        **_prefixed("val", val_m),
        "vocab_size": V,
        **extra,
    }
    atomic_write_json(output_dir / "results.json", results)
    log.info(
        "%s: test loss %.4f, perplexity %.2f, top-1 %.2f %%, top-5 %.2f %%",
        name, test_m["loss"], test_m["perplexity"], 100 * test_m["top1"], 100 * test_m["top5"],
    )
    return results
