"""The Triton circuit kernels compiled for an sm_90 GPU without one, and what the compiled code costs.

Why: CI has no GPU, yet the kernels' speed is set by things the compiler decides: registers per
thread (how many programs fit on a multiprocessor), spills to local memory, and the instructions
each gate costs (warp shuffles and barriers above all). All of these can be read off the compiled
kernel: registers and stack from the cubin (``cuobjdump``), instructions per gate from the gate loop
of the PTX and of the SASS (``nvdisasm``); the triton wheel ships both tools.

The kernels are compiled from the arguments the real launchers of :mod:`quixer.sim.triton_kernels`
pass, on CPU tensors with the launch recorded instead of run, and specialised as Triton's JIT does at
a launch (integers equal to 1 become constants, 16-byte alignment is assumed where it holds): the
layouts the compiler picks depend on that specialisation.
"""
from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from . import triton_kernels
from .circuits import CircuitPlan, ansatz14_gates

SM90 = GPUTarget("cuda", 90, 32)
# an sm_90 multiprocessor: 64 Ki 32-bit registers, allocated per warp in units of 256; at most
# 64 warps and 32 programs (blocks) resident
SM_REGISTERS, REGISTER_UNIT, SM_WARPS, SM_PROGRAMS = 65536, 256, 64, 32


@dataclass
class Launch:
    """One recorded kernel launch: the kernel, its grid, positional arguments and keyword options."""
    name: str
    kernel: object
    grid: tuple
    args: tuple
    meta: dict


@contextlib.contextmanager
def _recording(launches: list):
    """Launchers of :mod:`quixer.sim.triton_kernels` that accept CPU tensors and record instead of launching."""
    if triton_kernels.INTERPRETED:
        raise RuntimeError("quixer.sim.triton_kernels was imported under TRITON_INTERPRET=1: its kernels cannot compile")
    saved = triton_kernels.INTERPRETED, triton_kernels._execute
    triton_kernels.INTERPRETED = True  # supports() takes CPU tensors
    triton_kernels._execute = lambda kernel, grid, args, meta: launches.append((kernel, grid, args, meta))
    try:
        yield
    finally:
        triton_kernels.INTERPRETED, triton_kernels._execute = saved


def paper_launches(dtype: torch.dtype, n_qubits: int = 6, n_layers: int = 4, batch: int = 32, window: int = 31
                   ) -> list[Launch]:
    """The four launches of a training step at the paper's size: the LCU power (forward kernel) and its
    adjoint, and the plain circuits (the feed-forward's) and their adjoint, ``batch * window`` instances."""
    plan = CircuitPlan(ansatz14_gates(n_qubits, n_layers), n_qubits)
    n = batch * window
    rows, gates = 2 ** (n_qubits + 1), len(plan.gates)
    cos, sin = torch.ones(n, gates, dtype=dtype), torch.zeros(n, gates, dtype=dtype)
    psi, grad = torch.zeros(rows, batch, dtype=dtype), torch.zeros(rows, batch, dtype=dtype)
    outputs, lcu = torch.zeros(rows, n, dtype=dtype), torch.ones(window, dtype=torch.complex128)
    states = torch.zeros(1, rows, n, dtype=dtype)
    recorded: list = []
    with _recording(recorded):
        triton_kernels.lcu_power(psi, cos, sin, plan.wiring, n_qubits, lcu)
        triton_kernels.lcu_power_adjoint(outputs, grad, cos, sin, plan.wiring, n_qubits, lcu)
        triton_kernels.forward(states, cos, sin, plan.wiring, n_qubits)
        triton_kernels.adjoint(states, states, cos, sin, plan.wiring, n_qubits)
    names = ("lcu_power", "lcu_power_adjoint", "circuits", "circuits_adjoint")
    return [Launch(name, *launch) for name, launch in zip(names, recorded)]


def eval_launch(dtype: torch.dtype, n_qubits: int = 6, n_layers: int = 4, batch: int = 16384, window: int = 31,
                vocab: int = 512, degree: int = 3) -> Launch:
    """The eval launch at the paper's size: the whole QSVT state of ``batch`` sequences of ``window`` tokens
    from per-vocabulary tables, in one :func:`quixer.sim.triton_kernels.qsvt_eval` launch."""
    plan = CircuitPlan(ansatz14_gates(n_qubits, n_layers), n_qubits)
    rows, gates = 2 ** (n_qubits + 1), len(plan.gates)
    recorded: list = []
    with _recording(recorded):
        triton_kernels.qsvt_eval(torch.zeros(batch, window, dtype=torch.long), torch.zeros(vocab, gates, 2, dtype=dtype),
                                 torch.zeros(vocab, rows, dtype=dtype), triton_kernels.gate_words(plan.wiring, n_qubits),
                                 n_qubits, (torch.ones(window, dtype=dtype), torch.ones(window, dtype=dtype)),
                                 torch.ones(degree + 1, dtype=dtype))
    return Launch("qsvt_eval", *recorded[0])


def gate_instructions_per_sequence(launch: Launch, found: dict, degree: int = 3) -> float:
    """SASS warp-instructions the gate loops of one sequence take at polynomial ``degree`` (the paper
    mix, from :func:`measure`'s ``found``): lanes (positions, padded to whole tiles) x gates x powers run
    through circuits. An LCU-power launch runs all ``degree`` powers; the eval launch ``degree - 1`` (the
    first power is a sum of cached first columns)."""
    if launch.name == "qsvt_eval":
        window, gates, powers = launch.args[8], launch.args[9], launch.args[10] - 1
    else:  # _forward_kernel's sizes (sequences, lanes, gates) follow its 5 tensors, wiring and LCU parts
        window, gates, powers = launch.args[11], launch.args[12], degree
    block = launch.meta["BLOCK"]
    lanes = -(-window // block) * block
    return powers * lanes * gates * found["sass_per_gate_instance"]


def compile_sm90(launch: Launch, kernel=None) -> tuple[triton.compiler.CompiledKernel, float]:
    """``launch`` compiled for sm_90 as ``kernel[grid](*args, **meta)`` would compile it on that GPU
    (``kernel``: another kernel with the same parameters, e.g. an earlier version); and the seconds taken.
    The specialisation is the JIT's own (``JITFunction.run``'s binder and ``_pack_args``: private to
    triton, the same in 3.6, the GPU machines', and 3.9, the pinned one)."""
    kernel = kernel or launch.kernel
    backend = make_backend(SM90)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.meta)
    options, signature, constexprs, attrs = kernel._pack_args(backend, launch.meta, bound, specialization, options)
    with triton.knobs.compilation.scope():
        triton.knobs.compilation.always_compile = True  # a real compile, timed, not a cache hit
        start = time.perf_counter()
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=SM90,
                                  options=options.__dict__)
        return compiled, time.perf_counter() - start


def _tool(name: str, cubin: bytes, *flags: str) -> str:
    """Output of one of the wheel's CUDA binary tools (``cuobjdump``, ``nvdisasm``) on ``cubin``."""
    path = getattr(triton.knobs.nvidia, name).path
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "kernel.cubin"
        file.write_bytes(cubin)
        return subprocess.run([path, *flags, str(file)], capture_output=True, text=True, check=True).stdout


def resources(compiled) -> dict:
    """Registers per thread, stack (local memory: spills) and static shared memory per program from
    the cubin, and how many programs of ``num_warps`` fit on one sm_90 multiprocessor by registers."""
    usage = _tool("cuobjdump", compiled.asm["cubin"], "-res-usage")
    fields = {key: int(value) for key, value in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage)}
    warps = compiled.metadata.num_warps
    per_warp = -(-fields["REG"] * 32 // REGISTER_UNIT) * REGISTER_UNIT
    programs = min(SM_PROGRAMS, SM_WARPS // warps, SM_REGISTERS // (per_warp * warps))
    return {"registers": fields["REG"], "stack_bytes": fields["STACK"], "shared_bytes": fields["SHARED"],
            "warps": warps, "programs_per_sm": programs}


@dataclass
class _Op:
    opcode: str
    target: str | None = None  # a branch's label
    conditional: bool = False


def _ptx_items(ptx: str) -> list:
    """Labels (str) and instructions (:class:`_Op`) of the kernel body of a PTX listing."""
    items: list = []
    for line in ptx.split(".section")[0].splitlines():
        line = line.split("//")[0].strip()
        if re.fullmatch(r"\$\w+:", line):
            items.append(line[:-1])
        elif line.endswith(";") and not line.startswith((".", "{", "}")):
            predicate = re.match(r"@!?%\w+\s+", line)
            words = line[predicate.end() if predicate else 0:].rstrip(";").split()
            target = words[-1] if words[0].startswith("bra") else None
            items.append(_Op(words[0], target, predicate is not None))
    return items


def _sass_items(sass: str) -> list:
    """Labels (str) and instructions (:class:`_Op`) of an ``nvdisasm -c`` listing."""
    items: list = []
    for line in sass.splitlines():
        label = re.fullmatch(r"\s*(\.L_x_\d+):\s*", line)
        instruction = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;", line)
        if label:
            items.append(label.group(1))
        elif instruction:
            text = instruction.group(1)
            predicate = re.match(r"@!?U?P[T0-9]+\s+", text)
            opcode = text[predicate.end() if predicate else 0:].split()[0]
            target = re.search(r"`\((\.L_x_\d+)\)", text)
            items.append(_Op(opcode, target.group(1) if target else None, predicate is not None))
    return items


def _blocks(items: list) -> tuple[list[list[str]], list[list[int]]]:
    """Basic blocks (their opcodes) and successors of a listing's items."""
    blocks: list[list[_Op]] = [[]]
    labels: dict[str, int] = {}
    for item in items:
        if isinstance(item, str):
            if blocks[-1]:
                blocks.append([])
            labels[item] = len(blocks) - 1
            continue
        blocks[-1].append(item)
        if item.target or item.opcode.upper() in ("EXIT", "RET"):
            blocks.append([])
    successors = []
    for index, block in enumerate(blocks):
        last = block[-1] if block else _Op("")
        ends = last.target is not None or last.opcode.upper() in ("EXIT", "RET")
        targets = [labels[last.target]] if last.target in labels else []
        falls = (not ends or last.conditional) and index + 1 < len(blocks)
        successors.append(targets + ([index + 1] if falls else []))
    return [[op.opcode for op in block] for block in blocks], successors


def _loops(successors: list[list[int]]) -> dict[int, set[int]]:
    """Natural loops: header -> its blocks (from back edges ``u -> h`` where ``h`` dominates ``u``)."""
    n = len(successors)
    predecessors: list[list[int]] = [[] for _ in range(n)]
    for block, targets in enumerate(successors):
        for target in targets:
            predecessors[target].append(block)
    dominators = [set(range(n)) for _ in range(n)]
    dominators[0] = {0}
    changed = True
    while changed:
        changed = False
        for block in range(1, n):
            new = {block} | set.intersection(*(dominators[p] for p in predecessors[block])) if predecessors[block] \
                else {block}
            changed, dominators[block] = changed or new != dominators[block], new
    loops: dict[int, set[int]] = {}
    for block, targets in enumerate(successors):
        for header in (t for t in targets if t in dominators[block]):
            body, stack = loops.setdefault(header, {header}), [block]
            while stack:
                node = stack.pop()
                if node not in body:
                    body.add(node)
                    stack.extend(predecessors[node])
    return loops


def _paths(blocks: list[list[str]], successors: list[list[int]], header: int, body: set[int], limit: int = 256
           ) -> list[list[str]]:
    """The opcodes along each path once round the loop at ``header`` (inner cycles not followed)."""
    paths: list[list[str]] = []
    stack = [(header, [header])]
    while stack and len(paths) < limit:
        node, path = stack.pop()
        for nxt in successors[node]:
            if nxt == header:
                paths.append([op for b in path for op in blocks[b]])
            elif nxt in body and nxt not in path:
                stack.append((nxt, path + [nxt]))
    return paths


def gate_loop(listing: str, sass: bool) -> dict:
    """Instructions per gate: over the paths round the innermost loop holding the gates' partner
    exchanges (indexed warp shuffles; butterfly shuffles are lane sums), the fewest and most
    instructions, and their mean weighted as the paper's circuit mixes the paths: per layer of 24
    gates, 4 need no exchange (qubit 0 the target), 2 exchange only half the state (a CRX controlled by
    qubit 0, where a kernel has that path) and the rest exchange all of it; equal shares within each
    group. Also the most shuffles (of both kinds), barriers and local-memory accesses."""
    shuffle, barrier, local = ("SHFL", "BAR", ("LDL", "STL")) if sass else ("shfl", "bar", ("ld.local", "st.local"))
    exchange = "SHFL.IDX" if sass else "shfl.sync.idx"
    blocks, successors = _blocks(_sass_items(listing) if sass else _ptx_items(listing))
    loops = {header: body for header, body in _loops(successors).items()
             if any(op.startswith(exchange) for b in body for op in blocks[b])}
    header = min(loops, key=lambda h: len(loops[h]))
    paths = _paths(blocks, successors, header, loops[header])
    count = lambda path, prefix: sum(op.startswith(prefix) for op in path)  # noqa: E731
    most = max(count(p, exchange) for p in paths)
    groups = {"plain": [p for p in paths if not count(p, exchange)],
              "half": [p for p in paths if 0 < count(p, exchange) < most],
              "full": [p for p in paths if count(p, exchange) == most]}
    shares = {"plain": 4 / 24, "half": 2 / 24 if groups["half"] else 0.0}
    shares["full"] = 1.0 - shares["plain"] - shares["half"]
    if not groups["plain"]:
        shares = {"plain": 0.0, "half": shares["half"], "full": 1.0 - shares["half"]}
    mean = sum(shares[g] * sum(map(len, ps)) / len(ps) for g, ps in groups.items() if ps)
    return {"paths": len(paths), "min": min(map(len, paths)), "max": max(map(len, paths)), "mix": round(mean, 1),
            "shuffles": max(count(p, shuffle) for p in paths), "barriers": max(count(p, barrier) for p in paths),
            "local": max(count(p, local) for p in paths)}


def measure(launch: Launch, kernel=None, **meta) -> dict:
    """Everything above for one launch (``kernel`` and ``meta``: another kernel version and options in
    place of the launch's): compile seconds, resources, the integer types of the offsets into state
    tiles (``tt.addptr`` on 2-D tiles in the TTIR), PTX and SASS instructions per gate per warp, and per
    circuit instance (a warp holds ``BLOCK / warps`` instances and runs each instruction for all)."""
    launch = Launch(launch.name, launch.kernel, launch.grid, launch.args, {**launch.meta, **meta})
    compiled, seconds = compile_sm90(launch, kernel)
    sass = _tool("nvdisasm", compiled.asm["cubin"], "-c")
    found = resources(compiled)
    per_warp = launch.meta["BLOCK"] / found["warps"]
    ptx_loop, sass_loop = gate_loop(compiled.asm["ptx"], sass=False), gate_loop(sass, sass=True)
    tile_offsets = re.findall(r"tt.addptr .*: tensor<\d+x\d+x!tt.ptr<f\d+>>, tensor<\d+x\d+x(i\d+)>",
                              compiled.asm["ttir"])
    return {"launch": launch.name, "block": launch.meta["BLOCK"], "compile_s": round(seconds, 2), **found,
            "state_offset_types": sorted(set(tile_offsets)),
            "resident_instances_per_sm": found["programs_per_sm"] * launch.meta["BLOCK"],
            "ptx_per_gate": ptx_loop, "sass_per_gate": sass_loop,
            "ptx_per_gate_instance": round(ptx_loop["mix"] / per_warp, 1),
            "sass_per_gate_instance": round(sass_loop["mix"] / per_warp, 1),
            "shuffles_per_gate_instance": round(sass_loop["shuffles"] / per_warp, 2)}
