"""Print what the Triton circuit kernels cost once compiled for an sm_90 GPU (no GPU needed).

For each launch of a training step at the paper's size (6 qubits, 4 layers: 96 gates; 32 sequences
of 31 tokens), in float32 and float64: registers per thread, stack bytes (spills), warps, programs
and circuit instances resident per multiprocessor, compile seconds, and per gate (one pass round the
gate loop, per warp, from the PTX and the SASS: fewest, most, and the mean for the paper's gate mix)
the instructions, warp shuffles, barriers and local-memory accesses, also per circuit instance.
See :mod:`quixer.sim.compiled_kernels` for how each figure is read off the compiled kernel.

``--baseline REV`` compiles an earlier revision's kernels (same parameters) with the same arguments,
at that revision's tile (its ``MAX_BLOCK`` lanes, 4 warps), and adds the ratios new / old.

    python bench/kernel_metadata.py
    python bench/kernel_metadata.py --baseline 2c5f784 --json out.jsonl
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import subprocess
import tempfile
from pathlib import Path

import torch

from quixer.sim import compiled_kernels

REPO = Path(__file__).resolve().parents[1]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
COLUMNS = ("registers", "stack_bytes", "programs_per_sm", "resident_instances_per_sm", "compile_s",
           "sass_per_gate_instance", "ptx_per_gate_instance", "shuffles_per_gate_instance", "k_sass_per_sequence")


def baseline_module(revision: str, folder: str):
    """``quixer/sim/triton_kernels.py`` of ``revision`` imported as a module of its own (from a file, so
    that Triton can read the kernels' source)."""
    for path in ("quixer/sim/triton_kernels.py", "quixer/triton_kernels.py"):  # the latter before quixer/sim/
        shown = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=REPO, capture_output=True, text=True)
        if shown.returncode == 0:
            break
    else:
        raise SystemExit(f"kernel_metadata: no triton_kernels.py at revision {revision}: {shown.stderr.strip()}")
    source = shown.stdout
    path = Path(folder) / "baseline_triton_kernels.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_triton_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measured(launch, kernel=None, **options) -> dict:
    """:func:`quixer.sim.compiled_kernels.measure`, plus for the launches that run an eval's powers (the LCU power
    at degree 3, the eval kernel) the thousands of SASS warp-instructions their gate loops take per sequence."""
    found = compiled_kernels.measure(launch, kernel, **options)
    if launch.name in ("lcu_power", "qsvt_eval"):
        at = dataclasses.replace(launch, meta={**launch.meta, **options})
        found["k_sass_per_sequence"] = round(compiled_kernels.gate_instructions_per_sequence(at, found) / 1000, 1)
    else:
        found["k_sass_per_sequence"] = None
    return found


def rows(baseline) -> list[dict]:
    """One row per launch and dtype (and per version with a baseline that has the launch's kernel)."""
    out = []
    for dtype_name, dtype in DTYPES.items():
        for launch in compiled_kernels.paper_launches(dtype) + [compiled_kernels.eval_launch(dtype)]:
            row = {"dtype": dtype_name, "version": "new", **measured(launch)}
            out.append(row)
            kernel = getattr(baseline, launch.kernel.__name__, None)
            if kernel is not None:
                old = measured(launch, kernel=kernel, BLOCK=baseline.MAX_BLOCK, num_warps=4, maxnreg=None)
                old = {"dtype": dtype_name, "version": "baseline", **old}
                row["ratio_to_baseline"] = {c: round(row[c] / old[c], 2) if old[c] and row[c] is not None else None
                                            for c in COLUMNS}
                out.append(old)
    return out


def table(results: list[dict]) -> str:
    lines = ["launch             dtype    version   " + " ".join(f"{c[:14]:>14}" for c in COLUMNS)]
    for r in results:
        cells = " ".join(f"{'-' if r[c] is None else r[c]:>14}" for c in COLUMNS)
        lines.append(f"{r['launch']:<18} {r['dtype']:<8} {r['version']:<9} {cells}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="a git revision whose kernels to compare with")
    parser.add_argument("--json", type=Path, help="also write one JSON line per row here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        results = rows(baseline_module(args.baseline, folder) if args.baseline else None)
    print(table(results))
    for r in results:
        print(json.dumps(r))
    if args.json:
        args.json.write_text("".join(json.dumps(r) + "\n" for r in results))


if __name__ == "__main__":
    main()
