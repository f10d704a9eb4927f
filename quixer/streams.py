"""Per-transcript token streams: windows at every offset for training, fixed targets for scoring.

Stage 1 cuts each transcript's k-mer sequence into windows every ``--window_stride`` bases
(32 by default: the stream cut into chunks). Scoring only each window's last token would make
a neural model see one target in 32, while a count-based n-gram sees every position. Here the
windows of one transcript are chained back into contiguous segments (``sources`` of the token
files give transcript and offset), so that

- training draws windows starting at *any* position of the train segments, a fresh seeded
  slice of a permutation of all start positions every epoch (each start is used once before
  any repeats, and the order of epoch ``e`` is a pure function of ``(seed, e)``);
- val and test score every position that has a full window of context, or a fixed seeded
  sample of :data:`DEFAULT_EVAL_TARGETS` of them where there are more. The sample depends on
  the data only, so every model and every reference is scored on the very same targets.

Without ``sources`` (token files written before they existed) every window is its own
segment: training uses the windows as they are and scoring their last tokens.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from .scoring import TargetScores
from .window_sources import WindowSources

#: Scored targets per split when there are more positions (0 or None: all of them).
DEFAULT_EVAL_TARGETS = 100_000
_EVAL_SAMPLE_SEED = 20_240_604  # fixed: the targets must not depend on any model's seed
_SELECTION_SAMPLE_SEED = 20_261_206  # fixed, and other than the above: a sample of the scored targets


@dataclass
class TokenStreams:
    """One split as contiguous segments of tokens (all concatenated), with per-token flags."""

    tokens: torch.Tensor  # int64 [T]
    segment_starts: np.ndarray  # int64 [S]: index of each segment's first token
    segment_lengths: np.ndarray  # int64 [S]
    novel: np.ndarray | None  # bool [T]: the context of this token is not in train (val/test)
    segment_groups: np.ndarray | None  # int64 [S]: split-group id of each segment's transcript

    @classmethod
    def from_windows(cls, sequences: torch.Tensor, sources: WindowSources | None) -> "TokenStreams":
        """Chain the windows ``[N, W]`` of each transcript whose offsets continue (the next
        window starts 1..W k-mers later and agrees on the overlap) into segments."""
        n, width = sequences.shape
        seq = sequences.numpy()
        if sources is None:
            return cls(sequences.reshape(-1).clone(), np.arange(n, dtype=np.int64) * width,
                       np.full(n, width, dtype=np.int64), None, None)
        order = np.lexsort((sources.offsets, sources.transcript))
        trans, offs = sources.transcript[order], sources.offsets[order]
        step = np.diff(offs, prepend=offs[0] - width - 1)
        cont = (np.diff(trans, prepend=-1) == 0) & (step >= 1) & (step <= width)
        for d in np.unique(step[cont & (step < width)]).tolist():  # overlapping windows, by step size:
            idx = np.flatnonzero(cont & (step == d))  # the overlap must agree, else start a new segment
            agree = (seq[order[idx], : width - d] == seq[order[idx - 1], d:]).all(axis=1)
            cont[idx[~agree]] = False
        take = np.where(cont, np.minimum(step, width), width)  # new tokens each window adds
        cols = np.arange(width)[None, :] >= (width - take)[:, None]
        tokens = seq[order][cols]
        novel = sources.novel[order][cols] if sources.novel is not None else None
        firsts = np.flatnonzero(~cont)
        added = np.concatenate(([0], np.cumsum(take)))
        starts = added[firsts]
        lengths = np.diff(np.append(starts, added[-1]))
        groups = sources.window_groups()[order][firsts]
        return cls(torch.from_numpy(np.ascontiguousarray(tokens)), starts.astype(np.int64),
                   lengths.astype(np.int64), novel, groups.astype(np.int64))

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def window_starts(self, width: int) -> np.ndarray:
        """Every token index where a window of ``width`` tokens fits inside one segment."""
        counts = np.maximum(self.segment_lengths - width + 1, 0)
        firsts = np.repeat(self.segment_starts, counts)
        within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        return firsts + within

    def segment_of(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.segment_starts, positions, side="right") - 1

    def windows(self, starts: np.ndarray | torch.Tensor, width: int) -> torch.Tensor:
        """The windows ``[B, width]`` that start at ``starts``."""
        starts = torch.as_tensor(np.asarray(starts), dtype=torch.int64)
        return self.tokens[starts[:, None] + torch.arange(width)]


@dataclass
class EvalTargets:
    """The scored positions of one split: window starts (the target is each window's last
    token), and per target its novel-context flag and split group."""

    starts: np.ndarray  # int64 [M], sorted
    novel: np.ndarray | None  # bool [M]
    groups: np.ndarray | None  # int64 [M]
    key: str  # sha256 of the targets: runs scored on equal keys can be paired

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def positions_key(self) -> str:
        """sha256 of the scored positions alone: equal for two token sets (quantised and raw
        6-mers) of the same windows, whose ``key`` differs, so their scores can still be paired."""
        return hashlib.sha256(np.ascontiguousarray(self.starts, dtype=np.int64).tobytes()).hexdigest()

    def scores(self, nll: np.ndarray, top1: np.ndarray, top5: np.ndarray,
               postselection: np.ndarray | None = None) -> TargetScores:
        """Per-target scores of these targets, carrying their novel flags, groups and keys."""
        return TargetScores(nll, top1, top5, self.novel, self.groups, postselection, self.key, self.positions_key)

    def sample(self, n: int) -> "EvalTargets":
        """A fixed seeded sample of ``n`` of these targets (all of them when ``n`` is 0 or not
        smaller): per-epoch model selection scores it instead of every target. It depends on
        the targets only, so every model and seed selects its epochs on the same sample."""
        if not n or n >= len(self):
            return self
        keep = np.sort(np.random.default_rng(_SELECTION_SAMPLE_SEED).choice(len(self), size=n, replace=False))
        digest = hashlib.sha256(self.key.encode())
        digest.update(keep.tobytes())
        pick = (lambda a: a[keep] if a is not None else None)
        return EvalTargets(self.starts[keep], pick(self.novel), pick(self.groups), digest.hexdigest())


def eval_targets(streams: TokenStreams, width: int, max_targets: int | None = DEFAULT_EVAL_TARGETS) -> EvalTargets:
    """Every position with a full window of context, or a fixed seeded sample of ``max_targets``."""
    starts = streams.window_starts(width)
    if max_targets and len(starts) > max_targets:
        rng = np.random.default_rng(_EVAL_SAMPLE_SEED)
        starts = np.sort(rng.choice(starts, size=max_targets, replace=False))
    last = starts + width - 1
    novel = streams.novel[last] if streams.novel is not None else None
    groups = streams.segment_groups[streams.segment_of(starts)] if streams.segment_groups is not None else None
    digest = hashlib.sha256(np.ascontiguousarray(starts).tobytes())
    digest.update(streams.tokens.numpy()[last].tobytes())
    return EvalTargets(starts, novel, groups, digest.hexdigest())


class TrainSchedule:
    """The training windows of each epoch: consecutive slices of seeded permutations of every
    window start (a new permutation once all starts are used)."""

    def __init__(self, streams: TokenStreams, width: int, epoch_size: int, seed: int) -> None:
        self.starts = streams.window_starts(width)
        if not len(self.starts):
            raise ValueError("no training window fits in the train segments")
        self.epoch_size, self.seed = int(epoch_size), int(seed)

    def epoch(self, epoch: int) -> np.ndarray:
        """The window starts of 0-based ``epoch``, in training order."""
        total = len(self.starts)
        first, last = epoch * self.epoch_size, (epoch + 1) * self.epoch_size
        parts = []
        for cycle in range(first // total, (last - 1) // total + 1):
            perm = np.random.default_rng([self.seed, cycle]).permutation(total)
            lo, hi = max(first - cycle * total, 0), min(last - cycle * total, total)
            parts.append(perm[lo:hi])
        return self.starts[np.concatenate(parts)]
