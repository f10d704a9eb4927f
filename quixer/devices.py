"""Which device trains a given model fastest, measured rather than assumed.

Why: "CUDA whenever available" is wrong for Quixer in both directions. Without the Triton
kernels its GPU step is launch-bound and about twice as slow at batch 32 as the fused CPU kernel
on two cores, yet far faster at batch 1,024; with them the balance depends on the GPU, the CPU
cores and the model size. A few timed steps of the real model at the real batch size on each
candidate settle it for the run at hand, in seconds.
"""
from __future__ import annotations

import logging
import math
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so wall-clock timings are true."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``step(x, y)``: forward, cross-entropy, backward, optimiser step; returns the detached loss.
    Models returning ``(logits, extra)`` (Quixer) and plain logits alike."""
    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = model(x)
        loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def time_training_step(model: nn.Module, n_tokens: int, vocab_size: int, batch_size: int, device: torch.device,
                       steps: int = 3, warmup: int = 2) -> float:
    """Median seconds of one training step (forward, cross-entropy, backward, Adam step) of
    ``model`` (already on ``device``) on random tokens; ``warmup`` untimed steps first (kernel
    builds and compilation). The model's parameters change: pass a throwaway copy."""
    model.train()
    step = training_step(model, torch.optim.Adam(model.parameters(), lr=1e-4))
    x = torch.randint(0, vocab_size, (batch_size, n_tokens), device=device)
    y = torch.randint(0, vocab_size, (batch_size,), device=device)
    seconds = []
    for i in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        step(x, y)
        synchronize(device)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def fastest_device(build_model: Callable[[], nn.Module], n_tokens: int, vocab_size: int, batch_size: int,
                   candidates: list[str] | None = None) -> tuple[torch.device, dict[str, float]]:
    """The candidate (default: "cpu", plus "cuda" when torch sees a GPU) on which a training step of
    a fresh ``build_model()`` at ``batch_size`` is fastest, and the measured seconds per step.

    With one candidate nothing is built or timed. A candidate whose step raises (a kernel that
    does not compile, memory, a driver fault) counts as infinitely slow, with a warning: the run
    goes on with another device instead of dying in the measurement; only if every candidate fails
    is there an error. The random number generators (torch's CPU and CUDA ones, which model
    construction and dropout draw from) are restored afterwards, so the run that follows is the
    same as without the measurement.
    """
    if candidates is None:
        candidates = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if len(candidates) == 1:
        return torch.device(candidates[0]), {}
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    times, errors = {}, {}
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            for name in candidates:
                try:
                    device = torch.device(name)
                    times[name] = time_training_step(build_model().to(device), n_tokens, vocab_size, batch_size, device)
                except Exception as exc:  # any failure of this device: measured as never finishing
                    times[name], errors[name] = math.inf, f"{type(exc).__name__}: {exc}"
                    log.warning("--device auto: a training step on %s failed (%s); not using it", name, errors[name])
    except Exception as exc:  # restoring the CUDA generators after a fault there: the timings stand
        if not errors:
            raise
        log.warning("--device auto: the random generators could not be restored after a failure: %s", exc)
    if len(errors) == len(candidates):
        raise RuntimeError("a training step failed on every device: "
                           + "; ".join(f"{name}: {error}" for name, error in errors.items()))
    return torch.device(min(times, key=times.get)), times
