"""Test accuracy of a trained Quixer when its features come from a finite number of shots.

On hardware each of the 3n features is an average of measured +-1 outcomes. Per window and
per basis (X, Y, Z) the circuit runs ``S`` times; a shot is kept only when every postselected
bit reads 0, which happens with the model's postselection probability ``p`` (so the kept count
is Binomial(S, p)); the outcome of a kept shot is drawn from the normalised state's
distribution in that basis (so the outcome counts are multinomial). The features are the
sample means, and the classical head turns them into logits.

Nothing is simulated per window: the exact outcome distributions come from the torch model
(``qsvt_state``, the feed-forward unitary and the basis change, vectorised over windows) and
numpy draws all counts at once. A basis with no kept shot carries no information; its features
are set to 0, the mean of a fair +-1 coin (counted in ``zero_success_fraction``).

Every row carries 95 % intervals from the per-target scores (:data:`INTERVAL_METHOD`), and the
finite-shot rows their paired difference from exact, so "S shots come within x points of exact"
is read with its uncertainty.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..intervals import REPLICATES, GroupBootstrap, perplexity_interval
from ..scoring import TargetScores, perplexity, score_logits

INTERVAL_METHOD = (f"95 % intervals: a bootstrap over the test targets' gene groups ({REPLICATES:,} replicates) of "
                   "the per-target scores, each target's own shot noise included; differences from exact are paired "
                   "(the same targets and replicates)")

_H = np.array([[1, 1], [1, -1]], dtype=complex) / math.sqrt(2)
_SDG = np.diag([1, -1j])
BASIS_CHANGE = {"X": _H, "Y": _H @ _SDG, "Z": np.eye(2, dtype=complex)}  # applied before measuring Z


def _on_every_qubit(gate: np.ndarray, n_qubits: int) -> np.ndarray:
    out = np.ones((1, 1), dtype=complex)
    for _ in range(n_qubits):
        out = np.kron(out, gate)
    return out


def outcome_signs(n_qubits: int) -> np.ndarray:
    """``[2^n, n]``: +1 / -1 as qubit q of outcome o (qubit 0 most significant) reads 0 / 1."""
    bits = (np.arange(2**n_qubits)[:, None] >> np.arange(n_qubits - 1, -1, -1)) & 1
    return 1.0 - 2.0 * bits


@torch.no_grad()
def exact_outcomes(model, x: torch.Tensor, batch_size: int = 1024, progress: bool = True) -> dict:
    """Per window: outcome distributions ``probs [B, 3, 2^n]`` (X, Y, Z), ``postselection [B]``,
    the model's own ``features [B, 3n]`` and ``logits [B, V]``.

    The distributions are checked against the features the model feeds its head (captured with
    a forward pre-hook): they must be the same state measured the same way.
    """
    from tqdm import tqdm

    n = model.n_qubits
    dim = 2**n
    model.eval()
    feedforward = model.feedforward_unitary().to(torch.complex128).numpy()
    rotations = np.stack([_on_every_qubit(BASIS_CHANGE[b], n) @ feedforward for b in ("X", "Y", "Z")])
    captured = []
    hook = model.output_feedforward.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    out = {"probs": [], "postselection": [], "features": [], "logits": []}
    try:
        for chunk in tqdm(x.split(batch_size), desc="exact outcomes", leave=False, disable=None if progress else True):
            logits, post = model(chunk)
            state = model.qsvt_state(chunk).to(torch.complex128).numpy()
            state = state / np.linalg.norm(state, axis=1, keepdims=True)
            amplitudes = np.einsum("bij,nj->nbi", rotations, state)
            out["probs"].append(np.abs(amplitudes) ** 2)
            out["postselection"].append(post.double().numpy())
            out["features"].append(captured.pop().double().numpy())
            out["logits"].append(logits.double().numpy())
    finally:
        hook.remove()
    result = {k: np.concatenate(v) for k, v in out.items()}
    check = features_from_distributions(result["probs"], n)
    error = float(np.abs(check - result["features"]).max())
    if error > 1e-6:
        raise RuntimeError(f"outcome distributions disagree with the model's features (max error {error:.2e})")
    result["probs"] = np.clip(result["probs"], 0.0, None)
    result["probs"] /= result["probs"].sum(-1, keepdims=True)
    assert result["probs"].shape[1:] == (3, dim)
    return result


def features_from_distributions(probs: np.ndarray, n_qubits: int) -> np.ndarray:
    """``[B, 3, 2^n]`` outcome distributions (or count fractions) -> features ``[B, 3n]``
    (all <X_q>, then <Y_q>, then <Z_q>, as the model orders them)."""
    return (probs @ outcome_signs(n_qubits)).reshape(probs.shape[0], -1)


def sample_features(probs: np.ndarray, postselection: np.ndarray, shots: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Features estimated from ``shots`` attempts per basis: ``(features [B, 3n], kept [B, 3])``."""
    n_qubits = int(round(math.log2(probs.shape[-1])))
    p = np.clip(postselection, 0.0, 1.0)
    kept = rng.binomial(shots, np.repeat(p[:, None], 3, axis=1))
    counts = rng.multinomial(kept, probs)  # [B, 3, 2^n]
    fractions = counts / np.maximum(kept, 1)[..., None]  # zero kept -> all zero -> features 0
    return features_from_distributions(fractions, n_qubits), kept


def head_scores(model, features: np.ndarray, targets: np.ndarray) -> TargetScores:
    """Per-target scores (:func:`quixer.scoring.score_logits`) of the model's classical head on ``features``."""
    head = model.output_feedforward
    dtype = next(head.parameters()).dtype
    with torch.no_grad():
        logits = head(torch.as_tensor(features, dtype=dtype)).double()
    nll, top1, top5 = score_logits(logits, torch.as_tensor(targets))
    return TargetScores(nll.numpy(), top1.numpy(), top5.numpy())


def head_metrics(model, features: np.ndarray, targets: np.ndarray) -> dict:
    """Loss (nats), perplexity, top-1 and top-5 of the model's classical head on ``features``."""
    return _metrics(head_scores(model, features, targets))


def _metrics(scores: TargetScores) -> dict:
    loss = float(scores.nll.mean())
    return {"loss": loss, "perplexity": perplexity(loss), "top1": float(scores.top1.mean()),
            "top5": float(scores.top5.mean())}


def _intervals(boot: GroupBootstrap, scores: TargetScores, exact: TargetScores | None) -> dict:
    """95 % intervals of top-1, top-5 and perplexity over the test groups, and of top-1 and
    perplexity minus the exact row's, paired (the same targets and replicates)."""
    est = {k: boot.estimate([scores], k) for k in ("top1", "top5", "nll")}
    out = {"top1_ci95": est["top1"].interval(0.0, 1.0), "top5_ci95": est["top5"].interval(0.0, 1.0),
           "perplexity_ci95": perplexity_interval(est["nll"])}
    if exact is not None:
        for metric, diff in (("top1", est["top1"] - boot.estimate([exact], "top1")),
                             ("perplexity", est["nll"].exp() - boot.estimate([exact], "nll").exp())):
            out[f"{metric}_minus_exact"], out[f"{metric}_minus_exact_ci95"] = diff.point, diff.interval()
    return out


def shot_table(model, exact: dict, targets: np.ndarray, shots: list[int], seed: int,
               groups: np.ndarray | None = None) -> list[dict]:
    """One row per shot budget (and one for exact expectations): metrics with 95 % intervals, and
    circuit executions.

    The intervals are a bootstrap over the test targets' gene groups (``groups``; each target its
    own group without them) of the per-target scores (:data:`INTERVAL_METHOD`): a target's score
    at S shots already holds its own shot noise, independent between targets, so resampling
    targets covers it. Each budget draws from its own generator, seeded by ``(seed, S)``, so a row
    does not depend on which other budgets are in the list.
    """
    post = exact["postselection"]
    boot = GroupBootstrap(groups, len(targets))
    exact_scores = head_scores(model, exact["features"], targets)
    rows = [{"shots": None, **_metrics(exact_scores), **_intervals(boot, exact_scores, None)}]
    for s in shots:
        features, kept = sample_features(exact["probs"], post, s, np.random.default_rng([seed, s]))
        scores = head_scores(model, features, targets)
        rows.append({
            "shots": s, **_metrics(scores), **_intervals(boot, scores, exact_scores),
            "executions_per_prediction": 3 * s,
            "mean_kept_shots_per_basis": float(kept.mean()),
            "zero_success_fraction": float((kept == 0).mean()),
            "executions_for_s_kept_mean": float(np.mean(3 * s / np.maximum(post, 1e-300))),
            "executions_for_s_kept_median": float(np.median(3 * s / np.maximum(post, 1e-300))),
        })
    return rows
