"""The Quixer model on CUDA against the same model on the CPU (skipped without a GPU).

CI has no GPU: these run where one is lent (``python -m pytest tests/test_cuda.py``). On CUDA
the model takes the torch butterfly path and the per-vocabulary unitary table in eval; on the
CPU the fused kernel where it builds. Both must give the same logits, postselection and
gradients (complex128), and training steps must run on the GPU.
"""
from __future__ import annotations

import copy

import pytest
import torch
from tests.helpers import adam_steps

from quixer.model import Quixer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def pair(dtype=torch.complex128):
    model = Quixer(n_qubits=4, n_tokens=7, qsvt_polynomial_degree=3, n_ansatz_layers=2, vocabulary_size=13,
                   embedding_dimension=8, dropout=0.0, dtype=dtype)
    model.initialize("uniform", generator=torch.Generator().manual_seed(0))
    return model, copy.deepcopy(model).cuda()


def test_forward_and_gradients_match_the_cpu():
    cpu, gpu = pair()
    x = torch.randint(0, 13, (6, 7), generator=torch.Generator().manual_seed(1))
    logits_cpu, p_cpu = cpu(x)
    logits_gpu, p_gpu = gpu(x.cuda())
    torch.testing.assert_close(logits_gpu.cpu(), logits_cpu, rtol=0, atol=1e-10)
    torch.testing.assert_close(p_gpu.cpu(), p_cpu, rtol=0, atol=1e-10)
    logits_cpu.square().sum().backward()
    logits_gpu.square().sum().backward()
    for (name, a), b in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=0, atol=1e-9, msg=name)


def test_eval_cache_matches_the_cpu():
    cpu, gpu = pair()
    cpu.eval()
    gpu.eval()
    x = torch.randint(0, 13, (5, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(gpu(x.cuda())[0].cpu(), cpu(x)[0], rtol=0, atol=1e-10)


def test_training_steps_on_the_gpu_lower_the_loss():
    torch.manual_seed(0)
    _, gpu = pair(torch.complex64)
    gpu.dropout.p = 0.1
    x = torch.randint(0, 13, (32, 7), device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    y = (x[:, -1] + 1) % 13
    losses = adam_steps(gpu, x, y, 30)
    assert losses[-1] < 0.7 * losses[0]
