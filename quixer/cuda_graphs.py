"""CUDA-graph capture of a whole training step: one replay instead of hundreds of kernel launches.

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
"""
from __future__ import annotations

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
