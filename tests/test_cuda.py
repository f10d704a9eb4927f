"""The Quixer model on CUDA against the same model on the CPU (skipped without a GPU).

CI has no GPU: these run where one is lent (``bash bench/gpu_check.sh``). On CUDA the model uses
the fused Triton kernels (quixer/sim/triton_kernels.py) unless the torch simulation is pinned; on the
CPU the fused C++ kernel where it builds. Both GPU simulators must give the same logits,
postselection, gradients, eval-cache results and training trajectory as the CPU (complex128),
the paper-sized circuits must agree in complex64, the simulator must follow ``.to(device)``, a
training step captured as a CUDA graph must equal eager steps, a captured eval (the one-launch eval
kernel, its tables rebuilt in the graph) the eager eval, and the trainers' --cuda_graph (full batches
replayed, the partial one eager, the capture's warm-up undone) the eager run.

The later tests check the safety nets on the real compiler and driver: a kernel configuration that
Triton cannot compile falls back to the torch simulation when Triton was chosen automatically (and
raises when pinned); a captured step refuses a batch of another shape, draws fresh dropout masks on
every replay (the same as eager steps), and is refused if it draws from the CPU generator. They come
last: the check runs this file with ``-x``, and a sticky CUDA fault would fail everything after it.
"""
from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers import adam_steps

from quixer.sim import triton_kernels
from quixer.sim.cuda_graphs import CapturedSteps, capture_eval, capture_step
from quixer.devices import fastest_device, training_step
from quixer.model import Quixer
from quixer.sim.simulators import KERNEL_GUARD, GuardedTritonSimulator, select

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU_SIMULATORS = ["triton", "torch"]


def pair(simulator: str = "triton", dtype=torch.complex128, **sizes):
    """A CPU model and an identical copy on the GPU with ``simulator`` pinned."""
    config = dict(n_qubits=4, n_tokens=7, qsvt_polynomial_degree=3, n_ansatz_layers=2, vocabulary_size=13,
                  embedding_dimension=8, dropout=0.0, dtype=dtype)
    model = Quixer(**{**config, **sizes})
    model.initialize("uniform", generator=torch.Generator().manual_seed(0))
    gpu = copy.deepcopy(model).cuda()
    gpu.use_simulator(simulator)
    return model, gpu


def tokens(batch, window, vocab, seed=1):
    return torch.randint(0, vocab, (batch, window), generator=torch.Generator().manual_seed(seed))


def assert_gradients_close(gpu, cpu, **tolerances):
    for (name, a), b in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(b.grad.cpu(), a.grad, msg=name, **tolerances)


def test_cuda_selects_the_triton_kernels_and_follows_the_device():
    model, _ = pair()
    model.cuda()
    assert select(torch.device("cuda")) is GuardedTritonSimulator and model.simulator().name == "triton-auto"
    model.cpu()
    assert model.simulator().name == select(torch.device("cpu")).name != "triton"


@pytest.mark.parametrize("simulator", GPU_SIMULATORS)
def test_forward_and_gradients_match_the_cpu(simulator):
    cpu, gpu = pair(simulator)
    x = tokens(6, 7, 13)
    logits_cpu, p_cpu = cpu(x)
    logits_gpu, p_gpu = gpu(x.cuda())
    assert gpu.simulator().name == simulator
    torch.testing.assert_close(logits_gpu.cpu(), logits_cpu, rtol=0, atol=1e-10)
    torch.testing.assert_close(p_gpu.cpu(), p_cpu, rtol=0, atol=1e-10)
    (logits_cpu.square().sum() + p_cpu.sum()).backward()
    (logits_gpu.square().sum() + p_gpu.sum()).backward()
    assert_gradients_close(gpu, cpu, rtol=0, atol=1e-9)


@pytest.mark.parametrize("simulator", GPU_SIMULATORS)
def test_eval_cache_matches_the_cpu(simulator):
    cpu, gpu = pair(simulator)
    cpu.eval()
    gpu.eval()
    x = tokens(5, 7, 13, seed=2)
    with torch.no_grad():
        for got, want in zip(gpu(x.cuda()), cpu(x)):
            torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-10)
        torch.testing.assert_close(gpu.qsvt_state(x.cuda()).cpu(), cpu.qsvt_state(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("simulator", GPU_SIMULATORS)
def test_training_on_the_gpu_follows_the_cpu(simulator):
    cpu, gpu = pair(simulator)
    x = tokens(32, 7, 13, seed=3)
    y = (x[:, -1] + 1) % 13
    losses_cpu = adam_steps(cpu, x, y, 12)
    losses_gpu = adam_steps(gpu, x.cuda(), y.cuda(), 12)
    torch.testing.assert_close(torch.tensor(losses_gpu), torch.tensor(losses_cpu), rtol=0, atol=1e-9)
    for (name, a), b in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(b.detach().cpu(), a.detach(), rtol=0, atol=1e-8, msg=name)


def test_paper_sized_circuits_in_complex64_match_the_cpu():
    # 6 qubits, 4 layers (96 gates), 31 tokens, degree 3: the configuration the benchmarks time
    cpu, gpu = pair(dtype=torch.complex64, n_qubits=6, n_tokens=31, n_ansatz_layers=4, vocabulary_size=64,
                    embedding_dimension=32)
    x = tokens(9, 31, 64, seed=4)  # 9 sequences: partial tiles
    logits_cpu, p_cpu = cpu(x)
    logits_gpu, p_gpu = gpu(x.cuda())
    torch.testing.assert_close(logits_gpu.cpu(), logits_cpu, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(p_gpu.cpu(), p_cpu, rtol=1e-4, atol=1e-5)
    logits_cpu.square().sum().backward()
    logits_gpu.square().sum().backward()
    for (name, a), b in zip(cpu.named_parameters(), gpu.parameters()):
        error = (b.grad.cpu() - a.grad).abs().max() / a.grad.abs().max().clamp_min(1e-12)
        assert error < 1e-3, (name, float(error))
    with torch.no_grad():  # the eval paths: cached per-vocabulary data on both devices
        torch.testing.assert_close(gpu.eval()(x.cuda())[0].cpu(), cpu.eval()(x)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("simulator", GPU_SIMULATORS)
def test_training_steps_on_the_gpu_lower_the_loss(simulator):
    torch.manual_seed(0)
    _, gpu = pair(simulator, torch.complex64)
    gpu.dropout.p = 0.1
    x = torch.randint(0, 13, (32, 7), device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    y = (x[:, -1] + 1) % 13
    losses = adam_steps(gpu, x, y, 30)
    assert losses[-1] < 0.7 * losses[0]


def test_a_captured_training_step_equals_eager_steps():
    _, graphed = pair()
    eager = copy.deepcopy(graphed)
    batches = [(tokens(16, 7, 13, seed=s).cuda(), tokens(16, 1, 13, seed=s + 50)[:, 0].cuda()) for s in range(5)]
    run = capture_step(training_step(graphed, torch.optim.Adam(graphed.parameters(), lr=0.01, capturable=True)),
                       *batches[0], warmup=2)
    step = training_step(eager, torch.optim.Adam(eager.parameters(), lr=0.01, capturable=True))
    for _ in range(2):  # the capture's warm-up steps
        step(*batches[0])
    for x, y in batches[1:]:
        torch.testing.assert_close(run(x, y).clone(), step(x, y), rtol=0, atol=1e-10)
    for (name, a), b in zip(eager.named_parameters(), graphed.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-9, msg=name)


def test_a_captured_eval_equals_the_eager_eval_and_follows_the_parameters():
    """The eval kernel's whole eval (tables rebuilt inside the graph) replayed: the CPU's eval, also after
    an in-place parameter change; another batch shape or a replaced parameter storage is refused."""
    cpu, gpu = pair()
    cpu.eval()
    gpu.eval()
    x = tokens(64, 7, 13, seed=6)
    KERNEL_GUARD.clear()
    run = capture_eval(gpu, x.cuda())
    assert any(key[0] == "qsvt_eval" and key[1].startswith("cuda") for key in KERNEL_GUARD.checked)
    assert not KERNEL_GUARD.failed
    for change in (None, 1.1):
        if change is not None:
            with torch.no_grad():
                for model in (cpu, gpu):
                    for q in model.parameters():
                        q.mul_(change)
        with torch.no_grad():
            want = cpu(x)
        for got, expected in zip(run(x.cuda()), want):
            torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="captured shapes"):
        run(tokens(63, 7, 13).cuda())
    gpu.lcu_coefficients.data = gpu.lcu_coefficients.data.clone()
    with pytest.raises(ValueError, match="replaced"):
        run(x.cuda())


def test_captured_steps_follow_eager_steps_with_dropout_and_partial_batches():
    """Full batches replayed, partial ones eager, the capture's warm-up undone: with dropout 0.3, the
    losses and weights of eager steps with the same (capturable) optimizer."""
    _, graphed = pair()
    graphed.dropout.p = 0.3
    eager = copy.deepcopy(graphed)
    batches = [(tokens(n, 7, 13, seed=s).cuda(), tokens(n, 1, 13, seed=s + 50)[:, 0].cuda())
               for s, n in enumerate([16, 16, 9, 16, 16, 9])]
    optimizers = [torch.optim.Adam(m.parameters(), lr=0.01, capturable=True) for m in (graphed, eager)]
    torch.manual_seed(7)
    steps = CapturedSteps(training_step(graphed, optimizers[0]), graphed, optimizers[0], batch_size=16)
    got = [steps(x, y).clone() for x, y in batches]
    torch.manual_seed(7)
    step = training_step(eager, optimizers[1])
    want = [step(x, y) for x, y in batches]
    assert steps.replayed == 4
    torch.testing.assert_close(torch.stack(got), torch.stack(want), rtol=0, atol=1e-10)
    for (name, a), b in zip(eager.named_parameters(), graphed.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-9, msg=name)


@pytest.mark.parametrize("schedule", ["plateau", "cosine"])
def test_the_trainer_with_cuda_graph_follows_the_eager_run(tmp_path, schedule):
    """train_quixer_hybrid.py on the GPU with and without --cuda_graph: dropout 0.2, 70 windows per epoch
    (two full batches replayed, a partial one eager), three epochs; the eager run has a plain Adam with
    float rates, the captured one a capturable Adam with a rate tensor, hence float tolerances."""
    import train_quixer_hybrid
    from tests.token_fixtures import make_token_dir

    data = make_token_dir(tmp_path / "tokens", with_centers=True)

    def argv(out, *extra):
        return ["--data_dir", str(data), "--output_dir", str(out), "--qubits", "2", "--degree", "2",
                "--ansatz_layers", "2", "--embedding_dim", "16", "--device", "cuda", "--batch_size", "32",
                "--lr", "0.01", "--seed", "7", "--epochs", "3", "--dropout", "0.2", "--epoch_size", "70",
                "--lr_schedule", schedule, *extra]

    train_quixer_hybrid.main(argv(tmp_path / "eager"))
    train_quixer_hybrid.main(argv(tmp_path / "graphed", "--cuda_graph"))
    eager, graphed = (read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("eager", "graphed"))
    assert [m["replayed_steps"] for m in graphed] == [2, 2, 2] and "replayed_steps" not in eager[0]
    for a, b in zip(eager, graphed):
        assert a["lr"] == b["lr"]
        for key in ("train_loss", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
    a, b = (torch.load(tmp_path / name / "last.pt", weights_only=True)["model"] for name in ("eager", "graphed"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-4, msg=name)


def read_jsonl(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_fastest_device_measures_both_candidates():
    def build():
        return Quixer(n_qubits=3, n_tokens=5, qsvt_polynomial_degree=2, n_ansatz_layers=1, vocabulary_size=11,
                      embedding_dimension=8)

    before = torch.cuda.get_rng_state()
    device, times = fastest_device(build, 5, 11, 16)
    assert set(times) == {"cpu", "cuda"} and all(t > 0 for t in times.values())
    assert device.type == min(times, key=times.get)
    assert torch.equal(torch.cuda.get_rng_state(), before)


# ---- safety nets (last: see the module docstring) --------------------------------------------------

@pytest.fixture
def uncompilable_tile(monkeypatch):
    """Tiles of 3 lanes: ``tl.arange(0, 3)`` is not a power of two, which Triton's compiler rejects."""
    KERNEL_GUARD.clear()
    monkeypatch.setattr(triton_kernels, "MAX_BLOCK", 3)
    yield
    KERNEL_GUARD.clear()  # the failed configurations must not make later tests fall back


def test_a_kernel_that_does_not_compile_falls_back_to_torch_ops(uncompilable_tile, caplog):
    _, pinned_torch = pair("torch")
    automatic, pinned_triton = copy.deepcopy(pinned_torch), copy.deepcopy(pinned_torch)
    automatic.use_simulator(None)
    x = tokens(6, 7, 13).cuda()
    results = []
    for model in (automatic, pinned_torch):
        logits, p = model(x)
        (logits.square().sum() + p.sum()).backward()
        results.append([logits.detach(), p.detach(), *(q.grad for q in model.parameters())])
    assert automatic.simulator().name == "triton-auto" and KERNEL_GUARD.failed
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert sum(r.levelname == "WARNING" and r.name == "quixer.sim.simulators" for r in caplog.records) == 1
    for model in (pinned_triton, automatic):  # pinned, even after automatic forwards: the compiler's error
        model.use_simulator("triton")
        with pytest.raises(Exception) as error:
            model(x)
        chain = [error.value, error.value.__cause__]
        assert any("power of 2" in str(e) for e in chain if e is not None), error.value


def test_a_captured_step_refuses_a_batch_of_another_shape():
    _, graphed = pair()
    run = capture_step(training_step(graphed, torch.optim.Adam(graphed.parameters(), lr=0.01, capturable=True)),
                       tokens(16, 7, 13).cuda(), tokens(16, 1, 13)[:, 0].cuda(), warmup=1)
    for batch in (8, 1):
        with pytest.raises(ValueError, match="captured shapes"):
            run(tokens(batch, 7, 13).cuda(), tokens(batch, 1, 13)[:, 0].cuda())


def dropout_pair(p: float):
    """A model with embedding dropout ``p`` on the GPU, graphed and eager copies, their steps (Adam with
    ``lr=0``: the parameters stay put, so the losses differ only by the dropout masks)."""
    _, graphed = pair()
    graphed.dropout.p = p
    eager = copy.deepcopy(graphed)
    steps = [training_step(m, torch.optim.Adam(m.parameters(), lr=0.0, capturable=True)) for m in (graphed, eager)]
    return steps


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_a_captured_step_draws_fresh_dropout_masks_as_eager_steps_do(p):
    graphed_step, eager_step = dropout_pair(p)
    x, y = tokens(16, 7, 13).cuda(), tokens(16, 1, 13, seed=9)[:, 0].cuda()
    torch.manual_seed(5)
    run = capture_step(graphed_step, x, y, warmup=2)
    replayed = [run(x, y).clone() for _ in range(4)]
    torch.manual_seed(5)
    eager = [eager_step(x, y) for _ in range(2 + 4)][2:]  # the capture's warm-up steps drew first
    torch.testing.assert_close(torch.stack(replayed), torch.stack(eager), rtol=0, atol=1e-10)
    distinct = len({float(v) for v in replayed})
    assert distinct == (1 if p == 0 else 4)  # fresh masks on every replay, none without dropout


def test_a_step_drawing_from_the_cpu_generator_is_not_captured():
    graphed_step, _ = dropout_pair(0.0)

    def noisy_step(x, y):  # a CPU random number: a capture would freeze it into the graph
        return graphed_step(x, y) * float(torch.rand(()))

    with pytest.raises(RuntimeError, match="CPU generator"):
        capture_step(noisy_step, tokens(16, 7, 13).cuda(), tokens(16, 1, 13)[:, 0].cuda(), warmup=1)


@pytest.mark.parametrize("model", ["lstm", "quixer"])
def test_a_fused_adam_run_on_the_gpu_extends_eagerly_and_captured(tmp_path, model):
    """A run begun eagerly on the GPU has fused Adam (Quixer: its real parameters; its complex LCU
    coefficients in a loop group). Extended from last.pt eagerly it keeps fused Adam with its step
    counts on the GPU; extended with --cuda_graph the captured step is the loop implementation's.
    Both follow each other to float tolerance."""
    import shutil

    import train_classical_baselines
    import train_quixer_hybrid
    from tests.token_fixtures import make_token_dir

    data = make_token_dir(tmp_path / "tokens", with_centers=True)
    if model == "quixer":
        main, sizes = train_quixer_hybrid.main, ["--qubits", "2", "--degree", "2", "--ansatz_layers", "2",
                                                 "--embedding_dim", "16"]
    else:
        main, sizes = train_classical_baselines.main, ["--model", "lstm", "--embedding_dim", "16",
                                                       "--hidden_dim", "16", "--num_layers", "1"]

    def argv(out, epochs, *extra):
        return ["--data_dir", str(data), "--output_dir", str(out), *sizes, "--device", "cuda", "--batch_size", "32",
                "--lr", "0.01", "--seed", "7", "--epochs", str(epochs), "--dropout", "0.0", "--epoch_size", "64",
                "--lr_schedule", "plateau", *extra]

    main(argv(tmp_path / "eager", 1))
    saved = torch.load(tmp_path / "eager" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["fused"] for g in saved] == ([True, None] if model == "quixer" else [True])
    shutil.copytree(tmp_path / "eager", tmp_path / "graphed")
    main(argv(tmp_path / "eager", 3, "--resume"))
    main(argv(tmp_path / "graphed", 3, "--resume", "--cuda_graph"))
    eager, graphed = (read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("eager", "graphed"))
    assert [m["epoch"] for m in eager] == [m["epoch"] for m in graphed] == [1, 2, 3]
    assert [m.get("replayed_steps") for m in graphed[1:]] == [2, 2]
    for a, b in zip(eager, graphed):
        for key in ("train_loss", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
    last = torch.load(tmp_path / "eager" / "last.pt", weights_only=True)["optimizer"]
    assert [g["fused"] for g in last["param_groups"]] == [g["fused"] for g in saved]
