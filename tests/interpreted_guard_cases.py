"""The guard around the Triton kernels (quixer/sim/simulators.py, KernelGuard) under TRITON_INTERPRET=1.

Not collected by the normal run (no ``test_`` prefix): ``tests/test_devices.py`` runs this file in
a subprocess, because Triton fixes interpreter mode when :mod:`quixer.sim.triton_kernels` is imported.

The failure is a real one of the real kernel: with a tile of 3 lanes (``MAX_BLOCK = 3``) the
kernels' ``tl.arange(0, BLOCK)`` is not a power of two, which Triton rejects (in its interpreter as
here, and in its compiler on a GPU, where tests/test_cuda.py checks the same fallback).
"""
from __future__ import annotations

import logging
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before quixer.sim.triton_kernels (and triton's kernels) are imported
if "quixer.sim.triton_kernels" in sys.modules and not sys.modules["quixer.sim.triton_kernels"].INTERPRETED:
    raise RuntimeError("quixer.sim.triton_kernels was imported before TRITON_INTERPRET=1: run this file on its own")

import pytest  # noqa: E402
import torch  # noqa: E402
from triton.errors import TritonError  # noqa: E402

from quixer.sim import simulators, triton_kernels  # noqa: E402
from quixer.sim.circuits import CircuitPlan, ansatz14_gates  # noqa: E402
from quixer.model import Quixer  # noqa: E402
from quixer.sim.simulators import KERNEL_GUARD, GuardedTritonSimulator, TorchSimulator  # noqa: E402

PRIMITIVES = {"circuits", "circuits_adjoint", "lcu_power", "lcu_power_adjoint"}


@pytest.fixture(autouse=True)
def fresh_guard():
    KERNEL_GUARD.clear()
    yield
    KERNEL_GUARD.clear()


@pytest.fixture
def broken_tile(monkeypatch):
    monkeypatch.setattr(triton_kernels, "MAX_BLOCK", 3)


def all_primitives(simulator):
    """Circuits and one LCU power with their backward passes (the four kernel primitives): the
    outputs and the gradients of the angles, the states and the LCU weights."""
    gen = torch.Generator().manual_seed(0)
    plan = CircuitPlan(ansatz14_gates(2, 1), 2)
    angles = torch.randn(6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    states = torch.randn(1, 8, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    lcu = torch.complex(torch.randn(3, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen,
                        dtype=torch.float64)).requires_grad_()
    psi = torch.randn(8, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    out = simulator.run_circuits(plan, angles, states)
    power = simulator.lcu_operator(plan, angles, lcu)(psi)
    (out.square().sum() + power.sin().sum()).backward()
    return [out.detach(), power.detach(), angles.grad, states.grad, lcu.grad, psi.grad]


def warnings_from_the_guard(caplog):
    return [r for r in caplog.records if r.name == simulators.__name__ and r.levelno >= logging.WARNING]


def test_working_kernels_are_checked_once_and_kept(caplog):
    ours, want = all_primitives(GuardedTritonSimulator()), all_primitives(TorchSimulator())
    for a, b in zip(ours, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert {key[0] for key in KERNEL_GUARD.checked} == PRIMITIVES and not KERNEL_GUARD.failed
    assert not warnings_from_the_guard(caplog)


def test_a_failing_kernel_falls_back_to_torch_with_one_warning(broken_tile, caplog):
    want = all_primitives(TorchSimulator())
    for _ in range(2):  # the second round finds the failed configurations recorded
        ours = all_primitives(GuardedTritonSimulator())
        for a, b in zip(ours, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)  # the torch simulation itself computed them
    assert {key[0] for key in KERNEL_GUARD.failed} == PRIMITIVES
    assert all("power of 2" in error for error in KERNEL_GUARD.failed.values())
    warnings = warnings_from_the_guard(caplog)
    assert len(warnings) == 1 and "the torch simulation computes" in warnings[0].getMessage()
    assert len(KERNEL_GUARD.failures()) == len(KERNEL_GUARD.failed)


def test_eval_falls_back_too(broken_tile):
    model = Quixer(n_qubits=2, n_tokens=3, qsvt_polynomial_degree=2, n_ansatz_layers=1, vocabulary_size=5,
                   embedding_dimension=4, dropout=0.0, dtype=torch.complex128).eval()
    x = torch.tensor([[0, 3, 4], [2, 2, 1]])
    with torch.no_grad():
        ours = GuardedTritonSimulator().eval_features(model, x)
        want = TorchSimulator().eval_features(model, x)
    for a, b in zip(ours, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # the vocabulary's first columns (5 circuits) and the eval kernel (3-lane tiles) failed; the one
    # feed-forward circuit is a tile of one lane, which compiles
    assert {key[0] for key in KERNEL_GUARD.failed} == {"circuits", "qsvt_eval"}


def test_pinned_triton_raises_the_kernel_error(broken_tile):
    model = Quixer(n_qubits=2, n_tokens=3, qsvt_polynomial_degree=2, n_ansatz_layers=1, vocabulary_size=5,
                   embedding_dimension=4, dropout=0.0)
    model.use_simulator("triton")
    with pytest.raises(TritonError, match="power of 2"):
        model(torch.tensor([[0, 3, 4]]))
    assert not KERNEL_GUARD.failed
