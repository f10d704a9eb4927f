"""The device choice (quixer/devices.py), the CPU side of CUDA-graph capture (quixer/cuda_graphs.py),
the guard around the Triton kernels (quixer/simulators.py, under Triton's interpreter), and the GPU
check's safety nets (bench/gpu_check.sh, the per-test time limit and optional-package skips of
tests/conftest.py). With a GPU, tests/test_cuda.py times both devices, checks captured training
steps against eager steps and a failing kernel's fallback on the real compiler."""
from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import REPO

from quixer import native
from quixer.cuda_graphs import capture_step, check_replay_inputs
from quixer.devices import fastest_device, time_training_step, training_step
from quixer.model import Quixer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_quixer():
    return Quixer(n_qubits=2, n_tokens=4, qsvt_polynomial_degree=2, n_ansatz_layers=1, vocabulary_size=6,
                  embedding_dimension=4)


def run_pytest(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """pytest in a fresh interpreter in the repository root (where ``tests`` is importable)."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)


# ---- the device choice ---------------------------------------------------------------------------

def test_a_single_candidate_is_not_measured():
    def must_not_build():
        raise AssertionError("built a model with nothing to compare")

    assert fastest_device(must_not_build, 4, 6, 8, candidates=["cpu"]) == (torch.device("cpu"), {})
    if not torch.cuda.is_available():
        assert fastest_device(must_not_build, 4, 6, 8) == (torch.device("cpu"), {})


def test_time_training_step_times_real_steps():
    model = tiny_quixer()
    before = [p.detach().clone() for p in model.parameters()]
    seconds = time_training_step(model, 4, 6, 8, torch.device("cpu"), steps=2, warmup=1)
    assert 0 < seconds < 60 and math.isfinite(seconds)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # Adam steps were taken


def test_the_faster_candidate_is_chosen_and_the_generators_are_restored():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    device, times = fastest_device(tiny_quixer, 4, 6, 8, candidates=["cpu", "cpu:0"])
    assert set(times) == {"cpu", "cpu:0"} and all(t > 0 for t in times.values())
    assert device == torch.device(min(times, key=times.get))
    assert torch.equal(torch.rand(3), expected)  # the measurement drew from a forked generator


def test_a_failing_device_counts_as_infinitely_slow(caplog):
    # a GPU that does not exist: "Torch not compiled with CUDA enabled" here, "invalid device ordinal" on a GPU
    with caplog.at_level(logging.WARNING, logger="quixer.devices"):
        device, times = fastest_device(tiny_quixer, 4, 6, 8, candidates=["cuda:99", "cpu"])
    assert device == torch.device("cpu") and times["cuda:99"] == math.inf and 0 < times["cpu"] < math.inf
    assert any("cuda:99 failed" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError, match="failed on every device: cuda:98: .*; cuda:99: "):
        fastest_device(tiny_quixer, 4, 6, 8, candidates=["cuda:98", "cuda:99"])


# ---- CUDA-graph capture ------------------------------------------------------------------------

def test_cpu_steps_are_not_captured():
    def step(x):
        return x * 2

    assert capture_step(step, torch.ones(3)) is step


def test_a_replay_refuses_inputs_of_other_shapes_or_types():
    captured = [torch.zeros(16, 7, dtype=torch.long), torch.zeros(16, dtype=torch.long)]
    check_replay_inputs(captured, [torch.ones(16, 7, dtype=torch.long), torch.ones(16, dtype=torch.long)])
    wrong = {"a smaller last batch": [torch.ones(9, 7, dtype=torch.long), torch.ones(9, dtype=torch.long)],
             "one sequence (copy_ would broadcast it)": [torch.ones(1, 7, dtype=torch.long),
                                                         torch.ones(1, dtype=torch.long)],
             "int32 ids (copy_ would cast them)": [torch.ones(16, 7, dtype=torch.int32),
                                                   torch.ones(16, dtype=torch.long)],
             "a missing input": [torch.ones(16, 7, dtype=torch.long)]}
    for case, inputs in wrong.items():
        with pytest.raises(ValueError, match=r"captured shapes \[\(\(16, 7\), torch.int64\)"):
            check_replay_inputs(captured, inputs)
            pytest.fail(case)


# ---- the Triton kernels' guard -------------------------------------------------------------------

def test_interpreted_kernel_guard_cases():
    """tests/interpreted_guard_cases.py: working kernels are kept, a kernel that Triton rejects falls
    back to the torch simulation with one warning, a pinned Triton simulator raises."""
    proc = run_pytest(REPO / "tests" / "interpreted_guard_cases.py", env={"TRITON_INTERPRET": "1"})
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert re.search(r"\b4 passed\b", summary) and "skipped" not in summary, summary


# ---- bench/bench_quixer.py: one failing implementation does not end the comparison ---------------

def test_a_failing_implementation_is_reported_and_the_other_still_measured():
    from bench import bench_quixer

    model, cpu = tiny_quixer(), torch.device("cpu")
    step = training_step(model, torch.optim.Adam(model.parameters(), lr=1e-3))
    batches = [(torch.randint(0, 6, (8, 4)), torch.randint(0, 6, (8,))) for _ in range(4)]
    errors: dict[str, str] = {}
    native.set_enabled(False)  # the pinned native simulator now cannot run: its forward raises
    try:
        results = bench_quixer.time_alternately(
            ["fast", "torch"], {"fast": step, "torch": step},
            lambda name: model.use_simulator({"fast": "native", "torch": "torch"}[name]),
            batches, 1, bench_quixer.PeakMemory(cpu), cpu, errors)
    finally:
        native.set_enabled(None)
    assert list(errors) == ["fast"] and "native simulator cannot run" in errors["fast"]
    assert len(results["torch"]["times"]) == 2 and results["torch"]["peak"] > 0 and not results["fast"]["times"]


# ---- tests/conftest.py: the per-test time limit and the optional-package skips ---------------------

def test_the_per_test_time_limit_fails_a_slow_test(tmp_path):
    (tmp_path / "test_slow.py").write_text("import time\n\ndef test_slow():\n    time.sleep(30)\n\n"
                                           "def test_quick():\n    pass\n")
    start = time.perf_counter()
    proc = run_pytest("-p", "tests.conftest", tmp_path, env={"QUIXER_TEST_TIMEOUT": "1"}, timeout=120)
    assert time.perf_counter() - start < 25, "the alarm did not interrupt the sleep"
    assert "1 failed, 1 passed" in proc.stdout and "timed out after 1 s (QUIXER_TEST_TIMEOUT)" in proc.stdout


def test_missing_optional_packages_skip_only_when_asked(tmp_path):
    (tmp_path / "test_optional.py").write_text(
        "import sys\nsys.modules['qiskit'] = None  # as if it were not installed\n\n"
        "def test_needs_qiskit():\n    import qiskit  # noqa: F401\n\n"
        "def test_needs_something_else():\n    import quixer_no_such_module  # noqa: F401\n")
    asked = run_pytest("-rfs", "-p", "tests.conftest", tmp_path, env={"QUIXER_SKIP_MISSING_OPTIONAL": "1"}, timeout=120)
    assert "1 failed, 1 skipped" in asked.stdout and "needs qiskit (not installed)" in asked.stdout
    assert "test_needs_something_else" in asked.stdout.split("short test summary")[-1]
    plain = run_pytest("-p", "tests.conftest", tmp_path, env={"QUIXER_SKIP_MISSING_OPTIONAL": "0"}, timeout=120)
    assert "2 failed" in plain.stdout


# ---- bench/gpu_check.sh without a GPU ------------------------------------------------------------

def gpu_check(tmp_path, **env) -> tuple[subprocess.CompletedProcess, str]:
    """bench/gpu_check.sh with this interpreter, run from elsewhere; its exit and its gpu.txt."""
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), str(out), str(tmp_path / "tokens")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable, **env})
    return proc, (out / "gpu.txt").read_text()


def outside_the_check_and_without_a_gpu(test):
    """The check runs this file itself (no recursion there), and with a GPU it would spend minutes on the GPU steps."""
    in_the_check = os.environ.get("QUIXER_IN_GPU_CHECK") == "1"
    test = pytest.mark.skipif(in_the_check, reason="the check runs this file itself")(test)
    return pytest.mark.skipif(torch.cuda.is_available(), reason="the check would run the GPU steps: minutes")(test)


@outside_the_check_and_without_a_gpu
def test_the_gpu_check_runs_without_a_gpu_or_an_install(tmp_path):
    """The check with the repository from PYTHONPATH only: the environment, the GPU tests (skipped),
    import checks of the GPU steps' scripts, and at most 8 files."""
    proc, status = gpu_check(tmp_path, CHECK_CPU_TESTS="0")
    out = tmp_path / "out"
    assert proc.returncode == 0, status + proc.stderr[-3000:] + (out / "log.txt").read_text()[-3000:]
    for script in ("bench/bench_quixer.py", "train_quixer_hybrid.py", "bench/project_epochs.py",
                   "bench/bench_classical.py"):
        assert re.search(rf"{re.escape(script)} --help \(no GPU\) +exit 0 in", status), script
    assert re.search(r"tests \(GPU\) +exit 0 in", status) and "gpu none" in status
    assert re.search(r"\d+ skipped", (out / "tests.txt").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["gpu.txt", "log.txt", "tests.txt"]


@outside_the_check_and_without_a_gpu
def test_the_gpu_check_keeps_to_its_time_budget(tmp_path):
    start = time.perf_counter()
    proc, status = gpu_check(tmp_path, CHECK_SECONDS="21", CHECK_CPU_TESTS="1")
    assert time.perf_counter() - start < 21 + 10 + 15  # the budget, timeout's kill delay, the last notes
    assert proc.returncode == 1 and re.search(r"tests \(CPU\) +SKIPPED: out of time \(CHECK_SECONDS=21\)", status)
