"""Optional live learning curves: TensorBoard event files written while a trainer runs.

metrics.jsonl is the record of a run; this is only a view of it for people who watch runs in
TensorBoard. The ``tensorboard`` package is an optional extra (``pip install tensorboard``, or
the ``[tensorboard]`` extra of this distribution), imported only when ``--tensorboard`` is given.
"""
from __future__ import annotations

from pathlib import Path

from .common import UserError

STEP_EVERY = 25  # training-loss points per epoch: one every this many optimizer steps


class LiveCurves:
    """Scalars of one run under ``directory/name``: per-epoch metrics and the training loss."""

    def __init__(self, directory: str | Path, name: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--tensorboard needs the optional tensorboard package (pip install tensorboard)") from None
        self.writer = SummaryWriter(log_dir=str(Path(directory) / name))

    def step(self, step: int, loss: float) -> None:
        self.writer.add_scalar("train/step_loss", loss, step)

    def epoch(self, epoch: int, record: dict) -> None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                group = "val" if key.startswith("val_") else "train"
                self.writer.add_scalar(f"{group}/{key.removeprefix('val_')}", value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
