"""Token datasets the trainers read: stage-3 tokens or classical-benchmark tokens.

Both directories hold ``{train,val,test}.pt`` with ``sequences`` (int64 ``[N, W]``),
``labels`` (``[N]`` = ``sequences[:, -1]``) and, from stage 1 on, ``sources`` (where each
window comes from, :mod:`quixer.window_sources`). The task is next-token prediction: a model
reads W - 1 tokens and predicts the next one. The windows of each transcript are chained back
into token streams (:mod:`quixer.streams`): training draws windows at every offset, scoring
uses every position (or a fixed sample), the same targets for every model.

The vocabulary size comes, in this order, from ``cluster_centers.pt`` (K centroids, stage 3),
from the ``vocab`` list stored in the split files (classical benchmarks), or else from the
largest token id over all splits + 1 (a fallback that can undercount when the largest ids
never occur; it is logged).

The windows of training epoch ``e`` are a pure function of ``(seed, e)``
(:class:`quixer.streams.TrainSchedule`), so a resumed run sees exactly the batches an
unbroken run would; under DDP each process takes a contiguous share.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .common import UserError, load_torch_file, sha256_file
from .streams import EvalTargets, TokenStreams
from .window_sources import WindowSources
from .windows import SPLITS

log = logging.getLogger("quixer")

CLUSTER_CENTERS_FILE = "cluster_centers.pt"
KMER_IDS_FILE = "kmer_ids.pt"  # stage 3: per split the windows' k-mer ids (quixer.ceilings)


def load_split(data_dir: str | Path, split: str) -> tuple[torch.Tensor, list[str] | None, WindowSources | None]:
    """Read and validate ``data_dir/{split}.pt``; return (sequences int64 [N, W], vocab or None,
    window sources or None for files written before they existed)."""
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
    sources = WindowSources.from_torch(obj.get("sources"), path, int(seq.shape[0]), int(seq.shape[1]))
    return seq, (list(vocab) if vocab is not None else None), sources


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
    sources: dict[str, WindowSources | None] = field(default_factory=dict)
    known_fingerprint: str | None = field(default=None, repr=False)  # handed in by a caller that just hashed
    window_size: int = field(init=False)

    def __post_init__(self) -> None:
        self.window_size = int(next(iter(self.splits.values())).shape[1])
        self._streams: dict[str, TokenStreams] = {}

    @property
    def n_input_tokens(self) -> int:
        return self.window_size - 1

    @property
    def fingerprint(self) -> str:
        """:func:`data_fingerprint` of this directory (computed once)."""
        if self.known_fingerprint is None:
            self.known_fingerprint = data_fingerprint(self.data_dir, tuple(self.splits))
        return self.known_fingerprint

    def streams(self, split: str) -> TokenStreams:
        """The split's windows chained into per-transcript token streams (cached)."""
        if split not in self._streams:
            self._streams[split] = TokenStreams.from_windows(self.splits[split], self.sources.get(split))
        return self._streams[split]


def data_fingerprint(data_dir: str | Path, splits: tuple[str, ...] = SPLITS) -> str:
    """sha256 over the contents of a token directory's split files and centroids: the identity a
    run records, so that it never resumes on, is scored with or is reported beside other data
    (two k-means seeds give files of the same shapes but other tokens)."""
    data_dir = Path(data_dir)
    digest = hashlib.sha256()
    for name in (*(f"{s}.pt" for s in splits), CLUSTER_CENTERS_FILE):
        if (data_dir / name).is_file():
            digest.update(f"{name}:{sha256_file(data_dir / name)}\n".encode())
    return digest.hexdigest()


def load_token_data(data_dir: str | Path, splits: tuple[str, ...] = SPLITS, *,
                    fingerprint: str | None = None) -> TokenData:
    """Load and cross-check the splits of a stage-3 or classical-benchmark token directory.

    ``fingerprint``: :func:`data_fingerprint` of these ``splits``, where the caller has just
    computed it (the trainer checks its run directory with it first), so the files are hashed once.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(
            f"{data_dir}: token directory not found (run quantize_lambeq_embeddings.py or "
            "prepare_classical_benchmarks.py first, or pass --data_dir)"
        )
    loaded: dict[str, torch.Tensor] = {}
    sources: dict[str, WindowSources | None] = {}
    vocab: list[str] | None = None
    for split in splits:
        seq, split_vocab, sources[split] = load_split(data_dir, split)
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
    data = TokenData(data_dir=data_dir, splits=loaded, vocab_size=vocab_size, vocab_source=source, vocab=vocab,
                     sources=sources, known_fingerprint=fingerprint)
    return data


def _shard(items: np.ndarray, rank: int, world_size: int, pad: bool) -> np.ndarray:
    """Rank ``rank``'s contiguous share of ``items``; with ``pad`` every rank gets the same
    count (DDP needs the same number of steps), by repeating items from the start."""
    if world_size == 1:
        return items
    if pad and len(items) % world_size:
        items = np.concatenate([items, items[: world_size - len(items) % world_size]])
    return np.array_split(items, world_size)[rank]


def _window_batches(streams: TokenStreams, starts: np.ndarray, width: int, batch_size: int,
                    limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(input ``[B, width-1]``, target ``[B]``) batches of the windows at ``starts``, at most ``limit``."""
    for i, lo in enumerate(range(0, len(starts), batch_size)):
        if limit is not None and i >= limit:
            return
        windows = streams.windows(starts[lo: lo + batch_size], width)
        yield windows[:, :-1], windows[:, -1]


def train_batches(streams: TokenStreams, starts: np.ndarray, width: int, batch_size: int, *, rank: int = 0,
                  world_size: int = 1, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of one epoch's window starts, this rank's share (padded: every rank steps as often)."""
    return _window_batches(streams, _shard(starts, rank, world_size, pad=True), width, batch_size, limit)


def eval_batches(streams: TokenStreams, targets: EvalTargets, width: int, batch_size: int, *, rank: int = 0,
                 world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches over this rank's contiguous share of the targets (each target exactly once)."""
    return _window_batches(streams, _shard(targets.starts, rank, world_size, pad=False), width, batch_size)


def steps_per_epoch(epoch_size: int, batch_size: int, world_size: int = 1, limit: int | None = None) -> int:
    """Optimizer steps per epoch of ``epoch_size`` training windows (what a schedule spans)."""
    steps = math.ceil(math.ceil(epoch_size / world_size) / batch_size)
    return min(steps, limit) if limit else steps
