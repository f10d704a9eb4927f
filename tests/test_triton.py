"""The Triton GPU kernels (quixer/triton_kernels.py), checked without a GPU.

- ``tests/interpreted_triton_cases.py`` runs the kernels under TRITON_INTERPRET=1 on CPU tensors
  against the torch simulation (forward, adjoint, LCU power and its backward, gradcheck, a whole
  model in train and eval mode). It needs a process of its own: Triton fixes interpreter mode
  when the kernels are decorated, at import.
- The kernels are compiled to a cubin for an sm_90 GPU (the H200 of docs/gpu_h200) at the paper's
  size: Triton's compiler rejects things its interpreter runs (it rejected a first, unrolled
  version of these kernels), and compiling needs no GPU.

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


def test_interpreted_kernels_match_the_torch_simulation():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(REPO / "tests" / "interpreted_triton_cases.py")],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert re.search(r"\b1[0-9] passed\b", summary) and "skipped" not in summary, summary


def _signature(kernel, real: str) -> dict:
    """Argument types of one of our kernels: pointers to ``real`` (int32 for the gate wiring),
    int32 scalars, constexpr flags."""
    wiring = {"kind", "wire0", "wire1"}
    scalars = {"n_seq", "n_lanes", "n_gates"}
    types = {}
    for param in kernel.params:
        name = param.name
        if param.is_constexpr:
            types[name] = "constexpr"
        elif name in wiring:
            types[name] = "*i32"
        elif name in scalars or name.endswith(("_seq", "_lane", "_row")):
            types[name] = "i32"
        else:
            types[name] = f"*{real}"
    return types


@pytest.mark.skipif(INTERPRETER_ON, reason="this process runs Triton's interpreter, not its compiler")
@pytest.mark.parametrize("name,real,flags", [
    ("_forward_kernel", "fp32", {"LCU": True}),
    ("_adjoint_kernel", "fp32", {"LCU": True, "INPUT_GRAD": True}),
    ("_adjoint_kernel", "fp64", {"LCU": False, "INPUT_GRAD": False}),
])
def test_kernels_compile_for_an_sm90_gpu(name, real, flags):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from quixer import triton_kernels

    kernel = getattr(triton_kernels, name)
    source = ASTSource(fn=kernel, signature=_signature(kernel, real),
                       constexprs={"NQ": 6, "BLOCK": triton_kernels.MAX_BLOCK, **flags})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=triton_kernels.OPTIONS)
    assert compiled.asm["cubin"] and ".entry " + name in compiled.asm["ptx"]
