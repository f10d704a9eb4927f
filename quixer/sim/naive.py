"""A deliberately naive Quixer forward pass with the official implementation's cost structure.

The official code (CQCL/Quixer on torchquantum) applies every gate of every token circuit one
at a time to ``batch x window`` copies of the state, and re-runs all token circuits for each
power of the QSVT polynomial. This module does the same, written independently of
:mod:`quixer.model` (own gate list, gate matrices applied by moving tensor axes, Paulis applied
explicitly), on the parameters of a :class:`quixer.model.Quixer`. It serves two purposes:
the ``--impl naive`` baseline of ``bench/bench_quixer.py``, and a second reference in the tests
(it lives in the package so that both import it the same way; the pipeline never uses it).
"""
from __future__ import annotations

import torch
from torch import nn


def _ry(theta: torch.Tensor, cdtype) -> torch.Tensor:
    c, s = torch.cos(theta / 2), torch.sin(theta / 2)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2).to(cdtype)


def _crx(theta: torch.Tensor, cdtype) -> torch.Tensor:
    c, s = torch.cos(theta / 2).to(cdtype), torch.sin(theta / 2).to(cdtype)
    mat = torch.zeros(*theta.shape, 4, 4, dtype=cdtype, device=theta.device)
    mat[..., 0, 0] = 1
    mat[..., 1, 1] = 1
    mat[..., 2, 2], mat[..., 2, 3] = c, -1j * s
    mat[..., 3, 2], mat[..., 3, 3] = -1j * s, c
    return mat


def _apply(state: torch.Tensor, mat: torch.Tensor, wires: list[int]) -> torch.Tensor:
    """Apply ``mat`` ([N, 2^k, 2^k] or [2^k, 2^k]) to ``wires`` of ``state`` [N, 2, .., 2]."""
    n = state.dim() - 1
    src = [w + 1 for w in wires]
    dst = list(range(n + 1 - len(wires), n + 1))
    moved = state.movedim(src, dst)
    shape = moved.shape
    flat = moved.reshape(shape[0], -1, 2 ** len(wires))
    out = flat @ mat.mT  # row vectors: (U psi)^T = psi^T U^T
    return out.reshape(shape).movedim(dst, src)


def _run_ansatz(state: torch.Tensor, angles: torch.Tensor, n: int, layers: int) -> torch.Tensor:
    """Ansatz 14, gate by gate, official order; ``angles`` [N, 4 n layers] or [4 n layers]."""
    k = 0
    cdtype = state.dtype
    for _ in range(layers):
        ring1 = [(q, (q + 1) % n) for q in range(n - 1, -1, -1)]
        ring2 = [(q, (q - 1) % n) for q in [n - 1] + list(range(n - 1))]
        for part in (range(n), ring1, range(n), ring2):
            for wires in part:
                theta = angles[..., k]
                k += 1
                if isinstance(wires, int):
                    state = _apply(state, _ry(theta, cdtype), [wires])
                else:
                    state = _apply(state, _crx(theta, cdtype), list(wires))
    return state


_PAULI = {
    "x": [[0, 1], [1, 0]],
    "y": [[0, -1j], [1j, 0]],
    "z": [[1, 0], [0, -1]],
}


def naive_forward(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same maths as ``model(x)``, computed the slow way (dropout follows ``model.training``)."""
    n, layers = model.n_qubits, model.active_layers
    batch, window = x.shape
    dim = 2**n
    angles = model.token_angles(x).reshape(batch * window, -1)
    cdtype = torch.complex128 if angles.dtype == torch.float64 else torch.complex64
    lcu = torch.nn.functional.normalize(model.lcu_coefficients.repeat(batch, 1), p=1).to(cdtype)
    coeffs = model.qsvt_polynomial_coefficients

    base = torch.zeros(batch, dim, dtype=cdtype, device=x.device)
    base[:, 0] = 1
    acc, work = coeffs[0] * base, base
    for c in coeffs[1:]:  # every power re-runs every token circuit
        copies = work.repeat(1, window).view(-1, *[2] * n)
        evolved = _run_ansatz(copies, angles, n, layers).reshape(batch, window, dim)
        work = torch.einsum("bwi,bw->bi", evolved, lcu)
        acc = acc + c * work
    acc = acc / torch.linalg.vector_norm(coeffs, ord=1)

    norm = torch.linalg.vector_norm(acc, dim=-1)
    psi = (acc / norm.clamp_min(1e-12)[:, None]).view(-1, *[2] * n)
    psi = _run_ansatz(psi, model.quantum_feedforward_parameters, n, 1)
    features = []
    for name in ("x", "y", "z"):
        pauli = torch.tensor(_PAULI[name], dtype=cdtype, device=x.device)
        for q in range(n):
            p_psi = _apply(psi, pauli, [q])
            features.append((psi.conj() * p_psi).reshape(batch, -1).sum(-1).real)
    logits = model.output_feedforward(torch.stack(features, -1))
    return logits, norm**2


class NaiveQuixer(nn.Module):
    """Wraps a :class:`quixer.model.Quixer` (same parameters) with :func:`naive_forward`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return naive_forward(self.model, x)
