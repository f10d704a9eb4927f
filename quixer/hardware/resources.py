"""What the Quixer circuit costs on hardware: pytket compilation to named native gate sets.

The circuit of one window (:mod:`quixer.hardware.circuit`) is a fixed sequence of blocks:
PREPARE_c, then per power ``PREP, SELECT_j, PREP^dag`` (and a mid-circuit measurement), then
PREPARE_c^dag, then per basis the feed-forward and the basis change. Blocks are compiled one by
one (SELECT_j differ only in which ``poly`` qubit controls them: one is compiled, the others are
relabelled copies) and put back together with the measurements; the counts are those of that
whole circuit (optimisation across block boundaries is left out: a few gates at most).

Passes: ``DecomposeBoxes``, then "before" is only ``AutoRebase`` to the gate set; "after" is
``FullPeepholeOptimise`` (every block but SELECT), ``AutoRebase``, the gate set's single-qubit
squash and ``RemoveRedundancies``. SELECT (about a third of the circuit each, ~9k CX at the
paper's size) gets ``SynthesiseTket`` instead of ``FullPeepholeOptimise``: the latter does not
scale to a whole SELECT, and on one and on eight of its multiplexed rotations it removed no
two-qubit gate (a multiplexed rotation with ``k`` controls decomposes into ``2^k`` CX, which
is already what it needs). No routing: all-to-all connectivity is assumed (trapped ions have
it; on a fixed coupling map SWAPs come on top).
"""
from __future__ import annotations

import logging
import time
from typing import Iterable

from .circuit import QuixerCircuit

log = logging.getLogger("quixer")

GATE_SET_NAMES = {"ibm": "IBM-like {CX, Rz, SX, X}", "ion": "trapped-ion {ZZPhase, PhasedX, Rz}"}


def _gate_set(name: str):
    from pytket.circuit import OpType
    from pytket.passes import AutoSquash, SquashRzPhasedX

    if name == "ibm":
        return {OpType.CX, OpType.Rz, OpType.SX, OpType.X}, AutoSquash({OpType.Rz, OpType.SX, OpType.X})
    if name == "ion":
        return {OpType.ZZPhase, OpType.PhasedX, OpType.Rz}, SquashRzPhasedX()
    raise ValueError(f"unknown gate set {name!r}; choose from {', '.join(GATE_SET_NAMES)}")


def gate_counts(circuit) -> dict:
    """Qubits, gates (measurements not counted), two-qubit gates, depth and two-qubit depth."""
    from pytket.circuit import OpType

    measures = circuit.n_gates_of_type(OpType.Measure)
    return {"qubits": circuit.n_qubits, "gates": circuit.n_gates - measures, "two_qubit_gates": circuit.n_2qb_gates(),
            "depth": circuit.depth(), "two_qubit_depth": circuit.depth_2q(), "measurements": measures}


def compile_block(circuit, gate_set: str, peephole: bool = True):
    """``(rebased, optimised)`` copies of a block: boxes decomposed, in ``gate_set``, the second
    also optimised (see the module docstring)."""
    from pytket.circuit import OpType
    from pytket.passes import AutoRebase, DecomposeBoxes, FullPeepholeOptimise, RemoveRedundancies, SynthesiseTket

    gates, squash = _gate_set(gate_set)
    rebased = circuit.copy()
    DecomposeBoxes().apply(rebased)
    optimised = rebased.copy()
    AutoRebase(gates).apply(rebased)
    # the ion gate set's ZZPhase takes any angle: a controlled rotation needs one, not two CX
    target = OpType.TK2 if OpType.ZZPhase in gates else OpType.CX
    (FullPeepholeOptimise(target_2qb_gate=target) if peephole else SynthesiseTket()).apply(optimised)
    AutoRebase(gates).apply(optimised)
    squash.apply(optimised)
    RemoveRedundancies().apply(optimised)
    return rebased, optimised


def compile_circuit(circuit: QuixerCircuit, gate_set: str, progress: bool = False) -> dict:
    """Compiled copies of every block of ``circuit``: ``{"before": blocks, "after": blocks,
    "seconds": {block: s}}``, ready for :meth:`QuixerCircuit.assemble`.

    ``select_1`` is compiled once; ``select_j`` is that copy with ``poly[0]`` and ``poly[j-1]``
    swapped (the only difference between them).
    """
    from pytket.circuit import Qubit
    from tqdm import tqdm

    names = [name for name in circuit.blocks if not name.startswith("select_") or name == "select_1"]
    out: dict = {"before": {}, "after": {}, "seconds": {}}
    for name in tqdm(names, desc=f"compile {gate_set}", leave=False, disable=None if progress else True):
        start = time.perf_counter()
        out["before"][name], out["after"][name] = compile_block(circuit.blocks[name], gate_set,
                                                                peephole=not name.startswith("select_"))
        out["seconds"][name] = time.perf_counter() - start
    for j in range(2, circuit.degree + 1):
        swap = {Qubit("poly", 0): Qubit("poly", j - 1), Qubit("poly", j - 1): Qubit("poly", 0)}
        for stage in ("before", "after"):
            relabelled = out[stage]["select_1"].copy()
            relabelled.rename_units(swap)
            out[stage][f"select_{j}"] = relabelled
    return out


def resource_counts(circuit: QuixerCircuit, gate_sets: Iterable[str], progress: bool = True) -> dict:
    """Per gate set: counts of the whole circuit before and after optimisation, and the compile
    time; ``decomposed``: the same circuit in pytket's own decomposition of the boxes (CX and
    rotations).

    The circuit counted is the Y-basis one (its readout has the most gates before optimisation);
    the X and Z circuits differ only in the single-qubit gates of their last layer (at most
    ``2 n`` fewer). One basis only, because pytket takes seconds per depth of an 85k-gate circuit.
    """
    from pytket.passes import DecomposeBoxes

    basis = "Y"
    whole = circuit.measured(basis)
    DecomposeBoxes().apply(whole)
    out: dict = {"basis": basis, "decomposed": gate_counts(whole), "gate_sets": {}}
    for gate_set in gate_sets:
        start = time.perf_counter()
        compiled = compile_circuit(circuit, gate_set, progress=progress)
        seconds = time.perf_counter() - start
        counts = {stage: gate_counts(circuit.assemble(compiled[stage], basis=basis)) for stage in ("before", "after")}
        log.info("%s: %d two-qubit gates, %d gates, depth %d after optimisation (compiled in %.1f s)", gate_set,
                 counts["after"]["two_qubit_gates"], counts["after"]["gates"], counts["after"]["depth"], seconds)
        out["gate_sets"][gate_set] = {
            "name": GATE_SET_NAMES[gate_set], **counts, "compile_seconds": round(seconds, 2),
            "select_block": {stage: gate_counts(compiled[stage]["select_1"]) for stage in ("before", "after")},
            "block_seconds": {k: round(v, 3) for k, v in compiled["seconds"].items()}}
    out["postselection_measurements"] = circuit.lcu_qubits * circuit.degree + circuit.degree
    out["output_measurements"] = circuit.n_qubits
    return out
