"""Stage 2: one lambeq circuit per k-mer -> measurement probabilities -> a per-k-mer embedding table.

The circuit of a k-mer ``b_1 ... b_k`` (k qubits, qubit i carries base i):

* one single-qubit *word* per base, ``Ket(0) >> Ry(theta_b) >> Rz(phi_b)``, whose Bloch vector
  is one vertex of a regular tetrahedron (:data:`BLOCH_VECTORS`), so every pair of bases is
  equally distinguishable (``|<a|b>|^2 = 1/3``). The tetrahedron is turned so that the four
  z components are equally spaced (A > C > G > T), which keeps the four bases apart even in
  the computational-basis probabilities of an un-entangled qubit;
* the k words side by side, then one shared entangling *mixer* box ``n^k -> n^k`` turned into a
  circuit by a lambeq ansatz (Sim14 by default, IQP optional) whose angles are drawn once from
  ``seed``: uniform in ``[-mixer_scale/2, +mixer_scale/2)`` turns (lambeq's unit; 1 turn =
  2 pi rad). ``mixer_scale`` 0 is no mixing, 1 a fully random mixer; the small default keeps
  each base mostly on its own qubit (local structure) while letting neighbours interact.

The embedding is the probability vector of the first ``log2(D)`` qubits in the computational
basis, qubit 0 the most significant bit (lambeq's and pytket's order; qiskit's is the reverse).

Every one of the ``4^k`` k-mers is simulated once, in ``itertools.product("ACGT", repeat=k)``
order (= :func:`quixer.windows.kmer_id`), so every split indexes into the same table; windows
are stored as ``[N, W]`` k-mer ids. Two backends give the same table:

* ``exact``: the pieces are evaluated once (the four base states by lambeq, the mixer's
  unitary by pytket from lambeq's ``to_tk()``) and torch combines them for all k-mers in a
  few batched products (CPU or CUDA);
* ``aer``: the same lambeq circuit goes through pytket into ONE parameterised qiskit circuit
  (base angles as qiskit Parameters), run by qiskit-aer for all k-mers in one job: exact
  probabilities, or ``shots`` samples, optionally with depolarising noise, on GPU when
  qiskit-aer-gpu really works there.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .common import (
    UserError,
    atomic_torch_save,
    atomic_write_json,
    check_output_dir,
    load_torch_file,
    peak_rss_mb,
    read_json,
    resolve_device,
    sha256_file,
    staged_output_dir,
)
from .window_sources import WindowSources
from .windows import BASES, SPLITS, all_kmers, load_metadata, split_kmer_ids

log = logging.getLogger(__name__)

ANSATZE = ("sim14", "iqp")
BACKENDS = ("exact", "aer")
DEFAULT_DATA_DIR = "autoregressive_data"
DEFAULT_OUTPUT_DIR = "lambeq_embeddings_autoregressive"
TABLE_FILE = "kmer_embeddings.pt"
MAX_K = 10  # 4^10 k-mers x 2^10 probabilities is already ~4 GB of float32

_B = 1.0 / math.sqrt(15.0)
_C = 1.0 / math.sqrt(3.0)
#: Bloch vectors of A, C, G, T: a regular tetrahedron (pairwise dot product -1/3) turned so
#: that the z components are equally spaced, 3b, b, -b, -3b (b = 1/sqrt(15)).
BLOCH_VECTORS = {
    "A": (-_B, -_C, 3 * _B),
    "C": (3 * _B, _C, _B),
    "G": (-3 * _B, _C, -_B),
    "T": (_B, -_C, -3 * _B),
}


def nucleotide_angles() -> dict[str, tuple[float, float]]:
    """(Ry, Rz) angles in turns that take |0> to each base's Bloch vector (up to a global phase)."""
    out = {}
    for base, (x, y, z) in BLOCH_VECTORS.items():
        theta = math.acos(max(-1.0, min(1.0, z)))
        phi = math.atan2(y, x)
        out[base] = (theta / (2 * math.pi), phi / (2 * math.pi))
    return out


def kmer_digits(k: int, rows: np.ndarray) -> np.ndarray:
    """[len(rows), k] base indices (A=0 .. T=3) of table rows, most significant base first."""
    rows = np.asarray(rows, dtype=np.int64)
    shifts = 2 * np.arange(k - 1, -1, -1, dtype=np.int64)
    return (rows[:, None] >> shifts[None, :]) & 3


# --------------------------------------------------------------------------- circuit spec
@dataclass(frozen=True)
class EncoderSpec:
    """Everything that determines the embedding table (and nothing that does not)."""

    k: int = 6
    embedding_dim: int = 64
    ansatz: str = "sim14"
    n_layers: int = 1
    seed: int = 42
    mixer_scale: float = 0.1

    @property
    def n_measured(self) -> int:
        return int(self.embedding_dim).bit_length() - 1

    @property
    def vocab_size(self) -> int:
        return 4**self.k

    def validate(self) -> None:
        if not 1 <= self.k <= MAX_K:
            raise UserError(f"k = {self.k}: the encoder supports 1 <= k <= {MAX_K} (one qubit per base)")
        d = self.embedding_dim
        if d < 2 or d & (d - 1):
            raise UserError(
                f"--embedding_dim {d} is not a power of two >= 2: the embedding is the probability "
                f"vector of log2(D) measured qubits (use one of {[2 ** i for i in range(1, self.k + 1)]})"
            )
        if d > 2**self.k:
            raise UserError(
                f"--embedding_dim {d} is larger than 2^k = {2 ** self.k}: a {self.k}-mer circuit has "
                f"{self.k} qubits, so at most {2 ** self.k} outcome probabilities"
            )
        if self.ansatz not in ANSATZE:
            raise UserError(f"--ansatz must be one of {', '.join(ANSATZE)}, not {self.ansatz!r}")
        if self.n_layers < 1:
            raise UserError("--n_layers must be >= 1")
        if not (math.isfinite(self.mixer_scale) and self.mixer_scale >= 0):
            raise UserError("--mixer_scale must be a finite number >= 0 (turns)")


class KmerCircuits:
    """The lambeq circuits of a spec: base states, the seeded mixer, whole k-mer circuits."""

    def __init__(self, spec: EncoderSpec):
        spec.validate()
        self.spec = spec
        self.angles = nucleotide_angles()

    # lambeq is slow to import: only when a circuit is really built.
    @cached_property
    def _lambeq(self):
        from lambeq.ansatz.circuit import IQPAnsatz, Sim14Ansatz
        from lambeq.backend import grammar, quantum

        return grammar, quantum, {"sim14": Sim14Ansatz, "iqp": IQPAnsatz}

    def nucleotide_circuit(self, base: str | None = None, angles: tuple[Any, Any] | None = None):
        """``Ket(0) >> Ry >> Rz`` for a base (or explicit angles, e.g. placeholders)."""
        _, q, _ = self._lambeq
        theta, phi = angles if angles is not None else self.angles[base]
        return q.Ket(0) >> q.Ry(theta) >> q.Rz(phi)

    @cached_property
    def _symbolic_mixer(self):
        grammar, _, ansatze = self._lambeq
        n = grammar.Ty("n")
        box = grammar.Box("mixer", n**self.spec.k, n**self.spec.k)
        circuit = ansatze[self.spec.ansatz]({n: 1}, n_layers=self.spec.n_layers)(box)
        symbols = sorted(circuit.free_symbols, key=lambda s: int(s.name.rsplit("_", 1)[1]))
        return circuit, symbols

    @cached_property
    def mixer_params(self) -> np.ndarray:
        """Seeded mixer angles in turns, in the ansatz's parameter order."""
        _, symbols = self._symbolic_mixer
        rng = np.random.default_rng(self.spec.seed)
        return self.spec.mixer_scale * rng.uniform(-0.5, 0.5, size=len(symbols))

    @cached_property
    def mixer(self):
        """The mixer as a lambeq circuit with numeric angles (zero-angle rotations left out)."""
        circuit, symbols = self._symbolic_mixer
        if symbols:
            circuit = circuit.lambdify(*symbols)(*self.mixer_params.tolist())
        return self._drop_zero_rotations(circuit)

    def _drop_zero_rotations(self, circuit):
        """The same circuit without its (identity) zero-angle rotations.

        lambeq 0.5's ``to_tk()`` cannot export a rotation of angle exactly 0 (``--mixer_scale 0``).
        """
        _, q, _ = self._lambeq
        out = q.Id(circuit.dom)
        for layer in circuit.layers:
            box = layer.box
            inner = box.controlled if isinstance(box, q.Controlled) else box
            if isinstance(inner, q.Rotation) and float(inner.phase) == 0.0:
                continue
            out = out >> (q.Id(layer.left) @ box @ q.Id(layer.right))
        return out

    def words(self, kmer: str | None = None, angles: Sequence[tuple[Any, Any]] | None = None):
        _, q, _ = self._lambeq
        if angles is None:
            angles = [self.angles[b] for b in kmer]
        return q.Id().tensor(*[self.nucleotide_circuit(angles=a) for a in angles])

    def kmer_circuit(self, kmer: str):
        """The whole circuit of one k-mer (state preparation only; no measurement boxes)."""
        if len(kmer) != self.spec.k or set(kmer) - set(BASES):
            raise UserError(f"{kmer!r} is not an ACGT {self.spec.k}-mer")
        return self.words(kmer) >> self.mixer

    def nucleotide_states(self) -> np.ndarray:
        """[4, 2] complex amplitudes of A, C, G, T, evaluated by lambeq."""
        return np.stack([np.asarray(self.nucleotide_circuit(b).eval(), dtype=np.complex128) for b in BASES])

    def mixer_unitary(self) -> np.ndarray:
        """[2^k, 2^k] mixer matrix U[out, in] of the lambeq circuit, qubit 0 most significant.

        Computed by pytket from ``to_tk()``: the same numbers as lambeq's own ``eval()`` to
        ~1e-15 (checked in the tests), but identical to the bit on every call, whereas the
        order of lambeq's tensor-network contraction (and so the last bits) varies.
        """
        return np.asarray(self.mixer.to_tk().get_unitary(), dtype=np.complex128)

    def describe(self) -> dict:
        return {
            "k": self.spec.k,
            "n_qubits": self.spec.k,
            "measured_qubits": list(range(self.spec.n_measured)),
            "embedding_dim": self.spec.embedding_dim,
            "words": "one qubit per base: Ket(0) >> Ry(theta) >> Rz(phi); Bloch vectors = regular tetrahedron",
            "nucleotide_angles_turns": {b: {"ry": t, "rz": p} for b, (t, p) in self.angles.items()},
            "bloch_vectors": BLOCH_VECTORS,
            "ansatz": self.spec.ansatz,
            "n_layers": self.spec.n_layers,
            "mixer_scale": self.spec.mixer_scale,
            "mixer_angle_distribution": "uniform in [-mixer_scale/2, mixer_scale/2) turns, numpy default_rng(seed)",
            "mixer_params_turns": self.mixer_params.tolist(),
            "angle_units": "turns (1 turn = 2*pi rad), as in lambeq",
            "qubit_order": "qubit 0 = first base = most significant bit of the outcome index",
            "vocab_order": "itertools.product('ACGT', repeat=k) (= quixer.windows.kmer_id)",
        }


# --------------------------------------------------------------------------- exact backend
def exact_embeddings(circuits: KmerCircuits, device: torch.device | str = "cpu", chunk: int = 1 << 14) -> np.ndarray:
    """[4^k, D] float64 table: batched kron of base states, one matmul with the mixer."""
    spec = circuits.spec
    device = torch.device(device)
    states = torch.as_tensor(circuits.nucleotide_states(), dtype=torch.complex128, device=device)
    u_t = torch.as_tensor(circuits.mixer_unitary().T.copy(), dtype=torch.complex128, device=device)
    n_total = 2**spec.k
    out = np.empty((spec.vocab_size, spec.embedding_dim), dtype=np.float64)
    for start in range(0, spec.vocab_size, chunk):
        rows = np.arange(start, min(start + chunk, spec.vocab_size))
        digits = torch.as_tensor(kmer_digits(spec.k, rows), device=device)
        psi = states[digits[:, 0]]
        for i in range(1, spec.k):  # qubit 0 stays the most significant index
            psi = (psi[:, :, None] * states[digits[:, i]][:, None, :]).reshape(len(rows), -1)
        probs = (psi @ u_t).abs().square()
        probs = probs.reshape(len(rows), spec.embedding_dim, n_total // spec.embedding_dim).sum(-1)
        out[rows] = probs.cpu().numpy()
    return out


# --------------------------------------------------------------------------- Aer backend
def qiskit_template(circuits: KmerCircuits):
    """The k-mer circuit as ONE qiskit circuit with the base angles as Parameters.

    Built from the lambeq circuit through ``to_tk()`` and pytket-qiskit with placeholder base
    angles, whose gates (the first Ry and Rz on each qubit) are then swapped for
    ``theta_i`` / ``phi_i`` Parameters in radians (lambeq turns x 2 pi).
    Returns ``(circuit, thetas, phis)``.
    """
    from pytket.extensions.qiskit import tk_to_qiskit
    from qiskit.circuit import Parameter
    from qiskit.circuit.library import RYGate, RZGate

    k = circuits.spec.k
    placeholders = [(0.1 + 0.01 * i, 0.2 + 0.01 * i) for i in range(k)]
    lambeq_circuit = circuits.words(angles=placeholders) >> circuits.mixer
    qc = tk_to_qiskit(lambeq_circuit.to_tk())
    if qc.num_qubits != k:
        raise RuntimeError(f"pytket gave {qc.num_qubits} qubits for a {k}-mer circuit")
    thetas = [Parameter(f"theta_{i}") for i in range(k)]
    phis = [Parameter(f"phi_{i}") for i in range(k)]
    out = qc.copy_empty_like()
    seen = [0] * k
    for inst in qc.data:
        qubits = [qc.find_bit(b).index for b in inst.qubits]
        if len(qubits) == 1 and seen[qubits[0]] < 2:
            i, step = qubits[0], seen[qubits[0]]
            want, gate = (("ry", RYGate(thetas[i])) if step == 0 else ("rz", RZGate(phis[i])))
            value = float(inst.operation.params[0])
            if inst.operation.name != want or not math.isclose(value, 2 * math.pi * placeholders[i][step], abs_tol=1e-9):
                raise RuntimeError(f"unexpected gate {inst.operation.name}({value}) where the base's {want} was expected")
            out.append(gate, inst.qubits)
            seen[i] += 1
        else:
            if any(seen[q] < 2 for q in qubits):
                raise RuntimeError("a mixer gate came before a qubit's base rotations in the converted circuit")
            out.append(inst)
    return out, thetas, phis


def aer_simulator(device: str, workers: int, method: str, noise_model=None):
    """An AerSimulator on GPU when asked and really usable, else CPU. Returns (sim, device used)."""
    from qiskit import QuantumCircuit
    from qiskit_aer import AerSimulator

    opts = dict(method=method, max_parallel_threads=workers, max_parallel_experiments=workers)
    if noise_model is not None:
        opts["noise_model"] = noise_model
    if device in ("cuda", "auto"):
        # available_devices() can list a GPU that is not there: run a tiny circuit to find out.
        try:
            sim = AerSimulator(device="GPU", **opts)
            probe = QuantumCircuit(1)
            probe.h(0)
            probe.save_probabilities()
            result = sim.run(probe).result()
            if result.success:
                log.info("qiskit-aer runs on the GPU")
                return sim, "GPU"
            reason = result.status
        except Exception as exc:  # noqa: BLE001 (any failure means: no usable GPU simulator)
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        level = logging.WARNING if device == "cuda" else logging.INFO
        log.log(level, "qiskit-aer has no usable GPU here (%s); falling back to the CPU simulator", reason)
    return AerSimulator(device="CPU", **opts), "CPU"


def depolarizing_noise(circuit, probability: float):
    """Depolarising error of ``probability`` after every 1- and 2-qubit gate of ``circuit``."""
    from qiskit_aer.noise import NoiseModel, depolarizing_error

    model = NoiseModel()
    by_width: dict[int, set[str]] = {}
    for inst in circuit.data:
        if inst.operation.name.startswith(("save_", "measure", "barrier")):
            continue
        by_width.setdefault(len(inst.qubits), set()).add(inst.operation.name)
    for width, names in by_width.items():
        if width > 2:
            raise RuntimeError(f"no noise model for {width}-qubit gates {sorted(names)}")
        model.add_all_qubit_quantum_error(depolarizing_error(probability, width), sorted(names))
    return model


def aer_embeddings(circuits: KmerCircuits, *, shots: int = 0, noise: float = 0.0, device: str = "cpu",
                   workers: int = 1, seed: int | None = None) -> tuple[np.ndarray, dict]:
    """[4^k, D] table from qiskit-aer, all k-mers in one job via parameter binds."""
    from qiskit import ClassicalRegister, transpile

    spec = circuits.spec
    m = spec.n_measured
    template, thetas, phis = qiskit_template(circuits)
    noise_model = depolarizing_noise(template, noise) if noise > 0 else None
    circuit = template.copy()
    if shots:
        circuit.add_register(ClassicalRegister(m, "c"))
        for i in range(m):  # qubit 0 -> most significant classical bit, as in lambeq
            circuit.measure(i, m - 1 - i)
    else:
        # save_probabilities: qubits[0] is the least significant index bit, so reverse.
        circuit.save_probabilities(qubits=list(reversed(range(m))))
    # With noise, one density matrix per k-mer (then sampled once for all its shots) is far
    # cheaper than one noisy statevector trajectory per shot.
    method = "density_matrix" if noise_model is not None else "statevector"
    sim, used = aer_simulator(device, workers, method, noise_model)
    compiled = transpile(circuit, sim, optimization_level=0)

    digits = kmer_digits(spec.k, np.arange(spec.vocab_size))
    ry = np.array([2 * math.pi * circuits.angles[b][0] for b in BASES])
    rz = np.array([2 * math.pi * circuits.angles[b][1] for b in BASES])
    binds = {}
    for i in range(spec.k):
        binds[thetas[i]] = ry[digits[:, i]].tolist()
        binds[phis[i]] = rz[digits[:, i]].tolist()
    run_opts = {"parameter_binds": [binds]}
    if shots:
        run_opts.update(shots=shots, seed_simulator=spec.seed if seed is None else seed)
    result = sim.run(compiled, **run_opts).result()
    if not result.success:
        raise RuntimeError(f"qiskit-aer failed: {result.status}")
    table = np.zeros((spec.vocab_size, spec.embedding_dim), dtype=np.float64)
    for row in range(spec.vocab_size):
        data = result.data(row)
        if shots:
            for key, count in data["counts"].items():
                table[row, int(key, 16)] += count
        else:
            table[row] = np.asarray(data["probabilities"], dtype=np.float64)
    if shots:
        table /= shots
    info = {"aer_device": used, "aer_method": method, "gate_counts": dict(compiled.count_ops())}
    return table, info


def compute_table(circuits: KmerCircuits, *, backend: str = "exact", shots: int = 0, noise: float = 0.0,
                  device: str = "auto", workers: int = 1) -> tuple[np.ndarray, dict]:
    """The [4^k, D] float64 embedding table from the chosen backend, plus what was used."""
    if backend == "exact":
        if shots or noise:
            raise UserError("--shots and --noise need --backend aer (the exact backend has neither)")
        dev = resolve_device(device)
        return exact_embeddings(circuits, dev), {"torch_device": str(dev)}
    if backend == "aer":
        if shots < 0:
            raise UserError("--shots must be >= 0 (0 = exact probabilities)")
        if not 0 <= noise <= 1:
            raise UserError("--noise is a depolarising probability in [0, 1]")
        if device not in ("auto", "cpu", "cuda"):
            raise UserError(f"unknown device {device!r}: use auto, cpu or cuda")
        return aer_embeddings(circuits, shots=shots, noise=noise, device=device, workers=workers)
    raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")


def table_sha256(kmers: Sequence[str], embeddings: np.ndarray) -> str:
    """Content hash of a table (k-mer list + float32 bytes), independent of the file format."""
    import hashlib

    h = hashlib.sha256()
    h.update("\n".join(kmers).encode())
    h.update(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- stage 2 driver
@dataclass(frozen=True)
class RunOptions:
    """How the table is computed and what is written (beyond :class:`EncoderSpec`)."""

    backend: str = "exact"
    shots: int = 0
    noise: float = 0.0
    device: str = "auto"
    workers: int = 1
    materialize: bool = False


def _read_labels(data_dir: Path, split: str, n: int) -> np.ndarray:
    path = data_dir / split / "labels.txt"
    if not path.exists():
        raise UserError(f"{path}: missing (run prepare_autoregressive_data.py first)")
    text = path.read_bytes()
    try:
        labels = np.array(text.split(), dtype=np.int64)
    except ValueError:
        raise UserError(f"{path}: expected one integer per line") from None
    if len(labels) != n:
        raise UserError(f"{path}: {len(labels)} labels for {n} windows in sentences.txt")
    return labels


def _stage1_shape(data_dir: Path) -> tuple[dict, int, int]:
    """The stage-1 metadata with its k-mer length and window size, or one clear error."""
    data_meta = load_metadata(data_dir)
    try:
        return data_meta, int(data_meta["k"]), int(data_meta["window_size"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{data_dir}/metadata.json has no k / window_size: not a stage-1 directory") from None


def _signature(spec: EncoderSpec, options: RunOptions, data_meta: dict) -> dict:
    """What decides the output (the device and the worker count do not)."""
    return {
        "spec": asdict(spec),
        "backend": options.backend,
        "shots": options.shots,
        "noise": options.noise,
        "materialize": options.materialize,
        "data": {"signature": data_meta.get("signature"), "input_sha256": data_meta.get("input_sha256")},
    }


def _write_split_ids(tmp: Path, data_dir: Path, data_meta: dict, table: torch.Tensor, materialize: bool) -> tuple[dict, str]:
    """``{split}.pt``: each window's k-mer ids (rows of the table), labels and sources, and with
    ``materialize`` the full ``{split}_embeddings.pt``; returns the window counts and the ids' dtype."""
    counts: dict[str, int] = {}
    for split in SPLITS:
        ids = split_kmer_ids(data_dir, split)  # int16 while 4^k <= 32768, else int32
        labels = _read_labels(data_dir, split, len(ids))
        counts[split] = int(len(ids))
        sources = WindowSources.from_stage1(data_dir, split, data_meta).to_torch()
        atomic_torch_save(tmp / f"{split}.pt", {"kmer_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
                                                "sources": sources})
        if materialize:
            full = WindowEmbeddings(table, torch.from_numpy(ids)).materialize()
            atomic_torch_save(tmp / f"{split}_embeddings.pt", {"embeddings": full})
            del full
        log.info("%s: %d windows -> k-mer ids %s", split, len(ids), tuple(ids.shape))
    return counts, str(ids.dtype)


def encode_windows(data_dir: str | os.PathLike, output_dir: str | os.PathLike, spec_overrides: dict | None = None,
                   options: RunOptions = RunOptions(), force: bool = False) -> dict:
    """Run stage 2 on a stage-1 directory; returns the metadata written (or found up to date).

    ``spec_overrides`` sets :class:`EncoderSpec` fields other than ``k`` (which comes from the
    stage-1 metadata).
    """
    t_start = time.perf_counter()
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    if output_dir.resolve() == data_dir.resolve():
        raise UserError("--output_dir must differ from --data_dir")
    data_meta, k, window_size = _stage1_shape(data_dir)
    spec = EncoderSpec(k=k, **(spec_overrides or {}))
    spec.validate()
    if options.workers < 1:
        raise UserError("--workers must be >= 1")
    signature = _signature(spec, options, data_meta)
    if check_output_dir(output_dir, signature, force, stage="lambeq_encoder"):
        log.info("%s is up to date (same input and parameters); nothing to do", output_dir)
        return read_json(output_dir / "metadata.json")
    torch.set_num_threads(options.workers)

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    circuits = KmerCircuits(spec)
    kmers = all_kmers(k)
    table64, backend_info = compute_table(circuits, backend=options.backend, shots=options.shots,
                                          noise=options.noise, device=options.device, workers=options.workers)
    timings["table_seconds"] = time.perf_counter() - t0
    table = torch.from_numpy(table64.astype(np.float32))
    log.info("%s backend: %d k-mers x %d probabilities in %.2f s", options.backend, len(kmers),
             spec.embedding_dim, timings["table_seconds"])

    with staged_output_dir(output_dir) as tmp:
        atomic_torch_save(tmp / TABLE_FILE, {"kmers": kmers, "embeddings": table})
        t0 = time.perf_counter()
        counts, ids_dtype = _write_split_ids(tmp, data_dir, data_meta, table, options.materialize)
        timings["windows_seconds"] = time.perf_counter() - t0
        files = {path.name: sha256_file(path) for path in sorted(tmp.glob("*.pt"))}
        timings["total_seconds"] = time.perf_counter() - t_start
        metadata = {
            "stage": "lambeq_encoder",
            "signature": signature,
            "data_dir": str(data_dir),
            "data_input_sha256": data_meta.get("input_sha256"),
            "circuit": circuits.describe(),
            "backend": options.backend,
            "shots": options.shots,
            "noise": options.noise,
            "seed": spec.seed,
            "device_requested": options.device,
            "workers": options.workers,
            **backend_info,
            "vocab_size": len(kmers),
            "embedding_dim": spec.embedding_dim,
            "window_size": window_size,
            "counts": counts,
            "kmer_ids_dtype": ids_dtype,
            "table_sha256": table_sha256(kmers, table.numpy()),
            "files": files,
            "timings": timings,
            "peak_rss_mb": peak_rss_mb(),
        }
        atomic_write_json(tmp / "metadata.json", metadata)
    log.info("wrote %s in %.1f s (peak memory %.0f MiB)", output_dir, timings["total_seconds"], peak_rss_mb())
    return metadata


def add_encoder_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("circuit")
    g.add_argument("--embedding_dim", type=int, default=64,
                   help="D: a power of two <= 2^k; the probabilities of the first log2(D) qubits (default: 64)")
    g.add_argument("--ansatz", choices=ANSATZE, default="sim14", help="lambeq ansatz of the mixer (default: sim14)")
    g.add_argument("--n_layers", type=int, default=1, help="ansatz layers of the mixer (default: 1)")
    g.add_argument("--seed", type=int, default=42, help="seed of the mixer angles and of shot sampling (default: 42)")
    g.add_argument("--mixer_scale", type=float, default=0.1,
                   help="mixer angles are uniform in +-mixer_scale/2 turns (1 turn = 2 pi rad); "
                        "0 = no mixing, 1 = fully random (default: 0.1)")
    s = parser.add_argument_group("simulation")
    s.add_argument("--backend", choices=BACKENDS, default="exact",
                   help="exact: lambeq pieces + batched torch; aer: one parameterised qiskit-aer job (default: exact)")
    s.add_argument("--shots", type=int, default=0,
                   help="aer only: sampled shots per k-mer (seeded by --seed), 0 = exact probabilities (default: 0)")
    s.add_argument("--noise", type=float, default=0.0,
                   help="aer only: depolarising probability after every 1- and 2-qubit gate, simulated with "
                        "density matrices (default: 0)")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="torch device (exact) or Aer device (aer; falls back to CPU with a warning) (default: auto)")
    s.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                   help="CPU threads for torch / Aer (default: number of cores, at most 8)")


def spec_overrides_from_args(args: argparse.Namespace) -> dict:
    return {"embedding_dim": args.embedding_dim, "ansatz": args.ansatz, "n_layers": args.n_layers,
            "seed": args.seed, "mixer_scale": args.mixer_scale}


def run_options_from_args(args: argparse.Namespace) -> RunOptions:
    return RunOptions(backend=args.backend, shots=args.shots, noise=args.noise, device=args.device,
                      workers=args.workers, materialize=args.materialize)


# --------------------------------------------------------------------------- readers
def load_encoder_metadata(enc_dir: str | os.PathLike) -> dict:
    path = Path(enc_dir) / "metadata.json"
    if not path.exists():
        raise UserError(f"{enc_dir}: no metadata.json (not a lambeq_encoder.py output directory)")
    meta = read_json(path)
    if meta.get("stage") != "lambeq_encoder":
        raise UserError(f"{enc_dir}: metadata.json is not from lambeq_encoder.py (stage {meta.get('stage')!r})")
    return meta


def _torch_load(path: Path) -> dict:
    obj = load_torch_file(path, written_by="lambeq_encoder.py")  # either format, metadata or not
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a dict of tensors")
    return obj


def load_table(enc_dir: str | os.PathLike) -> tuple[list[str], torch.Tensor]:
    """(kmers, [V, D] float32 embeddings) of a stage-2 directory."""
    obj = _torch_load(Path(enc_dir) / TABLE_FILE)
    kmers, emb = obj.get("kmers"), obj.get("embeddings")
    if not isinstance(kmers, list) or not isinstance(emb, torch.Tensor) or emb.ndim != 2 or len(kmers) != len(emb):
        raise UserError(f"{enc_dir}/{TABLE_FILE}: expected kmers (list) and embeddings [V, D] of the same length")
    return kmers, emb


def load_split_ids(enc_dir: str | os.PathLike, split: str, vocab_size: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, WindowSources | None]:
    """(kmer_ids [N, W], labels [N], window sources or None for older files) of one split, ids
    checked against the table size."""
    path = Path(enc_dir) / f"{split}.pt"
    obj = _torch_load(path)
    ids, labels = obj.get("kmer_ids"), obj.get("labels")
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
        raise UserError(f"{path}: expected kmer_ids [N, W]")
    if vocab_size is not None and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise UserError(f"{path}: k-mer ids outside the table of {vocab_size} k-mers (files from different runs?)")
    return ids, labels, WindowSources.from_torch(obj.get("sources"), path, int(ids.shape[0]), int(ids.shape[1]))


class WindowEmbeddings:
    """The ``[N, W, D]`` embeddings of a split as a lazy view: table rows gathered on demand.

    ``view[i]`` is ``[W, D]``, ``view[a:b]`` or ``view[index_tensor]`` is ``[B, W, D]``;
    ``materialize()`` builds the whole tensor (only for small data).
    """

    def __init__(self, table: torch.Tensor, kmer_ids: torch.Tensor, labels: torch.Tensor | None = None):
        self.table = table
        self.kmer_ids = kmer_ids
        self.labels = labels

    @classmethod
    def from_dir(cls, enc_dir: str | os.PathLike, split: str) -> "WindowEmbeddings":
        _, table = load_table(enc_dir)
        ids, labels, _ = load_split_ids(enc_dir, split, len(table))
        return cls(table, ids, labels)

    def __len__(self) -> int:
        return int(self.kmer_ids.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), int(self.kmer_ids.shape[1]), int(self.table.shape[1]))

    def __getitem__(self, idx) -> torch.Tensor:
        return self.table[self.kmer_ids[idx].long()]

    def materialize(self) -> torch.Tensor:
        return self.table[self.kmer_ids.long()]
