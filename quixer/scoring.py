"""Per-target scores, one format for trained models and references.

Every model is scored on the same targets (:func:`quixer.streams.eval_targets`) with the same
function: cross-entropy, and top-1 / top-5 counted as the *expected* accuracy under random
tie-breaking (a target tied with ``t`` tokens, ``a`` tokens strictly above it, is in the top
``k`` with probability ``clip((k - a) / t, 0, 1)``): a uniform predictor scores exactly 1/V
and 5/V, not the frequency of token 0. The per-target arrays are kept
(``{split}_scores.npz`` in a run directory) so the report can resample gene groups and measure
the spread between seeds for confidence intervals, and pair models target by target.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .common import UserError, atomic_write_bytes


def score_logits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: cross-entropy (nats), expected top-1 and expected top-5 accuracy (float64).

    ``logits`` may be unnormalised scores or log-probabilities (``-inf`` allowed where a
    reference gives probability 0)."""
    logits = logits.double()
    rows = torch.arange(len(targets), device=logits.device)
    nll = -torch.log_softmax(logits, dim=-1)[rows, targets]
    own = logits[rows, targets][:, None]
    above = (logits > own).sum(-1).double()
    tied = (logits == own).sum(-1).double()
    return nll, expected_in_top(1, above, tied), expected_in_top(min(5, logits.shape[-1]), above, tied)


def expected_in_top(k: int, above, tied):
    """P(rank < k) when ``above`` scores are higher and the target ties with ``tied`` (itself included)."""
    return ((k - above) / tied.clip(1)).clip(0, 1)


def fixed_distribution_scores(p: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`score_logits` for one distribution ``p`` [V] shared by every target (no [M, V] matrix)."""
    p = np.asarray(p, dtype=np.float64)
    ordered = np.sort(p)
    above = len(p) - np.searchsorted(ordered, p, side="right")  # per token: how many score higher
    tied = np.searchsorted(ordered, p, side="right") - np.searchsorted(ordered, p, side="left")
    above, tied = above[targets].astype(np.float64), tied[targets].astype(np.float64)
    with np.errstate(divide="ignore"):
        nll = -np.log(p[targets])
    return nll, expected_in_top(1, above, tied), expected_in_top(min(5, len(p)), above, tied)


def proba_scores(proba: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-target (nll, expected top-1, expected top-5) of normalised distributions ``[B, V]``
    (the rule of :func:`score_logits`, without its log-softmax)."""
    p_t = proba[np.arange(len(targets)), targets][:, None]
    above = np.count_nonzero(proba > p_t, axis=1).astype(np.float64)
    tied = np.count_nonzero(proba == p_t, axis=1).astype(np.float64)
    with np.errstate(divide="ignore"):
        nll = -np.log(p_t[:, 0])
    k5 = min(5, proba.shape[1])
    return nll, expected_in_top(1, above, tied), expected_in_top(k5, above, tied)


def format_perplexity(value: float) -> str:
    """A perplexity for logs and tables: two decimals, or three significant digits once it is
    large (a diverging run's perplexity would otherwise print hundreds of digits)."""
    if not math.isfinite(value):
        return "inf"
    return f"{value:.2f}" if value < 1e5 else f"{value:.3g}"


def perplexity(loss: float) -> float:
    """exp(loss), inf past float range: the one conversion, so rows and their intervals agree to the bit."""
    return math.exp(loss) if loss < 700 else float("inf")


@dataclass
class TargetScores:
    """The scores of one split's targets (``M`` of them), in target order."""

    nll: np.ndarray  # float64 [M]
    top1: np.ndarray  # float64 [M]
    top5: np.ndarray  # float64 [M]
    novel: np.ndarray | None = None  # bool [M]
    groups: np.ndarray | None = None  # int64 [M]
    postselection: np.ndarray | None = None  # float64 [M] (Quixer)
    key: str = ""  # sha256 of the targets (quixer.streams.EvalTargets.key)
    positions_key: str = ""  # sha256 of the scored positions only (EvalTargets.positions_key)

    def __len__(self) -> int:
        return len(self.nll)

    def metrics(self) -> dict[str, float]:
        """loss, perplexity, top1, top5 (and postselection) over all targets; the same over the
        novel-context targets as ``novel_*`` with ``novel_fraction``, where flags exist."""
        if not len(self):
            raise UserError("evaluation split is empty")
        out = _summary(self.nll, self.top1, self.top5)
        if self.postselection is not None:
            out["postselection"] = float(self.postselection.mean())
        if self.novel is not None:
            out["novel_fraction"] = float(self.novel.mean())
            if self.novel.any():
                m = self.novel
                out.update({f"novel_{k}": v for k, v in _summary(self.nll[m], self.top1[m], self.top5[m]).items()})
        return out

    def save(self, path: str | Path) -> None:
        arrays = {k: v for k, v in (("nll", self.nll), ("top1", self.top1), ("top5", self.top5), ("novel", self.novel),
                                   ("groups", self.groups), ("postselection", self.postselection)) if v is not None}
        buf = io.BytesIO()
        keys = {"key": np.array(self.key), **({"positions_key": np.array(self.positions_key)} if self.positions_key else {})}
        np.savez_compressed(buf, **keys, **arrays)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "TargetScores":
        try:
            with np.load(path, allow_pickle=False) as z:
                get = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: cannot be read as per-target scores ({exc})") from None
        if not {"nll", "top1", "top5", "key"} <= set(get):
            raise UserError(f"{path}: not a per-target scores file (needs nll, top1, top5, key)")
        return cls(get["nll"], get["top1"], get["top5"], get.get("novel"), get.get("groups"),
                   get.get("postselection"), str(get["key"]), str(get.get("positions_key", "")))


def _summary(nll: np.ndarray, top1: np.ndarray, top5: np.ndarray) -> dict[str, float]:
    loss = float(nll.mean())
    return {"loss": loss, "perplexity": perplexity(loss), "top1": float(top1.mean()), "top5": float(top5.mean())}


def prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    """Result keys of one split's metrics: ``loss`` -> ``test_loss``, ``novel_loss`` ->
    ``novel_test_loss``, ``novel_fraction`` -> ``novel_fraction`` for test (the table's column)
    and ``novel_val_fraction`` otherwise."""
    out = {}
    for k, v in metrics.items():
        if k == "novel_fraction":
            out["novel_fraction" if prefix == "test" else f"novel_{prefix}_fraction"] = v
        elif k.startswith("novel_"):
            out[f"novel_{prefix}_{k[6:]}"] = v
        else:
            out[f"{prefix}_{k}"] = v
    return out
