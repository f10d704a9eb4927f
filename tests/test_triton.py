"""The Triton GPU kernels (quixer/sim/triton_kernels.py), checked without a GPU.

- ``tests/interpreted_triton_cases.py`` runs the kernels under TRITON_INTERPRET=1 on CPU tensors
  against the torch simulation (forward, adjoint, LCU power and its backward, gradcheck, a whole
  model in train and eval mode). It needs a process of its own: Triton fixes interpreter mode
  when the kernels are decorated, at import.
- The kernels are compiled for an sm_90 GPU (the H200 of docs/gpu_h200) at the paper's size, as a
  launch compiles them (no GPU needed): Triton's compiler rejects things its interpreter runs, and
  the kernels' speed is bound by what the compiled code shows: registers, spills, and the warp
  shuffles, barriers and instructions of each gate (quixer/sim/compiled_kernels.py reads them).

tests/test_cuda.py checks the same kernels on a real GPU where one is lent.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from tests.helpers import REPO

INTERPRETER_ON = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@pytest.mark.slow
def test_interpreted_kernels_match_the_torch_simulation():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(REPO / "tests" / "interpreted_triton_cases.py")],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert re.search(r"\b2[0-9] passed\b", summary) and "skipped" not in summary, summary


@pytest.fixture(scope="module")
def sm90():
    """The kernels as compiled for an sm_90 GPU at the paper's size, measured once per module:
    {(launch name, dtype name): quixer.sim.compiled_kernels.measure(...) plus the launch}."""
    import torch

    from quixer.sim import compiled_kernels

    found = {}
    for dtype in (torch.float32, torch.float64):
        launches = [launch for launch in compiled_kernels.paper_launches(dtype)
                    if launch.name.startswith("lcu_power")]  # the training step's kernels (the plain ones share the code)
        for launch in launches + [compiled_kernels.eval_launch(dtype)]:
            found[launch.name, str(dtype)[6:]] = (launch, compiled_kernels.measure(launch))
    return found


# SASS instructions per gate and circuit instance (the paper's gate mix), with some headroom over what
# the kernels compile to: the earlier kernels (tl.gather over 64 columns, a per-gate gradient store)
# needed 46, 101, 61 and 365; the eval kernel reads its coefficients by token id, both in one load.
INSTRUCTION_BUDGET = {("lcu_power", "float32"): 28, ("lcu_power_adjoint", "float32"): 70,
                      ("lcu_power", "float64"): 46, ("lcu_power_adjoint", "float64"): 105,
                      ("qsvt_eval", "float32"): 20, ("qsvt_eval", "float64"): 30}


@pytest.mark.slow  # compiles the kernels for sm_90
@pytest.mark.skipif(INTERPRETER_ON, reason="this process runs Triton's interpreter, not its compiler")
@pytest.mark.parametrize("name,dtype", sorted(INSTRUCTION_BUDGET))
def test_kernels_compiled_for_sm90_fit_the_hardware(sm90, name, dtype):
    """No spills, registers for 4 programs per multiprocessor, one warp shuffle per 32-bit word of each
    partner value (plus the adjoint's 5-step lane sum of the angle gradient), no barrier in the gate
    loop, an instruction budget per gate, and a compile of seconds, not minutes."""
    launch, found = sm90[name, dtype]
    assert found["stack_bytes"] == 0 and found["sass_per_gate"]["local"] == 0, found
    assert found["programs_per_sm"] >= 4 and found["registers"] * 32 * found["warps"] * 4 <= 65536, found
    words, rows = (2 if dtype == "float64" else 1), launch.meta["BLOCK"] // found["warps"]
    adjoint = name.endswith("adjoint")
    shuffles = rows * words * (8 + 5 if adjoint else 4)
    assert found["sass_per_gate"]["shuffles"] == found["ptx_per_gate"]["shuffles"] == shuffles, found
    assert found["sass_per_gate"]["barriers"] == found["ptx_per_gate"]["barriers"] == 0, found
    assert found["sass_per_gate_instance"] <= INSTRUCTION_BUDGET[name, dtype], found
    assert found["compile_s"] < 60, found


@pytest.mark.slow  # compiles the kernels for sm_90
@pytest.mark.skipif(INTERPRETER_ON, reason="this process runs Triton's interpreter, not its compiler")
def test_kernels_address_states_with_int64_offsets_on_a_flat_grid(sm90):
    """Offsets into the state tiles are int64 (no wrap past 2^31 elements), and the grid is one axis
    of sequences x lane blocks (no 65,535 limit); the launchers refuse more than 2^31 - 1 programs."""
    import torch

    from quixer.sim import triton_kernels

    for launch, found in sm90.values():
        assert found["state_offset_types"] == ["i64"], found
    launch, _ = sm90["lcu_power", "float32"]
    assert launch.grid == (32,)  # 32 sequences of 31 tokens, one block of 32 lanes each
    cpu = torch.device("cpu")
    assert triton_kernels._tiles("forward", torch.float32, 6, 1, 3 * 2**26, cpu)[1] == 3 * 2**21
    with pytest.raises(ValueError, match="programs"):
        triton_kernels._tiles("forward", torch.float32, 6, 2**16, 2**21, cpu)


@pytest.mark.slow  # compiles the kernels for sm_90
@pytest.mark.skipif(INTERPRETER_ON, reason="this process runs Triton's interpreter, not its compiler")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_eval_kernel_halves_the_gate_work_of_a_sequence(sm90, dtype):
    """Per sequence at degree 3, the gate loops of one eval launch (two powers: the first comes from the
    cached U_v|0>) against the three LCU-power launches they replace, in SASS warp-instructions."""
    from quixer.sim.compiled_kernels import gate_instructions_per_sequence

    new = gate_instructions_per_sequence(*sm90["qsvt_eval", dtype])
    old = gate_instructions_per_sequence(*sm90["lcu_power", dtype], degree=3)
    assert new < 0.55 * old, (new, old)


def test_gate_loop_paths_are_read_off_a_listing():
    """The per-gate figures come from the paths round the innermost loop that exchanges partners:
    here a loop with a shuffle-free branch (1 of 6 gates) and a shuffling one, after a loop without."""
    from quixer.sim.compiled_kernels import gate_loop

    ptx = """
    mov.u32 %r1, 0;
$L__BB0_1:
    add.s32 %r1, %r1, 1;
    setp.lt.s32 %p1, %r1, 8;
    @%p1 bra $L__BB0_1;
$L__BB0_2:
    ld.global.b32 %r2, [%rd1];
    @%p2 bra $L__BB0_4;
    shfl.sync.idx.b32 %r3, %r4, %r5, 31, -1;
    shfl.sync.idx.b32 %r6, %r7, %r5, 31, -1;
    fma.rn.f32 %f1, %f2, %f3, %f4;
    bra.uni $L__BB0_5;
$L__BB0_4:
    mul.f32 %f1, %f2, %f3;
$L__BB0_5:
    setp.lt.s32 %p3, %r1, 96;
    @%p3 bra $L__BB0_2;
    ret;
"""
    found = gate_loop(ptx, sass=False)
    assert found == {"paths": 2, "min": 5, "max": 8, "mix": round(5 / 6 + 5 * 8 / 6, 1), "shuffles": 2,
                     "barriers": 0, "local": 0}
