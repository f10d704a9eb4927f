"""Token datasets the trainers read: stage-3 tokens or classical-benchmark tokens.

Both directories hold ``{train,val,test}.pt`` with ``sequences`` (int64 ``[N, W]``) and
``labels`` (``[N]`` = ``sequences[:, -1]``). The task is next-token prediction: the model
reads ``sequences[:, :-1]`` (W - 1 tokens) and predicts ``sequences[:, -1]``.

The vocabulary size comes, in this order, from ``cluster_centers.pt`` (K centroids, stage 3),
from the ``vocab`` list stored in the split files (classical benchmarks), or else from the
largest token id over all splits + 1 (a fallback that can undercount when the largest ids
never occur; it is logged).

Loaders shuffle through a :class:`torch.utils.data.DistributedSampler` in every case (one
replica when not distributed): the order of epoch ``e`` is a pure function of ``(seed, e)``,
so a resumed run sees exactly the batches an unbroken run would.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, TensorDataset

from .common import UserError, load_torch_file
from .windows import SPLITS

log = logging.getLogger("quixer")

CLUSTER_CENTERS_FILE = "cluster_centers.pt"


def load_split(data_dir: str | Path, split: str) -> tuple[torch.Tensor, list[str] | None]:
    """Read and validate ``data_dir/{split}.pt``; return (sequences int64 [N, W], vocab or None)."""
    path = Path(data_dir) / f"{split}.pt"
    if not path.is_file():
        raise UserError(f"{path}: split file not found (expected {', '.join(s + '.pt' for s in SPLITS)} in {data_dir})")
    obj = load_torch_file(path)
    if not isinstance(obj, dict) or "sequences" not in obj:
        raise UserError(f"{path}: expected a dict with key 'sequences' (stage-3 token file)")
    seq = obj["sequences"]
    if not isinstance(seq, torch.Tensor) or seq.dim() != 2:
        shape = tuple(seq.shape) if isinstance(seq, torch.Tensor) else type(seq).__name__
        raise UserError(f"{path}: 'sequences' must be a 2-D tensor [N, W], got {shape}")
    if seq.dtype.is_floating_point or seq.dtype == torch.bool or seq.is_complex():
        raise UserError(f"{path}: 'sequences' must hold integer token ids, got {seq.dtype}")
    if seq.shape[1] < 2:
        raise UserError(f"{path}: windows of width {seq.shape[1]} leave no input tokens (need W >= 2)")
    if seq.shape[0] == 0:
        raise UserError(f"{path}: split is empty (0 windows)")
    seq = seq.to(torch.int64).contiguous()
    if int(seq.min()) < 0:
        raise UserError(f"{path}: negative token id {int(seq.min())}")
    labels = obj.get("labels")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (seq.shape[0],):
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise UserError(f"{path}: 'labels' must have shape [{seq.shape[0]}], got {shape}")
        bad = (labels.to(torch.int64) != seq[:, -1]).nonzero()
        if len(bad):
            raise UserError(
                f"{path}: labels differ from sequences[:, -1] in {len(bad)} rows (first row {int(bad[0])}); "
                "the token file is inconsistent"
            )
    vocab = obj.get("vocab")
    if vocab is not None and not isinstance(vocab, (list, tuple)):
        raise UserError(f"{path}: 'vocab' must be a list of k-mers, got {type(vocab).__name__}")
    return seq, (list(vocab) if vocab is not None else None)


def load_cluster_centers(data_dir: str | Path) -> torch.Tensor:
    """The stage-3 centroids ``[K, D]`` (float32), used by the Quixer ``centroid`` init."""
    path = Path(data_dir) / CLUSTER_CENTERS_FILE
    if not path.is_file():
        raise UserError(f"{path}: not found (the centroid init needs stage-3 output with cluster centres)")
    obj = load_torch_file(path)
    centers = obj.get("cluster_centers") if isinstance(obj, dict) else obj
    if not isinstance(centers, torch.Tensor) or centers.dim() != 2:
        raise UserError(f"{path}: expected key 'cluster_centers' holding a [K, D] tensor")
    return centers.to(torch.float32)


@dataclass
class TokenData:
    """The validated splits of one token directory."""

    data_dir: Path
    splits: dict[str, torch.Tensor]
    vocab_size: int
    vocab_source: str
    vocab: list[str] | None = None
    window_size: int = field(init=False)

    def __post_init__(self) -> None:
        self.window_size = int(next(iter(self.splits.values())).shape[1])

    @property
    def n_input_tokens(self) -> int:
        return self.window_size - 1

    def dataset(self, split: str) -> TensorDataset:
        """(input ``[N, W-1]``, target ``[N]``) pairs of one split."""
        seq = self.splits[split]
        return TensorDataset(seq[:, :-1].contiguous(), seq[:, -1].contiguous())


def load_token_data(data_dir: str | Path, splits: tuple[str, ...] = SPLITS) -> TokenData:
    """Load and cross-check the splits of a stage-3 or classical-benchmark token directory."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(
            f"{data_dir}: token directory not found (run quantize_lambeq_embeddings.py or "
            "prepare_classical_benchmarks.py first, or pass --data_dir)"
        )
    loaded: dict[str, torch.Tensor] = {}
    vocab: list[str] | None = None
    for split in splits:
        seq, split_vocab = load_split(data_dir, split)
        if loaded:
            first = next(iter(loaded))
            if seq.shape[1] != loaded[first].shape[1]:
                raise UserError(
                    f"{data_dir}: window width differs between splits ({first}: {loaded[first].shape[1]}, "
                    f"{split}: {seq.shape[1]})"
                )
        if split_vocab is not None:
            if vocab is not None and split_vocab != vocab:
                raise UserError(f"{data_dir}: the 'vocab' lists of the splits differ")
            vocab = split_vocab
        loaded[split] = seq
    max_id = max(int(s.max()) for s in loaded.values())
    centers_path = data_dir / CLUSTER_CENTERS_FILE
    if centers_path.is_file():
        vocab_size, source = int(load_cluster_centers(data_dir).shape[0]), CLUSTER_CENTERS_FILE
    elif vocab is not None:
        vocab_size, source = len(vocab), "vocab list"
    else:
        vocab_size, source = max_id + 1, "max token id + 1"
        log.info("%s: no %s or vocab list; vocabulary size %d taken from the largest token id",
                 data_dir, CLUSTER_CENTERS_FILE, vocab_size)
    if max_id >= vocab_size:
        raise UserError(f"{data_dir}: token id {max_id} out of range for a vocabulary of {vocab_size} ({source})")
    return TokenData(data_dir=data_dir, splits=loaded, vocab_size=vocab_size, vocab_source=source, vocab=vocab)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` in order: every example exactly once over all ranks.

    Used for evaluation, where :class:`DistributedSampler`'s padding would count examples twice.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def make_loader(
    dataset: TensorDataset,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader whose order depends only on ``(seed, epoch)``; call ``loader.sampler.set_epoch(e)``.

    Training shuffles and pads the last shard so every rank runs the same number of steps
    (DDP needs that); evaluation visits each example exactly once across ranks. The loader
    has its own seeded generator (saved in checkpoints) so it never draws from the global
    torch RNG that dropout uses.
    """
    sampler: Sampler[int]
    if train:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    else:
        sampler = ShardSampler(len(dataset), rank, world_size)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=generator,
        persistent_workers=False,
    )


def batches_per_epoch(n: int, batch_size: int, world_size: int = 1, limit: int | None = None) -> int:
    """Optimizer steps per epoch for ``n`` training examples (what the LR schedule spans)."""
    steps = math.ceil(math.ceil(n / world_size) / batch_size)
    return min(steps, limit) if limit else steps
