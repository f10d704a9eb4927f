"""Choosing the device by measurement (quixer/devices.py) and the CPU side of CUDA-graph capture
(quixer/cuda_graphs.py). With a GPU, tests/test_cuda.py times both devices and checks a captured
training step against eager steps."""
from __future__ import annotations

import math

import pytest
import torch

from quixer.cuda_graphs import capture_step
from quixer.devices import fastest_device, time_training_step
from quixer.model import Quixer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_quixer():
    return Quixer(n_qubits=2, n_tokens=4, qsvt_polynomial_degree=2, n_ansatz_layers=1, vocabulary_size=6,
                  embedding_dimension=4)


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


def test_cpu_steps_are_not_captured():
    def step(x):
        return x * 2

    assert capture_step(step, torch.ones(3)) is step
