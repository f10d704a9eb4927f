"""Simulate the hardware circuits of :mod:`quixer.hardware.circuit` in qiskit-aer, with postselection.

A circuit is run segment by segment: the gates between two measurements are one qiskit-aer
statevector job, and a measurement into a postselected (``post_*``) bit projects its qubit on
|0>, as the accepted shots on hardware see it. Either the gates pytket decomposes the boxes into
(CX and rotations, what is compiled for hardware) or the boxes themselves as qiskit's own
multiplexers and diagonals, which qiskit-aer runs natively (fast enough for the paper-size
circuit in a test). Conventions are converted here: pytket angles are half-turns and its
first qubit the most significant, qiskit's qubit 0 is the least significant bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .circuit import BASES, POST_PREFIX


@dataclass
class Simulation:
    """What a circuit does on its accepted shots.

    ``state``: the normalised state on the accepted shots as a tensor with one axis per qubit
    (``qubits`` order); ``success``: the probability that every postselected bit reads 0;
    ``outputs``: the distribution over the output register (big-endian), if it was measured.
    """

    qubits: list
    state: np.ndarray
    success: float
    outputs: np.ndarray | None

    def register_state(self, name: str) -> np.ndarray:
        """The state of register ``name`` (qubit 0 most significant) when the others are in |0>
        (after every postselection they are, except measured outputs); normalised."""
        axes = [i for i, q in enumerate(self.qubits) if q.reg_name == name]
        index = tuple(slice(None) if q.reg_name == name else 0 for q in self.qubits)
        part = self.state[index]
        order = np.argsort([self.qubits[i].index[0] for i in axes])
        vec = np.transpose(part, order).reshape(-1)
        return vec / np.linalg.norm(vec)


_NAMED = {  # pytket op -> qiskit QuantumCircuit method; pytket angles are half-turns
    "CX": "cx", "CZ": "cz", "H": "h", "X": "x", "Y": "y", "Z": "z", "S": "s", "Sdg": "sdg", "T": "t",
    "Tdg": "tdg", "SX": "sx", "SXdg": "sxdg", "Rx": "rx", "Ry": "ry", "Rz": "rz", "CRx": "crx",
    "CRy": "cry", "CRz": "crz", "U1": "p",
}


def to_qiskit(segment, n_qubits: int, boxes: bool = False):
    """A measurement-free pytket circuit on qubits ``q[0..]`` as a qiskit circuit, gate by gate.

    Named gates map to qiskit's own gates (tk_to_qiskit does the same, but too slowly for the
    ~60k gates of the paper-size circuit). With ``boxes``, a multiplexed rotation
    becomes qiskit's ``UCGate`` (target first, then the controls least significant first: pytket's
    first control is the most significant bit) and a diagonal box a ``DiagonalGate`` (qubits
    reversed for the same reason); qiskit-aer runs both natively. Other ops become a
    ``UnitaryGate`` of pytket's matrix. The segment's global phase is not included.
    """
    from pytket.circuit import OpType
    from qiskit import QuantumCircuit
    from qiskit.circuit.library import DiagonalGate, UCGate, UnitaryGate

    qc = QuantumCircuit(n_qubits)
    for cmd in segment.get_commands():
        op, wires = cmd.op, [q.index[0] for q in cmd.qubits]
        name = op.type.name
        if name in _NAMED:
            getattr(qc, _NAMED[name])(*[float(a) * math.pi for a in op.params], *wires)
        elif boxes and op.type == OpType.MultiplexedRotationBox:
            pairs = {tuple(bits): g.get_unitary() for bits, g in op.get_bitstring_op_pair_list()}
            k = len(wires) - 1
            matrices = [pairs.get(tuple(bool(i >> (k - 1 - j) & 1) for j in range(k)), np.eye(2))
                        for i in range(2**k)]
            qc.append(UCGate(matrices, mux_simp=False), [wires[-1], *wires[-2::-1]])
        elif boxes and op.type == OpType.DiagonalBox:
            qc.append(DiagonalGate(list(op.get_diagonal())), wires[::-1])
        else:
            qc.append(UnitaryGate(op.get_unitary()), wires[::-1])
    return qc


def _aer_evolve(segment, state: np.ndarray, n_qubits: int, decompose: bool) -> np.ndarray:
    """Run one measurement-free pytket segment on ``state`` (qiskit order) with qiskit-aer."""
    from pytket.passes import DecomposeBoxes
    from qiskit import QuantumCircuit
    from qiskit_aer import AerSimulator
    from qiskit_aer.library import SetStatevector

    if decompose:
        segment = segment.copy()
        DecomposeBoxes().apply(segment)
    qc = QuantumCircuit(n_qubits)
    qc.append(SetStatevector(state), qc.qubits)
    qc.compose(to_qiskit(segment, n_qubits, boxes=not decompose), qc.qubits, inplace=True)
    qc.save_statevector()
    result = AerSimulator(method="statevector", precision="double").run(qc, shots=1).result()
    return np.asarray(result.get_statevector(), dtype=complex) * np.exp(1j * math.pi * float(segment.phase))


def simulate(circuit, decompose: bool = True, initial: Simulation | None = None) -> Simulation:
    """Simulate a pytket circuit whose ``post_*`` bits are postselected on 0.

    Gates between measurements run as one qiskit-aer statevector job: with ``decompose`` the
    gates pytket decomposes its boxes into (CX and rotations: what is compiled for hardware),
    else the boxes themselves as qiskit's multiplexers and diagonals (much faster for the
    paper-size circuit). A measurement into a ``post_*`` bit projects its qubit on |0> (the
    probabilities multiply into ``success``) and the state is renormalised; other measurements
    (the output register) must come last and give ``outputs``. ``initial`` (a simulation of a
    circuit on the same qubits) continues from its state. qiskit orders qubits little-endian:
    the state is kept in qiskit order and turned into a per-qubit tensor only at the end.
    """
    from pytket.circuit import Circuit, OpType, Qubit

    qubits = circuit.qubits
    n = len(qubits)
    flat = {q: Qubit("q", i) for i, q in enumerate(qubits)}  # qiskit qubit i <- pytket q[i]
    if initial is None:
        state = np.zeros(2**n, dtype=complex)
        state[0] = 1.0
        success = 1.0
    else:
        if initial.qubits != qubits:
            raise ValueError("the initial simulation is on other qubits")
        state = np.transpose(initial.state, list(range(n))[::-1]).reshape(-1).copy()
        success = initial.success
    outputs: dict[int, object] = {}  # qubit index -> output bit
    pending = None

    def flush(state):
        if pending is None or not pending.n_gates:
            return state
        return _aer_evolve(pending, state, n, decompose)

    for cmd in circuit.get_commands():
        if cmd.op.type == OpType.Measure:
            state = flush(state)
            pending = None
            qi, bit = qubits.index(cmd.qubits[0]), cmd.bits[0]
            if bit.reg_name.startswith(POST_PREFIX):
                tensor = state.reshape([2] * n)  # axis k is qiskit qubit n-1-k
                index = [slice(None)] * n
                index[n - 1 - qi] = 1
                tensor[tuple(index)] = 0.0
                kept = float(np.vdot(state, state).real)
                if kept <= 0:
                    raise ValueError("postselection has probability 0")
                success *= kept
                state = state / math.sqrt(kept)
            else:
                outputs[qi] = bit
            continue
        if any(qubits.index(q) in outputs for q in cmd.qubits):
            raise ValueError("gates after an output measurement are not supported")
        if pending is None:
            pending = Circuit()
            for q in flat.values():
                pending.add_qubit(q)
        pending.add_gate(cmd.op, [flat[q] for q in cmd.qubits])
    state = flush(state) * np.exp(1j * math.pi * float(circuit.phase))
    tensor = np.transpose(state.reshape([2] * n), list(range(n))[::-1])  # axis i <- qubit i
    dist = None
    if outputs:
        order = sorted(outputs, key=lambda qi: outputs[qi].index[0])  # big-endian over the register
        dist = _marginal(np.abs(tensor) ** 2, order)
    return Simulation(list(qubits), tensor, success, dist)


def _marginal(probs: np.ndarray, order: list[int]) -> np.ndarray:
    """Distribution over the qubits ``order`` (first = most significant) of a probability tensor."""
    rest = tuple(i for i in range(probs.ndim) if i not in order)
    marginal = probs.sum(axis=rest) if rest else probs
    kept = sorted(order)  # axes of ``marginal`` follow increasing qubit index
    return np.transpose(marginal, [kept.index(i) for i in order]).reshape(-1)


def pauli_features(distributions: dict[str, np.ndarray], n_qubits: int) -> np.ndarray:
    """``<X_q>, <Y_q>, <Z_q>`` (all q, basis-major, as the model's features) from the outcome
    distributions in each basis (big-endian over the token register)."""
    bits = (np.arange(2**n_qubits)[:, None] >> np.arange(n_qubits - 1, -1, -1)) & 1
    signs = 1.0 - 2.0 * bits  # [outcome, qubit]
    return np.concatenate([distributions[b] @ signs for b in BASES])
