"""The Triton kernels (quixer/sim/triton_kernels.py) on CPU tensors under TRITON_INTERPRET=1, against
the torch simulation (itself checked against qiskit and numpy in test_model.py).

Not collected by the normal run (no ``test_`` prefix): ``tests/test_triton.py`` runs this file in
a subprocess, because Triton fixes interpreter mode when a kernel is decorated, i.e. when
:mod:`quixer.sim.triton_kernels` is first imported. Sizes are tiny (2-3 qubits, a handful of
instances): the interpreter runs every tile op as a numpy call. ``MAX_BLOCK = 4`` cases cover
partial tiles and sums over several lane blocks.
"""
from __future__ import annotations

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before quixer.sim.triton_kernels (and triton's kernels) are imported
if "quixer.sim.triton_kernels" in sys.modules and not sys.modules["quixer.sim.triton_kernels"].INTERPRETED:
    raise RuntimeError("quixer.sim.triton_kernels was imported before TRITON_INTERPRET=1: run this file on its own")

import pytest  # noqa: E402
import torch  # noqa: E402

from quixer.sim import triton_kernels  # noqa: E402
from quixer.sim.circuits import CircuitFunction, CircuitPlan, LCUPowerFunction, ansatz14_gates, gate_coefficients  # noqa: E402
from quixer.model import Quixer  # noqa: E402
from quixer.sim.simulators import KERNEL_GUARD, TorchSimulator, TritonSimulator, select  # noqa: E402

ATOL = {torch.float64: 1e-12, torch.float32: 2e-5}


@pytest.fixture(params=[4, 32], ids=["block4", "block32"])
def max_block(request, monkeypatch):
    monkeypatch.setattr(triton_kernels, "MAX_BLOCK", request.param)
    return request.param


def case(n, layers, n_inst, lead=1, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    plan = CircuitPlan(ansatz14_gates(n, layers), n)
    angles = (torch.rand(n_inst, 4 * n * layers, generator=gen, dtype=dtype) - 0.5) * 8
    states = torch.randn(lead, 2 * 2**n, n_inst, generator=gen, dtype=dtype)
    return plan, angles, states


def lcu_case(n, batch, window, dtype=torch.float64, seed=3):
    plan, angles, _ = case(n, 1, batch * window, dtype=dtype, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    psi = torch.randn(2 * 2**n, batch, generator=gen, dtype=dtype)
    lcu = torch.complex(torch.randn(window, generator=gen, dtype=torch.float64),
                        torch.randn(window, generator=gen, dtype=torch.float64))
    return plan, angles, psi, lcu


def assert_all_close(got, want, atol):
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)


def test_the_interpreter_is_on_and_selected_only_when_pinned():
    assert triton_kernels.INTERPRETED and TritonSimulator.runs_on(torch.device("cpu"))
    assert select(torch.device("cpu")) is not TritonSimulator  # automatic choice on a CPU: never the interpreter
    assert select(torch.device("cpu"), "triton") is TritonSimulator


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_matches_torch(dtype, max_block):
    plan, angles, states = case(3, 2, 5, lead=2, dtype=dtype)
    coefficients = gate_coefficients(plan, angles)
    ours = TritonSimulator().circuits(plan, coefficients, states)
    torch.testing.assert_close(ours, TorchSimulator().circuits(plan, coefficients, states), rtol=0, atol=ATOL[dtype])


@pytest.mark.parametrize("input_grad", [True, False])
def test_adjoint_matches_torch(input_grad, max_block):
    plan, angles, states = case(3, 2, 5, lead=2)
    coefficients = gate_coefficients(plan, angles)
    out = TorchSimulator().circuits(plan, coefficients, states)
    grad = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(7))
    ours = TritonSimulator().circuits_adjoint(plan, coefficients, out, grad, input_grad)
    want = TorchSimulator().circuits_adjoint(plan, coefficients, out, grad, input_grad)
    assert (ours[0] is None) == (not input_grad)
    assert_all_close([t for t in ours if t is not None], [t for t in want if t is not None], 1e-12)


def test_adjoint_matches_torch_with_a_partial_gradient_chunk(max_block):
    """7 gates on 3 qubits: the adjoint stores angle gradients in chunks of 4 (2^(n-1)) gates, the
    last one partial; the first gates target the top bit (no exchange), the rest lower bits."""
    plan = CircuitPlan(ansatz14_gates(3, 1)[:7], 3)
    gen = torch.Generator().manual_seed(5)
    angles = (torch.rand(6, 7, generator=gen, dtype=torch.float64) - 0.5) * 8
    states = torch.randn(1, 16, 6, generator=gen, dtype=torch.float64)
    coefficients = gate_coefficients(plan, angles)
    out = TorchSimulator().circuits(plan, coefficients, states)
    grad = torch.randn(out.shape, dtype=out.dtype, generator=gen)
    assert_all_close(TritonSimulator().circuits_adjoint(plan, coefficients, out, grad, True),
                     TorchSimulator().circuits_adjoint(plan, coefficients, out, grad, True), 1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lcu_power_and_its_adjoint_match_torch(dtype, max_block):
    plan, angles, psi, lcu = lcu_case(3, 2, 5, dtype)
    coefficients = gate_coefficients(plan, angles)
    ours, want = TritonSimulator().lcu_power(plan, coefficients, psi, lcu), TorchSimulator().lcu_power(
        plan, coefficients, psi, lcu)
    assert_all_close(ours, want, ATOL[dtype])
    grad = torch.randn(psi.shape, dtype=dtype, generator=torch.Generator().manual_seed(8))
    assert_all_close(TritonSimulator().lcu_power_adjoint(plan, coefficients, want[1], grad, lcu),
                     TorchSimulator().lcu_power_adjoint(plan, coefficients, want[1], grad, lcu), 10 * ATOL[dtype])


def test_gradcheck_lcu_power_and_circuits():
    plan, angles, psi, lcu = lcu_case(2, 2, 3)
    for t in (angles, psi, lcu):
        t.requires_grad_()

    def power(p, a, b):
        return LCUPowerFunction.apply(p, a, b, plan, gate_coefficients(plan, a.detach()), TritonSimulator())

    def circuits(s, a):
        return CircuitFunction.apply(s, a, plan, gate_coefficients(plan, a.detach()), TritonSimulator())

    assert torch.autograd.gradcheck(power, (psi, angles, lcu), fast_mode=True)
    states = torch.randn(1, 8, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(circuits, (states, angles), fast_mode=True)


def test_model_on_triton_matches_the_torch_simulation():
    model = Quixer(n_qubits=2, n_tokens=3, qsvt_polynomial_degree=2, n_ansatz_layers=1, vocabulary_size=5,
                   embedding_dimension=4, dropout=0.0, dtype=torch.complex128)
    model.initialize("uniform", generator=torch.Generator().manual_seed(0))
    x = torch.tensor([[0, 3, 4], [2, 2, 1], [4, 0, 1]])
    results = {}
    for name in ("triton", "torch"):
        model.use_simulator(name)
        model.train().zero_grad()
        logits, post = model(x)
        (logits.square().sum() + post.sum()).backward()
        with torch.no_grad():
            cached = model.eval()(x)
        results[name] = (logits.detach(), post.detach(), *cached, *(p.grad for p in model.parameters()))
    assert model.simulator().name == "torch" and results["triton"][2].shape == (3, 5)
    assert_all_close(results["triton"], results["torch"], 1e-12)


def eval_model(dtype, n_tokens=7, degree=3):
    model = Quixer(n_qubits=3, n_tokens=n_tokens, qsvt_polynomial_degree=degree, n_ansatz_layers=2,
                   vocabulary_size=9, embedding_dimension=6, dropout=0.0, dtype=dtype)
    model.initialize("uniform", generator=torch.Generator().manual_seed(4))
    return model.eval()


def eval_outputs(model, x, simulator):
    """Eval features, postselection and logits of the cached eval path with ``simulator`` pinned."""
    model.use_simulator(simulator)
    with torch.no_grad():
        return (*model.simulator().eval_features(model, x), *model(x))


@pytest.mark.parametrize("dtype,atol", [(torch.complex128, 1e-10), (torch.complex64, 1e-5)])
def test_eval_kernel_matches_the_torch_simulation(dtype, atol, max_block):
    """The one-launch eval (first power from cached U_v|0>, coefficients read by token id, the state in
    registers) against the torch simulation's cached eval; with 4-lane tiles each power takes two chunks."""
    model = eval_model(dtype)
    x = torch.randint(0, 9, (5, 7), generator=torch.Generator().manual_seed(2))
    KERNEL_GUARD.clear()
    ours = eval_outputs(model, x, "triton")
    assert any(key[0] == "qsvt_eval" for key in KERNEL_GUARD.checked) and not KERNEL_GUARD.failed
    assert_all_close(ours, eval_outputs(model, x, "torch"), atol)


@pytest.mark.parametrize("degree", [1, 2])
def test_eval_kernel_matches_its_fallback_at_low_degrees(degree):
    """Degree 1 (the cached first columns alone) and 2 (one power in registers), int32 token ids: the
    kernel's rows against the torch computation the guard falls back to, from the same tables."""
    model = eval_model(torch.complex128, n_tokens=3, degree=degree)
    model.use_simulator("triton")
    simulator = model.simulator()
    x = torch.randint(0, 9, (4, 3), generator=torch.Generator().manual_seed(3), dtype=torch.int32)
    with torch.no_grad():
        simulator.cache.refresh(model)
        tables = simulator._eval_tables(model)
        rows = triton_kernels.qsvt_eval(x, tables.table, tables.first, tables.words, 3, tables.lcu_parts,
                                        tables.poly)
        torch.testing.assert_close(rows, tables.torch_eval(x), rtol=0, atol=1e-12)
