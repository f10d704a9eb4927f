"""Paths shared by the tests: the repository, ../shared beside it, and the embedded sample."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SAMPLE_FASTA = REPO / "data" / "sample_rna.fasta.gz"
BENCHMARK_FASTA = SHARED / "data" / "grch38_chrX_refseq_rna.fasta.gz"
NCBI_FIXTURES = SHARED / "fixtures" / "ncbi"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def run_script(script: str, *args, cwd=None, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    """Run a top-level script with this interpreter, capturing text output."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def adam_steps(model, x, y, steps: int, lr: float = 0.03, check=None) -> list[float]:
    """Fit ``model`` (logits first in its output) to one fixed batch with Adam and cross-entropy;
    returns the losses. ``check(output)`` runs on every step's full output."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out[0], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if check is not None:
            check(out)
    return losses


@pytest.fixture(scope="session")
def sample_fasta() -> Path:
    return SAMPLE_FASTA


@pytest.fixture(scope="session")
def stage1_dir(tmp_path_factory) -> Path:
    """Stage 1 run once on the embedded sample, shared read-only by tests of later stages."""
    from quixer.windows import WindowConfig, prepare_autoregressive_data

    out = tmp_path_factory.mktemp("stage1") / "autoregressive_data"
    prepare_autoregressive_data(SAMPLE_FASTA, out, WindowConfig())
    return out


@pytest.fixture
def one_torch_thread():
    """Tiny models run far slower with 2 OpenMP threads on a busy 2-core machine; restore after."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
