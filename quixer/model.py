"""The Quixer quantum transformer (arXiv:2406.04305), simulated exactly in torch.

Quixer mixes the tokens of a window with quantum primitives. Each token id becomes a
parameterised circuit ("ansatz 14" of Sim et al. 2019) on ``n`` qubits, i.e. a unitary
``U_w``. A linear combination of unitaries (LCU) forms ``M = sum_w b_w U_w`` with trainable
complex ``b`` (L1-normalised), and the quantum singular value transformation (QSVT) applies a
trainable real polynomial: ``|psi> = sum_k c_k M^k |0> / ||c||_1``. On hardware that state is
reached only after postselection, with probability ``<psi|psi>``; here it is normalised,
passed through one more trainable circuit (the quantum feed-forward), and <X>, <Y>, <Z> on
every qubit feed a small classical head that outputs the next-token logits.

The maths is that of the official implementation (github.com/CQCL/Quixer,
``quixer/quixer_model.py``, torchquantum): same gate order, same parameter names (see
:data:`OFFICIAL_PARAMETER_NAMES`), qubit 0 the most significant bit of a basis index. The
simulation is organised for speed on small, op-bound tensors:

* real arithmetic, with the ``B * W`` circuit instances on the last (contiguous) axis; every
  RY or CRX gate is one "butterfly" (gather the partner rows, multiply, add): three
  vectorised ops per gate for all instances at once (:class:`CircuitPlan`);
* gate coefficients (cos/sin of the angles) are computed once per forward, not per power;
* a hand-written adjoint backward (:class:`_CircuitFunction`): the real form of each gate is
  orthogonal, so states are recovered by applying its transpose instead of being stored, and
  each angle gradient is one product and one matvec;
* in eval mode without autograd a token's circuit depends only on its id, so per-vocabulary
  data is cached (keyed on the parameters): on CUDA the unitaries, ``M`` being one weighted
  ``embedding_bag`` over them; on a CPU the gate coefficients and first columns ``U_v |0>``.

On a CPU the same maths runs in the fused kernel of :mod:`quixer.native` where it builds:
all gates of a circuit per tile of instances in L1 cache, one call per LCU power forward
(:class:`_LCUPowerFunction`) and backward, the whole eval forward up to the measurement in
one call, and cheap dropout masks (:class:`Dropout`). Without it, the torch path above runs.

Differences from the official code, on purpose: the returned postselection probability is
per sequence and squared (``<psi|psi>``; the official code returns the batch mean of the
norm), and the unused tail of ``quantum_feedforward_parameters`` (it holds ``4 n L``
numbers but its one-layer circuit reads the first ``4 n``) is not kept.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from quixer import native

# Official parameter names -> shape, as a function of the hyper-parameters (n qubits, W tokens,
# degree d, L ansatz layers, vocabulary V, embedding E). Buffers of the torchquantum device
# (``torchquantum_device.state`` / ``.states``) also appear in official checkpoints and are ignored.
OFFICIAL_PARAMETER_NAMES = {
    "embedding.weight": lambda n, W, d, L, V, E: (V, E),
    "embedding_to_angles.weight": lambda n, W, d, L, V, E: (4 * n * L, E),
    "embedding_to_angles.bias": lambda n, W, d, L, V, E: (4 * n * L,),
    "qsvt_polynomial_coefficients": lambda n, W, d, L, V, E: (d + 1,),
    "lcu_coefficients": lambda n, W, d, L, V, E: (W,),
    "quantum_feedforward_parameters": lambda n, W, d, L, V, E: (4 * n * L,),
    "output_feedforward.0.weight": lambda n, W, d, L, V, E: (E, 3 * n),
    "output_feedforward.0.bias": lambda n, W, d, L, V, E: (E,),
    "output_feedforward.2.weight": lambda n, W, d, L, V, E: (V, E),
    "output_feedforward.2.bias": lambda n, W, d, L, V, E: (V,),
}
# Names used by the first public version of the official file, accepted as aliases.
_LEGACY_PREFIXES = {
    "emb2rot.": "embedding_to_angles.",
    "output_ff.": "output_feedforward.",
    "poly_coeffs": "qsvt_polynomial_coefficients",
    "mix_coeffs": "lcu_coefficients",
    "qff_params": "quantum_feedforward_parameters",
}
_IGNORED_OFFICIAL_PREFIXES = ("torchquantum_device.", "q_device.")


# --------------------------------------------------------------------------------------------
# The circuits: ansatz 14 as a gate list, simulated on real tensors
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Gate:
    """One gate: ``kind`` is "ry" (wires = (qubit,)) or "crx" (wires = (control, target));
    ``param`` is the index of its angle in the circuit's angle vector."""

    kind: str
    wires: tuple[int, ...]
    param: int


def ansatz14_gates(n_qubits: int, n_layers: int) -> list[Gate]:
    """Ansatz 14 of Sim et al. (2019) in the official gate and angle order (4 n angles/layer).

    Per layer: RY on every qubit; CRX(i -> i+1 mod n) for i = n-1 .. 0; RY on every qubit;
    CRX(i -> i-1 mod n) for i = n-1, 0, 1, .., n-2.
    """
    n = n_qubits
    gates: list[Gate] = []
    for _ in range(n_layers):
        order = (
            [("ry", (q,)) for q in range(n)]
            + [("crx", (q, (q + 1) % n)) for q in range(n - 1, -1, -1)]
            + [("ry", (q,)) for q in range(n)]
            + [("crx", (q, (q - 1) % n)) for q in [n - 1] + list(range(n - 1))]
        )
        offset = len(gates)
        gates.extend([Gate(kind, wires, offset + i) for i, (kind, wires) in enumerate(order)])
    return gates


class CircuitPlan:
    """Static data for simulating a gate list on real-valued state tensors.

    A batch of states is a real tensor ``[..., 2, 2, .., 2, N]``: axis ``-(n+2)`` holds the real
    and imaginary parts, the next ``n`` axes the qubits (qubit 0 first, i.e. the most
    significant bit of a basis index), the last axis the ``N`` circuit instances. Viewed as
    ``[..., R, N]`` (``R = 2^(n+1)`` rows), every gate is a "butterfly" on whole rows:
    ``X' = A * X + B * X[partner]``, where ``partner`` pairs each row with the row differing in
    the gate's bit(s) and ``A``, ``B`` are per-instance coefficients (:func:`gate_coefficients`).
    With the instances last, each of these ops is one contiguous, vectorised pass.
    """

    def __init__(self, gates: list[Gate], n_qubits: int):
        if n_qubits < 2:
            raise ValueError("Quixer needs at least 2 qubits (the CRX ring needs two wires)")
        for g in gates:
            if g.kind not in ("ry", "crx") or len(set(g.wires)) != len(g.wires):
                raise ValueError(f"unsupported gate {g}")
        self.n_qubits = n = n_qubits
        self.rows = 2 ** (n + 1)
        self.gates = gates
        self.params = torch.tensor([g.param for g in gates], dtype=torch.long)
        self._params_in_order = self.params.tolist() == list(range(len(gates)))  # gate k reads angle k
        # for the fused CPU kernel (quixer.native): gate kind (0 RY, 1 CRX) and wires, int32
        self.wiring = (torch.tensor([0 if g.kind == "ry" else 1 for g in gates], dtype=torch.int32),
                       torch.tensor([g.wires[0] for g in gates], dtype=torch.int32),
                       torch.tensor([g.wires[-1] for g in gates], dtype=torch.int32))
        # RY on q pairs rows differing in bit q; CRX (-i sin on the target) also swaps re and im.
        row = torch.arange(self.rows).view(2, *[2] * n)
        self.partners = torch.stack([row.flip(1 + g.wires[0]) if g.kind == "ry" else row.flip(0, 1 + g.wires[1])
                                     for g in gates]).reshape(len(gates), self.rows)
        # d(gate)/d(theta) = 1/2 K * (gate output)[partner]: K = -1/+1 by the qubit's bit (RY),
        # +1 / -1 on real / imaginary rows where the control is 1, else 0 (CRX).
        bits = (torch.arange(2**n)[:, None] >> torch.arange(n - 1, -1, -1)) & 1  # [2^n, n], qubit 0 first
        reim = torch.tensor([[1.0], [-1.0]])
        self.derivative_patterns = torch.stack([
            (2.0 * bits[:, g.wires[0]] - 1).expand(2, -1) if g.kind == "ry" else reim * bits[:, g.wires[0]]
            for g in gates]).reshape(len(gates), self.rows)
        self._moved: dict = {}

    def _reads_angles_in_order(self, n_params: int) -> bool:
        return self._params_in_order and n_params == len(self.gates)

    def gate_angles(self, angles: torch.Tensor) -> torch.Tensor:
        """Angles ``[N, P]`` -> the angle each gate reads, ``[N, G]`` (the same tensor when in order)."""
        if self._reads_angles_in_order(angles.shape[1]):
            return angles
        return angles[:, self.tables(angles.device, angles.dtype)[2]]

    def angle_gradients(self, per_gate: torch.Tensor, n_params: int) -> torch.Tensor:
        """Per-gate angle gradients ``[N, G]`` -> gradients of the angles ``[N, n_params]``."""
        if self._reads_angles_in_order(n_params):
            return per_gate
        params = self.tables(per_gate.device, per_gate.dtype)[2]
        return per_gate.new_zeros(per_gate.shape[0], n_params).index_add_(1, params, per_gate)

    def tables(self, device: torch.device, dtype: torch.dtype):
        """Per gate: partner rows ``[R]`` and derivative pattern ``[1, R]``; and params ``[G]``."""
        key = (str(device), dtype)
        if key not in self._moved:
            self._moved[key] = (self.partners.to(device).unbind(0),
                                self.derivative_patterns.to(device, dtype).unsqueeze(1).unbind(0),
                                self.params.to(device))
        return self._moved[key]


class GateCoefficients:
    """Per-gate half-angle cosines and sines of ``N`` circuit instances, ``[N, G]`` each.

    Computed once per forward from the (detached) angles and reused for every power. The fused
    CPU kernel (:mod:`quixer.native`) reads ``cos``/``sin`` directly; the torch path uses the
    butterfly form of :meth:`butterflies`.
    """

    def __init__(self, plan: "CircuitPlan", cos: torch.Tensor, sin: torch.Tensor):
        self.plan, self.cos, self.sin = plan, cos.contiguous(), sin.contiguous()
        self._butterflies: list | None = None

    @classmethod
    def from_angles(cls, plan: "CircuitPlan", angles: torch.Tensor) -> "GateCoefficients":
        """From angles ``[N, P]`` (gate ``k`` reads angle ``plan.params[k]``)."""
        half = plan.gate_angles(angles) * 0.5
        return cls(plan, torch.cos(half), torch.sin(half))

    def butterflies(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-gate butterfly coefficients ``(A, B)``, shaped to broadcast against the state layout.

        - RY on q = [[c, -s], [s, c]]: ``A = c``; ``B = -s`` where q is 0, ``+s`` where q is 1.
        - CRX (control k, target t) applies RX = [[c, -i s], [-i s, c]] where k is 1; ``-i s``
          takes the partner's imaginary part into the real part and minus its real part into the
          imaginary part: ``A = 1`` where k is 0 and ``c`` where k is 1; ``B = 0`` where k is 0,
          ``+s`` on real and ``-s`` on imaginary rows where k is 1.
        """
        if self._butterflies is None:
            n, n_inst = self.plan.n_qubits, self.cos.shape[0]
            out = []
            for g, c, s in zip(self.plan.gates, self.cos.t().contiguous(), self.sin.t().contiguous()):
                k = g.wires[0]
                if g.kind == "ry":
                    out.append((c, torch.stack((-s, s)).view((2,) + (1,) * (n - 1 - k) + (n_inst,))))
                else:
                    one, zero = torch.ones_like(c), torch.zeros_like(s)
                    a = torch.stack((one, c)).view((2,) + (1,) * (n - 1 - k) + (n_inst,))
                    b = torch.stack((torch.stack((zero, s)), torch.stack((zero, -s))))
                    out.append((a, b.view((2,) + (1,) * k + (2,) + (1,) * (n - 1 - k) + (n_inst,))))
            self._butterflies = out
        return self._butterflies


def gate_coefficients(plan: CircuitPlan, angles: torch.Tensor) -> GateCoefficients:
    """The gate coefficients of ``N`` instances with angles ``[N, P]`` (see :class:`GateCoefficients`)."""
    return GateCoefficients.from_angles(plan, angles)


def _use_native(states: torch.Tensor, coefficients: GateCoefficients) -> bool:
    return coefficients.cos.dtype == states.dtype and native.supports(states)


def apply_gates(plan: CircuitPlan, coefficients: GateCoefficients, states: torch.Tensor) -> torch.Tensor:
    """Apply circuit instance ``i`` to ``states[..., i]``; returns a new tensor.

    On CPU with the fused kernel available, all gates run per tile of instances
    (:func:`quixer.native.forward`). Otherwise in place on one copy with one scratch buffer:
    per gate, gather the partner rows into the scratch buffer, then ``X = A * X + B * scratch``.
    """
    if _use_native(states, coefficients):
        rows_view = states.reshape(-1, plan.rows, states.shape[-1]).contiguous()
        out = native.forward(rows_view, coefficients.cos, coefficients.sin, plan.wiring, plan.n_qubits)
        return out.view(states.shape)
    x = states.clone(memory_format=torch.contiguous_format)
    rows_view = x.view(-1, plan.rows, x.shape[-1])
    scratch = torch.empty_like(x)
    scratch_rows = scratch.view_as(rows_view)
    partners = plan.tables(x.device, x.dtype)[0]
    for (a, b), partner in zip(coefficients.butterflies(), partners):
        torch.index_select(rows_view, 1, partner, out=scratch_rows)
        x.mul_(a).addcmul_(b, scratch)
    return x


class _CircuitFunction(torch.autograd.Function):
    """:func:`apply_gates` with a hand-written adjoint backward (no per-gate autograd graph).

    Walking the gates backwards with ``g = dL/d(gate output)`` and the gate output ``x``:

    - each gate is a rotation ``exp(-i theta P / 2)``, so ``dx/dtheta = 1/2 (-i P) x``, which
      in the real layout is ``1/2 K * x[partner]`` (``K``: a static +-1/0 row pattern), hence
      ``dL/dtheta = 1/2 K . (g * x[partner])``: one gather, one product, one matvec;
    - the gate's real form is orthogonal: the input is recovered exactly as ``G^T x`` (so no
      intermediate state is stored: memory does not grow with the number of gates) and the
      gradient moves on as ``G^T g``.

    The fused CPU kernel (:func:`quixer.native.adjoint`) does the same walk per tile of instances.
    """

    @staticmethod
    def forward(ctx, states, angles, plan, coefficients):
        out = apply_gates(plan, coefficients, states)
        ctx.plan, ctx.coefficients, ctx.n_params = plan, coefficients, angles.shape[1]
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        plan, coefficients = ctx.plan, ctx.coefficients
        n_inst = out.shape[-1]
        if _use_native(out, coefficients):
            rows_view = out.view(-1, plan.rows, n_inst)
            grad_in, per_gate = native.adjoint(rows_view, grad.reshape(rows_view.shape).contiguous(), coefficients.cos,
                                               coefficients.sin, plan.wiring, plan.n_qubits, ctx.needs_input_grad[0])
            grad_angles = plan.angle_gradients(per_gate, ctx.n_params)
            return (grad_in.view(out.shape) if grad_in is not None else None), grad_angles, None, None
        partners, patterns, _ = plan.tables(out.device, out.dtype)
        butterflies = coefficients.butterflies()
        # state and gradient stacked, so that one gather and one butterfly serve both
        both = torch.stack((out, grad.reshape(out.shape)))
        scratch, product = torch.empty_like(both), torch.empty_like(out)
        both_rows, scratch_rows = both.view(2, -1, plan.rows, n_inst), scratch.view(2, -1, plan.rows, n_inst)
        partner_state_rows, grad_rows = scratch_rows[0], both_rows[1]
        product_rows = product.view(-1, plan.rows, n_inst)
        per_gate = out.new_empty(len(butterflies), 1, n_inst)
        per_gate_rows = per_gate.unbind(0)
        single = product_rows.shape[0] == 1
        for k in range(len(butterflies) - 1, -1, -1):
            a, b = butterflies[k]
            torch.index_select(both_rows, 2, partners[k], out=scratch_rows)
            torch.mul(partner_state_rows, grad_rows, out=product_rows)
            if single:
                torch.mm(patterns[k], product_rows[0], out=per_gate_rows[k])
            else:
                per_gate_rows[k].copy_((patterns[k] @ product_rows).sum(0))
            if k == 0 and not ctx.needs_input_grad[0]:
                break
            both.mul_(a).addcmul_(b, scratch, value=-1)  # state <- input of gate k; grad <- G^T grad
        grad_angles = plan.angle_gradients(per_gate.squeeze(1).t() * 0.5, ctx.n_params)
        return (both[1] if ctx.needs_input_grad[0] else None), grad_angles, None, None


class _LCUPowerFunction(torch.autograd.Function):
    """One LCU power ``sum_w b_w U_{b,w} psi_b`` for ``B`` sequences of ``W`` tokens on the fused
    CPU kernel (:func:`quixer.native.lcu_power`), with its backward in one kernel call as well.

    ``psi``: real ``[2 dim, B]``; ``angles``: ``[B * W, P]`` (their gradient); ``lcu``: the
    complex LCU weights ``[W]``. The circuit outputs are kept for the backward
    (``[2 dim, B * W]``, as the torch path keeps them).
    """

    @staticmethod
    def forward(ctx, psi, angles, lcu, plan, coefficients):
        out, outputs = native.lcu_power(psi.contiguous(), coefficients.cos, coefficients.sin, plan.wiring,
                                        plan.n_qubits, lcu.detach())
        ctx.plan, ctx.coefficients, ctx.n_params = plan, coefficients, angles.shape[1]
        ctx.save_for_backward(outputs, lcu)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        outputs, lcu = ctx.saved_tensors
        plan, coefficients = ctx.plan, ctx.coefficients
        dpsi, dlcu, per_gate = native.lcu_power_adjoint(outputs, grad.contiguous(), coefficients.cos,
                                                        coefficients.sin, plan.wiring, plan.n_qubits, lcu.detach())
        grad_angles = plan.angle_gradients(per_gate, ctx.n_params)
        # torch's gradient for a complex input of a real loss: dL/d(re) + i dL/d(im)
        return dpsi, grad_angles, torch.complex(dlcu[:, 0], dlcu[:, 1]).to(lcu.dtype), None, None


def run_circuits(plan: CircuitPlan, angles: torch.Tensor, states: torch.Tensor,
                 coefficients: list | None = None) -> torch.Tensor:
    """Apply the circuits with angles ``[N, P]`` to ``states [..., 2, 2, .., 2, N]`` (differentiable).

    ``coefficients`` (from :func:`gate_coefficients` on the detached angles) may be passed in
    to reuse them across several calls with the same angles.
    """
    if coefficients is None:
        coefficients = gate_coefficients(plan, angles.detach())
    plan.tables(states.device, states.dtype)  # build the static tables outside the autograd.Function
    if torch.is_grad_enabled() and (angles.requires_grad or states.requires_grad):
        return _CircuitFunction.apply(states, angles, plan, coefficients)
    return apply_gates(plan, coefficients, states)


def basis_images(plan: CircuitPlan, angles: torch.Tensor) -> torch.Tensor:
    """Images of the basis states: real ``[2^n (s), 2 (re/im), 2^n (r), N]`` holding ``U_i[r, s]``."""
    dim, n_inst = 2**plan.n_qubits, angles.shape[0]
    eye = torch.eye(dim, dtype=angles.dtype, device=angles.device)
    states = torch.stack((eye, torch.zeros_like(eye)), 1)[..., None].expand(dim, 2, dim, n_inst)
    states = states.reshape(dim, 2, *[2] * plan.n_qubits, n_inst)
    return run_circuits(plan, angles, states).reshape(dim, 2, dim, n_inst)


def circuit_unitaries(plan: CircuitPlan, angles: torch.Tensor) -> torch.Tensor:
    """Full unitaries ``[N, 2^n, 2^n]`` (complex) of the circuits with angles ``[N, P]``."""
    images = basis_images(plan, angles)
    return torch.complex(images[:, 0], images[:, 1]).permute(2, 1, 0)


@functools.lru_cache(maxsize=None)
def _bit_pairs(n_qubits: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per qubit q: the basis indices with bit q = 0, and the same indices with bit q = 1."""
    masks = [1 << (n_qubits - 1 - q) for q in range(n_qubits)]
    low = torch.tensor([[r for r in range(2**n_qubits) if not r & m] for m in masks], device=device)
    return low, low | torch.tensor(masks, device=device)[:, None]


def pauli_expectations(states: torch.Tensor, n_qubits: int) -> torch.Tensor:
    """``[B, 2^n]`` normalised states -> ``[B, 3n]``: <X_q> for all q, then <Y_q>, then <Z_q>.

    With ``a``/``b`` the amplitudes where qubit q is 0/1 (pairs differing in that bit):
    <Z> = |a|^2 - |b|^2, <X> = 2 Re(a* b), <Y> = 2 Im(a* b).
    """
    low, high = _bit_pairs(n_qubits, str(states.device))
    a, b = states[:, low], states[:, high]  # [B, n, dim/2]
    ab = (a.conj() * b).sum(-1)
    z = (a.real**2 + a.imag**2 - b.real**2 - b.imag**2).sum(-1)
    return torch.cat([2 * ab.real, 2 * ab.imag, z], dim=-1)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask comes from the fused kernel library (:mod:`quixer.native`).

    torch's CPU ``bernoulli_`` makes one generator call per element: about 6 ms for the
    ``[32, 32, 512]`` embeddings of a training batch, an eighth of a training step. The kernel's
    counter-based generator takes a fraction of a millisecond; its seed is drawn from torch's
    generator, so seeding and resuming work as before. Same distribution, other values; without
    the kernel, or off the CPU, this is ``nn.Dropout``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.training or not 0 < self.p < 1 or x.dtype not in (torch.float32, torch.float64)
                or not native.supports(x)):
            return super().forward(x)
        return x * native.dropout_mask(x.shape, self.p, x.dtype)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

class Quixer(nn.Module):
    """Quixer next-token model: ``forward(x [B, n_tokens]) -> (logits [B, V], p_postselect [B])``."""

    INIT_STRATEGIES = ("small_gaussian", "uniform", "xavier", "centroid")
    PARAMETER_GROUPS = {"embedding": ("embedding.",), "angle_map": ("embedding_to_angles.",),
                        "quantum": ("lcu_coefficients", "qsvt_polynomial_coefficients", "quantum_feedforward_parameters"),
                        "head": ("output_feedforward.",)}

    def __init__(
        self,
        n_qubits: int = 6,
        n_tokens: int = 31,
        qsvt_polynomial_degree: int = 3,
        n_ansatz_layers: int = 4,
        vocabulary_size: int = 512,
        embedding_dimension: int = 512,
        dropout: float = 0.1,
        dtype: torch.dtype = torch.complex64,
    ):
        super().__init__()
        if dtype not in (torch.complex64, torch.complex128):
            raise ValueError(f"dtype must be torch.complex64 or torch.complex128, not {dtype}")
        for name, value, low in (("n_qubits", n_qubits, 2), ("n_tokens", n_tokens, 1),
                                 ("qsvt_polynomial_degree", qsvt_polynomial_degree, 1),
                                 ("n_ansatz_layers", n_ansatz_layers, 1), ("vocabulary_size", vocabulary_size, 1),
                                 ("embedding_dimension", embedding_dimension, 1)):
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        self.n_qubits, self.n_tokens = n_qubits, n_tokens
        self.degree, self.n_ansatz_layers = qsvt_polynomial_degree, n_ansatz_layers
        self.vocabulary_size, self.embedding_dimension = vocabulary_size, embedding_dimension
        self.angles_per_layer = 4 * n_qubits

        self.embedding = nn.Embedding(vocabulary_size, embedding_dimension, dtype=real)
        self.dropout = Dropout(dropout)
        self.embedding_to_angles = nn.Linear(embedding_dimension, self.angles_per_layer * n_ansatz_layers, dtype=real)
        self.lcu_coefficients = nn.Parameter(torch.zeros(n_tokens, dtype=dtype))
        self.qsvt_polynomial_coefficients = nn.Parameter(torch.zeros(qsvt_polynomial_degree + 1, dtype=real))
        self.quantum_feedforward_parameters = nn.Parameter(torch.zeros(self.angles_per_layer, dtype=real))
        self.output_feedforward = nn.Sequential(
            nn.Linear(3 * n_qubits, embedding_dimension, dtype=real),
            nn.ReLU(),
            nn.Linear(embedding_dimension, vocabulary_size, dtype=real),
        )
        self.active_layers = n_ansatz_layers
        self._plans: dict[int, CircuitPlan] = {}
        self._feedforward_plan = CircuitPlan(ansatz14_gates(n_qubits, 1), n_qubits)
        self._eval_cache: dict = {}  # see _eval_cached
        self.initialize("small_gaussian")

    # ---- circuits ----------------------------------------------------------------------

    def _plan(self) -> CircuitPlan:
        k = self.active_layers
        if k not in self._plans:
            self._plans[k] = CircuitPlan(ansatz14_gates(self.n_qubits, k), self.n_qubits)
        return self._plans[k]

    def token_angles(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids ``[...]`` -> circuit angles ``[..., 4 n k]`` of the ``k`` active layers."""
        n_angles = self.angles_per_layer * self.active_layers
        w, b = self.embedding_to_angles.weight, self.embedding_to_angles.bias
        return F.linear(self.dropout(self.embedding(x)), w[:n_angles], b[:n_angles])

    def token_unitaries(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids ``[N]`` -> their unitaries ``[N, 2^n, 2^n]`` (dropout applies in train mode)."""
        return circuit_unitaries(self._plan(), self.token_angles(x))

    def feedforward_unitary(self) -> torch.Tensor:
        """The quantum feed-forward circuit's unitary ``[2^n, 2^n]`` (one ansatz-14 layer)."""
        return circuit_unitaries(self._feedforward_plan, self.quantum_feedforward_parameters[None])[0]

    def lcu_weights(self) -> torch.Tensor:
        """LCU coefficients divided by their L1 norm (as ``F.normalize(p=1)`` in the official code)."""
        b = self.lcu_coefficients
        return b / b.abs().sum().clamp_min(1e-12)

    # ---- forward ------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``[B, n_tokens]`` -> logits ``[B, V]`` and postselection probabilities ``[B]``."""
        if not self.training and not torch.is_grad_enabled() and native.supports(self.embedding.weight):
            self._check_tokens(x)
            self._refresh_eval_cache()
            _, features, postselection = self._native_eval(x, measure=True)  # one kernel call
            return self.output_feedforward(features), postselection
        state = self.qsvt_state(x)
        postselection = (state.real**2 + state.imag**2).sum(-1)
        state = state / postselection.sqrt().clamp_min(1e-12).unsqueeze(-1)
        if not self.training and not torch.is_grad_enabled():
            feedforward = self._eval_cached("feedforward", self.feedforward_unitary)  # refreshed by qsvt_state
            state = state @ feedforward.mT
        else:
            state = self._apply_feedforward(state)
        features = pauli_expectations(state, self.n_qubits)
        return self.output_feedforward(features), postselection

    def _apply_feedforward(self, state: torch.Tensor) -> torch.Tensor:
        """The feed-forward circuit applied to each state ``[B, 2^n]`` (the batch as instances)."""
        batch, n = state.shape[0], self.n_qubits
        real = torch.stack((state.real.t(), state.imag.t())).reshape(2, *[2] * n, batch)
        angles = self.quantum_feedforward_parameters.expand(batch, -1)  # shared: gradients sum over B
        out = run_circuits(self._feedforward_plan, angles, real).reshape(2, 2**n, batch)
        return torch.complex(out[0].t(), out[1].t())

    def qsvt_state(self, x: torch.Tensor) -> torch.Tensor:
        """The unnormalised LCU + QSVT state ``sum_k c_k M^k |0> / ||c||_1``, complex ``[B, 2^n]``.

        In eval mode without autograd cached per-vocabulary data are used (:meth:`_native_eval`
        on a CPU with the fused kernel, else :meth:`_qsvt_state_cached`); otherwise (training, or
        gradients requested) every token position gets its own circuit.
        """
        self._check_tokens(x)
        if not self.training and not torch.is_grad_enabled():
            self._refresh_eval_cache()
            if native.supports(self.embedding.weight):
                state, _, _ = self._native_eval(x, measure=False)
                dim = 2**self.n_qubits
                return torch.complex(state[:, :dim], state[:, dim:])
            return self._qsvt_state_cached(x)
        return self._qsvt_state(x)

    def _check_tokens(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.n_tokens:
            raise ValueError(f"expected token ids of shape [batch, {self.n_tokens}], got {tuple(x.shape)}")
        if x.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"token ids must be an integer tensor, got {x.dtype}")

    def _polynomial(self, psi: torch.Tensor, apply_m) -> torch.Tensor:
        """``sum_k c_k M^k psi / ||c||_1`` given ``psi = |0>`` and ``apply_m(psi) -> M psi``."""
        coeffs = self.qsvt_polynomial_coefficients
        acc = coeffs[0] * psi
        for k in range(1, self.degree + 1):
            psi = apply_m(psi)
            acc = acc + coeffs[k] * psi
        return acc / coeffs.abs().sum()

    def _lcu_combine(self, out: torch.Tensor) -> torch.Tensor:
        """``sum_w b_w v_w`` for real-layout vectors ``out [2 (re/im), dim, B, W]`` -> ``[2, dim, B]``
        (``out`` contiguous: otherwise the matmul loops over small matrices)."""
        lcu = self.lcu_weights()
        t = out @ torch.stack((lcu.real, lcu.imag), -1).to(out.dtype)  # [re/im of v, dim, B, re/im of b]
        return torch.stack((t[0, ..., 0] - t[1, ..., 1], t[0, ..., 1] + t[1, ..., 0]))

    def _qsvt_state(self, x: torch.Tensor) -> torch.Tensor:
        """Training path: every (sequence, position) has its own circuit (dropout on the angles).

        Gate coefficients are computed once; each power of ``M`` applies all ``B * W`` circuits
        to ``W`` copies of each sequence's current state (real layout of :class:`CircuitPlan`,
        state vectors as ``[2 (re/im), 2^n, B]``) and sums them with the LCU weights.
        """
        batch, window = x.shape
        plan, n, dim = self._plan(), self.n_qubits, 2**self.n_qubits
        angles = self.token_angles(x).reshape(batch * window, -1)
        coefficients = gate_coefficients(plan, angles.detach())  # shared by all powers

        if _use_native(angles, coefficients):  # one kernel call per power, and one per power backward
            lcu = self.lcu_weights()

            def apply_m(psi):
                out = _LCUPowerFunction.apply(psi.reshape(2 * dim, batch), angles, lcu, plan, coefficients)
                return out.view(2, dim, batch)
        else:
            def apply_m(psi):
                states = psi.unsqueeze(-1).expand(2, dim, batch, window).reshape(2, *[2] * n, batch * window)
                return self._lcu_combine(run_circuits(plan, angles, states, coefficients).view(2, dim, batch, window))

        psi = torch.zeros(2, dim, batch, dtype=angles.dtype, device=angles.device)
        psi[0, 0] = 1
        state = self._polynomial(psi, apply_m)
        return torch.complex(state[0].t(), state[1].t())

    def _refresh_eval_cache(self) -> None:
        """Empty the eval cache if a parameter its entries depend on (or the active layer count) changed.

        Called once per eval forward, before any :meth:`_eval_cached` lookup. The key holds each
        parameter's storage, version counter (bumped by optimiser steps, ``load_state_dict`` and
        any in-place op) and a cheap content fingerprint (which also catches writes through
        ``.data``, invisible to the version counter).
        """
        params = (self.embedding.weight, self.embedding_to_angles.weight, self.embedding_to_angles.bias,
                  self.quantum_feedforward_parameters, torch.view_as_real(self.lcu_coefficients),
                  self.qsvt_polynomial_coefficients)
        with torch.no_grad():
            fingerprint = torch.stack([*torch._foreach_norm(params), *(p.sum() for p in params)]).tolist()
        key = (self.active_layers, fingerprint, *((p.data_ptr(), p._version, p.device, p.dtype) for p in params))
        if self._eval_cache.get("key") != key:
            self._eval_cache = {"key": key}  # drops the old values first

    def _eval_cached(self, name: str, build):
        """``build()``, kept until :meth:`_refresh_eval_cache` finds a parameter changed."""
        if name not in self._eval_cache:
            self._eval_cache[name] = build()
        return self._eval_cache[name]

    def _vocab_table(self) -> torch.Tensor:
        """Per-vocabulary ``U_v^T`` as rows ``[V, 2 * 4^n]`` (real part, then imaginary part), cached."""
        def build():
            ids = torch.arange(self.vocabulary_size, device=self.embedding.weight.device)
            rows = []
            for chunk in ids.split(1024):  # bounded memory for large vocabularies
                images = basis_images(self._plan(), self.token_angles(chunk))  # [s, re/im, r, N]
                rows.append(images.permute(3, 1, 0, 2).reshape(len(chunk), -1))  # U^T[s, r] = U[r, s]
            return torch.cat(rows)

        return self._eval_cached("vocab_table", build)

    def _native_eval_tables(self) -> tuple:
        """The cached inputs of :func:`quixer.native.qsvt_eval`, the eval path of the fused CPU kernel:
        per-vocabulary gate coefficients (``[V, G]``) and first columns ``U_v |0>`` (real rows
        ``[V, 2 dim]``), the feed-forward unitary transposed (real part rows, then imaginary), the
        LCU weights (real and imaginary parts) and the polynomial divided by its L1 norm."""
        def build():
            plan, dim = self._plan(), 2**self.n_qubits
            ids = torch.arange(self.vocabulary_size, device=self.embedding.weight.device)
            vocab = gate_coefficients(plan, self.token_angles(ids))
            zero = torch.zeros(1, 2 * dim, self.vocabulary_size, dtype=vocab.cos.dtype)
            zero[:, 0] = 1
            first = apply_gates(plan, vocab, zero).view(2 * dim, -1).t().contiguous()
            unitary = self.feedforward_unitary().t()
            lcu, coeffs = self.lcu_weights(), self.qsvt_polynomial_coefficients
            real = first.dtype
            return (vocab, first, torch.cat((unitary.real, unitary.imag)).contiguous(),
                    (lcu.real.to(real).contiguous(), lcu.imag.to(real).contiguous()),
                    (coeffs / coeffs.abs().sum()).to(real).contiguous())

        return self._eval_cached("native_eval_tables", build)

    def _native_eval(self, x: torch.Tensor, measure: bool):
        """Eval path with the fused CPU kernel, one call (:func:`quixer.native.qsvt_eval`): per
        sequence, ``M |0>`` is the LCU sum of cached first columns ``U_v |0>`` and each further power
        applies the token circuits with cached per-vocabulary gate coefficients (cheaper on a CPU than
        summing ``B * W`` cached ``4^n`` unitaries, and the cache is small and quick to build).
        Returns the state (real rows ``[B, 2 dim]``) and, if ``measure``, the Pauli expectations of
        the normalised state after the feed-forward unitary and the postselection probabilities."""
        vocab, first, feedforward, lcu, poly = self._native_eval_tables()
        return native.qsvt_eval(x, vocab.cos, vocab.sin, first, self._plan().wiring, self.n_qubits, lcu, poly,
                                feedforward=feedforward if measure else None)

    def _qsvt_state_cached(self, x: torch.Tensor) -> torch.Tensor:
        """Eval path: ``M^T = sum_w b_w U_{x_w}^T`` from the cached table; powers are matvecs.

        One ``embedding_bag`` with two bags per sequence over the same rows, weighted by the real
        and by the imaginary parts of ``b`` (the second bag finds its rows in cache), gives the
        four real products that make up the complex sum.
        """
        table = self._vocab_table()
        batch, window, dim = x.shape[0], x.shape[1], 2**self.n_qubits
        lcu = self.lcu_weights()
        weights = torch.cat((lcu.real, lcu.imag)).to(table.dtype).repeat(batch)
        offsets = torch.arange(0, 2 * batch * window, window, device=x.device)
        sums = F.embedding_bag(x.repeat_interleave(2, 0).reshape(-1), table, offsets,
                               per_sample_weights=weights, mode="sum").view(batch, 2, 2, dim, dim)
        # sums[:, i, j] = sum_w (Re b, Im b)[i] * (Re U^T, Im U^T)[j]
        m_t = torch.complex(sums[:, 0, 0] - sums[:, 1, 1], sums[:, 0, 1] + sums[:, 1, 0])
        psi = torch.zeros(batch, 1, dim, dtype=m_t.dtype, device=m_t.device)
        psi[:, 0, 0] = 1
        return self._polynomial(psi, lambda p: p @ m_t).squeeze(1)

    def train(self, mode: bool = True) -> "Quixer":
        if mode:
            self._eval_cache = {}
        return super().train(mode)

    # ---- layerwise training ---------------------------------------------------------------

    def set_active_layers(self, k: int) -> None:
        """Simulate only ansatz layers ``< k``; later layers are held at zero angles (identity)."""
        if int(k) != k or not 0 < k <= self.n_ansatz_layers:
            raise ValueError(f"active layers must be in 1..{self.n_ansatz_layers}, got {k!r}")
        self.active_layers = int(k)

    def frozen_masks(self) -> dict[str, torch.Tensor]:
        """Parameter name -> bool mask of entries that belong to inactive layers (empty if none)."""
        if self.active_layers == self.n_ansatz_layers:
            return {}
        start = self.angles_per_layer * self.active_layers
        w = torch.zeros_like(self.embedding_to_angles.weight, dtype=torch.bool)
        w[start:] = True
        b = torch.zeros_like(self.embedding_to_angles.bias, dtype=torch.bool)
        b[start:] = True
        return {"embedding_to_angles.weight": w, "embedding_to_angles.bias": b}

    # ---- initialisation -------------------------------------------------------------------

    @torch.no_grad()
    def initialize(self, strategy: str = "small_gaussian", centroids: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> None:
        """Re-initialise every parameter.

        - ``small_gaussian``: angle weights ~ N(0, 0.01^2), zero bias, feed-forward angles
          ~ N(0, 0.01^2): every circuit starts near the identity (against barren plateaus).
          Embedding ~ N(0, 0.02^2); head Xavier with zero bias.
        - ``uniform``: as the official constructor: torch's default Linear init, Xavier-uniform
          embedding, coefficients and feed-forward angles ~ U[0, 1).
        - ``xavier``: as the official training script: Xavier-uniform Linears, zero biases,
          embedding ~ N(0, 0.02^2); coefficients ~ U[0, 1).
        - ``centroid``: as ``small_gaussian``, but the embedding rows are the quantiser's
          cluster centres ``[V, D]``, centred, mapped to ``E`` by a seeded orthonormal projection
          when ``D != E``, and scaled to an entry RMS of 0.02.

        LCU coefficients (complex) and QSVT coefficients start ~ U[0, 1) in every strategy,
        as in the official code. ``generator`` (a CPU generator) makes it reproducible.
        """
        if strategy not in self.INIT_STRATEGIES:
            raise ValueError(f"unknown init strategy {strategy!r}; choose one of {', '.join(self.INIT_STRATEGIES)}")
        if strategy == "centroid" and centroids is None:
            raise ValueError("init strategy 'centroid' needs centroids (the quantiser's cluster centres [V, D])")

        def normal(p, std):
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * std)

        def uniform(p, low, high):
            p.copy_(torch.rand(p.shape, generator=generator, dtype=torch.float64) * (high - low) + low)

        def xavier(p):
            bound = math.sqrt(6.0 / (p.shape[0] + p.shape[1]))
            uniform(p, -bound, bound)

        linears = [self.embedding_to_angles, self.output_feedforward[0], self.output_feedforward[2]]
        if strategy == "uniform":
            for lin in linears:  # torch's default: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in))
                bound = 1.0 / math.sqrt(lin.in_features)
                uniform(lin.weight, -bound, bound)
                uniform(lin.bias, -bound, bound)
            xavier(self.embedding.weight)
            uniform(self.quantum_feedforward_parameters, 0.0, 1.0)
        else:
            for lin in linears:
                xavier(lin.weight)
                lin.bias.zero_()
            normal(self.embedding.weight, 0.02)
            if strategy == "xavier":
                uniform(self.quantum_feedforward_parameters, 0.0, 1.0)
            else:
                normal(self.embedding_to_angles.weight, 0.01)
                normal(self.quantum_feedforward_parameters, 0.01)
        if strategy == "centroid":
            self.embedding.weight.copy_(self._project_centroids(centroids, generator))
        uniform(self.qsvt_polynomial_coefficients, 0.0, 1.0)
        lcu = torch.complex(torch.rand(self.n_tokens, generator=generator, dtype=torch.float64),
                            torch.rand(self.n_tokens, generator=generator, dtype=torch.float64))
        self.lcu_coefficients.copy_(lcu)
        self._eval_cache = {}

    def _project_centroids(self, centroids: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        c = torch.as_tensor(centroids).detach().to("cpu", torch.float64)
        if c.dim() != 2 or c.shape[0] != self.vocabulary_size:
            raise ValueError(f"centroids must have shape [vocabulary_size={self.vocabulary_size}, D], "
                             f"got {tuple(c.shape)}")
        if not torch.isfinite(c).all():
            raise ValueError("centroids contain NaN or infinite values")
        c = c - c.mean(0)
        d, e = c.shape[1], self.embedding_dimension
        if d != e:
            gen = generator if generator is not None else torch.Generator().manual_seed(0)
            q, _ = torch.linalg.qr(torch.randn(max(d, e), min(d, e), generator=gen, dtype=torch.float64))
            c = c @ (q if d > e else q.T)  # orthonormal columns (d > e) or an isometry (d < e)
        rms = c.pow(2).mean().sqrt()
        return c * (0.02 / rms) if rms > 0 else c

    # ---- official checkpoints ---------------------------------------------------------------

    @classmethod
    def from_official_state_dict(cls, state_dict: dict, n_qubits: int, n_tokens: int, qsvt_polynomial_degree: int,
                                 n_ansatz_layers: int, vocabulary_size: int, embedding_dimension: int,
                                 dropout: float = 0.1) -> "Quixer":
        """Build a model from a ``state_dict()`` of the official ``quixer.quixer_model.Quixer``.

        Names and shapes are checked against :data:`OFFICIAL_PARAMETER_NAMES` (legacy names of
        the first official version are accepted); torchquantum device buffers are ignored.
        """
        sizes = (n_qubits, n_tokens, qsvt_polynomial_degree, n_ansatz_layers, vocabulary_size, embedding_dimension)
        found = {}
        unexpected = []
        for name, value in state_dict.items():
            if name.startswith(_IGNORED_OFFICIAL_PREFIXES):
                continue
            for old, new in _LEGACY_PREFIXES.items():
                if name.startswith(old):
                    name = new + name[len(old):]
                    break
            if name in OFFICIAL_PARAMETER_NAMES:
                found[name] = torch.as_tensor(value)
            else:
                unexpected.append(name)
        missing = sorted(set(OFFICIAL_PARAMETER_NAMES) - set(found))
        if missing or unexpected:
            raise ValueError(f"not an official Quixer state dict: missing {missing}, unexpected {sorted(unexpected)}")
        for name, shape_of in OFFICIAL_PARAMETER_NAMES.items():
            if tuple(found[name].shape) != shape_of(*sizes):
                raise ValueError(f"{name}: shape {tuple(found[name].shape)} does not match the given sizes "
                                 f"(expected {shape_of(*sizes)})")
        model = cls(n_qubits, n_tokens, qsvt_polynomial_degree, n_ansatz_layers, vocabulary_size,
                    embedding_dimension, dropout=dropout, dtype=torch.complex64)
        ours = dict(found)
        ours["quantum_feedforward_parameters"] = found["quantum_feedforward_parameters"][: 4 * n_qubits]
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in ours.items()})
        return model

    def to_official_state_dict(self) -> dict[str, torch.Tensor]:
        """Our parameters under the official names and shapes (the unused feed-forward tail is 0)."""
        sd = {k: v.detach().clone() for k, v in self.state_dict().items()}
        ff = torch.zeros(self.angles_per_layer * self.n_ansatz_layers, dtype=sd["quantum_feedforward_parameters"].dtype)
        ff[: self.angles_per_layer] = sd["quantum_feedforward_parameters"]
        sd["quantum_feedforward_parameters"] = ff
        return sd
