"""CUDA-graph capture of a whole training step: one replay instead of hundreds of kernel launches.

Why: even with the fused Triton kernels a Quixer training step on a GPU is a few hundred small
launches (embedding, angles, three LCU powers and their adjoints, feed-forward, measurement,
head, loss, Adam), so at small batches the host, not the GPU, sets the pace. A captured step
replays all of them at once.

What a step needs to be captured (tests/test_cuda.py checks it on a GPU): static shapes (a fixed
batch size), every tensor on one CUDA device, no host synchronisation inside the step (no
``.item()``, no printing of tensors), and an optimizer built with ``capturable=True``. The
graph replays the learning rate it saw at capture unless the optimizer's ``lr`` is a tensor.
"""
from __future__ import annotations

from typing import Callable

import torch


def capture_step(step: Callable[..., torch.Tensor], *example_inputs: torch.Tensor,
                 warmup: int = 3) -> Callable[..., torch.Tensor]:
    """``step(*inputs) -> tensor`` (forward, loss, backward, optimizer step) as a CUDA graph.

    Returns ``run(*inputs)``, which copies the inputs into the graph's static buffers, replays the
    graph and returns its output tensor (the same tensor every time: clone it to keep a value).
    The ``warmup`` eager steps before the capture are real training steps on ``example_inputs``
    (CUDA needs them on a side stream, and the kernels must be compiled before capture). For CPU
    inputs ``step`` itself is returned, so CPU runs are unchanged.
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
    with torch.cuda.graph(graph):
        output = step(*static)

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        for buffer, value in zip(static, inputs):
            buffer.copy_(value, non_blocking=True)
        graph.replay()
        return output

    return run
