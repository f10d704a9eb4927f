"""CUDA-graph capture of a whole training step or eval batch: one replay instead of hundreds of launches.

Why: even with the fused Triton kernels a Quixer training step on a GPU is a few hundred small
launches (embedding, angles, three LCU powers and their adjoints, feed-forward, measurement,
head, loss, Adam), so at small batches the host, not the GPU, sets the pace. A captured step
replays all of them at once.

What a step needs to be captured (tests/test_cuda.py checks it on a GPU): static shapes (a fixed
batch size), every tensor on one CUDA device, no host synchronisation inside the step (no
``.item()``, no printing of tensors), and an optimizer built with ``capturable=True``. The
graph replays the learning rate it saw at capture unless the optimizer's ``lr`` is a tensor.

Two things would go wrong silently, so they are refused: a batch of another shape than the one
captured (the graph replays the captured extent whatever was copied in), and random numbers drawn from
torch's CPU generator inside the step (they are frozen into the graph: the same "random" values on
every replay). Dropout on the GPU is fine: torch's default CUDA generator is graph-safe, each
replay advances it and draws fresh masks, the same ones eager steps would draw.

For the trainers (``--cuda_graph``): :class:`CapturedSteps` replays full batches and runs the last,
partial one eagerly, undoing the capture's warm-up steps (:class:`TrainingSnapshot`);
:func:`capturable_optimizer` puts the learning rate in a tensor that schedules update in place.
:func:`capture_eval` captures an eval batch, per-vocabulary tables included.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch


def capture_step(step: Callable[..., torch.Tensor], *example_inputs: torch.Tensor,
                 warmup: int = 3) -> Callable[..., torch.Tensor]:
    """``step(*inputs) -> tensor`` (forward, loss, backward, optimizer step) as a CUDA graph.

    Returns ``run(*inputs)``, which checks that the inputs have the captured shapes (else a
    ValueError), copies them into the graph's static buffers, replays the graph and returns its
    output tensor (the same tensor every time: clone it to keep a value). The ``warmup`` eager steps
    before the capture are real training steps on ``example_inputs`` (CUDA needs them on a side
    stream, and the kernels must be compiled before capture). A step that draws from the CPU
    generator while captured is refused (RuntimeError). For CPU inputs ``step`` itself is returned,
    so CPU runs are unchanged.
    """
    if not example_inputs or not all(t.is_cuda for t in example_inputs):
        return step
    static = [t.clone() for t in example_inputs]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    cpu_generator = torch.get_rng_state()
    with torch.cuda.graph(graph):
        output = step(*static)
    if not torch.equal(torch.get_rng_state(), cpu_generator):
        raise RuntimeError("the captured step drew random numbers from torch's CPU generator: a CUDA graph would "
                           "replay the same values every step (draw them on the GPU, or do not capture this step)")

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        check_replay_inputs(static, inputs)
        for buffer, value in zip(static, inputs):
            buffer.copy_(value, non_blocking=True)
        graph.replay()
        return output

    return run


def check_replay_inputs(captured: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> None:
    """ValueError unless ``inputs`` match the ``captured`` buffers one to one in shape and dtype.

    Why: a graph always replays the captured extents, and ``copy_`` broadcasts and casts: a batch
    of one sequence would fill every captured row without an error, and other shapes fail with a
    message about tensor sizes that does not say what is wrong.
    """
    got = [(tuple(t.shape), t.dtype) for t in inputs]
    want = [(tuple(t.shape), t.dtype) for t in captured]
    if got != want:
        raise ValueError(f"a captured step replays inputs of the captured shapes {want}; got {got} "
                         "(capture another step for this batch shape, or drop the partial batch)")


def capturable_optimizer(optimizer: torch.optim.Optimizer, on: bool) -> None:
    """Switch an Adam-like optimizer in place between eager steps and steps replayed from a CUDA graph.

    On: ``capturable=True``, each group's learning rate a float64 tensor on its parameters' device and
    each ``step`` count on its parameter's device. Why: a graph replays the values it captured, so a
    schedule reaches it only through a tensor updated in place (torch's schedulers ``fill_`` tensor
    rates), and float64 keeps the schedules' arithmetic that of Python floats; the loop
    implementation, also for a group that was fused. Off: floats, and step counts on the CPU (on the
    parameters' device for a fused group), as a fresh optimizer has (a checkpoint of either kind
    loads into both).
    """
    for group in optimizer.param_groups:
        device = group["params"][0].device
        lr = float(group["lr"])
        group["lr"] = torch.tensor(lr, dtype=torch.float64, device=device) if on else lr
        group["capturable"] = on
        if on:  # the captured step is the loop implementation's, also for a fused run resumed with graphs
            group["fused"] = None
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and isinstance(state.get("step"), torch.Tensor):
                # fused Adam keeps its step counts on the parameters' device, as capturable does
                on_device = on or bool(group.get("fused"))
                state["step"] = state["step"].to(device=p.device if on_device else "cpu", dtype=torch.float32)


class TrainingSnapshot:
    """Parameters, buffers, optimizer state and random generators, put back in place by :meth:`restore`.

    Why: capturing a step first runs real training steps (CUDA needs warm-up before a capture), which
    move the weights, the optimizer's moments and the dropout generators; restoring them makes the
    captured run follow the eager run's trajectory. In place, because the graph reads the tensors it
    captured. An optimizer state created after the snapshot (a fresh Adam's) is zero-filled: that is
    the state Adam creates before its first step.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        from ..common import rng_state

        self.model, self.optimizer = model, optimizer
        self.tensors = [t.detach().clone() for t in self._model_tensors()]
        self.state = {p: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
                      for p, state in optimizer.state.items()}
        self.rng = rng_state()

    def _model_tensors(self) -> list[torch.Tensor]:
        return [*self.model.parameters(), *self.model.buffers()]

    @torch.no_grad()
    def restore(self) -> None:
        from ..common import set_rng_state

        for tensor, saved in zip(self._model_tensors(), self.tensors):
            tensor.copy_(saved)
        for p, state in self.optimizer.state.items():
            before = self.state.get(p, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and key in before:
                    value.copy_(before[key])
                elif isinstance(value, torch.Tensor):
                    value.zero_()
                elif key in before:
                    state[key] = before[key]
        set_rng_state(self.rng)


class CapturedSteps:
    """``step(x, y)`` with every batch of ``batch_size`` sequences replayed from one CUDA graph, captured
    on the first such batch; other batches (an epoch's last, partial one) run ``step`` eagerly.

    The capture's warm-up steps are undone (:class:`TrainingSnapshot`), so the first replay is the run's
    first step on that batch and the trajectory is the eager one up to float rounding. ``step`` must be
    graph-safe (see :func:`capture_step`: Adam with ``capturable=True``, no host synchronisation);
    dropout draws fresh masks on every replay. For CPU batches ``step`` runs as it is.
    """

    def __init__(self, step: Callable[..., torch.Tensor], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 batch_size: int, warmup: int = 3):
        self.step, self.model, self.optimizer = step, model, optimizer
        self.batch_size, self.warmup = batch_size, warmup
        self.replay: Callable[..., torch.Tensor] | None = None
        self.shapes: list | None = None
        self.replayed = 0  # steps replayed from the graph so far (the eager ones are not counted)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.replay is None and x.is_cuda and len(x) == self.batch_size:
            snapshot = TrainingSnapshot(self.model, self.optimizer)
            self.replay = capture_step(self.step, x, y, warmup=self.warmup)
            snapshot.restore()
            self.shapes = [(x.shape, x.dtype), (y.shape, y.dtype)]
        if self.replay is not None and [(x.shape, x.dtype), (y.shape, y.dtype)] == self.shapes:
            self.replayed += 1
            return self.replay(x, y)
        return self.step(x, y)


def capture_eval(model: torch.nn.Module, example: torch.Tensor, warmup: int = 2
                 ) -> Callable[[torch.Tensor], object]:
    """``model(x)`` in eval mode without autograd as one CUDA graph for batches shaped like ``example``.

    Why: an eval batch is a few launches (per-vocabulary tables, the eval kernel, measurement, head);
    replayed as one graph at large batches the GPU never waits for the host. A Quixer-like model's eval
    tables are built inside the graph (:meth:`quixer.sim.simulators.EvalCache.rebuilt_per_call`), so each
    replay reads the parameters' current values, with no staleness check (a host read-back) needed;
    they cost about a vocabulary's worth of circuits, little beside a batch of 16 k sequences.

    Returns ``run(x)``, which refuses another shape (ValueError, as :func:`capture_step`'s replays) and
    parameters whose storage was replaced or whose active layers changed since the capture (the graph
    would compute with the old ones), and returns the same output tensors every time. The model must be
    in eval mode. For CPU inputs ``run`` is ``model(x)`` under ``torch.no_grad()``.
    """
    if model.training:
        raise ValueError("capture_eval needs the model in eval mode (model.eval())")

    def forward(x: torch.Tensor):
        with torch.no_grad():
            return model(x)

    if not example.is_cuda:
        return forward
    simulator = getattr(model, "simulator", None)
    per_call = simulator().cache.rebuilt_per_call() if callable(simulator) else contextlib.nullcontext()
    captured = _storage_key(model)
    static = example.clone()
    with per_call:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                forward(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = forward(static)

    def run(x: torch.Tensor):
        check_replay_inputs([static], [x])
        if _storage_key(model) != captured:
            raise ValueError("the model's parameters were replaced or its active layers changed since the eval was "
                             "captured: capture it again")
        static.copy_(x, non_blocking=True)
        graph.replay()
        return output

    return run


def _storage_key(model: torch.nn.Module) -> tuple:
    """Where the parameters live and how many layers are active: what a captured eval reads."""
    return getattr(model, "active_layers", None), tuple(p.data_ptr() for p in model.parameters())
