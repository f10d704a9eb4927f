"""Paths and small helpers the tests import (``from tests.helpers import ...``): the repository,
../shared beside it, the embedded sample, running a stage script, fitting a model a few steps."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SAMPLE_FASTA = REPO / "data" / "sample_rna.fasta.gz"
BENCHMARK_FASTA = SHARED / "data" / "grch38_chrX_refseq_rna.fasta.gz"
NCBI_FIXTURES = SHARED / "fixtures" / "ncbi"


def sample_slice(path: Path, records: int) -> Path:
    """The first ``records`` transcripts of the embedded real sample as a plain FASTA file."""
    from quixer.fasta import iter_fasta

    with open(path, "w") as fh:
        for i, rec in enumerate(iter_fasta(SAMPLE_FASTA)):
            if i == records:
                break
            fh.write(f">{rec.header}\n{rec.sequence}\n")
    return path


def run_script(script: str, *args, cwd=None, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    """Run a top-level script with this interpreter, capturing text output."""
    import os

    full_env = dict(os.environ, **(env or {}))
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
