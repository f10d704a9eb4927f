"""The fused CPU kernel (quixer/sim/native.py, quixer/sim/statevector_kernel.cpp) against the torch simulation.

The torch butterfly path (quixer/sim/circuits.py) is itself checked against qiskit and numpy in
test_model.py (which runs the main checks on both paths); here the kernel's forward, adjoint,
LCU power and dropout mask are compared with it and with explicit algebra, on odd sizes that
leave partial tiles, in float32 and float64, with 1 and 2 threads.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from quixer.sim import native
from quixer.sim.circuits import CircuitPlan, LCUPowerFunction, ansatz14_gates, gate_coefficients
from quixer.model import Dropout, Quixer
from quixer.sim.simulators import NativeSimulator, TorchSimulator, run_circuits
from tests.helpers import REPO

pytestmark = pytest.mark.skipif(not native.available(), reason="fused CPU kernel unavailable (no C++ compiler)")


@pytest.fixture
def torch_path():
    """Run the block with the torch simulation, then restore the kernel."""
    native.set_enabled(False)
    yield
    native.set_enabled(None)


def random_case(n, layers, n_inst, lead=1, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    plan = CircuitPlan(ansatz14_gates(n, layers), n)
    angles = (torch.rand(n_inst, 4 * n * layers, generator=gen, dtype=dtype) - 0.5) * 8
    states = torch.randn(lead, 2, *[2] * n, n_inst, generator=gen, dtype=dtype)
    return plan, angles, states


def test_the_kernel_builds_where_a_compiler_exists():
    # CI has g++: a broken build must fail here instead of silently falling back
    if shutil.which(os.environ.get("CXX", "g++").split()[0]) and native.enabled_by_environment():
        assert native.available(), native.unavailable_reason()


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("n,layers,n_inst,lead", [(2, 1, 3, 1), (3, 2, 13, 2), (6, 1, 17, 1)])
def test_forward_matches_torch_path(dtype, atol, n, layers, n_inst, lead):
    plan, angles, states = random_case(n, layers, n_inst, lead, dtype)
    coefficients = gate_coefficients(plan, angles)
    ours = NativeSimulator().circuits(plan, coefficients, states)
    reference = TorchSimulator().circuits(plan, gate_coefficients(plan, angles), states)
    torch.testing.assert_close(ours, reference, rtol=0, atol=atol)
    # the states are rotated, not rescaled
    torch.testing.assert_close(ours.pow(2).reshape(-1, n_inst).sum(0), states.pow(2).reshape(-1, n_inst).sum(0),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,layers,n_inst,lead", [(2, 1, 5, 1), (3, 2, 11, 2)])
def test_adjoint_matches_torch_path_gradients(n, layers, n_inst, lead):
    plan, angles, states = random_case(n, layers, n_inst, lead)
    weights = torch.randn(states.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))

    def grads():
        a, s = angles.clone().requires_grad_(), states.clone().requires_grad_()
        (run_circuits(plan, a, s) * weights).sum().backward()
        return a.grad, s.grad

    ours = grads()
    native.set_enabled(False)
    try:
        reference = grads()
    finally:
        native.set_enabled(None)
    for got, want in zip(ours, reference):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11)


def test_gradcheck_through_the_kernel():
    plan, angles, states = random_case(2, 1, 5)
    angles.requires_grad_()
    states.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, s: run_circuits(plan, a, s), (angles, states))


def test_kernel_results_do_not_depend_on_the_thread_count():
    plan, angles, states = random_case(6, 4, 1030, dtype=torch.float32)
    threads = torch.get_num_threads()
    outs = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            a = angles.clone().requires_grad_()
            out = run_circuits(plan, a, states)
            out.pow(2).mul(torch.arange(out.numel()).view(out.shape) % 3).sum().backward()
            outs.append((out.detach(), a.grad))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_lcu_power_is_the_weighted_sum_of_circuit_outputs(dtype, atol):
    n, batch, window = 3, 3, 11  # window not a multiple of the tile
    plan, angles, _ = random_case(n, 2, batch * window, dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    psi = torch.randn(2 * 2**n, batch, generator=gen, dtype=dtype)
    lcu = torch.complex(torch.randn(window, generator=gen, dtype=torch.float64),
                        torch.randn(window, generator=gen, dtype=torch.float64))
    coefficients = gate_coefficients(plan, angles)
    out, outputs = native.lcu_power(psi, coefficients.cos, coefficients.sin, plan.wiring, n, lcu)
    expanded = psi.unsqueeze(-1).expand(-1, -1, window).reshape(1, 2 * 2**n, batch * window)
    each = NativeSimulator().circuits(plan, coefficients, expanded)[0]
    torch.testing.assert_close(outputs, each, rtol=0, atol=atol)
    each = torch.complex(each[: 2**n], each[2**n:]).view(2**n, batch, window).to(torch.complex128)
    expected = (each * lcu).sum(-1)
    torch.testing.assert_close(torch.complex(out[: 2**n], out[2**n:]).to(torch.complex128), expected,
                               rtol=0, atol=10 * atol)


def test_kernel_rejects_inconsistent_shapes():
    plan, angles, states = random_case(3, 1, 4)
    c = gate_coefficients(plan, angles)
    rows = states.reshape(1, 16, 4)
    with pytest.raises(ValueError, match="contiguous"):
        native.forward(rows.float(), c.cos, c.sin, plan.wiring, 3)
    with pytest.raises(ValueError, match="inconsistent"):
        native.forward(rows, c.cos[:3], c.sin[:3], plan.wiring, 3)
    with pytest.raises(ValueError, match="inconsistent"):
        native.forward(rows, c.cos, c.sin, plan.wiring, 2)


# ---- the model on both paths ---------------------------------------------------------------

def small_model(dtype=torch.complex128, dropout=0.0):
    model = Quixer(n_qubits=3, n_tokens=9, qsvt_polynomial_degree=3, n_ansatz_layers=2, vocabulary_size=11,
                   embedding_dimension=6, dropout=dropout, dtype=dtype)
    model.initialize("uniform", generator=torch.Generator().manual_seed(0))
    return model


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_outputs_agree_on_both_paths(mode, torch_path):
    model = small_model()
    x = torch.randint(0, 11, (5, 9), generator=torch.Generator().manual_seed(1))
    model.train(mode == "train")
    with torch.set_grad_enabled(mode == "train"):
        reference = model(x)
        native.set_enabled(None)
        model.train(mode == "train")  # fresh eval cache
        ours = model(x)
    for got, want in zip(ours, reference):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# ---- dropout mask --------------------------------------------------------------------------

def test_dropout_keeps_the_right_fraction_and_scales():
    layer = Dropout(0.3).train()
    torch.manual_seed(0)
    y = layer(torch.ones(200, 1001))
    kept = (y != 0).double().mean().item()
    n = y.numel()
    assert abs(kept - 0.7) < 5 * (0.21 / n) ** 0.5  # five binomial standard deviations
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.7))
    # neighbouring elements are not correlated (the generator's two halves of a draw)
    flat = (y.view(-1) != 0).double()
    both = (flat[:-1] * flat[1:]).mean().item()
    assert abs(both - 0.49) < 0.01


def test_dropout_is_seeded_by_torch_and_independent_of_threads():
    layer = Dropout(0.1).train()
    x = torch.randn(64, 33)
    threads = torch.get_num_threads()
    try:
        torch.manual_seed(5)
        a = layer(x)
        torch.set_num_threads(1)
        torch.manual_seed(5)
        b = layer(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b)
    assert not torch.equal(layer(x), a)  # the generator moved on
    assert torch.equal(layer.eval()(x), x)


def test_dropout_gradient_uses_the_same_mask():
    layer = Dropout(0.5).train()
    x = torch.randn(40, 7, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y.detach() != 0).float() * 2.0)


def test_disabled_or_unbuildable_kernel_falls_back(tmp_path):
    code = ("import torch; from quixer.sim import native; from quixer.model import Quixer;"
            "m = Quixer(3, 4, 2, 1, 5, 4); x = torch.randint(0, 5, (2, 4));"
            "m(x)[0].sum().backward(); print(native.available(), native.unavailable_reason())")
    env = dict(os.environ, QUIXER_KERNEL_CACHE=str(tmp_path / "cache"))
    off = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env=dict(env, QUIXER_NATIVE="0"))
    assert off.returncode == 0, off.stderr
    assert off.stdout.startswith("False disabled")
    broken = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env=dict(env, CXX="/nonexistent/c++"))
    assert broken.returncode == 0, broken.stderr
    assert broken.stdout.startswith("False no C++ compiler")
    assert "using the torch simulation" in broken.stderr
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.so"))


@pytest.mark.slow
def test_build_is_cached_and_prebuildable(tmp_path):
    env = dict(os.environ, QUIXER_KERNEL_CACHE=str(tmp_path))
    first = subprocess.run([sys.executable, "-m", "quixer.sim.native"], cwd=REPO, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    path = first.stdout.strip()
    assert path.startswith(str(tmp_path)) and os.path.exists(path)
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(path)]  # no temporary files left
    built = os.stat(path).st_mtime_ns
    again = subprocess.run([sys.executable, "-m", "quixer.sim.native"], cwd=REPO, capture_output=True, text=True, env=env)
    assert again.stdout.strip() == path and os.stat(path).st_mtime_ns == built  # reused, not rebuilt


def test_gradcheck_lcu_power_function():
    n, batch, window = 2, 2, 5  # window not a multiple of the tile
    plan, angles, _ = random_case(n, 1, batch * window)
    gen = torch.Generator().manual_seed(4)
    psi = torch.randn(2 * 2**n, batch, generator=gen, dtype=torch.float64, requires_grad=True)
    lcu = torch.complex(torch.randn(window, generator=gen, dtype=torch.float64),
                        torch.randn(window, generator=gen, dtype=torch.float64)).requires_grad_()
    angles.requires_grad_()

    def power(p, a, b):
        return LCUPowerFunction.apply(p, a, b, plan, gate_coefficients(plan, a.detach()), NativeSimulator())

    assert torch.autograd.gradcheck(power, (psi, angles, lcu))
