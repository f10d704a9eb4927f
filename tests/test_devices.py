"""The device choice (quixer/devices.py), the CPU side of CUDA-graph capture (quixer/sim/cuda_graphs.py),
the guard around the Triton kernels (quixer/sim/simulators.py, under Triton's interpreter), and the GPU
check's safety nets (bench/gpu_check.sh, the per-test time limit and optional-package skips of
tests/conftest.py). With a GPU, tests/test_cuda.py times both devices, checks captured training
steps against eager steps and a failing kernel's fallback on the real compiler."""
from __future__ import annotations

import copy
import json
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

from quixer.sim import native
from quixer.sim.cuda_graphs import (
    CapturedSteps,
    TrainingSnapshot,
    capturable_optimizer,
    capture_eval,
    capture_step,
    check_replay_inputs,
)
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


def stepped(model, optimizer, batches) -> list[torch.Tensor]:
    step = training_step(model, optimizer)
    return [step(x, y) for x, y in batches]


def quixer_batches(n=4, batch=8):
    gen = torch.Generator().manual_seed(3)
    return [(torch.randint(0, 6, (batch, 4), generator=gen), torch.randint(0, 6, (batch,), generator=gen))
            for _ in range(n)]


@pytest.mark.parametrize("prior_steps", [0, 1])
def test_a_snapshot_undoes_the_capture_warm_up_in_place(prior_steps):
    """What CapturedSteps does around a capture, with the warm-up steps a capture runs: snapshot, three
    real steps (dropout draws, Adam moments), restore; the next steps are then those of a run without
    the warm-up, bit for bit, on the same tensors (a graph reads the ones it captured). A fresh Adam's
    state is zero-filled, an existing one copied back."""
    torch.manual_seed(0)
    model = Quixer(n_qubits=2, n_tokens=4, qsvt_polynomial_degree=2, n_ansatz_layers=1, vocabulary_size=6,
                   embedding_dimension=4, dropout=0.3)
    twin = copy.deepcopy(model)
    batches = quixer_batches()
    optimizers = [torch.optim.Adam(m.parameters(), lr=0.01) for m in (model, twin)]
    for m, opt in zip((model, twin), optimizers):
        torch.manual_seed(0)
        stepped(m, opt, batches[:prior_steps])
    torch.manual_seed(1)
    expected = stepped(twin, optimizers[1], batches)
    torch.manual_seed(1)
    snapshot = TrainingSnapshot(model, optimizers[0])
    stepped(model, optimizers[0], [batches[0]] * 3)
    storages = [t.data_ptr() for t in [*model.parameters(), *(v for s in optimizers[0].state.values()
                                                               for v in s.values())]]
    snapshot.restore()
    assert storages == [t.data_ptr() for t in [*model.parameters(), *(v for s in optimizers[0].state.values()
                                                                      for v in s.values())]]
    assert [float(v) for v in stepped(model, optimizers[0], batches)] == [float(v) for v in expected]
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_captured_steps_on_a_cpu_are_the_steps_themselves():
    """CPU batches are never captured: full and partial batches alike run the step as it is."""
    torch.manual_seed(0)
    model = tiny_quixer()
    twin = copy.deepcopy(model)
    batches = quixer_batches(3) + quixer_batches(1, batch=5)
    opt, twin_opt = (torch.optim.Adam(m.parameters(), lr=0.01) for m in (model, twin))
    steps = CapturedSteps(training_step(model, opt), model, opt, batch_size=8)
    torch.manual_seed(2)
    got = [float(steps(x, y)) for x, y in batches]
    torch.manual_seed(2)
    assert got == [float(v) for v in stepped(twin, twin_opt, batches)] and steps.replay is None


def test_a_capturable_optimizer_keeps_the_schedules_on_its_rate_tensor():
    """torch's schedulers (cosine per step, plateau per epoch) update a tensor learning rate in place, to
    the bits they give a float one (float64); switched back, the optimizer holds floats again."""
    for make, advance in [(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=7), lambda s, i: s.step()),
                          (lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=0),
                           lambda s, i: s.step([3.0, 2.0, 2.5, 2.5, 1.0, 1.0, 0.9][i]))]:
        plain, graphed = (torch.optim.Adam(tiny_quixer().parameters(), lr=0.002) for _ in range(2))
        schedules = [make(plain), make(graphed)]
        capturable_optimizer(graphed, True)
        rate = graphed.param_groups[0]["lr"]
        assert rate.dtype == torch.float64 and graphed.param_groups[0]["capturable"]
        for i in range(7):
            for opt, schedule in zip((plain, graphed), schedules):
                opt.step()  # no gradients: nothing moves, but the schedulers see a step first
                advance(schedule, i)
            assert graphed.param_groups[0]["lr"] is rate and float(rate) == plain.param_groups[0]["lr"]
        assert plain.param_groups[0]["lr"] < 0.002
        capturable_optimizer(graphed, False)
        assert graphed.param_groups[0]["lr"] == plain.param_groups[0]["lr"] and not graphed.param_groups[0]["capturable"]


def test_a_replaced_rate_tensor_is_put_back_with_the_new_rate():
    """For schedulers that assign a rate instead of filling it (torch before 2.10): the captured tensor
    takes the new value and goes back into the param group."""
    from types import SimpleNamespace

    from quixer.training import _keep_lr_tensors

    opt = torch.optim.Adam(tiny_quixer().parameters(), lr=0.002)
    capturable_optimizer(opt, True)
    run = SimpleNamespace(optimizer=opt, lr_tensors=[opt.param_groups[0]["lr"]])
    opt.param_groups[0]["lr"] = 0.0005
    _keep_lr_tensors(run)
    assert opt.param_groups[0]["lr"] is run.lr_tensors[0] and float(run.lr_tensors[0]) == 0.0005


def test_a_captured_eval_on_a_cpu_is_the_eval_forward():
    model = tiny_quixer()
    with pytest.raises(ValueError, match="eval mode"):
        capture_eval(model, torch.zeros(2, 4, dtype=torch.long))
    model.eval()
    x = torch.randint(0, 6, (5, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x)
    for got, expected in zip(capture_eval(model, x)(x), want):
        assert torch.equal(got, expected)


def test_eval_tables_rebuilt_per_call_see_every_write():
    """Inside rebuilt_per_call (a captured eval) nothing is kept between forwards, so even a write
    through .data (invisible to version counters) shows at once; the cache works as before afterwards."""
    model = tiny_quixer().eval()
    model.initialize("uniform", generator=torch.Generator().manual_seed(0))
    x = torch.randint(0, 6, (3, 4), generator=torch.Generator().manual_seed(2))
    cache = model.simulator().cache
    with torch.no_grad():
        with cache.rebuilt_per_call():
            before = model(x)[0]
            model.embedding_to_angles.weight.data.mul_(3)
            after = model(x)[0]
            assert cache._key is None
        assert (after - before).abs().max() > 1e-2 and torch.equal(model(x)[0], after)
    with torch.enable_grad():  # the reference: every position's own circuit, no cache at all
        torch.testing.assert_close(after, model(x)[0].detach(), rtol=0, atol=1e-5)


# ---- the Triton kernels' guard -------------------------------------------------------------------

@pytest.mark.slow
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


def test_eval_throughput_is_measured_at_the_given_batch_sizes(capsys):
    from bench import bench_quixer

    assert bench_quixer.main(["--batch-size", "2", "--qubits", "2", "--degree", "2", "--ansatz-layers", "1",
                              "--window", "3", "--embed-dim", "4", "--vocab", "5", "--steps", "1", "--warmup", "0",
                              "--device", "cpu", "--eval-batch-sizes", "64", "96", "--eval-steps", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(out["eval_by_batch"]) == ["64", "96"] and out["config"]["eval_batch_sizes"] == [64, 96]
    for size, found in out["eval_by_batch"].items():
        assert found["captured"] is False and found["first_batch_seconds"] > 0
        assert found["sequences_per_second"] == pytest.approx(int(size) / found["seconds_per_batch"], rel=0.01)


@pytest.mark.parametrize("flag", ["--use_layerwise_training", "--cuda_graph"])
def test_a_short_run_is_projected_to_fifty_epochs(tmp_path, capsys, flag):
    """bench/project_epochs.py on a real capped run: with layerwise training each projected epoch costs
    the measured one with as many active layers; with --cuda_graph (all layers) the last measured epoch."""
    import train_quixer_hybrid
    from bench import project_epochs
    from tests.token_fixtures import make_token_dir

    data, run = make_token_dir(tmp_path / "tokens"), tmp_path / "run"
    train_quixer_hybrid.main(["--data_dir", str(data), "--output_dir", str(run), "--qubits", "2", "--degree", "2",
                              "--ansatz_layers", "2", "--embedding_dim", "8", "--device", "cpu", "--epochs", "2",
                              "--max_train_batches", "2", "--batch_size", "16", flag])
    capsys.readouterr()
    assert project_epochs.main([str(run), "--epochs", "50"]) == 0
    found = json.loads(capsys.readouterr().out)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    n_train = json.loads((run / "results.json").read_text())["windows"]["train"]
    epoch = [n_train / r["sequences_per_second"] + r["epoch_seconds"] - 32 / r["sequences_per_second"] for r in records]
    layerwise = flag == "--use_layerwise_training"
    assert found["layerwise"] is layerwise and found["cuda_graph"] is (not layerwise)
    expected = 25 * epoch[0] + 25 * epoch[1] if layerwise else 50 * epoch[1]
    assert found["projected_seconds"] == pytest.approx(expected, abs=0.1)


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


@pytest.mark.slow
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


@pytest.mark.slow
@outside_the_check_and_without_a_gpu
def test_the_gpu_check_keeps_to_its_time_budget(tmp_path):
    start = time.perf_counter()
    proc, status = gpu_check(tmp_path, CHECK_SECONDS="21", CHECK_CPU_TESTS="1")
    assert time.perf_counter() - start < 21 + 10 + 15  # the budget, timeout's kill delay, the last notes
    assert proc.returncode == 1 and re.search(r"tests \(CPU\) +SKIPPED: out of time \(CHECK_SECONDS=21\)", status)
