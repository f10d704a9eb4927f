"""Confidence intervals by a bootstrap over test gene groups and seeds, and paired differences.

Windows of one gene are correlated (shared exons, neighbouring positions), so resampling
single targets would give intervals that are too narrow. Each bootstrap replicate instead
draws the test's split groups with replacement (:mod:`quixer.homology`: transcripts that share
sequence form one group) and, for a model trained with several seeds, its seeds with
replacement; a metric is the mean over the drawn seeds of the metric over the drawn groups'
targets. The 2.5 and 97.5 percentiles of the replicates give the 95 % interval. Two models
scored on the same targets are compared within each replicate (the same groups for both),
so their difference gets its own, narrower, paired interval.

Targets without group ids (token files written before sources existed) count as one group
each.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scoring import TargetScores

REPLICATES = 2000
_SEED = 0  # fixed: a report over the same runs gives the same intervals
_STATS = ("nll", "top1", "top5")


@dataclass
class GroupSums:
    """Per group and seed: target count and the sums of nll, top-1 and top-5 ([S, G] each)."""

    n: np.ndarray
    sums: dict[str, np.ndarray]

    @classmethod
    def of(cls, runs: list[TargetScores], group_index: np.ndarray, n_groups: int, mask: np.ndarray | None = None
           ) -> "GroupSums":
        keep = np.ones(len(group_index), bool) if mask is None else mask
        g = group_index[keep]
        n = np.stack([np.bincount(g, minlength=n_groups).astype(np.float64) for _ in runs])
        sums = {k: np.stack([np.bincount(g, weights=getattr(r, k)[keep], minlength=n_groups) for r in runs])
                for k in _STATS}
        return cls(n, sums)

    def metric(self, name: str, weights: np.ndarray) -> np.ndarray:
        """[S] values of ``name`` (loss, perplexity, top1, top5) with group weights ``[G]``."""
        total = self.n @ weights
        if name in ("loss", "perplexity"):
            loss = (self.sums["nll"] @ weights) / total
            return np.exp(loss) if name == "perplexity" else loss
        return (self.sums[name] @ weights) / total


class GroupBootstrap:
    """Replicates over the groups of one set of targets, shared by every model scored on them."""

    def __init__(self, groups: np.ndarray | None, n_targets: int, replicates: int = REPLICATES, seed: int = _SEED):
        ids = np.arange(n_targets) if groups is None else np.asarray(groups)
        _, self.group_index = np.unique(ids, return_inverse=True)
        self.n_groups = int(self.group_index.max()) + 1 if n_targets else 0
        rng = np.random.default_rng(seed)
        self.weights = [np.bincount(rng.integers(0, self.n_groups, self.n_groups), minlength=self.n_groups)
                        .astype(np.float64) for _ in range(replicates)]
        self._rng = np.random.default_rng(seed + 1)

    def sums(self, runs: list[TargetScores], mask: np.ndarray | None = None) -> GroupSums:
        return GroupSums.of(runs, self.group_index, self.n_groups, mask)

    def samples(self, sums: GroupSums, metric: str) -> np.ndarray:
        """[replicates] bootstrap values of the seed-mean of ``metric``."""
        n_seeds = sums.n.shape[0]
        out = np.empty(len(self.weights))
        for b, w in enumerate(self.weights):
            seeds = self._rng.integers(0, n_seeds, n_seeds)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[b] = sums.metric(metric, w)[seeds].mean()
        return out


def interval(samples: np.ndarray) -> list[float] | None:
    """The central 95 % of the finite bootstrap values, or None when there are none."""
    finite = samples[np.isfinite(samples)]
    if not len(finite):
        return None
    low, high = np.percentile(finite, [2.5, 97.5])
    return [float(low), float(high)]
