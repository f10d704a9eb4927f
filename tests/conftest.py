"""Fixtures shared by the tests (plain helpers and paths live in tests/helpers.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import SAMPLE_FASTA


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
