"""Stage 2: lambeq k-mer circuits, exact vs Aer, shot statistics, the table's geometry, the CLI."""
from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
import subprocess

import numpy as np
import pytest
import torch

from quixer.common import UserError
from quixer.encoding import (
    BLOCH_VECTORS,
    EncoderSpec,
    KmerCircuits,
    WindowEmbeddings,
    aer_embeddings,
    aer_simulator,
    exact_embeddings,
    load_table,
    qiskit_template,
    table_sha256,
)
from quixer.windows import all_kmers, kmer_id, read_split_windows
from tests.helpers import REPO

import lambeq_encoder


@pytest.fixture(scope="module")
def default_circuits() -> KmerCircuits:
    return KmerCircuits(EncoderSpec())


@pytest.fixture(scope="module")
def default_table(default_circuits) -> np.ndarray:
    return exact_embeddings(default_circuits)


def _bloch(state: np.ndarray) -> np.ndarray:
    a, b = state
    return np.array([2 * (a.conjugate() * b).real, 2 * (a.conjugate() * b).imag, abs(a) ** 2 - abs(b) ** 2])


# --------------------------------------------------------------------------- circuit pieces
def test_nucleotide_states_form_a_regular_tetrahedron(default_circuits):
    states = default_circuits.nucleotide_states()  # evaluated by lambeq
    overlaps = np.abs(states.conj() @ states.T) ** 2
    np.testing.assert_allclose(overlaps, np.full((4, 4), 1 / 3) + np.eye(4) * (2 / 3), atol=1e-12)
    for base, state in zip("ACGT", states):
        np.testing.assert_allclose(_bloch(state), BLOCH_VECTORS[base], atol=1e-12)
    z = [BLOCH_VECTORS[b][2] for b in "ACGT"]
    np.testing.assert_allclose(np.diff(z), np.full(3, -2 / math.sqrt(15)), atol=1e-12)  # equally spaced


@pytest.mark.parametrize("ansatz,n_layers", [("sim14", 2), ("iqp", 2)])
def test_mixer_matches_pytket_and_qiskit_unitaries(ansatz, n_layers):
    """lambeq's tensor-network evaluation vs pytket's and qiskit's simulators of the same circuit."""
    from pytket.extensions.qiskit import tk_to_qiskit
    from qiskit.quantum_info import Operator

    circuits = KmerCircuits(EncoderSpec(k=3, embedding_dim=8, ansatz=ansatz, n_layers=n_layers, mixer_scale=1.0))
    u = circuits.mixer_unitary()  # pytket, from lambeq's to_tk()
    np.testing.assert_allclose(u.conj().T @ u, np.eye(8), atol=1e-12)
    assert np.abs(u - np.eye(8)).max() > 0.1  # a real mixer, not the identity
    np.testing.assert_array_equal(circuits.mixer_unitary(), u)  # bit-identical on every call
    lambeq_u = np.asarray(circuits.mixer.eval()).reshape(8, 8).T  # lambeq's tensor is (inputs, outputs)
    np.testing.assert_allclose(lambeq_u, u, atol=1e-10)
    tk = circuits.mixer.to_tk()
    qiskit_u = Operator(tk_to_qiskit(tk).reverse_bits()).data  # qiskit: qubit 0 least significant
    np.testing.assert_allclose(qiskit_u, u, atol=1e-10)


def test_mixer_scale_zero_gives_the_product_of_base_probabilities():
    """Without mixing the embedding is prod_i P(qubit i) from the Bloch z of each base (numpy reference)."""
    spec = EncoderSpec(k=3, embedding_dim=8, mixer_scale=0.0)
    table = exact_embeddings(KmerCircuits(spec))
    p0 = {b: (1 + BLOCH_VECTORS[b][2]) / 2 for b in "ACGT"}
    for row, kmer in enumerate(all_kmers(3)):
        per_qubit = [np.array([p0[b], 1 - p0[b]]) for b in kmer]
        np.testing.assert_allclose(table[row], np.kron(np.kron(per_qubit[0], per_qubit[1]), per_qubit[2]), atol=1e-12)


def test_batched_table_matches_whole_kmer_circuits(default_circuits, default_table):
    """Rows of the batched torch table = lambeq evaluation of each k-mer's whole circuit."""
    for kmer in ["AAAAAA", "ACGTAC", "GATTCA", "TTTTTG"]:
        amplitudes = np.asarray(default_circuits.kmer_circuit(kmer).eval()).reshape(-1)
        np.testing.assert_allclose(default_table[kmer_id(kmer)], np.abs(amplitudes) ** 2, atol=1e-12)


# --------------------------------------------------------------------------- backends
def test_exact_and_aer_agree_on_all_4096_kmers(default_circuits, default_table):
    aer, info = aer_embeddings(default_circuits, workers=2)
    assert info["aer_method"] == "statevector"
    assert np.abs(aer - default_table).max() < 1e-9


def test_qiskit_template_has_one_parameter_per_base_angle(default_circuits):
    qc, thetas, phis = qiskit_template(default_circuits)
    assert set(qc.parameters) == set(thetas) | set(phis) and len(thetas) == len(phis) == 6


def test_shot_estimates_lie_within_binomial_bounds():
    shots = 4000
    circuits = KmerCircuits(EncoderSpec(k=3, embedding_dim=8, ansatz="iqp", n_layers=2, mixer_scale=0.5))
    exact = exact_embeddings(circuits)
    sampled, info = aer_embeddings(circuits, shots=shots)
    assert info["aer_method"] == "statevector"
    np.testing.assert_allclose(sampled.sum(1), 1.0, atol=1e-12)
    sigma = np.sqrt(exact * (1 - exact) / shots)
    assert np.all(np.abs(sampled - exact) <= 5 * sigma + 1.5 / shots)
    assert np.abs(sampled - exact).max() > 0  # really sampled
    again, _ = aer_embeddings(circuits, shots=shots)
    np.testing.assert_array_equal(sampled, again)  # seeded
    other, _ = aer_embeddings(circuits, shots=shots, seed=7)
    assert not np.array_equal(sampled, other)


def test_depolarising_noise_mixes_towards_uniform():
    circuits = KmerCircuits(EncoderSpec(k=3, embedding_dim=8, mixer_scale=0.5))
    exact = exact_embeddings(circuits)
    noisy, info = aer_embeddings(circuits, noise=0.05)
    assert info["aer_method"] == "density_matrix"
    np.testing.assert_allclose(noisy.sum(1), 1.0, atol=1e-12)
    assert 1e-3 < np.abs(noisy - exact).max()
    uniform = np.full(8, 1 / 8)
    # every k-mer's distribution moves closer to uniform under depolarising noise
    assert np.all(np.abs(noisy - uniform).sum(1) < np.abs(exact - uniform).sum(1))


def test_aer_gpu_request_falls_back_to_cpu_with_a_warning(caplog):
    import torch.cuda

    with caplog.at_level(logging.INFO, logger="quixer.encoding"):
        sim, used = aer_simulator("cuda", 1, "statevector")
    if used == "CPU":  # a machine without a working qiskit-aer GPU build
        assert any(r.levelno == logging.WARNING and "falling back" in r.message for r in caplog.records)
    else:
        assert torch.cuda.is_available()


# --------------------------------------------------------------------------- table geometry
def test_embeddings_carry_the_bases(default_table):
    table = torch.from_numpy(default_table)
    dist = torch.cdist(table, table)
    n = len(table)
    off_diagonal = dist[~torch.eye(n, dtype=torch.bool)]
    assert off_diagonal.min() > 1e-4  # distinct k-mers -> distinct embeddings at D = 2^k
    rows = torch.arange(n)
    one_base = []
    for pos in range(6):
        for delta in (1, 2, 3):
            digit = (rows >> (2 * (5 - pos))) & 3
            other = rows + (((digit + delta) % 4) - digit) * 4 ** (5 - pos)
            one_base.append(dist[rows, other])
    one_base_mean = torch.cat(one_base).mean()
    assert one_base_mean < 0.75 * off_diagonal.mean()


def test_smaller_dim_is_the_marginal_of_the_first_qubits(default_table):
    half = exact_embeddings(KmerCircuits(EncoderSpec(embedding_dim=32)))
    np.testing.assert_allclose(half, default_table.reshape(-1, 32, 2).sum(-1), atol=1e-12)


def test_seed_determinism(default_table):
    again = exact_embeddings(KmerCircuits(EncoderSpec()))
    np.testing.assert_array_equal(again, default_table)
    other = exact_embeddings(KmerCircuits(EncoderSpec(seed=43)))
    assert np.abs(other - default_table).max() > 1e-3


@pytest.mark.parametrize("dim", [0, 1, 48, 128])
def test_bad_embedding_dim_is_a_user_error(dim):
    with pytest.raises(UserError, match="embedding_dim"):
        EncoderSpec(embedding_dim=dim).validate()


# --------------------------------------------------------------------------- stage 2 end to end
def _launch(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "run_lambeq_gpu.sh"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def encoded(stage1_dir, tmp_path_factory):
    """Stage 2 through the original launcher (DATA_DIR OUT_DIR DIM WORKERS DEVICE + extra flags)."""
    out = tmp_path_factory.mktemp("stage2") / "lambeq_embeddings_autoregressive"
    proc = _launch(stage1_dir, out, 64, 1, "cpu", "--materialize")
    assert proc.returncode == 0, proc.stderr
    return out


def test_stage2_outputs(encoded, stage1_dir, default_table):
    meta = json.loads((encoded / "metadata.json").read_text())
    stage1_meta = json.loads((stage1_dir / "metadata.json").read_text())
    kmers, table = load_table(encoded)
    assert kmers == ["".join(p) for p in itertools.product("ACGT", repeat=6)]
    assert table.dtype == torch.float32 and table.shape == (4096, 64)
    np.testing.assert_allclose(table.numpy(), default_table, atol=1e-7)
    assert meta["table_sha256"] == table_sha256(kmers, table.numpy())
    assert meta["data_input_sha256"] == stage1_meta["input_sha256"]
    assert meta["backend"] == "exact" and meta["shots"] == 0 and meta["seed"] == 42
    assert meta["circuit"]["ansatz"] == "sim14" and len(meta["circuit"]["mixer_params_turns"]) == 24
    for split in ("train", "val", "test"):
        obj = torch.load(encoded / f"{split}.pt")
        ids, labels = obj["kmer_ids"], obj["labels"]
        windows = read_split_windows(stage1_dir, split)
        assert ids.dtype == torch.int16 and ids.shape == (len(windows), 32)
        assert meta["counts"][split] == len(windows)
        for row in (0, len(windows) // 2, len(windows) - 1):
            assert [kmers[i] for i in ids[row].tolist()] == windows[row]
        assert torch.equal(labels.long(), ids[:, -1].long())  # stage-1 labels: id of the last k-mer
        view = WindowEmbeddings.from_dir(encoded, split)
        assert len(view) == len(windows) and view.shape == (len(windows), 32, 64)
        assert torch.equal(view[3], table[ids[3].long()])
        full = torch.load(encoded / f"{split}_embeddings.pt")["embeddings"]
        assert torch.equal(full, view.materialize())
        assert torch.equal(view[torch.tensor([5, 1])], full[[5, 1]])


def test_stage2_rerun_is_a_no_op_and_other_flags_are_refused(encoded, stage1_dir):
    before = {p.name: p.stat().st_mtime_ns for p in encoded.iterdir()}
    args = ["--data_dir", str(stage1_dir), "--output_dir", str(encoded), "--device", "cpu", "--materialize"]
    assert lambeq_encoder.main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in encoded.iterdir()} == before
    with pytest.raises(UserError, match="different run"):
        lambeq_encoder.main(args + ["--seed", "7"])


def test_stage2_user_errors(stage1_dir, tmp_path):
    with pytest.raises(UserError, match="embedding_dim 48"):
        lambeq_encoder.main(["--data_dir", str(stage1_dir), "--output_dir", str(tmp_path / "o"), "--embedding_dim", "48"])
    with pytest.raises(UserError, match="need --backend aer"):
        lambeq_encoder.main(["--data_dir", str(stage1_dir), "--output_dir", str(tmp_path / "o"), "--shots", "100"])
    with pytest.raises(UserError, match="metadata.json"):
        lambeq_encoder.main(["--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")])
    broken = tmp_path / "broken"
    shutil.copytree(stage1_dir, broken)
    with open(broken / "val" / "sentences.txt", "a") as fh:
        fh.write("ACGTAC\n")
    with pytest.raises(UserError, match="does not match"):
        lambeq_encoder.main(["--data_dir", str(broken), "--output_dir", str(tmp_path / "o2"), "--device", "cpu"])
    assert not (tmp_path / "o2").exists()  # nothing half-written


def test_launcher_usage_and_errors(stage1_dir, tmp_path):
    bad = _launch("only", "two")
    assert bad.returncode == 2 and "usage:" in bad.stderr
    err = _launch(stage1_dir, tmp_path / "e", 48, 1, "cpu")
    assert err.returncode == 2
    assert err.stderr.strip().splitlines()[-1].startswith("error: --embedding_dim 48")
    assert not (tmp_path / "e").exists()


def test_help_lists_the_flags():
    text = lambeq_encoder.build_parser().format_help()
    for flag in ("--data_dir", "--embedding_dim", "--ansatz", "--mixer_scale", "--backend", "--shots", "--noise",
                 "--device", "--workers", "--materialize"):
        assert flag in text
