"""Quixer's circuits as data and maths: gates, plans, the torch butterfly simulation, the autograd
Functions every simulator shares, the QSVT polynomial and the Pauli measurement.

Nothing here chooses where or how circuits run: :mod:`quixer.sim.simulators` does (torch ops, the
fused CPU kernel of :mod:`quixer.sim.native`, the Triton kernels of :mod:`quixer.sim.triton_kernels`).
All of them use the real state layout of :class:`CircuitPlan`, so the autograd Functions below
only need a simulator's four primitives (``circuits``, ``circuits_adjoint``, ``lcu_power``,
``lcu_power_adjoint``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

# --------------------------------------------------------------------------------------------
# Gates and plans
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
        # for the fused kernels: gate kind (0 RY, 1 CRX) and wires (RY: its qubit twice), int32
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

    def wiring_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:attr:`wiring` on ``device`` (copied once)."""
        key = ("wiring", str(device))
        if key not in self._moved:
            self._moved[key] = tuple(w.to(device) for w in self.wiring)
        return self._moved[key]


class GateCoefficients:
    """Per-gate half-angle cosines and sines of ``N`` circuit instances, ``[N, G]`` each.

    Computed once per forward from the (detached) angles and reused for every power. The fused
    kernels read ``cos``/``sin`` directly; the torch path uses the butterfly form of :meth:`butterflies`.
    """

    def __init__(self, plan: CircuitPlan, cos: torch.Tensor, sin: torch.Tensor):
        self.plan, self.cos, self.sin = plan, cos.contiguous(), sin.contiguous()
        self._butterflies: list | None = None

    @classmethod
    def from_angles(cls, plan: CircuitPlan, angles: torch.Tensor) -> "GateCoefficients":
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


# --------------------------------------------------------------------------------------------
# The torch simulation: butterflies over whole rows, forward and adjoint
# --------------------------------------------------------------------------------------------

def apply_butterflies(plan: CircuitPlan, coefficients: GateCoefficients, states: torch.Tensor) -> torch.Tensor:
    """Apply circuit instance ``i`` to ``states[..., i]`` with torch ops; returns a new tensor.

    In place on one copy with one scratch buffer: per gate, gather the partner rows into the
    scratch buffer, then ``X = A * X + B * scratch``.
    """
    x = states.clone(memory_format=torch.contiguous_format)
    rows_view = x.view(-1, plan.rows, x.shape[-1])
    scratch = torch.empty_like(x)
    scratch_rows = scratch.view_as(rows_view)
    partners = plan.tables(x.device, x.dtype)[0]
    for (a, b), partner in zip(coefficients.butterflies(), partners):
        torch.index_select(rows_view, 1, partner, out=scratch_rows)
        x.mul_(a).addcmul_(b, scratch)
    return x


def adjoint_butterflies(plan: CircuitPlan, coefficients: GateCoefficients, out: torch.Tensor, grad: torch.Tensor,
                        input_grad: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Backward of :func:`apply_butterflies` from its output ``out`` and ``grad`` = dL/d(out): returns
    dL/d(input) (None unless ``input_grad``) and dL/d(theta) per instance and gate ``[N, G]``.

    Walking the gates backwards with ``g = dL/d(gate output)`` and the gate output ``x``:

    - each gate is a rotation ``exp(-i theta P / 2)``, so ``dx/dtheta = 1/2 (-i P) x``, which
      in the real layout is ``1/2 K * x[partner]`` (``K``: a static +-1/0 row pattern), hence
      ``dL/dtheta = 1/2 K . (g * x[partner])``: one gather, one product, one matvec;
    - the gate's real form is orthogonal: the input is recovered exactly as ``G^T x`` (so no
      intermediate state is stored: memory does not grow with the number of gates) and the
      gradient moves on as ``G^T g``.
    """
    n_inst = out.shape[-1]
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
        if k == 0 and not input_grad:
            break
        both.mul_(a).addcmul_(b, scratch, value=-1)  # state <- input of gate k; grad <- G^T grad
    return (both[1] if input_grad else None), per_gate.squeeze(1).t() * 0.5


def lcu_sum(outputs: torch.Tensor, lcu: torch.Tensor) -> torch.Tensor:
    """``sum_w b_w v_w`` for real-layout vectors ``outputs [R, B, W]`` -> ``[R, B]`` (``b`` complex ``[W]``)."""
    half = outputs.shape[0] // 2
    t = outputs @ torch.stack((lcu.real, lcu.imag), -1).to(outputs.dtype)  # [R (re/im of v), B, re/im of b]
    return torch.cat((t[:half, :, 0] - t[half:, :, 1], t[:half, :, 1] + t[half:, :, 0]))


def lcu_sum_adjoint(outputs: torch.Tensor, grad: torch.Tensor, lcu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of :func:`lcu_sum` for ``grad = dL/d(sum) [R, B]``: ``dL/dv_w = conj(b_w) grad``
    (``[R, B, W]``) and dL/db as real and imaginary parts ``[W, 2]`` (``<v_w, grad>``, real-linear)."""
    half = grad.shape[0] // 2
    g_re, g_im = grad[:half, :, None], grad[half:, :, None]
    b_re, b_im = lcu.real.to(grad.dtype), lcu.imag.to(grad.dtype)
    d_outputs = torch.cat((b_re * g_re + b_im * g_im, b_re * g_im - b_im * g_re))
    v_re, v_im = outputs[:half], outputs[half:]
    d_re = (g_re * v_re + g_im * v_im).sum((0, 1))
    d_im = (g_im * v_re - g_re * v_im).sum((0, 1))
    return d_outputs, torch.stack((d_re, d_im), -1)


# --------------------------------------------------------------------------------------------
# Autograd: one Function for circuits and one for LCU powers, over any simulator's primitives
# --------------------------------------------------------------------------------------------

class CircuitFunction(torch.autograd.Function):
    """``simulator.circuits`` with the simulator's adjoint backward (no per-gate autograd graph).

    ``states [..., R, N]``, ``angles [N, P]`` (their gradient; the circuits read ``coefficients``,
    computed from them once).
    """

    @staticmethod
    def forward(ctx, states, angles, plan, coefficients, simulator):
        out = simulator.circuits(plan, coefficients, states)
        ctx.plan, ctx.coefficients, ctx.simulator, ctx.n_params = plan, coefficients, simulator, angles.shape[1]
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        grad_in, per_gate = ctx.simulator.circuits_adjoint(ctx.plan, ctx.coefficients, out,
                                                           grad.reshape(out.shape).contiguous(), ctx.needs_input_grad[0])
        return grad_in, ctx.plan.angle_gradients(per_gate, ctx.n_params), None, None, None


class LCUPowerFunction(torch.autograd.Function):
    """One LCU power ``sum_w b_w U_{b,w} psi_b`` for ``B`` sequences of ``W`` tokens, with the
    simulator's backward.

    ``psi``: real ``[R, B]``; ``angles``: ``[B * W, P]`` (their gradient); ``lcu``: the complex
    LCU weights ``[W]``. The circuit outputs ``[R, B * W]`` are kept for the backward.
    """

    @staticmethod
    def forward(ctx, psi, angles, lcu, plan, coefficients, simulator):
        out, outputs = simulator.lcu_power(plan, coefficients, psi.contiguous(), lcu.detach())
        ctx.plan, ctx.coefficients, ctx.simulator, ctx.n_params = plan, coefficients, simulator, angles.shape[1]
        ctx.save_for_backward(outputs, lcu)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        outputs, lcu = ctx.saved_tensors
        dpsi, dlcu, per_gate = ctx.simulator.lcu_power_adjoint(ctx.plan, ctx.coefficients, outputs, grad.contiguous(),
                                                               lcu.detach())
        grad_angles = ctx.plan.angle_gradients(per_gate, ctx.n_params)
        # torch's gradient for a complex input of a real loss: dL/d(re) + i dL/d(im)
        return dpsi, grad_angles, torch.complex(dlcu[:, 0], dlcu[:, 1]).to(lcu.dtype), None, None, None


# --------------------------------------------------------------------------------------------
# States, the QSVT polynomial and the measurement
# --------------------------------------------------------------------------------------------

def zero_states(n_qubits: int, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``|0>`` for ``batch`` sequences as real rows ``[R, B]`` (real parts, then imaginary parts)."""
    psi = torch.zeros(2 ** (n_qubits + 1), batch, dtype=dtype, device=device)
    psi[0] = 1
    return psi


def to_complex(rows: torch.Tensor) -> torch.Tensor:
    """Real rows ``[R, B]`` -> complex states ``[B, R / 2]``."""
    half = rows.shape[0] // 2
    return torch.complex(rows[:half].t(), rows[half:].t())


def polynomial(coefficients: torch.Tensor, psi: torch.Tensor, apply_m: Callable[[torch.Tensor], torch.Tensor]
               ) -> torch.Tensor:
    """``sum_k c_k M^k psi / ||c||_1`` given ``apply_m(psi) -> M psi`` (any layout that ``apply_m`` reads)."""
    acc = coefficients[0] * psi
    for k in range(1, coefficients.shape[0]):
        psi = apply_m(psi)
        acc = acc + coefficients[k] * psi
    return acc / coefficients.abs().sum()


def postselect(state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Complex ``[B, dim]`` -> the normalised states and the postselection probabilities ``<psi|psi>``."""
    postselection = (state.real**2 + state.imag**2).sum(-1)
    return state / postselection.sqrt().clamp_min(1e-12).unsqueeze(-1), postselection


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
