"""The Quixer circuit for hardware (quixer/hardware/*.py) against the torch model.

The references are independent: the circuit is built with pytket from the model's parameters
alone (its own ansatz-14 gate list, multiplexed rotations, diagonal phases, mid-circuit
postselection) and simulated by qiskit-aer; the torch model (quixer/model.py) gives the
normalised QSVT state, the postselection probability and the features its head reads (captured
with a forward pre-hook). Small configurations at gate level (pytket's decomposition into CX and
rotations, and the compiled circuits), the paper's 6 qubits / 31 tokens / degree 3 / 4 layers
with the multiplexors as qiskit's own gates; then shot sampling, and the stage script on a real
tiny trained run.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tests.token_fixtures import make_token_dir

import estimate_quixer_hardware
import train_classical_baselines
import train_quixer_hybrid
from quixer.common import UserError
from quixer.hardware import HARDWARE_JSON, HARDWARE_MD, HARDWARE_PNG, hardware_summary_markdown, load_quixer_run
from quixer.hardware.circuit import BASES, model_circuit
from quixer.hardware.resources import compile_circuit, gate_counts, resource_counts
from quixer.hardware.shots import exact_outcomes, features_from_distributions, sample_features
from quixer.hardware.simulation import pauli_features, simulate
from quixer.intervals import GroupBootstrap
from quixer.model import Quixer
from quixer.scoring import TargetScores

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model(n, window, degree, layers, seed=0, vocab=11, negate=(1,)):
    """A complex128 model with generic parameters: complex LCU weights, signed polynomial."""
    m = Quixer(n_qubits=n, n_tokens=window, qsvt_polynomial_degree=degree, n_ansatz_layers=layers,
               vocabulary_size=vocab, embedding_dimension=6, dropout=0.0, dtype=torch.complex128)
    m.initialize("uniform", generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for k in negate:
            if k <= degree:
                m.qsvt_polynomial_coefficients[k] *= -1
    return m.eval()


def reference(m, x):
    """The torch model on one window: normalised state, postselection, features."""
    features = []
    hook = m.output_feedforward.register_forward_pre_hook(lambda _m, args: features.append(args[0]))
    with torch.no_grad():
        _, post = m(x[None])
        state = m.qsvt_state(x[None])[0].numpy()
    hook.remove()
    return state / np.linalg.norm(state), float(post[0]), features[0][0].numpy()


def window(m, seed=3):
    return torch.randint(0, m.vocabulary_size, (m.n_tokens,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n,tokens,degree,layers,negate", [
    (2, 3, 2, 1, (1,)),      # an unused LCU slot, a negative power
    (3, 5, 3, 2, (0, 2)),    # c_0 < 0 (global sign), sign changes between powers
    (2, 1, 2, 1, (2,)),      # one token: no LCU register
    (2, 4, 1, 1, ()),        # a full LCU register, degree 1
])
def test_gate_level_circuit_is_the_model(n, tokens, degree, layers, negate):
    m = model(n, tokens, degree, layers, negate=negate)
    x = window(m)
    state, post, features = reference(m, x)
    circuit = model_circuit(m, x)
    assert circuit.width == n + math.ceil(math.log2(tokens)) + degree
    sim = simulate(circuit.state, decompose=True)
    assert np.abs(sim.register_state("tok") - state).max() < 1e-10  # global phase included
    assert sim.success == pytest.approx(post, rel=1e-10)
    outputs = {}
    for basis in BASES:  # the whole measured circuit of each basis, from |0...0>
        full = simulate(circuit.measured(basis), decompose=True)
        assert full.success == pytest.approx(post, rel=1e-10)
        outputs[basis] = full.outputs
    assert np.abs(pauli_features(outputs, n) - features).max() < 1e-10


def test_paper_size_circuit_is_the_model():
    """6 qubits, 31 tokens, degree 3, 4 layers: 14 qubits with the LCU register reused."""
    m = model(6, 31, 3, 4, seed=1, negate=(2,))
    x = window(m)
    state, post, features = reference(m, x)
    circuit = model_circuit(m, x)
    assert circuit.width == 6 + 5 + 3
    counts = gate_counts(circuit.state)
    assert counts["measurements"] == 3 * 5 + 3  # the LCU register after each power, then the polynomial
    sim = simulate(circuit.state, decompose=False)
    assert np.abs(sim.register_state("tok") - state).max() < 1e-10
    assert sim.success == pytest.approx(post, rel=1e-10)
    outputs = {b: simulate(circuit.tail(b), decompose=False, initial=sim).outputs for b in BASES}
    assert np.abs(pauli_features(outputs, 6) - features).max() < 1e-10


def test_paper_registers_at_gate_level():
    """pytket's decomposition of the paper-size multiplexors (6 token and 5 LCU qubits), one power."""
    m = model(6, 31, 1, 1, seed=2, negate=())
    x = window(m)
    state, post, _ = reference(m, x)
    sim = simulate(model_circuit(m, x).state, decompose=True)
    assert np.abs(sim.register_state("tok") - state).max() < 1e-10
    assert sim.success == pytest.approx(post, rel=1e-10)


@pytest.mark.parametrize("gate_set,allowed", [("ibm", {"CX", "Rz", "SX", "X"}), ("ion", {"ZZPhase", "PhasedX", "Rz"})])
def test_compiled_circuit_is_still_the_model(gate_set, allowed):
    """The circuits that are counted (blocks compiled, put back together) measure the same."""
    m = model(2, 3, 3, 1, seed=4, negate=(0, 2))
    x = window(m)
    state, post, features = reference(m, x)
    circuit = model_circuit(m, x)
    compiled = compile_circuit(circuit, gate_set)
    for stage in ("before", "after"):
        sim = simulate(circuit.assemble(compiled[stage]))
        assert sim.success == pytest.approx(post, rel=1e-9)
        # a global phase of the whole circuit is unobservable, and the optimiser does not keep it
        assert abs(abs(np.vdot(state, sim.register_state("tok"))) - 1) < 1e-10
        outputs = {}
        for basis in BASES:
            full = circuit.assemble(compiled[stage], basis=basis)
            assert {c.op.type.name for c in full.get_commands()} <= allowed | {"Measure"}
            outputs[basis] = simulate(full.copy()).outputs if basis == "Y" else \
                simulate(circuit.assemble(compiled[stage], basis=basis, state=False), initial=sim).outputs
        assert np.abs(pauli_features(outputs, 2) - features).max() < 1e-9


def test_resource_counts_are_those_of_the_whole_circuit():
    m = model(3, 5, 2, 1, seed=5)
    circuit = model_circuit(m, window(m))
    res = resource_counts(circuit, ["ibm"], progress=False)
    ibm = res["gate_sets"]["ibm"]
    after, before = ibm["after"], ibm["before"]
    assert after["qubits"] == circuit.width == 3 + 3 + 2
    assert after["measurements"] == res["postselection_measurements"] + 3 == 2 * 3 + 2 + 3
    # a multiplexed rotation with k controls is 2^k CX: per power 12 of them (4 n, n = 3), 6 RY
    # with 4 controls (flag + 3 LCU) and 6 CRX with 5, plus the LCU phase diagonal
    assert ibm["select_block"]["before"]["two_qubit_gates"] >= 6 * 16 + 6 * 32
    assert after["two_qubit_gates"] >= 2 * ibm["select_block"]["after"]["two_qubit_gates"]
    assert before["two_qubit_gates"] >= res["decomposed"]["two_qubit_gates"]
    assert after["gates"] <= before["gates"] and after["depth"] <= before["depth"]
    assert after["two_qubit_depth"] <= after["two_qubit_gates"] <= after["gates"]


# ---- shots --------------------------------------------------------------------------------

def test_sampled_features_are_unbiased_and_seeded():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(8), size=(4, 3))
    post = np.array([0.9, 0.5, 0.1, 0.0])
    exact = features_from_distributions(probs, 3)
    runs = [sample_features(probs, post, 400, np.random.default_rng([7, r])) for r in range(200)]
    features = np.stack([f for f, _ in runs])
    kept = np.stack([k for _, k in runs])
    assert np.allclose(kept[:, :3].mean(0), 400 * post[:3, None], rtol=0.02)
    assert (kept[:, 3] == 0).all() and (features[:, 3] == 0).all()  # never kept: the explicit fallback
    # the mean of 200 draws within 5 standard errors of the exact features
    stderr = np.sqrt((1 - exact[:3] ** 2) / (400 * post[:3, None]) / 200) + 1e-12
    assert (np.abs(features[:, :3].mean(0) - exact[:3]) < 5 * stderr + 1e-3).all()
    again = sample_features(probs, post, 400, np.random.default_rng([7, 0]))
    assert np.array_equal(again[0], runs[0][0]) and np.array_equal(again[1], runs[0][1])


def test_exact_outcomes_are_the_models_features_and_logits():
    m = model(3, 4, 2, 2, seed=6)
    x = torch.randint(0, m.vocabulary_size, (37, 4), generator=torch.Generator().manual_seed(0))
    out = exact_outcomes(m, x, batch_size=16, progress=False)
    with torch.no_grad():
        logits, post = m(x)
    assert np.allclose(out["logits"], logits.numpy(), atol=1e-12)
    assert np.allclose(out["postselection"], post.numpy(), atol=1e-14)
    assert np.allclose(features_from_distributions(out["probs"], 3), out["features"], atol=1e-12)
    assert out["probs"].shape == (37, 3, 8) and np.allclose(out["probs"].sum(-1), 1)
    # one window against the circuit: the measured distributions themselves
    circuit = model_circuit(m, x[5])
    sim = simulate(circuit.state, decompose=False)
    for i, basis in enumerate(BASES):
        assert np.allclose(simulate(circuit.tail(basis), decompose=False, initial=sim).outputs, out["probs"][5, i],
                           atol=1e-12)


# ---- the stage script on a real tiny trained run --------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardware")
    tokens = make_token_dir(root / "tokens", sizes=(320, 80, 120))
    run = root / "quixer"
    train_quixer_hybrid.main(["--data_dir", str(tokens), "--output_dir", str(run), "--qubits", "2", "--degree", "2",
                              "--ansatz_layers", "2", "--embedding_dim", "16", "--device", "cpu", "--batch_size", "32",
                              "--lr", "0.02", "--seed", "3", "--epochs", "2"])
    return tokens, run


def test_script_writes_a_consistent_estimate(trained, tmp_path):
    tokens, run = trained
    out = tmp_path / "hw"
    argv = ["--run_dir", str(run), "--output_dir", str(out), "--shots", "50", "5000", "--seed", "1",
            "--max_windows", "0", "--gate_sets", "ibm"]
    assert estimate_quixer_hardware.main(argv) == 0
    report = json.loads((out / HARDWARE_JSON).read_text())
    assert (out / HARDWARE_MD).read_text().startswith("# Quixer on hardware")
    assert (out / HARDWARE_PNG).read_bytes()[:4] == b"\x89PNG"
    v = report["circuit"]["verification"]
    assert v["state_max_abs_error"] < 1e-10 and v["features_max_abs_error"] < 1e-10
    assert report["circuit"]["qubits"] == 2 + 3 + 2
    rows = {r["shots"]: r for r in report["shots"]["rows"]}
    assert set(rows) == {None, 50, 5000}
    results = json.loads((run / "results.json").read_text())
    assert report["shots"]["windows"] == results["test_targets"]  # the very targets the run was scored on
    for key in ("loss", "top1", "top5"):  # exact features: the run's own test metrics (complex64 there)
        assert rows[None][key] == pytest.approx(results[f"test_{key}"], rel=1e-4, abs=1e-4)
    # 95 % intervals over the test gene groups: the exact row's are those of the run's own test scores
    own = TargetScores.load(run / "test_scores.npz")
    boot = GroupBootstrap(own.groups, len(own))
    assert own.groups is not None and len(np.unique(own.groups)) < len(own)  # groups, not single targets
    assert rows[None]["top1_ci95"] == pytest.approx(boot.estimate([own], "top1").interval(0, 1), abs=1e-3)
    for r in rows.values():
        for key in ("top1", "top5", "perplexity"):
            assert r[f"{key}_ci95"][0] <= r[key] <= r[f"{key}_ci95"][1], (r["shots"], key)
    for s in (50, 5000):  # paired on the same targets: the shot noise alone
        assert rows[s]["top1_minus_exact"] == pytest.approx(rows[s]["top1"] - rows[None]["top1"])
        assert rows[s]["top1_minus_exact_ci95"][0] <= rows[s]["top1_minus_exact"] <= rows[s]["top1_minus_exact_ci95"][1]
    width = {s: np.diff(rows[s]["perplexity_minus_exact_ci95"])[0] for s in (50, 5000)}
    assert 0 < width[5000] < width[50]
    assert "bootstrap over the test targets' gene groups" in (out / HARDWARE_MD).read_text()
    assert rows[5000]["executions_per_prediction"] == 15000
    assert rows[5000]["executions_for_s_kept_mean"] >= 15000 / 1.0
    assert abs(rows[5000]["loss"] - rows[None]["loss"]) < abs(rows[50]["loss"] - rows[None]["loss"]) + 0.02
    assert report["resources"]["gate_sets"]["ibm"]["after"]["two_qubit_gates"] > 0

    mtime = (out / HARDWARE_JSON).stat().st_mtime_ns
    assert estimate_quixer_hardware.main(argv) == 0  # same flags: up to date, nothing rewritten
    assert (out / HARDWARE_JSON).stat().st_mtime_ns == mtime
    (out / HARDWARE_MD).unlink()  # as if killed before the report was complete: made again
    assert estimate_quixer_hardware.main(argv) == 0
    assert (out / HARDWARE_MD).is_file()
    assert json.loads((out / HARDWARE_JSON).read_text())["shots"] == report["shots"]
    with pytest.raises(UserError, match="--force"):
        estimate_quixer_hardware.main([*argv[:-2], "--gate_sets"])
    assert estimate_quixer_hardware.main([*argv[:-2], "--gate_sets", "--force"]) == 0
    again = json.loads((out / HARDWARE_JSON).read_text())
    assert again["shots"]["rows"] == report["shots"]["rows"]  # seeded: the same draws
    assert again["resources"]["gate_sets"] == {}

    line = hardware_summary_markdown(out)
    assert line is not None and "hardware.md" in line and f"{100 * rows[None]['top1']:.2f} %" in line
    assert hardware_summary_markdown(run) is None


def test_script_errors_are_one_line(trained, tmp_path, capsys):
    tokens, run = trained
    with pytest.raises(SystemExit) as exc:
        estimate_quixer_hardware.main(["--help"])
    assert exc.value.code == 0 and "--max_windows" in capsys.readouterr().out
    with pytest.raises(UserError, match="run directory not found"):
        load_quixer_run(tmp_path / "missing")
    train_classical_baselines.main(["--model", "uniform", "--data_dir", str(tokens),
                                    "--output_dir", str(tmp_path / "u")])
    with pytest.raises(UserError, match="not a Quixer run"):
        load_quixer_run(tmp_path / "u")
    no_best = tmp_path / "no_best"
    no_best.mkdir()
    for name in ("config.json", "results.json"):
        (no_best / name).write_bytes((run / name).read_bytes())
    with pytest.raises(UserError, match="best.pt: not found"):
        load_quixer_run(no_best)
    with pytest.raises(UserError, match="not a directory"):
        estimate_quixer_hardware.main(["--run_dir", str(run), "--output_dir", str(run / "config.json")])
    with pytest.raises(UserError, match="--shots"):
        estimate_quixer_hardware.main(["--run_dir", str(run), "--shots", "0", "--output_dir", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_model_folder_and_other_data(trained, tmp_path):
    """The pipeline's layout (runs/quixer/seed_<s>/) is accepted, the seed said; tokens other
    than the run's own are refused in one line."""
    import shutil

    tokens, run = trained
    folder = tmp_path / "quixer"
    for seed in (43, 42):
        shutil.copytree(run, folder / f"seed_{seed}")
    assert load_quixer_run(folder).run_dir == folder / "seed_42"
    assert load_quixer_run(folder, run_seed=43).run_dir == folder / "seed_43"
    with pytest.raises(UserError, match=r"no seed_7/ run \(seeds: 42, 43\)"):
        load_quixer_run(folder, run_seed=7)
    with pytest.raises(UserError, match="no seed_<s>/ runs"):
        load_quixer_run(tmp_path)
    other = tmp_path / "tok2"
    shutil.copytree(tokens, other)
    obj = torch.load(other / "test.pt", weights_only=True)
    obj["sequences"][0, 0] = (obj["sequences"][0, 0] + 1) % obj["sequences"].max()
    obj["labels"] = obj["sequences"][:, -1].clone()
    torch.save(obj, other / "test.pt")
    with pytest.raises(UserError, match="not the tokens .* was trained on"):
        load_quixer_run(folder, data_dir=other)


def test_a_checkpoint_with_model_config_is_built_from_it(trained, tmp_path):
    """best.pt written since checkpoints carry ``model_config`` is built from it (the run's own
    dropout, 0.1; the shape path uses 0); the same checkpoint without it, from the tensors' shapes:
    the same model, logits and estimate. A model_config that is no QuixerConfig is one line."""
    import shutil

    from quixer.data import load_token_data

    tokens, run = trained
    old = tmp_path / "old"
    shutil.copytree(run, old)
    best = torch.load(old / "best.pt", weights_only=True)
    assert best["model_config"]["dropout"] == 0.1
    del best["model_config"]  # as written before checkpoints carried it
    torch.save(best, old / "best.pt")
    new_run, old_run = load_quixer_run(run), load_quixer_run(old)
    assert new_run.model.dropout.p == 0.1 and old_run.model.dropout.p == 0.0
    assert not new_run.model.training and not old_run.model.training
    a, b = new_run.model.state_dict(), old_run.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    x = load_token_data(tokens).splits["test"][:, :-1]
    with torch.no_grad():
        (logits_a, post_a), (logits_b, post_b) = new_run.model(x), old_run.model(x)
    assert logits_a.dtype == torch.float64 and torch.equal(logits_a, logits_b) and torch.equal(post_a, post_b)

    reports = []
    for source in (run, old):
        out = tmp_path / f"hw_{source.name}"
        assert estimate_quixer_hardware.main(["--run_dir", str(source), "--output_dir", str(out), "--shots", "50",
                                              "--seed", "1", "--max_windows", "60", "--gate_sets"]) == 0
        report = json.loads((out / HARDWARE_JSON).read_text())
        del report["run_dir"], report["signature"]["checkpoint_sha256"]  # the copy's path, the edited file
        del report["circuit"]["verification"]["simulation_seconds"]
        reports.append(report)
    assert reports[0] == reports[1]
    best["model_config"] = {"qubits": 0}
    torch.save(best, old / "best.pt")
    with pytest.raises(UserError, match=r"best\.pt: its model_config is not a Quixer configuration \(--qubits must "):
        load_quixer_run(old)
