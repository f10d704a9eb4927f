"""Split groups by shared sequence, and the exact leakage index of stage 1.

Header tags are not gene groups: isoforms of one gene carry different ``locus=`` tags,
``_dupN`` copies are separate records, and many inputs carry no gene tag at all. What makes a
split leak is shared *sequence*, so groups are built from it (:class:`SharedSequenceGrouper`):

1. every transcript's 32-base substrings (32-mers, packed 2 bits per base into one
   ``uint64``) are listed once per transcript;
2. a 32-mer is *informative* when it lies in one A/C/G/T run, has no soft-masked (lowercase)
   base, is not low complexity (a DUST-style score of repeated triplets: microsatellites and
   poly-A are caught also in all-uppercase inputs) and occurs in at most
   ``max_kmer_transcripts`` transcripts (the commonest repeats);
3. transcripts with the same gene tag are joined first; then pairs of transcripts that share
   at least ``min_shared_kmers`` informative 32-mers (isoforms, ``_dupN`` copies, paralogous
   copies), strongest evidence first (union-find). A *weak* join (the shared 32-mers are less
   than ``strong_fraction`` of the smaller transcript's informative ones, as when two genes
   share only a repeat the filters missed) that would make a group hold more than
   ``max_group_share`` of all windows is refused and counted: that bounds chaining through
   repeats, and the leakage statistic shows what it costs. Strong joins (isoforms, copies)
   are never refused, whatever the size of the input.

Leakage is measured exactly, not sampled (:class:`TrainIndex`): a val/test context *leaks*
when its last 32 bases (all of it when shorter) occur anywhere in a train transcript, repeats
included. Memory is bounded by these indexes (at most 12 bytes per input base while
grouping, 8 per train base for the leakage index), never by the number of windows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Exact-match length of the grouping evidence and of the leakage statistic.
MATCH_BASES = 32
_CODE = np.full(256, 255, dtype=np.uint8)
for _i, _b in enumerate(b"ACGT"):
    _CODE[_b] = _CODE[_b + 32] = _i  # either case
_CODE[ord("U")] = _CODE[ord("u")] = 3


@dataclass(frozen=True)
class HomologyConfig:
    """How shared sequence joins transcripts into one split group (see the module docstring)."""

    min_shared_kmers: int = 32
    max_kmer_transcripts: int = 200
    max_group_share: float = 0.03
    strong_fraction: float = 0.2
    max_dust_score: float = 2.0

    def validate(self) -> None:
        from .common import UserError

        if self.min_shared_kmers < 1:
            raise UserError("--min_shared_kmers must be >= 1")
        if self.max_kmer_transcripts < 2:
            raise UserError("--max_kmer_transcripts must be >= 2")
        if not 0 < self.max_group_share <= 1:
            raise UserError("--max_group_share must be in (0, 1]")


# --------------------------------------------------------------------------- k-mer arrays
def base_codes(sequence: str) -> np.ndarray:
    """Per base: 0-3 for A/C/G/T (either case, U as T), 255 for anything else."""
    return _CODE[np.frombuffer(sequence.encode("ascii", "replace"), dtype=np.uint8)]


def kmer_keys(codes: np.ndarray, k: int = MATCH_BASES) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, valid)`` per start position: the k-mer packed 2 bits per base (first base most
    significant, so equal keys are equal strings) and whether it lies in one A/C/G/T run."""
    n = len(codes) - k + 1
    if n <= 0:
        return np.empty(0, np.uint64), np.empty(0, bool)
    bad = np.concatenate(([0], np.cumsum(codes == 255)))
    valid = bad[k:] == bad[:-k]
    c = np.where(codes == 255, 0, codes).astype(np.uint64)
    keys = np.zeros(n, dtype=np.uint64)
    for j in range(k):
        keys <<= np.uint64(2)
        keys |= c[j : j + n]
    return keys, valid


def distinct(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values (``np.unique`` without its hashing path, faster on these keys)."""
    keys = np.sort(keys)
    return keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if len(keys) else keys


def dust_scores(codes: np.ndarray, k: int = MATCH_BASES) -> np.ndarray:
    """DUST-style complexity of every k-mer: pairs of equal overlapping triplets divided by
    (triplets - 1). Random sequence scores about 0.3, a trinucleotide repeat about 4.7, a
    dinucleotide repeat about 7, a homopolymer ``(k - 3) / 2``."""
    n = len(codes) - k + 1
    if n <= 0:
        return np.empty(0)
    c = np.where(codes == 255, 4, codes).astype(np.int16)
    triplets = c[:-2] * 25 + c[1:-1] * 5 + c[2:]
    t = k - 2  # triplets per k-mer
    pairs = np.zeros(n, dtype=np.int32)
    for d in range(1, t):
        # equal triplets at distance d with both inside the k-mer starting at s: i in [s, s + t - d)
        eq = np.concatenate(([0], np.cumsum(triplets[:-d] == triplets[d:], dtype=np.int32)))
        pairs += eq[t - d : t - d + n] - eq[:n]
    return pairs / (t - 1)


def informative_kmers(sequence: str, cfg: HomologyConfig) -> np.ndarray:
    """The distinct informative 32-mers of one transcript (all but the frequency filter)."""
    codes = base_codes(sequence)
    keys, valid = kmer_keys(codes)
    if not len(keys):
        return keys
    raw = np.frombuffer(sequence.encode("ascii", "replace"), dtype=np.uint8)
    lower = np.concatenate(([0], np.cumsum((raw >= 97) & (raw <= 122))))
    unmasked = lower[MATCH_BASES:] == lower[:-MATCH_BASES]
    return distinct(keys[valid & unmasked & (dust_scores(codes) <= cfg.max_dust_score)])


# --------------------------------------------------------------------------- grouping
class _CappedUnionFind:
    """Disjoint sets with a weight per set; a union past ``cap`` is refused. Roots are the
    smallest member, so labels do not depend on the order of unions."""

    def __init__(self, weights: np.ndarray, cap: float) -> None:
        self.parent = np.arange(len(weights))
        self.weight = np.asarray(weights, dtype=np.int64).copy()
        self.cap, self.refused = cap, 0

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return int(a)

    def union(self, a: int, b: int, capped: bool = True) -> None:
        ra, rb = sorted((self.find(a), self.find(b)))
        if ra == rb:
            return
        if capped and self.weight[ra] + self.weight[rb] > self.cap:
            self.refused += 1
            return
        self.parent[rb] = ra
        self.weight[ra] += self.weight[rb]

    def labels(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


def shared_kmer_pairs(keys: np.ndarray, owners: np.ndarray, cfg: HomologyConfig) -> tuple[np.ndarray, np.ndarray]:
    """Transcript pairs ``[P, 2]`` sharing at least ``min_shared_kmers`` informative k-mers, and
    their counts, strongest first.

    ``keys``/``owners``: every transcript's distinct informative k-mers and its index, owners
    non-decreasing. A k-mer in ``m`` transcripts (``2 <= m <= max_kmer_transcripts``) counts
    one shared k-mer for each of them paired with the first (lowest-index) one: that joins
    every family, with one count per occurrence (no quadratic number of pairs).
    """
    order = np.argsort(keys, kind="stable")  # stable: owners stay sorted within a k-mer
    keys, owners = keys[order], owners[order]
    del order
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    del keys
    sizes = np.diff(np.append(starts, len(owners)))
    keep = (sizes >= 2) & (sizes <= cfg.max_kmer_transcripts)
    run_of = np.repeat(np.arange(len(starts)), sizes)
    member = keep[run_of]
    member[starts] = False
    anchors = owners[starts[run_of[member]]].astype(np.int64)
    others = owners[member].astype(np.int64)
    if not len(anchors):
        return np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=np.int64)
    n = int(owners.max()) + 1
    pair_keys, counts = np.unique(anchors * n + others, return_counts=True)
    strong = counts >= cfg.min_shared_kmers
    pair_keys, counts = pair_keys[strong], counts[strong]
    pairs = np.stack((pair_keys // n, pair_keys % n), 1)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -counts))  # deterministic, strongest first
    return pairs[order], counts[order]


@dataclass
class Grouping:
    """Group label per transcript (the index of its first member) and what the grouping did."""

    labels: np.ndarray
    joined_by_tag: int = 0
    joined_by_sequence: int = 0
    refused: int = 0
    statistics: dict = field(default_factory=dict)


class SharedSequenceGrouper:
    """Pass 1 feeds :meth:`add` every used transcript in order; :meth:`groups` joins them."""

    def __init__(self, cfg: HomologyConfig) -> None:
        self.cfg = cfg
        self._keys: list[np.ndarray] = []

    def add(self, sequence: str) -> None:
        """The next transcript (case kept: lowercase marks soft-masked repeats)."""
        self._keys.append(informative_kmers(sequence, self.cfg))

    def groups(self, tags: list[str | None], weights: list[int]) -> Grouping:
        """Join transcripts by gene tag (``None``: no tag), then by shared sequence, each join
        capped at ``max_group_share`` of the total weight (windows)."""
        if len(tags) != len(self._keys) or len(weights) != len(self._keys):
            raise ValueError("one tag and one weight per added transcript")
        uf = _CappedUnionFind(np.asarray(weights), self.cfg.max_group_share * max(sum(weights), 1))
        first_with_tag: dict[str, int] = {}
        by_tag = 0
        for i, tag in enumerate(tags):
            if tag is not None:
                j = first_with_tag.setdefault(tag, i)
                if j != i:
                    uf.union(j, i)
                    by_tag += 1
        sizes = np.array([len(k) for k in self._keys], dtype=np.int64)
        owners = np.repeat(np.arange(len(self._keys), dtype=np.int32), sizes)
        keys = np.concatenate(self._keys) if self._keys else np.empty(0, np.uint64)
        self._keys = []  # the pair search below needs the memory
        pairs, counts = shared_kmer_pairs(keys, owners, self.cfg)
        del keys, owners
        refused_by_tag = uf.refused
        strong = counts >= self.cfg.strong_fraction * np.minimum(sizes[pairs[:, 0]], sizes[pairs[:, 1]])
        for (a, b), is_strong in zip(pairs.tolist(), strong.tolist()):
            uf.union(a, b, capped=not is_strong)
        return Grouping(labels=uf.labels(), joined_by_tag=by_tag, joined_by_sequence=len(pairs),
                        refused=uf.refused, statistics={"refused_tag_joins": refused_by_tag,
                                                        "strong_pairs": int(strong.sum())})


# --------------------------------------------------------------------------- leakage
class TrainIndex:
    """The distinct ``length``-mers of the train transcripts: exact 'seen in train' lookups."""

    def __init__(self, length: int) -> None:
        if not 1 <= length <= MATCH_BASES:
            raise ValueError(f"match length must be in 1..{MATCH_BASES}")
        self.length = length
        self._parts: list[np.ndarray] = []
        self.keys = np.empty(0, np.uint64)

    def add(self, sequence: str) -> None:
        keys, valid = kmer_keys(base_codes(sequence), self.length)
        self._parts.append(distinct(keys[valid]))

    def freeze(self) -> "TrainIndex":
        self.keys = distinct(np.concatenate([self.keys, *self._parts]))
        self._parts = []
        return self

    def seen(self, sequence: str) -> np.ndarray:
        """Per start position of ``sequence``: its ``length``-mer is valid and occurs in train."""
        keys, valid = kmer_keys(base_codes(sequence), self.length)
        if not len(self.keys) or not len(keys):
            return np.zeros(len(keys), dtype=bool)
        order = np.argsort(keys)  # sorted queries walk the index in order: far fewer cache misses
        pos = np.empty_like(order)
        pos[order] = np.searchsorted(self.keys, keys[order])
        return valid & (self.keys[pos.clip(max=len(self.keys) - 1)] == keys)


def context_seen(seen: np.ndarray, offsets: np.ndarray, window_size: int, k: int, length: int) -> np.ndarray:
    """``[n_windows, window_size]`` bools: is the context of the k-mer at window position ``j``
    (its last ``length`` bases, ending just before the k-mer's last base) seen in train?

    The k-mer at position ``j`` of the window starting at base ``o`` starts at ``b = o + j``;
    the tokens before it cover bases up to ``b + k - 2``, so the context's last ``length``
    bases start at ``b + k - 1 - length``. Positions without that many bases before them in
    the sequence count as not seen.
    """
    starts = np.asarray(offsets, dtype=np.int64)[:, None] + np.arange(window_size) + (k - 1 - length)
    inside = (starts >= 0) & (starts < len(seen))
    return inside & seen[starts.clip(0, max(len(seen) - 1, 0))] if len(seen) else np.zeros(starts.shape, bool)


def context_length(window_size: int, k: int) -> int:
    """Bases of context the leakage statistic matches: the last 32, or all when fewer."""
    return min(MATCH_BASES, window_size - 1 + k - 1)
