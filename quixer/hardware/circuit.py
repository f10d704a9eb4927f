"""The Quixer model of one input window as a real circuit for hardware (pytket).

Registers (pytket: qubit 0 of a register is the most significant bit of its basis index):

* ``tok``: the ``n`` token qubits;
* ``lcu``: ``a = ceil(log2 W)`` qubits indexing the ``W`` token positions;
* ``poly``: ``d`` qubits holding the polynomial branch ``k`` in unary ("thermometer") code,
  ``|k> = |1^k 0^(d-k)>``, so that "apply the j-th power of M in branch k >= j" is controlled by
  the single qubit ``poly[j-1]``. For degree 3 that is as narrow as binary (2 qubits + 1 flag)
  and needs no comparator circuit.

Block encoding of ``M = sum_w b_w U_w`` (``b`` the L1-normalised LCU weights, so
``sum_w |b_w| = 1``): PREPARE puts ``sqrt|b_w|`` on ``|w>`` (a binary tree of multiplexed RY, all
amplitudes real), SELECT applies ``U_w`` controlled by ``|w>`` and multiplies by the phase
``exp(i arg b_w)`` (a diagonal on the LCU register and the SELECT's control), then
PREPARE^dagger: the ``<0|..|0>`` block of ``PREP^dag SELECT PREP`` is ``M``. SELECT is one
multiplexed rotation per gate position of ansatz 14 (angle indexed by token position; a CRX is
a multiplexed RX with its control as one more multiplexer bit), all controlled by ``poly[j-1]``
as one more multiplexer bit. The phases must sit inside the controlled part: outside it,
branches without this power would pick them up.

Polynomial ``sum_k c_k M^k |0> / ||c||_1``: an LCU over powers. PREPARE_c puts
``sqrt(|c_k| / ||c||_1)`` on branch ``k`` (RY, then a chain of CRY), signs of ``c`` are Z gates
(``Z`` on ``poly[j-1]`` flips every branch ``k >= j``) and a global phase for ``c_0 < 0``. Power
``j = 1..d`` is ``PREP, SELECT_j, PREP^dag`` followed by a mid-circuit measurement of the LCU
register, kept only when it reads 0: that projection leaves ``M`` in branches ``k >= j``, and
branches ``k < j`` (SELECT_j idle) are untouched because ``PREP^dag PREP = I``. The register is
then back in ``|0>`` and is reused, so the width is ``n + a + d`` (14 for the paper's 6 qubits,
31 tokens, degree 3) instead of ``n + d a + d`` (24) with a fresh register per power. Finally
PREPARE_c^dag and measure ``poly``, kept when 0. The accepted shots hold exactly
``sum_k c_k M^k |0> / ||c||_1`` (normalised), with overall probability ``||that||^2``, the
model's postselection probability. Then the quantum feed-forward (one ansatz-14 layer) and a
basis change (X: H; Y: S^dag then H; Z: none) before measuring ``tok``.

:mod:`quixer.hardware.simulation` runs these circuits in qiskit-aer, projecting at every
postselected measurement: an independent check of the torch model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

BASES = ("X", "Y", "Z")
POST_PREFIX = "post_"  # classical registers whose bits must read 0 for a shot to be kept
OUTPUT_REGISTER = "out"


def ansatz14(n_qubits: int, n_layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """Ansatz 14 (Sim et al. 2019) as ``(kind, wires)``; gate ``i`` reads angle ``i`` (4 n per layer).

    Per layer: RY on every qubit; CRX(q -> q+1 mod n) for q = n-1 .. 0; RY on every qubit;
    CRX(q -> q-1 mod n) for q = n-1, 0, 1, .., n-2. Wires of a CRX are (control, target).
    """
    n = n_qubits
    layer = ([("ry", (q,)) for q in range(n)]
             + [("crx", (q, (q + 1) % n)) for q in range(n - 1, -1, -1)]
             + [("ry", (q,)) for q in range(n)]
             + [("crx", (q, (q - 1) % n)) for q in [n - 1, *range(n - 1)]])
    return layer * n_layers


def _half_turns(radians: float) -> float:
    return float(radians) / math.pi


@dataclass
class QuixerCircuit:
    """The circuit of one window as named unitary blocks on all its qubits, and their order.

    Blocks: ``prepare_polynomial``, ``prepare_lcu``, ``select_1`` .. ``select_d``,
    ``unprepare_lcu``, ``unprepare_polynomial`` and ``readout_X/Y/Z`` (feed-forward, then the
    basis change). :meth:`assemble` puts blocks (these, or compiled copies of them) together with
    the measurements; :attr:`state` stops after the last postselection, :meth:`measured` is
    what runs on hardware for one basis.
    """

    n_qubits: int
    n_tokens: int
    degree: int
    n_layers: int
    qubits: list
    blocks: dict

    @property
    def lcu_qubits(self) -> int:
        return max(0, math.ceil(math.log2(self.n_tokens)))

    @property
    def width(self) -> int:
        return len(self.qubits)

    def sequence(self) -> list[str]:
        """Block names in order; ``measure_lcu`` and ``measure_polynomial`` are the postselected
        measurements of those registers."""
        power = ["prepare_lcu", "select_{}", "unprepare_lcu", "measure_lcu"]
        return (["prepare_polynomial"]
                + [name.format(j) for j in range(1, self.degree + 1) for name in power]
                + ["unprepare_polynomial", "measure_polynomial"])

    def assemble(self, blocks: dict | None = None, basis: str | None = None, state: bool = True):
        """One circuit from ``blocks`` (default: :attr:`blocks`): the state part (if ``state``),
        then for ``basis`` its readout block and the measurement of ``tok``."""
        from pytket.circuit import Circuit

        if basis is not None and basis not in BASES:
            raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
        blocks = self.blocks if blocks is None else blocks
        circ = Circuit()
        for q in self.qubits:
            circ.add_qubit(q)
        registers = {name: [q for q in self.qubits if q.reg_name == name] for name in ("tok", "lcu", "poly")}
        powers = 0
        for name in (self.sequence() if state else []):
            if name == "measure_lcu":
                powers += 1
                if registers["lcu"]:
                    bits = circ.add_c_register(f"{POST_PREFIX}lcu{powers}", len(registers["lcu"]))
                    for q, bit in zip(registers["lcu"], bits):
                        circ.Measure(q, bit)
            elif name == "measure_polynomial":
                bits = circ.add_c_register(f"{POST_PREFIX}poly", len(registers["poly"]))
                for q, bit in zip(registers["poly"], bits):
                    circ.Measure(q, bit)
            else:
                circ.append(blocks[name])
        if basis is not None:
            circ.append(blocks[f"readout_{basis}"])
            out = circ.add_c_register(OUTPUT_REGISTER, self.n_qubits)
            for q, bit in zip(registers["tok"], out):
                circ.Measure(q, bit)
        return circ

    @property
    def state(self):
        """Everything up to the postselection of the polynomial register."""
        return self.assemble()

    def tail(self, basis: str):
        """What follows :attr:`state` for one basis: feed-forward, basis change, measure ``tok``
        (on all qubits, so a simulation of the state can continue into it)."""
        return self.assemble(basis=basis, state=False)

    def measured(self, basis: str):
        """The full circuit that runs on hardware for one basis."""
        return self.assemble(basis=basis)


def _multiplexed(circ, axis: str, controls: list, target, angles: np.ndarray) -> None:
    """A uniformly controlled rotation (angles in radians, index = controls read big-endian)."""
    from pytket.circuit import MultiplexedRotationBox, OpType

    kind = {"rx": OpType.Rx, "ry": OpType.Ry, "rz": OpType.Rz}[axis]
    if not controls:
        circ.add_gate(kind, [_half_turns(angles[0])], [target])
        return
    box = MultiplexedRotationBox([_half_turns(a) for a in angles], kind)
    circ.add_gate(box, [*controls, target])


def _tree_angles(weights: np.ndarray, n_bits: int) -> list[np.ndarray]:
    """RY angles of a binary-tree state preparation of ``sqrt(weights)`` (weights >= 0, sum 1).

    Level ``j`` (qubit ``j``) gets one angle per value of the first ``j`` qubits: it splits the
    prefix's weight between the next bit 0 and 1 (``cos^2(theta/2)`` = share of bit 0).
    """
    padded = np.zeros(2**n_bits)
    padded[: len(weights)] = weights
    levels = []
    for j in range(n_bits):
        blocks = padded.reshape(2**j, 2, -1).sum(-1)  # [prefix, next bit]
        total = blocks.sum(-1)
        share0 = np.divide(blocks[:, 0], total, out=np.ones_like(total), where=total > 0)
        levels.append(2 * np.arccos(np.sqrt(np.clip(share0, 0.0, 1.0))))
    return levels


def _prepare_lcu(circ, lcu: list, weights: np.ndarray, inverse: bool) -> None:
    levels = list(enumerate(_tree_angles(weights, len(lcu))))
    for j, angles in (reversed(levels) if inverse else levels):
        _multiplexed(circ, "ry", lcu[:j], lcu[j], -angles if inverse else angles)


def _poly_angles(coefficients: np.ndarray) -> np.ndarray:
    """Unary-code RY angles: ``poly[j]`` goes to 1 with the weight of the branches beyond ``j``."""
    p = np.abs(coefficients) / np.abs(coefficients).sum()
    tails = np.cumsum(p[::-1])[::-1]  # tails[j] = sum_{k >= j} p_k
    share0 = np.divide(p[:-1], tails[:-1], out=np.ones(len(p) - 1), where=tails[:-1] > 0)
    return 2 * np.arccos(np.sqrt(np.clip(share0, 0.0, 1.0)))


def _prepare_poly(circ, poly: list, angles: np.ndarray, inverse: bool) -> None:
    from pytket.circuit import OpType

    steps = list(enumerate(angles))
    for j, theta in (reversed(steps) if inverse else steps):
        theta = -theta if inverse else theta
        if j == 0:
            circ.Ry(_half_turns(theta), poly[0])
        else:
            circ.add_gate(OpType.CRy, [_half_turns(theta)], [poly[j - 1], poly[j]])


def _select(circ, flag, lcu: list, tok: list, angles: np.ndarray, phases: np.ndarray) -> None:
    """SELECT controlled by ``flag``: per gate position one multiplexed rotation over
    ``(flag, lcu[, control])``, then the LCU phases as a diagonal on ``(flag, lcu)``."""
    from pytket.circuit import DiagonalBox

    n_tokens, n_params = angles.shape
    slots = 2 ** len(lcu)
    table = np.zeros((2, slots, n_params))  # [flag, token position, angle]; idle where flag = 0
    table[1, :n_tokens] = angles
    for i, (kind, wires) in enumerate(ansatz14(len(tok), n_params // (4 * len(tok)))):
        if kind == "ry":
            _multiplexed(circ, "ry", [flag, *lcu], tok[wires[0]], table[..., i].reshape(-1))
        else:
            per_control = np.stack((np.zeros_like(table[..., i]), table[..., i]), -1)  # CRX idle at control 0
            _multiplexed(circ, "rx", [flag, *lcu, tok[wires[0]]], tok[wires[1]], per_control.reshape(-1))
    diagonal = np.ones((2, slots), dtype=complex)
    diagonal[1, :n_tokens] = np.exp(1j * phases)
    if np.abs(diagonal - 1).max() > 0:
        circ.add_gate(DiagonalBox(diagonal.reshape(-1)), [flag, *lcu])


def _readout(circ, tok: list, parameters: np.ndarray, basis: str) -> None:
    """The quantum feed-forward (one ansatz-14 layer), then the change to ``basis``."""
    from pytket.circuit import OpType

    for (kind, wires), theta in zip(ansatz14(len(tok), 1), parameters):
        if kind == "ry":
            circ.Ry(_half_turns(theta), tok[wires[0]])
        else:
            circ.add_gate(OpType.CRx, [_half_turns(theta)], [tok[wires[0]], tok[wires[1]]])
    for q in tok:
        if basis == "Y":
            circ.Sdg(q)
        if basis in ("X", "Y"):
            circ.H(q)


def build_circuit(token_angles: np.ndarray, lcu_weights: np.ndarray, polynomial: np.ndarray,
                  feedforward_parameters: np.ndarray) -> QuixerCircuit:
    """The Quixer circuit of one window (see the module docstring for the construction).

    ``token_angles``: ``[W, 4 n L]`` radians, the angles of each position's ansatz-14 circuit;
    ``lcu_weights``: ``[W]`` complex, L1-normalised; ``polynomial``: ``[d + 1]`` real QSVT
    coefficients (any scale: they are L1-normalised here); ``feedforward_parameters``: ``[4 n]``.
    """
    from pytket.circuit import Circuit, Qubit

    angles = np.asarray(token_angles, dtype=float)
    weights = np.asarray(lcu_weights, dtype=complex)
    coeffs = np.asarray(polynomial, dtype=float)
    ff = np.asarray(feedforward_parameters, dtype=float)
    n_tokens, n_params = angles.shape
    n = len(ff) // 4
    if n < 2 or len(ff) != 4 * n or n_params % (4 * n) or n_params == 0:
        raise ValueError(f"angles [W, {n_params}] and feed-forward [{len(ff)}] do not fit ansatz 14 (4 n per layer)")
    if weights.shape != (n_tokens,) or len(coeffs) < 2 or not np.abs(coeffs).sum() > 0:
        raise ValueError("need one LCU weight per token and a nonzero polynomial of degree >= 1")
    if not math.isclose(np.abs(weights).sum(), 1.0, rel_tol=1e-9):
        raise ValueError(f"LCU weights must be L1-normalised (sum |b| = {np.abs(weights).sum()})")
    degree, n_layers = len(coeffs) - 1, n_params // (4 * n)
    a = max(0, math.ceil(math.log2(n_tokens)))
    tok = [Qubit("tok", i) for i in range(n)]
    lcu = [Qubit("lcu", i) for i in range(a)]
    poly = [Qubit("poly", i) for i in range(degree)]

    def block(build) -> "Circuit":
        sub = Circuit()
        for q in (*tok, *lcu, *poly):
            sub.add_qubit(q)
        build(sub)
        return sub

    poly_angles = _poly_angles(coeffs)
    signs = np.where(coeffs < 0, -1.0, 1.0)

    def prepare_polynomial(c):
        _prepare_poly(c, poly, poly_angles, inverse=False)
        for j in range(1, degree + 1):  # Z on poly[j-1] flips branches k >= j: sign c_j / sign c_{j-1}
            if signs[j] != signs[j - 1]:
                c.Z(poly[j - 1])
        if signs[0] < 0:
            c.add_phase(1.0)  # half-turns: a global -1, the sign of c_0

    blocks = {
        "prepare_polynomial": block(prepare_polynomial),
        "prepare_lcu": block(lambda c: _prepare_lcu(c, lcu, np.abs(weights), inverse=False)),
        **{f"select_{j}": block(lambda c, j=j: _select(c, poly[j - 1], lcu, tok, angles, np.angle(weights)))
           for j in range(1, degree + 1)},
        "unprepare_lcu": block(lambda c: _prepare_lcu(c, lcu, np.abs(weights), inverse=True)),
        "unprepare_polynomial": block(lambda c: _prepare_poly(c, poly, poly_angles, inverse=True)),
        **{f"readout_{b}": block(lambda c, b=b: _readout(c, tok, ff, b)) for b in BASES},
    }
    return QuixerCircuit(n, n_tokens, degree, n_layers, [*tok, *lcu, *poly], blocks)


def model_circuit(model, x: Sequence[int]) -> QuixerCircuit:
    """The circuit of a trained :class:`quixer.model.Quixer` (eval mode) for one window ``x [W]``."""
    import torch

    if model.training:
        raise ValueError("put the model in eval mode first (dropout would change the angles)")
    tokens = torch.as_tensor(x, dtype=torch.long).reshape(-1)
    with torch.no_grad():
        angles = model.token_angles(tokens).double().numpy()
        lcu = model.lcu_weights().detach().to(torch.complex128).numpy()
        coeffs = model.qsvt_polynomial_coefficients.detach().double().numpy()
        ff = model.quantum_feedforward_parameters.detach().double().numpy()
    return build_circuit(angles, lcu, coeffs, ff)
