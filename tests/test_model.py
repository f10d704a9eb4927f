"""Correctness of the Quixer model (quixer/model.py) against independent references.

References: qiskit's Operator for the token circuits, explicit numpy matrix algebra for the
LCU + QSVT state and for the measured Pauli expectations, torch.autograd.gradcheck, the
naive gate-by-gate simulation in quixer/sim/naive.py, and the parameter layout of the
official implementation (CQCL/Quixer, quixer/quixer_model.py). Small sizes only (2-3 qubits).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from quixer.sim import native
from quixer.sim.circuits import CircuitPlan, ansatz14_gates, pauli_expectations
from quixer.model import OFFICIAL_PARAMETER_NAMES, Quixer
from quixer.sim.naive import naive_forward
from quixer.sim.simulators import circuit_unitaries, run_circuits
from tests.helpers import adam_steps

C128 = torch.complex128


@pytest.fixture(params=["kernel", "torch"])
def simulation(request):
    """Run a test on the fused CPU kernel (quixer.sim.native) and on the torch butterfly path."""
    if request.param == "kernel" and not native.available():
        pytest.skip("fused CPU kernel unavailable (no C++ compiler)")
    native.set_enabled(request.param == "kernel")
    yield request.param
    native.set_enabled(None)


def tiny(n=3, window=4, degree=3, layers=2, vocab=7, embed=5, dropout=0.0, dtype=C128, init="uniform", seed=0):
    model = Quixer(n_qubits=n, n_tokens=window, qsvt_polynomial_degree=degree, n_ansatz_layers=layers,
                   vocabulary_size=vocab, embedding_dimension=embed, dropout=dropout, dtype=dtype)
    model.initialize(init, generator=torch.Generator().manual_seed(seed))
    return model


def tokens(batch, window, vocab, seed=1):
    return torch.randint(0, vocab, (batch, window), generator=torch.Generator().manual_seed(seed))


# ---- token circuits vs qiskit --------------------------------------------------------------

def qiskit_ansatz14(n: int, layers: int, angles: np.ndarray) -> np.ndarray:
    """Ansatz 14 built gate by gate in qiskit, in the official order; qubit 0 most significant."""
    from qiskit import QuantumCircuit
    from qiskit.quantum_info import Operator

    qc = QuantumCircuit(n)
    k = iter(angles.tolist())
    for _ in range(layers):
        for q in range(n):
            qc.ry(next(k), q)
        for q in range(n - 1, -1, -1):
            qc.crx(next(k), q, (q + 1) % n)
        for q in range(n):
            qc.ry(next(k), q)
        for q in [n - 1] + list(range(n - 1)):
            qc.crx(next(k), q, (q - 1) % n)
    # qiskit's qubit 0 is the least significant bit; the official code's wire 0 the most.
    return Operator(qc).reverse_qargs().data


@pytest.mark.parametrize("n,layers", [(2, 1), (3, 2)])
def test_token_unitaries_match_qiskit(n, layers, simulation):
    gen = torch.Generator().manual_seed(n)
    angles = (torch.rand(3, 4 * n * layers, generator=gen, dtype=torch.float64) - 0.5) * 4 * np.pi
    ours = circuit_unitaries(CircuitPlan(ansatz14_gates(n, layers), n), angles).numpy()
    for i in range(3):
        np.testing.assert_allclose(ours[i], qiskit_ansatz14(n, layers, angles[i].numpy()), atol=1e-12)


def test_model_token_unitaries_use_the_angle_projection():
    model = tiny(n=2, layers=1)
    ids = torch.tensor([0, 3, 6])
    angles = model.embedding_to_angles(model.embedding.weight[ids]).detach()
    for i in range(3):
        np.testing.assert_allclose(model.token_unitaries(ids)[i].detach().numpy(),
                                   qiskit_ansatz14(2, 1, angles[i].numpy()), atol=1e-12)
    np.testing.assert_allclose(model.feedforward_unitary().detach().numpy(),
                               qiskit_ansatz14(2, 1, model.quantum_feedforward_parameters.detach().numpy()),
                               atol=1e-12)


# ---- LCU + QSVT vs explicit matrix algebra -------------------------------------------------

def numpy_qsvt(model: Quixer, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """sum_k c_k M^k |0> / ||c||_1 with M = sum_w b_w U_w / ||b||_1, by explicit numpy matrices."""
    c = model.qsvt_polynomial_coefficients.detach().numpy()
    b = model.lcu_coefficients.detach().numpy()
    b = b / np.abs(b).sum()
    states = []
    for row in x:
        u = model.token_unitaries(row).detach().numpy()
        m = np.einsum("w,wij->ij", b, u)
        e0 = np.zeros(u.shape[-1], dtype=complex)
        e0[0] = 1
        states.append(sum(c[k] * np.linalg.matrix_power(m, k) @ e0 for k in range(len(c))) / np.abs(c).sum())
    states = np.array(states)
    return states, (np.abs(states) ** 2).sum(-1)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_qsvt_state_matches_matrix_polynomial(mode, simulation):
    model = tiny(n=3, window=4, degree=3, layers=2)
    x = tokens(5, 4, 7)
    expected_state, expected_p = numpy_qsvt(model, x)
    model.train(mode == "train")
    with torch.set_grad_enabled(mode == "train"):
        state = model.qsvt_state(x)
        _, p = model(x)
    np.testing.assert_allclose(state.detach().numpy(), expected_state, atol=1e-12)
    np.testing.assert_allclose(p.detach().numpy(), expected_p, atol=1e-12)
    assert np.all(expected_p <= 1 + 1e-12)  # a postselection probability


def kron_pauli(pauli: np.ndarray, q: int, n: int) -> np.ndarray:
    ops = [np.eye(2)] * n
    ops[q] = pauli  # qubit 0 is the leftmost factor (most significant bit)
    out = ops[0]
    for op in ops[1:]:
        out = np.kron(out, op)
    return out


PAULIS = {"x": np.array([[0, 1], [1, 0]]), "y": np.array([[0, -1j], [1j, 0]]), "z": np.diag([1, -1])}


def explicit_features(states: np.ndarray, n: int) -> np.ndarray:
    return np.array([[np.vdot(psi, kron_pauli(PAULIS[p], q, n) @ psi).real for p in "xyz" for q in range(n)]
                     for psi in states])


def test_pauli_expectations_match_explicit_matrices():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(4, 8)) + 1j * rng.normal(size=(4, 8))
    states /= np.linalg.norm(states, axis=1, keepdims=True)
    ours = pauli_expectations(torch.from_numpy(states), 3).numpy()
    np.testing.assert_allclose(ours, explicit_features(states, 3), atol=1e-12)


def test_logits_are_the_head_of_the_measured_features():
    model = tiny(n=3, window=4).eval()
    x = tokens(3, 4, 7)
    states, p = numpy_qsvt(model, x)
    psi = states / np.sqrt(p)[:, None]
    psi = psi @ model.feedforward_unitary().detach().numpy().T
    features = torch.from_numpy(explicit_features(psi, 3))
    with torch.no_grad():
        logits, _ = model(x)
        expected = model.output_feedforward(features)
    np.testing.assert_allclose(logits.numpy(), expected.numpy(), atol=1e-10)


# ---- gradients ----------------------------------------------------------------------------------

def test_gradcheck_whole_model(simulation):
    model = tiny(n=2, window=3, degree=2, layers=1, vocab=5, embed=3)
    names, values = zip(*[(k, v.detach().clone().requires_grad_(True)) for k, v in model.named_parameters()])
    x = torch.tensor([[0, 3, 4], [2, 2, 1]])

    def f(*params):
        return torch.func.functional_call(model, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(f, values, eps=1e-6, atol=1e-7)


def test_gradcheck_circuits_states_and_angles(simulation):
    plan = CircuitPlan(ansatz14_gates(3, 1), 3)
    gen = torch.Generator().manual_seed(3)
    angles = torch.randn(2, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    states = torch.randn(2, *[2] * 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, s: run_circuits(plan, a, s), (angles, states), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(lambda a: torch.view_as_real(circuit_unitaries(plan, a)), (angles,),
                                    eps=1e-6, atol=1e-7)


# ---- the naive gate-by-gate reference ---------------------------------------------------------

def test_naive_reference_agrees_with_fast_model(simulation):
    model = tiny(n=3, window=4, degree=3, layers=2)
    x = tokens(3, 4, 7)
    fast, naive = model(x), naive_forward(model, x)
    for a, b in zip(fast, naive):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    grads = []
    for out in (fast, naive):
        model.zero_grad()
        (out[0].square().sum() + out[1].sum()).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=0, atol=1e-12)


def test_complex64_default_dtype_agrees_with_naive(simulation):
    model = tiny(n=3, dtype=torch.complex64, init="small_gaussian")
    x = tokens(2, 4, 7)
    torch.testing.assert_close(model(x)[0], naive_forward(model, x)[0], rtol=1e-4, atol=1e-5)


# ---- official checkpoints ------------------------------------------------------------------------

# Names and shapes of the official model's state dict (CQCL/Quixer quixer/quixer_model.py), written out
# for n=2 qubits, W=3 tokens, degree 2, L=2 layers, V=5, E=4. Its one-layer feed-forward circuit
# still holds 4nL parameters; the torchquantum device contributes two buffers.
OFFICIAL_SHAPES_N2_W3_D2_L2_V5_E4 = {
    "embedding.weight": (5, 4),
    "embedding_to_angles.weight": (16, 4),
    "embedding_to_angles.bias": (16,),
    "qsvt_polynomial_coefficients": (3,),
    "lcu_coefficients": (3,),
    "quantum_feedforward_parameters": (16,),
    "output_feedforward.0.weight": (4, 6),
    "output_feedforward.0.bias": (4,),
    "output_feedforward.2.weight": (5, 4),
    "output_feedforward.2.bias": (5,),
}
SIZES = dict(n_qubits=2, n_tokens=3, qsvt_polynomial_degree=2, n_ansatz_layers=2, vocabulary_size=5,
             embedding_dimension=4)


def official_checkpoint(seed=0) -> dict:
    src = tiny(n=2, window=3, degree=2, layers=2, vocab=5, embed=4, dtype=torch.complex64, seed=seed)
    sd = src.to_official_state_dict()
    sd["quantum_feedforward_parameters"][8:] = torch.rand(8)  # unused by the official 1-layer circuit
    sd["torchquantum_device.state"] = torch.zeros(2, 2, dtype=torch.complex64)
    sd["torchquantum_device.states"] = torch.zeros(32, 2, 2, dtype=torch.complex64)
    return src, sd


def test_official_layout_constant_matches_the_official_code():
    shapes = {k: f(2, 3, 2, 2, 5, 4) for k, f in OFFICIAL_PARAMETER_NAMES.items()}
    assert shapes == OFFICIAL_SHAPES_N2_W3_D2_L2_V5_E4
    _, sd = official_checkpoint()
    assert {k: tuple(v.shape) for k, v in sd.items() if not k.startswith("torchquantum")} == shapes
    assert sd["lcu_coefficients"].dtype == torch.complex64


def test_from_official_state_dict_gives_identical_logits():
    src, sd = official_checkpoint()
    model = Quixer.from_official_state_dict(sd, **SIZES).eval()
    src.eval()
    x = tokens(4, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], src(x)[0], rtol=0, atol=0)
    legacy = {k.replace("embedding_to_angles.", "emb2rot.").replace("output_feedforward.", "output_ff.")
              .replace("qsvt_polynomial_coefficients", "poly_coeffs").replace("lcu_coefficients", "mix_coeffs")
              .replace("quantum_feedforward_parameters", "qff_params").replace("torchquantum_device.", "q_device."): v
              for k, v in sd.items()}
    with torch.no_grad():
        torch.testing.assert_close(Quixer.from_official_state_dict(legacy, **SIZES).eval()(x)[0], src(x)[0])


def test_from_official_state_dict_rejects_wrong_checkpoints():
    _, sd = official_checkpoint()
    with pytest.raises(ValueError, match="shape"):
        Quixer.from_official_state_dict(sd, **{**SIZES, "vocabulary_size": 6})
    with pytest.raises(ValueError, match="missing"):
        Quixer.from_official_state_dict({k: v for k, v in sd.items() if k != "lcu_coefficients"}, **SIZES)
    with pytest.raises(ValueError, match="unexpected"):
        Quixer.from_official_state_dict({**sd, "something.else": torch.zeros(1)}, **SIZES)


# ---- layerwise training, initialisation, cache ----------------------------------------------------

def test_inactive_layers_are_identity_and_masked():
    model = tiny(n=3, layers=3)
    assert model.frozen_masks() == {}
    model.set_active_layers(1)
    one_layer = tiny(n=3, layers=1)
    with torch.no_grad():
        one_layer.embedding.weight.copy_(model.embedding.weight)
        one_layer.embedding_to_angles.weight.copy_(model.embedding_to_angles.weight[:12])
        one_layer.embedding_to_angles.bias.copy_(model.embedding_to_angles.bias[:12])
    ids = torch.arange(7)
    torch.testing.assert_close(model.token_unitaries(ids), one_layer.token_unitaries(ids), rtol=0, atol=1e-14)

    masks = model.frozen_masks()
    assert set(masks) == {"embedding_to_angles.weight", "embedding_to_angles.bias"}
    assert masks["embedding_to_angles.weight"].shape == (36, 5) and masks["embedding_to_angles.bias"].shape == (36,)
    assert masks["embedding_to_angles.weight"][12:].all() and not masks["embedding_to_angles.weight"][:12].any()
    assert masks["embedding_to_angles.bias"][12:].all() and not masks["embedding_to_angles.bias"][:12].any()
    named = dict(model.named_parameters())
    assert all(named[k].shape == m.shape and m.dtype == torch.bool for k, m in masks.items())

    logits, p = model(tokens(2, 4, 7))
    (logits.sum() + p.sum()).backward()
    grad = model.embedding_to_angles.weight.grad
    assert grad[12:].abs().max() == 0 and grad[:12].abs().max() > 0
    for bad in (0, 4, 1.5):
        with pytest.raises(ValueError):
            model.set_active_layers(bad)
    model.set_active_layers(3)
    assert model.frozen_masks() == {}


def test_initialize_strategies():
    assert Quixer.INIT_STRATEGIES == ("small_gaussian", "uniform", "xavier", "centroid")
    model = tiny(n=3, vocab=7, embed=5)
    for strategy in ("small_gaussian", "uniform", "xavier"):
        model.initialize(strategy, generator=torch.Generator().manual_seed(0))
        assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(ValueError, match="small_gaussian, uniform, xavier, centroid"):
        model.initialize("kaiming")

    model.initialize("small_gaussian")
    u = model.token_unitaries(torch.arange(7)).detach()
    assert (u - torch.eye(8, dtype=C128)).abs().max() < 0.05  # every circuit starts near the identity
    assert (model.feedforward_unitary().detach() - torch.eye(8, dtype=C128)).abs().max() < 0.1

    model.initialize("uniform")
    assert (model.token_unitaries(torch.arange(7)).detach() - torch.eye(8, dtype=C128)).abs().max() > 0.2


def test_centroid_initialisation():
    model = tiny(n=2, vocab=6, embed=4)
    centres = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    model.initialize("centroid", centroids=centres, generator=torch.Generator().manual_seed(1))
    emb = model.embedding.weight.detach()
    # an isometry of the centred centres (D=3 < E=4), scaled: pairwise distances keep their ratios
    d_in, d_out = torch.cdist(centres.double(), centres.double()), torch.cdist(emb, emb)
    torch.testing.assert_close(d_out / d_out[0, 1], d_in / d_in[0, 1])
    again = tiny(n=2, vocab=6, embed=4)
    again.initialize("centroid", centroids=centres, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again.embedding.weight, model.embedding.weight)
    wide = torch.randn(6, 9, generator=torch.Generator().manual_seed(2))
    model.initialize("centroid", centroids=wide)
    assert model.embedding.weight.shape == (6, 4)
    with pytest.raises(ValueError, match="vocabulary_size=6"):
        model.initialize("centroid", centroids=torch.randn(5, 4))
    with pytest.raises(ValueError, match="needs centroids"):
        model.initialize("centroid")


def test_eval_cache_follows_parameter_updates():
    model = tiny(n=3, window=4).eval()
    x = tokens(3, 4, 7)
    with torch.no_grad():
        before = model(x)[0]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    logits, _ = model(x)  # grad enabled: the uncached path
    logits.sum().backward()
    optimizer.step()
    with torch.no_grad():
        cached = model(x)[0]
    fresh = model(x)[0].detach()
    assert (cached - before).abs().max() > 1e-3
    torch.testing.assert_close(cached, fresh, rtol=0, atol=1e-12)


def test_forward_validates_input():
    model = tiny(n=2, window=4)
    with pytest.raises(ValueError, match=r"\[batch, 4\]"):
        model(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="dtype"):
        Quixer(dtype=torch.float32)
    with pytest.raises(ValueError, match="n_qubits"):
        Quixer(n_qubits=1)


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = tiny(n=3, window=4, degree=2, layers=2, vocab=8, embed=8, dropout=0.1, dtype=torch.complex64,
                 init="small_gaussian")
    x = tokens(16, 4, 8, seed=5)
    y = (x[:, -1] + 1) % 8  # learnable from the window
    angles_before = model.embedding_to_angles.weight.detach().clone()

    def postselection_is_a_probability(out):
        assert torch.isfinite(out[1]).all() and (out[1] <= 1 + 1e-5).all()

    losses = adam_steps(model, x, y, 25, check=postselection_is_a_probability)
    assert losses[-1] < 0.7 * losses[0]
    assert (model.embedding_to_angles.weight.detach() - angles_before).abs().max() > 1e-3


def test_bench_script_smoke(capsys):
    from bench import bench_quixer

    bench_quixer.main(["--batch-size", "2", "--qubits", "2", "--degree", "1", "--ansatz-layers", "1",
                       "--window", "3", "--embed-dim", "4", "--vocab", "5", "--steps", "1", "--warmup", "0",
                       "--impl", "both", "--device", "cpu"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("seconds_per_step", "eval_seconds_per_batch", "sequences_per_second", "parameters",
                "peak_memory_mb", "speedup_train", "speedup_eval", "config"):
        assert key in out
    assert out["naive"]["impl"] == "naive" and out["config"]["window"] == 3


def test_eval_cache_sees_writes_through_data():
    model = tiny(n=2, window=3).eval()
    x = tokens(2, 3, 7)
    with torch.no_grad():
        before = model(x)[0]
        model.embedding_to_angles.weight.data.mul_(3)  # bypasses the version counter
        model.quantum_feedforward_parameters.data.add_(0.5)
        cached = model(x)[0]
    torch.testing.assert_close(cached, model(x)[0].detach(), rtol=0, atol=1e-12)
    assert (cached - before).abs().max() > 1e-3


def test_eval_cache_follows_the_declared_circuit_parameters():
    """A subclass that adds a circuit parameter declares it in CIRCUIT_PARAMETERS and the cached
    eval path notices its changes; left undeclared, the cache would serve stale tables."""
    from torch import nn

    class Offset(Quixer):
        CIRCUIT_PARAMETERS = Quixer.CIRCUIT_PARAMETERS + ("angle_offsets",)

        def __init__(self, **kw):
            super().__init__(**kw)
            self.angle_offsets = nn.Parameter(torch.zeros(self.angles_per_layer * self.n_ansatz_layers))

        def token_angles(self, x):
            return super().token_angles(x) + self.angle_offsets[: self.angles_per_layer * self.active_layers]

    class Undeclared(Offset):
        CIRCUIT_PARAMETERS = Quixer.CIRCUIT_PARAMETERS

    x = torch.randint(0, 7, (5, 3), generator=torch.Generator().manual_seed(1))
    for cls, declared in ((Offset, True), (Undeclared, False)):
        torch.manual_seed(0)
        m = cls(n_qubits=2, n_tokens=3, qsvt_polynomial_degree=2, n_ansatz_layers=1, vocabulary_size=7,
                embedding_dimension=4, dropout=0.0).eval()
        with torch.no_grad():
            before = m(x)[0]  # cached path: builds the per-vocabulary tables
            m.angle_offsets.add_(0.7)
            after = m(x)[0]
        with torch.enable_grad():
            uncached = m(x)[0].detach()  # every circuit simulated from the current parameters
        assert not torch.allclose(before, uncached, atol=1e-4)
        assert torch.allclose(after, uncached if declared else before, atol=1e-5), cls.__name__
    assert Offset(n_qubits=2, n_tokens=3, vocabulary_size=7, embedding_dimension=4).PARAMETER_GROUPS["quantum"] == (
        "lcu_coefficients", "qsvt_polynomial_coefficients", "quantum_feedforward_parameters")
