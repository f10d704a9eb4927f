"""How a Quixer model's circuits are simulated: one :class:`Simulator` per kind of device.

A simulator implements the circuit primitives on the real state layout of
:class:`quixer.sim.circuits.CircuitPlan` (states ``[..., R, N]``, ``R = 2^(n+1)`` rows, instances
last) and the eval-mode QSVT state with its per-vocabulary cache; everything else (autograd, the
polynomial, normalisation, measurement) is shared. Subclasses:

- :class:`TorchSimulator`: torch ops ("butterflies" over whole rows); runs anywhere.
- :class:`NativeSimulator`: the fused C++/OpenMP kernel of :mod:`quixer.sim.native` (CPU).
- :class:`TritonSimulator`: the fused Triton kernels of :mod:`quixer.sim.triton_kernels` (CUDA; CPU
  only under ``TRITON_INTERPRET=1``, for tests).

:func:`select` picks the fastest one that runs on a device: Triton on CUDA, the native kernel on
a CPU, torch otherwise. ``QUIXER_NATIVE=0`` / :func:`quixer.sim.native.set_enabled` and
``QUIXER_TRITON=0`` switch the kernels off; :meth:`quixer.model.Quixer.use_simulator` pins one.

The Triton kernels compile on their first launch, on a GPU and a Triton release that CI never
sees, so their calls are guarded (:class:`KernelGuard`): where Triton was chosen automatically, a
configuration whose kernel fails to compile or launch is simulated with torch ops after one
warning; where it was pinned (``use_simulator("triton")`` or ``QUIXER_TRITON=1``) the error is raised.
"""
from __future__ import annotations

import contextlib
import logging
import os
from abc import ABC, abstractmethod
from typing import Callable, ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from . import native
from .circuits import (
    CircuitFunction,
    CircuitPlan,
    GateCoefficients,
    LCUPowerFunction,
    adjoint_butterflies,
    apply_butterflies,
    gate_coefficients,
    lcu_sum,
    lcu_sum_adjoint,
    pauli_expectations,
    polynomial,
    postselect,
    to_complex,
)

log = logging.getLogger(__name__)


class EvalCache:
    """Per-vocabulary eval data of one model, kept until a parameter it depends on changes.

    :meth:`refresh` runs once per eval forward, before any :meth:`get`. Its key holds the active
    layer count and each circuit parameter's storage, version counter (bumped by optimiser steps,
    ``load_state_dict`` and any in-place op) and a cheap content fingerprint (which also catches
    writes through ``.data``, invisible to the version counter).
    """

    def __init__(self):
        self._key, self._values = None, {}
        self.per_call = False

    def clear(self) -> None:
        self._key, self._values = None, {}

    @contextlib.contextmanager
    def rebuilt_per_call(self):
        """Within: every eval forward builds its values afresh and :meth:`refresh` reads nothing back
        from the device. Why: a CUDA graph captured here holds the builds, so each replay derives the
        tables from the parameters' current values (never stale), and the capture has no host sync
        (the fingerprint's read-back would be one)."""
        saved, self.per_call = self.per_call, True
        self.clear()
        try:
            yield
        finally:
            self.per_call = saved
            self.clear()

    def refresh(self, model) -> None:
        if self.per_call:
            self._values = {}
            return
        params = [torch.view_as_real(p) if p.is_complex() else p for p in model.circuit_parameters()]
        with torch.no_grad():
            fingerprint = torch.stack([*torch._foreach_norm(params), *(p.sum() for p in params)]).tolist()
        key = (model.active_layers, fingerprint, *((p.data_ptr(), p._version, p.device, p.dtype) for p in params))
        if key != self._key:
            self._key, self._values = key, {}  # drops the old values first

    def get(self, name: str, build: Callable[[], object]):
        """``build()``, kept until :meth:`refresh` finds a parameter changed."""
        if name not in self._values:
            self._values[name] = build()
        return self._values[name]


class Simulator(ABC):
    """Simulates the circuits of a :class:`quixer.model.Quixer`; one instance per model (it holds
    the model's eval cache). Subclasses implement :meth:`circuits`, :meth:`circuits_adjoint` and
    :meth:`_eval_state`; fused kernels also replace :meth:`lcu_power` and :meth:`lcu_power_adjoint`.
    """

    name: ClassVar[str]

    def __init__(self):
        self.cache = EvalCache()

    @classmethod
    @abstractmethod
    def runs_on(cls, device: torch.device) -> bool:
        """Whether this simulator can run on ``device`` in this process."""

    # ---- primitives (no autograd) ------------------------------------------------------

    @abstractmethod
    def circuits(self, plan: CircuitPlan, coefficients: GateCoefficients, states: torch.Tensor) -> torch.Tensor:
        """Circuit instance ``i`` applied to ``states[..., i]`` (``[..., R, N]``, any leading shape)."""

    @abstractmethod
    def circuits_adjoint(self, plan: CircuitPlan, coefficients: GateCoefficients, outputs: torch.Tensor,
                         grad: torch.Tensor, input_grad: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Backward of :meth:`circuits` from its ``outputs`` and ``grad``: dL/d(input) (None unless
        ``input_grad``) and dL/dtheta per instance and gate ``[N, G]``."""

    def _vocab_coefficients(self, model) -> GateCoefficients:
        """Gate coefficients of every vocabulary token's circuit ``[V, G]``, cached for evaluation."""
        return self.cache.get("vocab_coefficients", lambda: gate_coefficients(
            model.token_plan(), model.token_angles(torch.arange(model.vocabulary_size, device=model.embedding.weight.device))))

    def lcu_power(self, plan: CircuitPlan, coefficients: GateCoefficients, psi: torch.Tensor, lcu: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """``sum_w b_w U_{b,w} psi_b`` for ``psi [R, B]``, circuits ``b * W + w`` and complex ``lcu [W]``;
        returns ``[R, B]`` and the circuit outputs ``[R, B * W]``."""
        rows, batch = psi.shape
        states = psi.unsqueeze(-1).expand(rows, batch, lcu.shape[0]).reshape(1, rows, -1)
        outputs = self.circuits(plan, coefficients, states).view(rows, -1)
        return lcu_sum(outputs.view(rows, batch, -1), lcu), outputs

    def lcu_power_adjoint(self, plan: CircuitPlan, coefficients: GateCoefficients, outputs: torch.Tensor,
                          grad: torch.Tensor, lcu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Backward of :meth:`lcu_power` for ``grad [R, B]``: dL/dpsi ``[R, B]``, dL/d(lcu) as real
        and imaginary parts ``[W, 2]``, dL/dtheta per instance and gate ``[B * W, G]``."""
        rows, batch = grad.shape
        d_outputs, d_lcu = lcu_sum_adjoint(outputs.view(rows, batch, -1), grad, lcu)
        grad_in, per_gate = self.circuits_adjoint(plan, coefficients, outputs.view(1, rows, -1),
                                                  d_outputs.reshape(1, rows, -1), True)
        return grad_in.view(rows, batch, -1).sum(-1), d_lcu, per_gate

    # ---- differentiable circuits -----------------------------------------------------------

    def run_circuits(self, plan: CircuitPlan, angles: torch.Tensor, states: torch.Tensor,
                     coefficients: GateCoefficients | None = None) -> torch.Tensor:
        """The circuits with angles ``[N, P]`` applied to ``states [..., 2, 2, .., 2, N]`` (differentiable).

        ``coefficients`` (from :func:`gate_coefficients` on the detached angles) may be passed in
        to reuse them across several calls with the same angles.
        """
        if coefficients is None:
            coefficients = gate_coefficients(plan, angles.detach())
        if torch.is_grad_enabled() and (angles.requires_grad or states.requires_grad):
            return CircuitFunction.apply(states, angles, plan, coefficients, self)
        return self.circuits(plan, coefficients, states)

    def apply_circuit(self, plan: CircuitPlan, angles: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """One circuit (angles ``[P]``, shared by the batch: their gradients sum over it) applied to
        each complex state of ``state [B, 2^n]`` (differentiable); returns ``[B, 2^n]``."""
        batch, n = state.shape[0], plan.n_qubits
        rows = torch.stack((state.real.t(), state.imag.t())).reshape(2, *[2] * n, batch)
        out = self.run_circuits(plan, angles.expand(batch, -1), rows).reshape(2, 2**n, batch)
        return torch.complex(out[0].t(), out[1].t())

    def basis_images(self, plan: CircuitPlan, angles: torch.Tensor) -> torch.Tensor:
        """Images of the basis states: real ``[2^n (s), 2 (re/im), 2^n (r), N]`` holding ``U_i[r, s]``."""
        dim, n_inst = 2**plan.n_qubits, angles.shape[0]
        eye = torch.eye(dim, dtype=angles.dtype, device=angles.device)
        states = torch.stack((eye, torch.zeros_like(eye)), 1)[..., None].expand(dim, 2, dim, n_inst)
        states = states.reshape(dim, 2, *[2] * plan.n_qubits, n_inst)
        return self.run_circuits(plan, angles, states).reshape(dim, 2, dim, n_inst)

    def unitaries(self, plan: CircuitPlan, angles: torch.Tensor) -> torch.Tensor:
        """Full unitaries ``[N, 2^n, 2^n]`` (complex) of the circuits with angles ``[N, P]``."""
        images = self.basis_images(plan, angles)
        return torch.complex(images[:, 0], images[:, 1]).permute(2, 1, 0)

    def lcu_operator(self, plan: CircuitPlan, angles: torch.Tensor, lcu: torch.Tensor
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``apply_m(psi [R, B]) -> M psi`` with ``M_b = sum_w b_w U_{b,w}``, the circuits of ``B``
        sequences of ``W`` tokens with angles ``[B * W, P]``; differentiable in all three."""
        coefficients = gate_coefficients(plan, angles.detach())  # shared by all powers

        def apply_m(psi: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled() and (psi.requires_grad or angles.requires_grad or lcu.requires_grad):
                return LCUPowerFunction.apply(psi, angles, lcu, plan, coefficients, self)
            return self.lcu_power(plan, coefficients, psi.contiguous(), lcu.detach())[0]

        return apply_m

    # ---- eval (no autograd, cached per-vocabulary data) ----------------------------------------

    @abstractmethod
    def _eval_state(self, model, x: torch.Tensor) -> torch.Tensor:
        """The unnormalised QSVT state ``[B, 2^n]`` (complex) from cached data; cache refreshed."""

    def eval_state(self, model, x: torch.Tensor) -> torch.Tensor:
        """Eval path of :meth:`quixer.model.Quixer.qsvt_state` (eval mode, no autograd)."""
        self.cache.refresh(model)
        return self._eval_state(model, x)

    def eval_features(self, model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval path up to the measurement: Pauli expectations ``[B, 3n]`` and postselection ``[B]``."""
        self.cache.refresh(model)
        state, postselection = postselect(self._eval_state(model, x))
        feedforward = self.cache.get("feedforward", model.feedforward_unitary)
        return pauli_expectations(state @ feedforward.mT, model.n_qubits), postselection


class TorchSimulator(Simulator):
    """Torch ops: every gate is three vectorised ops over all instances (:func:`apply_butterflies`).
    In eval, ``M`` is one weighted ``embedding_bag`` over cached per-vocabulary unitaries."""

    name = "torch"

    @classmethod
    def runs_on(cls, device: torch.device) -> bool:
        return True

    @staticmethod
    def _qubit_axes(plan: CircuitPlan, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, 2, *[2] * plan.n_qubits, t.shape[-1])

    def circuits(self, plan, coefficients, states):
        return apply_butterflies(plan, coefficients, self._qubit_axes(plan, states)).view(states.shape)

    def circuits_adjoint(self, plan, coefficients, outputs, grad, input_grad):
        grad_in, per_gate = adjoint_butterflies(plan, coefficients, self._qubit_axes(plan, outputs),
                                                self._qubit_axes(plan, grad), input_grad)
        return (grad_in.view(outputs.shape) if grad_in is not None else None), per_gate

    def _vocab_table(self, model) -> torch.Tensor:
        """Per-vocabulary ``U_v^T`` as rows ``[V, 2 * 4^n]`` (real part, then imaginary part), cached."""
        def build():
            ids = torch.arange(model.vocabulary_size, device=model.embedding.weight.device)
            rows = []
            for chunk in ids.split(1024):  # bounded memory for large vocabularies
                images = self.basis_images(model.token_plan(), model.token_angles(chunk))  # [s, re/im, r, N]
                rows.append(images.permute(3, 1, 0, 2).reshape(len(chunk), -1))  # U^T[s, r] = U[r, s]
            return torch.cat(rows)

        return self.cache.get("vocab_table", build)

    def _eval_state(self, model, x):
        """``M^T = sum_w b_w U_{x_w}^T`` from the cached table; powers are matvecs.

        One ``embedding_bag`` with two bags per sequence over the same rows, weighted by the real
        and by the imaginary parts of ``b`` (the second bag finds its rows in cache), gives the
        four real products that make up the complex sum.
        """
        table = self._vocab_table(model)
        batch, window, dim = x.shape[0], x.shape[1], 2**model.n_qubits
        lcu = model.lcu_weights()
        weights = torch.cat((lcu.real, lcu.imag)).to(table.dtype).repeat(batch)
        offsets = torch.arange(0, 2 * batch * window, window, device=x.device)
        sums = F.embedding_bag(x.repeat_interleave(2, 0).reshape(-1), table, offsets,
                               per_sample_weights=weights, mode="sum").view(batch, 2, 2, dim, dim)
        # sums[:, i, j] = sum_w (Re b, Im b)[i] * (Re U^T, Im U^T)[j]
        m_t = torch.complex(sums[:, 0, 0] - sums[:, 1, 1], sums[:, 0, 1] + sums[:, 1, 0])
        psi = torch.zeros(batch, 1, dim, dtype=m_t.dtype, device=m_t.device)
        psi[:, 0, 0] = 1
        return polynomial(model.qsvt_polynomial_coefficients, psi, lambda p: p @ m_t).squeeze(1)


class _FusedKernels(Simulator):
    """Primitives from a kernel module with the functions of :mod:`quixer.sim.native` (``forward``,
    ``adjoint``, ``lcu_power``, ``lcu_power_adjoint``), each circuit's gates fused in one pass."""

    @staticmethod
    @abstractmethod
    def kernels():
        """The kernel module."""

    def circuits(self, plan, coefficients, states):
        rows = states.reshape(-1, plan.rows, states.shape[-1]).contiguous()
        out = self.kernels().forward(rows, coefficients.cos, coefficients.sin, plan.wiring_on(states.device),
                                     plan.n_qubits)
        return out.view(states.shape)

    def circuits_adjoint(self, plan, coefficients, outputs, grad, input_grad):
        rows = outputs.reshape(-1, plan.rows, outputs.shape[-1]).contiguous()
        grad_in, per_gate = self.kernels().adjoint(rows, grad.reshape(rows.shape).contiguous(), coefficients.cos,
                                                   coefficients.sin, plan.wiring_on(outputs.device), plan.n_qubits,
                                                   input_grad)
        return (grad_in.view(outputs.shape) if grad_in is not None else None), per_gate

    def lcu_power(self, plan, coefficients, psi, lcu):
        return self.kernels().lcu_power(psi, coefficients.cos, coefficients.sin, plan.wiring_on(psi.device),
                                        plan.n_qubits, lcu)

    def lcu_power_adjoint(self, plan, coefficients, outputs, grad, lcu):
        return self.kernels().lcu_power_adjoint(outputs, grad, coefficients.cos, coefficients.sin,
                                                plan.wiring_on(grad.device), plan.n_qubits, lcu)


class NativeSimulator(_FusedKernels):
    """The fused C++/OpenMP CPU kernel: all gates of a circuit per tile of instances in L1 cache, one
    call per LCU power and per backward, and the whole eval forward up to the measurement in one call."""

    name = "native"

    @staticmethod
    def kernels():
        return native

    @classmethod
    def runs_on(cls, device: torch.device) -> bool:
        return device.type == "cpu" and native.available()

    def _eval_tables(self, model) -> tuple:
        """The cached inputs of :func:`quixer.sim.native.qsvt_eval`: per-vocabulary gate coefficients
        (``[V, G]``) and first columns ``U_v |0>`` (real rows ``[V, 2 dim]``), the feed-forward
        unitary transposed (real part rows, then imaginary), the LCU weights (real and imaginary
        parts) and the polynomial divided by its L1 norm."""
        def build():
            plan, dim = model.token_plan(), 2**model.n_qubits
            vocab = self._vocab_coefficients(model)
            zero = torch.zeros(1, 2 * dim, model.vocabulary_size, dtype=vocab.cos.dtype)
            zero[:, 0] = 1
            first = self.circuits(plan, vocab, zero).view(2 * dim, -1).t().contiguous()
            unitary = model.feedforward_unitary().t()
            lcu, coeffs = model.lcu_weights(), model.qsvt_polynomial_coefficients
            real = first.dtype
            return (vocab, first, torch.cat((unitary.real, unitary.imag)).contiguous(),
                    (lcu.real.to(real).contiguous(), lcu.imag.to(real).contiguous()),
                    (coeffs / coeffs.abs().sum()).to(real).contiguous())

        return self.cache.get("native_eval_tables", build)

    def _qsvt_eval(self, model, x: torch.Tensor, measure: bool) -> tuple:
        """One :func:`quixer.sim.native.qsvt_eval` call: per sequence, ``M |0>`` is the LCU sum of cached
        first columns ``U_v |0>`` and each further power applies the token circuits with cached
        per-vocabulary gate coefficients (cheaper on a CPU than summing ``B * W`` cached ``4^n``
        unitaries, and the cache is small and quick to build)."""
        vocab, first, feedforward, lcu, poly = self._eval_tables(model)
        return native.qsvt_eval(x, vocab.cos, vocab.sin, first, model.token_plan().wiring, model.n_qubits, lcu, poly,
                                feedforward=feedforward if measure else None)

    def _eval_state(self, model, x):
        return to_complex(self._qsvt_eval(model, x, measure=False)[0].t())

    def eval_features(self, model, x):
        self.cache.refresh(model)
        _, features, postselection = self._qsvt_eval(model, x, measure=True)
        return features, postselection


_TRITON: dict = {}


def _triton_setting() -> str:
    """``QUIXER_TRITON``: "off" (0/false/no/off), "required" (1/true/yes/on) or "auto" (unset, anything else)."""
    value = os.environ.get("QUIXER_TRITON", "auto").strip().lower()
    if value in ("0", "false", "no", "off"):
        return "off"
    return "required" if value in ("1", "true", "yes", "on") else "auto"


def triton_kernels():
    """:mod:`quixer.sim.triton_kernels`, or None where ``QUIXER_TRITON=0`` or it cannot be imported
    (logged once; with ``QUIXER_TRITON=1`` the import error is raised instead)."""
    setting = _triton_setting()
    if setting == "off":
        return None
    if "module" not in _TRITON:
        try:
            from . import triton_kernels as module
        except Exception as exc:  # any failure of an optional GPU dependency: no kernels, unless required
            if setting == "required":
                raise
            module = None
            log.warning("Triton kernels unavailable, CUDA runs use the torch simulation: %s", exc)
        _TRITON["module"] = module
    return _TRITON["module"]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda" and not torch.cuda.is_current_stream_capturing():
        torch.cuda.synchronize(device)


def _describe(exc: BaseException) -> str:
    """The error in one line: Triton's compile errors carry source excerpts, and one raised in a
    called kernel function wraps the real error without a message of its own."""
    while getattr(exc, "error_message", "") is None and exc.__cause__ is not None:
        exc = exc.__cause__
    text = getattr(exc, "error_message", None) or str(exc)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:300]}"


class KernelGuard:
    """Which Triton kernel configurations have run once, and which failed.

    Why: a Triton kernel is compiled at its first launch per configuration (qubits, tile, dtype,
    GPU, Triton release), so a compile or launch error surfaces in the middle of a training step or
    a device measurement. The first call of each configuration (the key: primitive, device, dtype,
    shapes) is the test launch: it is followed by a device synchronisation, so an asynchronous
    launch error is reported there. A failed configuration is remembered for the process (it fails
    for every model), and callers that may fall back compute it, then and later, with the torch
    simulation after one warning per device. If the device itself is unusable afterwards (a sticky
    CUDA fault), no fallback can help, and the error says so.
    """

    def __init__(self):
        self.checked: set[tuple] = set()
        self.failed: dict[tuple, str] = {}
        self._warned: set[str] = set()

    def clear(self) -> None:
        self.checked.clear()
        self.failed.clear()
        self._warned.clear()

    def run(self, key: tuple, device: torch.device, kernel: Callable[[], object], fallback: Callable[[], object],
            may_fall_back: bool):
        """``kernel()``, checked on the first call per ``key``; on failure ``fallback()`` where allowed."""
        if may_fall_back and key in self.failed:
            return fallback()
        try:
            result = kernel()
            if key not in self.checked:
                _synchronize(device)
                self.checked.add(key)
            return result
        except Exception as exc:
            if not may_fall_back:
                raise
            self._record(key, device, exc)
        return fallback()

    def _record(self, key: tuple, device: torch.device, exc: Exception) -> None:
        message = _describe(exc)
        self.failed[key] = message
        try:
            _synchronize(device)
        except Exception as fault:
            raise RuntimeError(f"{device} is unusable after a Triton kernel failed ({message}); nothing in this "
                               "process can use it any more: rerun with QUIXER_TRITON=0") from fault
        where = str(device)
        report = log.info if where in self._warned else log.warning
        self._warned.add(where)
        report("Triton kernel %s failed on %s (%s, %s qubits, shape %s): %s; the torch simulation computes "
               "this configuration (pin the simulator 'triton' or set QUIXER_TRITON=1 to get the error, "
               "QUIXER_TRITON=0 to skip the kernels)", key[0], where, key[2], key[5], list(key[3]), message)

    def failures(self) -> list[str]:
        """One line per failed configuration: primitive, device, dtype, shape and the error."""
        return [f"{k[0]} on {k[1]} {k[2]} {list(k[3])}: {error}" for k, error in self.failed.items()]


KERNEL_GUARD = KernelGuard()


class EvalTables(NamedTuple):
    """Per-vocabulary eval inputs of :func:`quixer.sim.triton_kernels.qsvt_eval`: the token plan, the gate
    coefficients ``[V, G, 2]``, the first columns ``U_v |0>`` as real rows ``[V, R]``, the packed gate
    words, the complex LCU weights and their real and imaginary parts, and the polynomial divided by
    its L1 norm."""
    plan: CircuitPlan
    table: torch.Tensor
    first: torch.Tensor
    words: torch.Tensor
    lcu: torch.Tensor
    lcu_parts: tuple[torch.Tensor, torch.Tensor]
    poly: torch.Tensor

    def torch_eval(self, ids: torch.Tensor) -> torch.Tensor:
        """What the kernel computes, with torch ops (the guard's fallback): rows ``[B, R]``."""
        batch = ids.shape[0]
        flat = ids.reshape(-1)
        coefficients = GateCoefficients(self.plan, self.table[flat, :, 0], self.table[flat, :, 1])
        psi = lcu_sum(self.first[ids].permute(2, 0, 1), self.lcu)  # M |0> from the first columns
        total = self.poly[1] * psi
        total[0] += self.poly[0]
        for k in range(2, self.poly.shape[0]):
            psi = _TORCH_FALLBACK.lcu_power(self.plan, coefficients, psi, self.lcu)[0]
            total = total + self.poly[k] * psi
        return total.t().reshape(batch, -1)


class TritonSimulator(_FusedKernels):
    """The fused Triton GPU kernels: a tile of instances on chip for all gates, the LCU summed in the
    same pass, adjoint backward. In eval, one launch per batch computes the QSVT state from cached
    per-vocabulary tables (:meth:`_eval_tables`; :func:`quixer.sim.triton_kernels.qsvt_eval`).

    This class is the pinned simulator: a kernel that fails raises. :func:`select` chooses
    :class:`GuardedTritonSimulator` by itself, which falls back to torch ops (:class:`KernelGuard`).
    """

    name = "triton"
    fallback: ClassVar[bool] = False

    @staticmethod
    def kernels():
        return triton_kernels()

    def _guarded(self, primitive: str, args: tuple, like: torch.Tensor, *flags):
        """The kernel primitive ``primitive(*args)`` through :data:`KERNEL_GUARD`; ``like`` (the main
        state tensor) and ``flags`` name its configuration, the torch simulation is the fallback."""
        plan, coefficients = args[0], args[1]
        key = (primitive, str(like.device), like.dtype, tuple(like.shape), tuple(coefficients.cos.shape),
               plan.n_qubits, *flags)
        return KERNEL_GUARD.run(key, like.device, lambda: getattr(_FusedKernels, primitive)(self, *args),
                                lambda: getattr(_TORCH_FALLBACK, primitive)(*args), self.fallback)

    def circuits(self, plan, coefficients, states):
        return self._guarded("circuits", (plan, coefficients, states), states)

    def circuits_adjoint(self, plan, coefficients, outputs, grad, input_grad):
        return self._guarded("circuits_adjoint", (plan, coefficients, outputs, grad, input_grad), outputs, input_grad)

    def lcu_power(self, plan, coefficients, psi, lcu):
        return self._guarded("lcu_power", (plan, coefficients, psi, lcu), psi)

    def lcu_power_adjoint(self, plan, coefficients, outputs, grad, lcu):
        return self._guarded("lcu_power_adjoint", (plan, coefficients, outputs, grad, lcu), grad)

    @classmethod
    def runs_on(cls, device: torch.device) -> bool:
        module = triton_kernels()
        return module is not None and (device.type == "cuda" or (device.type == "cpu" and module.INTERPRETED))

    def _eval_tables(self, model) -> "EvalTables":
        """The eval kernel's per-vocabulary inputs (:func:`quixer.sim.triton_kernels.qsvt_eval`), cached."""
        def build():
            plan, kernels = model.token_plan(), self.kernels()
            vocab = self._vocab_coefficients(model)
            rows, n_vocab = plan.rows, vocab.cos.shape[0]
            zero = torch.zeros(1, rows, n_vocab, dtype=vocab.cos.dtype, device=vocab.cos.device)
            zero[:, 0] = 1
            first = self.circuits(plan, vocab, zero).view(rows, n_vocab).t().contiguous()  # U_v |0>
            lcu, coeffs = model.lcu_weights(), model.qsvt_polynomial_coefficients
            parts = (lcu.real.to(first.dtype).contiguous(), lcu.imag.to(first.dtype).contiguous())
            return EvalTables(plan, kernels.coefficient_table(vocab.cos, vocab.sin), first,
                              kernels.gate_words(plan.wiring_on(first.device), plan.n_qubits), lcu, parts,
                              (coeffs / coeffs.abs().sum()).to(first.dtype).contiguous())

        return self.cache.get("triton_eval_tables", build)

    def _eval_state(self, model, x):
        """One eval kernel launch per batch (:func:`quixer.sim.triton_kernels.qsvt_eval`) through the guard;
        its fallback computes the same from the same tables with torch ops."""
        tables = self._eval_tables(model)
        ids = x.contiguous()
        key = ("qsvt_eval", str(x.device), tables.first.dtype, tuple(x.shape), tuple(tables.table.shape),
               tables.plan.n_qubits)
        rows = KERNEL_GUARD.run(key, x.device, lambda: self.kernels().qsvt_eval(
            ids, tables.table, tables.first, tables.words, tables.plan.n_qubits, tables.lcu_parts, tables.poly),
            lambda: tables.torch_eval(ids), self.fallback)
        return to_complex(rows.t())


class GuardedTritonSimulator(TritonSimulator):
    """The Triton simulator as :func:`select` chooses it by itself: a configuration whose kernel fails
    to compile or launch is simulated with torch ops instead (one warning; :class:`KernelGuard`).
    Its own name keeps it apart from the pinned one where simulators are kept by name (a model that
    pins "triton" after an automatic forward gets the strict simulator, not this one)."""

    name = "triton-auto"
    fallback = True


_TORCH_FALLBACK = TorchSimulator()  # its primitives only (no eval cache is used)

SIMULATORS: dict[str, type[Simulator]] = {cls.name: cls for cls in (TorchSimulator, NativeSimulator, TritonSimulator)}


def simulator_class(name: str) -> type[Simulator]:
    """The simulator called ``name``, or a ValueError naming the choices."""
    if name not in SIMULATORS:
        raise ValueError(f"unknown simulator {name!r}; choose one of {', '.join(SIMULATORS)}")
    return SIMULATORS[name]


def select(device: torch.device, name: str | None = None) -> type[Simulator]:
    """The simulator for tensors on ``device``: ``name`` ("torch", "native", "triton") if given,
    else the fastest that runs there (Triton on CUDA, the native kernel on a CPU, else torch).
    Triton chosen here falls back to torch ops where a kernel fails, unless ``QUIXER_TRITON=1``."""
    if name is not None:
        cls = simulator_class(name)
        if not cls.runs_on(device):
            raise RuntimeError(f"the {name} simulator cannot run on {device} here")
        return cls
    if device.type == "cuda" and TritonSimulator.runs_on(device):
        return TritonSimulator if _triton_setting() == "required" else GuardedTritonSimulator
    if device.type == "cpu" and NativeSimulator.runs_on(device):
        return NativeSimulator
    return TorchSimulator


def run_circuits(plan: CircuitPlan, angles: torch.Tensor, states: torch.Tensor,
                 coefficients: GateCoefficients | None = None) -> torch.Tensor:
    """:meth:`Simulator.run_circuits` on the simulator :func:`select` picks for ``states``' device."""
    return select(states.device)().run_circuits(plan, angles, states, coefficients)


def circuit_unitaries(plan: CircuitPlan, angles: torch.Tensor) -> torch.Tensor:
    """:meth:`Simulator.unitaries` on the simulator :func:`select` picks for ``angles``' device."""
    return select(angles.device)().unitaries(plan, angles)
