"""Ceiling references: what the raw bases allow, and the best prediction from the tokens alone.

Consecutive k-mers overlap by k-1 bases, so the next token is one of at most 4 candidates (the
last input k-mer's last k-1 bases followed by each base), and where candidates share a token,
fewer. Trained models are only readable against how close the task lets anyone come, so two
references without gradient training sit beside the uniform / unigram / n-gram rows, fitted on
train, chosen on val and scored on the same targets with the same scores (:mod:`quixer.reference`):

``raw_bases``      a next-base model that reads the raw bases behind the window's W-1 input
                   k-mers (W-1+k-1 of them): interpolated modified Kneser-Ney
                   (:class:`quixer.kneser_ney.KneserNeyModel` over the 4 bases), trained on every
                   base of the train streams, its discounts chosen on the next base of the
                   validation windows (:meth:`~quixer.kneser_ney.KneserNeyModel.tune_discounts`),
                   its order on the validation tokens. Its next-base distribution is pushed
                   through the k-mer -> token map. It reads more than the tokens say, so it is a
                   reference level, not a bound on token models; on raw k-mer tokens (the
                   identity map) it is the base model itself.

``token_ceiling``  the Bayes-optimal next token given only the W-1 tokens, under a base-level
                   prior fitted on train: the same Kneser-Ney base model (the same discounts) of
                   order n <= k (chosen on validation) as a Markov chain over bases, its first
                   bases from the lower orders (P_1(b1) P_2(b2 | b1) ...). Exact inference over
                   every base path consistent with the tokens is the forward algorithm over
                   k-mers, with S(t) the k-mers of token t, step(y) = P_n(last base of y | the
                   bases before it):

                       alpha_1(y) = P(the k bases of y)                               y in S(t_1)
                       alpha_i(y) = step(y) * sum over x in S(t_{i-1}) whose last k-1
                                    bases are the first k-1 of y of alpha_{i-1}(x)    y in S(t_i)
                       p(v)      ~ sum over x in S(t_{W-1}), base b with token(x' b) = v
                                    of alpha_{W-1}(x) step(x' b)       (x' = x's last k-1 bases)

                   normalised per step. Each token holds few k-mers, so the alphas are kept as
                   flat (row, k-mer) lists, never as dense state vectors. Exact only under its
                   prior: the base model sees at most k bases, so a model of the tokens that finds
                   longer-range structure can pass it (the report pairs every row against it).

The k-mer behind every window position comes from ``kmer_ids.pt`` (stage 3, with the map
``kmer_tokens`` of ``cluster_centers.pt``), or, in raw k-mer token directories (the token ids
are k-mer ids, :mod:`quixer.kmer_tokens`), from the tokens themselves with the identity map.
Without them the references fail with one line: guessing the bases is not an option.

The task's anatomy, measured on the scored test targets, goes into both results: the share of
targets whose 4 candidate next k-mers fall into fewer than 4 tokens, and the share whose last
k-1 bases the tokens pin down (every consistent base path ends in the same k-1 bases).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
import numpy as np
import torch

from .common import UserError, load_torch_file, sha256_file
from .data import CLUSTER_CENTERS_FILE, KMER_IDS_FILE, TokenData
from .kneser_ney import (DISCOUNT_SELECTION, Fitted, KneserNeyModel, ScoredSplit, choose_order, discount_record,
                         format_discounts, log_orders, probability_batches)
from .scoring import proba_scores
from .streams import TokenStreams
from .windows import all_kmers

log = logging.getLogger(__name__)

CEILING_REFERENCES = ("token_ceiling", "raw_bases")  # they need the bases behind the tokens


# ----------------------------------------------------------------------------------------------
# The k-mers behind the tokens


@dataclass
class KmerMap:
    """The k-mer -> token map of a token directory and the k-mer ids of every window."""

    k: int
    token_of: np.ndarray  # int64 [4^k]: token of each k-mer (lexicographic order over ACGT)
    kmer_ids: dict[str, np.ndarray]  # split -> int64 [N, W]
    source: str
    files_sha256: dict[str, str] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return int(self.token_of.max()) + 1


def _identity_map(data: TokenData) -> KmerMap:
    k = len(data.vocab[0]) if data.vocab else 0
    if k == 0 or data.vocab != all_kmers(k):
        raise UserError(f"{data.data_dir}: the 'vocab' of the token files is not every {k}-mer in lexicographic "
                        "order, so the bases behind the tokens are unknown")
    ids = {s: data.splits[s].numpy() for s in data.splits}
    return KmerMap(k, np.arange(4**k, dtype=np.int64), ids, "identity (the token ids are k-mer ids)")


def _stage3_map(data: TokenData) -> KmerMap:
    ids_path, centers_path = data.data_dir / KMER_IDS_FILE, data.data_dir / CLUSTER_CENTERS_FILE
    if not ids_path.is_file() or not centers_path.is_file():
        raise UserError(f"{data.data_dir}: no {KMER_IDS_FILE} beside the token files, so the bases behind the tokens "
                        "are unknown (stage-3 output from before it was kept?): rerun quantize_lambeq_embeddings.py "
                        "with the same flags to add it")
    centers, obj = load_torch_file(centers_path), load_torch_file(ids_path)
    k = obj.get("k") if isinstance(obj, dict) else None
    ids = obj.get("kmer_ids") if isinstance(obj, dict) else None
    tokens = centers.get("kmer_tokens") if isinstance(centers, dict) else None
    if not isinstance(k, int) or not isinstance(ids, dict) or not isinstance(tokens, torch.Tensor):
        raise UserError(f"{ids_path}: expected 'k' and per-split 'kmer_ids', and 'kmer_tokens' in {centers_path.name}")
    if list(centers.get("kmers") or []) != all_kmers(k) or tokens.shape != (4**k,):
        raise UserError(f"{centers_path}: 'kmers' / 'kmer_tokens' do not cover every {k}-mer in lexicographic order")
    token_of = tokens.to(torch.int64).numpy()
    kmer_ids = {}
    for split, seq in data.splits.items():
        got = ids.get(split)
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(seq.shape):
            raise UserError(f"{ids_path}: no kmer_ids of the {split} windows' shape {tuple(seq.shape)}")
        kmer_ids[split] = got.to(torch.int64).numpy()
        if not np.array_equal(token_of[kmer_ids[split]], seq.numpy()):
            raise UserError(f"{ids_path}: its k-mers do not map to the tokens of {split}.pt (files of different "
                            "runs?); rerun quantize_lambeq_embeddings.py with --force")
    files = {p.name: sha256_file(p) for p in (ids_path, centers_path)}
    return KmerMap(k, token_of, kmer_ids, f"{KMER_IDS_FILE} + {CLUSTER_CENTERS_FILE}", files)


def load_kmer_map(data: TokenData) -> KmerMap:
    """The k-mers behind a token directory: raw k-mer tokens (identity) or stage-3 tokens."""
    kmap = _identity_map(data) if data.vocab is not None else _stage3_map(data)
    if len(kmap.token_of) and kmap.vocab_size > data.vocab_size:
        raise UserError(f"{data.data_dir}: the k-mer map has tokens beyond the vocabulary of {data.vocab_size}")
    return kmap


def kmer_digits(kmers: np.ndarray, k: int) -> np.ndarray:
    """[..., k] the bases (A=0, C=1, G=2, T=3) of k-mer ids, first base first."""
    kmers = np.asarray(kmers, dtype=np.int64)
    return np.stack([(kmers // 4 ** (k - 1 - d)) % 4 for d in range(k)], axis=-1)


def kmer_streams(data: TokenData, kmap: KmerMap, split: str) -> TokenStreams:
    """The split's k-mer ids chained like its token streams (the same segments, position by position)."""
    streams = TokenStreams.from_windows(torch.from_numpy(kmap.kmer_ids[split]), data.sources.get(split))
    tokens = data.streams(split)
    if not (np.array_equal(streams.segment_starts, tokens.segment_starts)
            and np.array_equal(streams.segment_lengths, tokens.segment_lengths)):
        raise UserError(f"{data.data_dir}: the {split} k-mer ids do not chain like its tokens "
                        "(files of different runs?)")
    return streams


def base_streams(kmers: TokenStreams, k: int) -> TokenStreams:
    """The bases of k-mer streams: each segment of T overlapping k-mers is T+k-1 bases (its first
    k-mer whole, then the last base of every further one)."""
    ids = kmers.tokens.numpy()
    n_seg = len(kmers.segment_starts)
    seg = np.repeat(np.arange(n_seg), kmers.segment_lengths)
    last = np.arange(len(ids)) + (seg + 1) * (k - 1)  # where each k-mer's last base lands
    bases = np.empty(len(ids) + n_seg * (k - 1), dtype=np.int64)
    bases[last] = ids % 4
    firsts = kmers.segment_starts
    lead = kmer_digits(ids[firsts], k)
    for d in range(k - 1):
        bases[last[firsts] - (k - 1) + d] = lead[:, d]
    starts = kmers.segment_starts + np.arange(n_seg) * (k - 1)
    return TokenStreams(torch.from_numpy(bases), starts, kmers.segment_lengths + (k - 1), None, None)


def window_bases(windows: np.ndarray, k: int) -> np.ndarray:
    """[M, W-1+k-1] the bases of each window's W-1 input k-mers (its last k-mer is the target)."""
    return np.concatenate([kmer_digits(windows[:, 0], k), windows[:, 1:-1] % 4], axis=1)


def next_kmers(last_kmers: np.ndarray, k: int) -> np.ndarray:
    """[M, 4] the k-mers that can follow each k-mer: its last k-1 bases, then A, C, G, T."""
    return (np.asarray(last_kmers) % 4 ** (k - 1) * 4)[:, None] + np.arange(4)


# ----------------------------------------------------------------------------------------------
# Sparse next-token mass -> scores


def dense_proba(rows: np.ndarray, tokens: np.ndarray, mass: np.ndarray, n_rows: int, vocab_size: int,
                normalise: bool = True) -> np.ndarray:
    """[n_rows, V] next-token distributions from per-row candidate tokens and masses ([T, C] each,
    ``rows`` [T]), the masses of equal tokens summed."""
    keys = np.asarray(rows)[:, None] * vocab_size + tokens
    proba = np.bincount(keys.ravel(), weights=np.ravel(mass), minlength=n_rows * vocab_size)
    proba = proba.reshape(n_rows, vocab_size)
    return proba / proba.sum(axis=1, keepdims=True) if normalise else proba


# ----------------------------------------------------------------------------------------------
# raw_bases


def raw_bases_proba(p_base: np.ndarray, last_kmers: np.ndarray, kmap: KmerMap, vocab_size: int) -> np.ndarray:
    """[B, V] next-token distribution from a next-base distribution [B, 4] after k-mers ``last_kmers``."""
    cand = next_kmers(last_kmers, kmap.k)
    return dense_proba(np.arange(len(cand)), kmap.token_of[cand], p_base, len(cand), vocab_size, normalise=False)


def raw_bases_scores(model: KneserNeyModel, windows: np.ndarray, targets: np.ndarray, kmap: KmerMap,
                     vocab_size: int, orders: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per order: per-target (nll, top-1, top-5) of the base model read through the token map."""
    parts: dict[int, list[tuple]] = {n: [] for n in orders}
    for sl in probability_batches(len(targets), vocab_size):
        ctx, last = window_bases(windows[sl], kmap.k), windows[sl, -2]
        for n, p_base in model.iter_orders(ctx, max(orders), set(orders)):
            parts[n].append(proba_scores(raw_bases_proba(p_base, last, kmap, vocab_size), targets[sl]))
    return {n: tuple(np.concatenate([p[i] for p in part]) for i in range(3)) for n, part in parts.items()}


# ----------------------------------------------------------------------------------------------
# token_ceiling: the forward algorithm over the k-mers of each token


@dataclass
class ChainPrior:
    """A base-level Markov chain read per k-mer y: ``start[y]`` = P(the k bases of y) at the
    start of a window, ``step[y]`` = P(the last base of y | the bases before it in y)."""

    start: np.ndarray  # float64 [4^k]
    step: np.ndarray  # float64 [4^k]

    @classmethod
    def from_model(cls, model: KneserNeyModel, order: int, k: int) -> "ChainPrior":
        """The order-``order`` Kneser-Ney model (order <= k), its first bases from the lower orders."""
        if not 1 <= order <= min(k, model.max_order):
            raise ValueError(f"order must be in 1..{min(k, model.max_order)}, got {order}")
        digits = kmer_digits(np.arange(4**k), k)
        width = model.max_order - 1
        rows = np.arange(4**k)
        start = np.ones(4**k)
        for j in range(k):
            ctx = np.zeros((4**k, width), dtype=np.int64)
            seen = min(j, width)
            ctx[:, width - seen:] = digits[:, j - seen:j]
            step = model.predict_proba(ctx, min(order, j + 1))[rows, digits[:, j]]
            start *= step
        return cls(start, step)

    @classmethod
    def uniform(cls, k: int) -> "ChainPrior":
        """Every base path equally likely: the forward pass then counts consistent paths."""
        return cls(np.ones(4**k), np.ones(4**k))


class TokenLattice:
    """The k-mers of each token, as flat lists: which k-mers a row of tokens allows at a step."""

    def __init__(self, token_of: np.ndarray, vocab_size: int):
        self.token_of = np.asarray(token_of, dtype=np.int64)
        self.k = int(round(np.log(len(self.token_of)) / np.log(4)))
        self.vocab_size = int(vocab_size)
        self.members = np.argsort(self.token_of, kind="stable")
        self.sizes = np.bincount(self.token_of, minlength=vocab_size)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.rank = np.empty_like(self.members)  # each k-mer's place among its token's k-mers
        self.rank[self.members] = np.arange(len(self.members)) - self.offsets[self.token_of[self.members]]

    def expand(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, k-mer) of every k-mer of each row's token, and each row's first index in that list."""
        sizes = self.sizes[tokens]
        row_start = np.concatenate([[0], np.cumsum(sizes)])
        rows = np.repeat(np.arange(len(tokens)), sizes)
        within = np.arange(int(row_start[-1])) - row_start[rows]
        return rows, self.members[self.offsets[tokens][rows] + within], row_start

    def forward(self, contexts: np.ndarray, prior: ChainPrior) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, k-mer, alpha): the posterior of the last context k-mer given the context tokens
        [B, L] (per row normalised); k-mers of the last token that no path reaches get 0."""
        n = len(contexts)
        rows, kmers, row_start = self.expand(contexts[:, 0])
        alpha = _normalised(prior.start[kmers], rows, n)
        high = np.arange(4) * 4 ** (self.k - 1)
        for i in range(1, contexts.shape[1]):
            new_rows, new_kmers, new_start = self.expand(contexts[:, i])
            before = high + (new_kmers // 4)[:, None]  # [T, 4]: the k-mers that can precede each one
            ok = self.token_of[before] == contexts[new_rows, i - 1][:, None]
            idx = np.where(ok, row_start[new_rows][:, None] + self.rank[before], 0)
            prev = np.where(ok, alpha[idx], 0.0).sum(axis=1)
            rows, kmers, row_start = new_rows, new_kmers, new_start
            alpha = _normalised(prior.step[kmers] * prev, rows, n)
        return rows, kmers, alpha

    def predict(self, contexts: np.ndarray, prior: ChainPrior) -> np.ndarray:
        """[B, V] the next-token distribution given only the context tokens [B, L]."""
        rows, kmers, alpha = self.forward(contexts, prior)
        nxt = next_kmers(kmers, self.k)
        return dense_proba(rows, self.token_of[nxt], alpha[:, None] * prior.step[nxt], len(contexts), self.vocab_size)


def _normalised(alpha: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    totals = np.bincount(rows, weights=alpha, minlength=n_rows)
    if np.any(totals <= 0):
        raise ValueError(f"no base path is consistent with the tokens of row {int(np.argmin(totals > 0))}")
    return alpha / totals[rows]


def token_ceiling_scores(lattice: TokenLattice, contexts: np.ndarray, targets: np.ndarray,
                         prior: ChainPrior) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-target (nll, top-1, top-5) of the Bayes-optimal prediction from the context tokens."""
    parts = [proba_scores(lattice.predict(contexts[sl], prior), targets[sl])
             for sl in probability_batches(len(targets), lattice.vocab_size)]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def task_anatomy(lattice: TokenLattice, windows: np.ndarray, contexts: np.ndarray) -> dict[str, float]:
    """How often the 4 candidate next k-mers fall into fewer than 4 tokens, and how often the
    context tokens pin down the last k-1 bases (every consistent path ends in the same ones)."""
    k = lattice.k
    cand = np.sort(lattice.token_of[next_kmers(windows[:, -2], k)], axis=1)
    distinct = 1 + np.count_nonzero(np.diff(cand, axis=1), axis=1)
    endings = np.zeros(len(windows), dtype=np.int64)
    for sl in probability_batches(len(windows), lattice.vocab_size):
        rows, kmers, alpha = lattice.forward(contexts[sl], ChainPrior.uniform(k))
        pairs = np.unique(rows[alpha > 0] * 4 ** (k - 1) + kmers[alpha > 0] % 4 ** (k - 1))
        endings[sl] = np.bincount(pairs // 4 ** (k - 1), minlength=sl.stop - sl.start)
    return {"targets": int(len(windows)), "candidate_tokens_fewer_than_4": float(np.mean(distinct < 4)),
            "mean_candidate_tokens": float(distinct.mean()), "last_bases_pinned": float(np.mean(endings == 1)),
            "mean_consistent_last_bases": float(endings.mean())}


# ----------------------------------------------------------------------------------------------
# Fitting, as the other references


def ceiling_max_order(name: str, max_order: int, width: int, k: int) -> int:
    """The largest order tried: the window's bases bound raw_bases, k-mer states token_ceiling."""
    if max_order < 1:
        raise UserError(f"--max_order must be >= 1, got {max_order}")
    cap = k if name == "token_ceiling" else width + k - 1
    if max_order > cap:
        log.info("%s: orders tried up to %d (not %d): %s", name, cap, max_order,
                 "the states are the last k-1 bases" if name == "token_ceiling" else "the window's bases end there")
    return min(max_order, cap)


def fit_ceiling(name: str, data: TokenData, kmap: KmerMap, val: ScoredSplit, test: ScoredSplit, max_order: int,
                tolerance: float) -> Fitted:
    """Fit reference ``name`` on the train bases, its order chosen on ``val``; the anatomy on ``test``."""
    if name not in CEILING_REFERENCES:
        raise UserError(f"unknown ceiling reference {name!r}")
    width, V = data.window_size, data.vocab_size
    t0 = time.perf_counter()
    model = KneserNeyModel(4, max_order).fit_streams(base_streams(kmer_streams(data, kmap, "train"), kmap.k))
    windows = {s.name: kmer_streams(data, kmap, s.name).windows(s.scored.starts, width).numpy() for s in (val, test)}
    t1 = time.perf_counter()
    tuning = model.tune_discounts(window_bases(windows[val.name], kmap.k), windows[val.name][:, -1] % 4)
    log.info("%s: base model orders 1-%d fitted in %.2f s, discounts chosen on the validation next bases in %.2f s",
             name, max_order, t1 - t0, time.perf_counter() - t1)
    lattice = TokenLattice(kmap.token_of, V)
    orders = list(range(1, max_order + 1))

    def scores(split: ScoredSplit, order_list: list[int]) -> dict[int, tuple]:
        if name == "raw_bases":
            return raw_bases_scores(model, windows[split.name], split.targets, kmap, V, order_list)
        return {n: token_ceiling_scores(lattice, split.contexts, split.targets, ChainPrior.from_model(model, n, kmap.k))
                for n in order_list}

    by_order = [val.scored.scores(*arrays) for arrays in scores(val, orders).values()]
    losses = [s.metrics()["loss"] for s in by_order]
    log_orders(name, by_order)
    order = choose_order(losses, tolerance)
    anatomy = task_anatomy(lattice, windows[test.name], test.contexts)
    log.info("%s: order %d chosen on validation; base discounts (D1, D2, D3+) by level, lowest first: %s "
             "(count-of-counts: %s)", name, order, format_discounts(model.discounts(order)),
             format_discounts(model.counted_discounts(order)))
    log.info("%s: test anatomy: candidates share a token %.1f %%, last %d bases pinned %.1f %%", name,
             100 * anatomy["candidate_tokens_fewer_than_4"], kmap.k - 1, 100 * anatomy["last_bases_pinned"])
    return Fitted(by_order[order - 1], lambda split: scores(split, [order])[order], {"table": model.parameters(order)},
                   {"order": order, "val_loss_by_order": losses, **discount_record(model, order),
                    "base_val_loss_by_order": tuning.loss,
                    "base_val_loss_by_order_count_of_counts": tuning.counted_loss,
                    "k": kmap.k, "kmer_map": kmap.source, "anatomy": anatomy})


def ceiling_config(name: str, kmap: KmerMap, max_order: int, tolerance: float) -> dict:
    """The settings of a ceiling reference run (a rerun with equal settings is a no-op)."""
    prior = ("the k-mer posterior under a base-level Markov chain (Kneser-Ney on train bases), exact forward "
             "inference over the base paths consistent with the input tokens") if name == "token_ceiling" else \
        "interpolated modified Kneser-Ney over the raw bases of the input k-mers, pushed through the k-mer -> token map"
    return {"max_order": max_order, "order_tolerance": tolerance, "k": kmap.k, "kmer_map": kmap.source,
            "kmer_files_sha256": kmap.files_sha256, "method": prior, "counts": "every base of the train streams",
            "discounts": DISCOUNT_SELECTION + ", on the next base of the validation windows"}

