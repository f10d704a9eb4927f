"""Where each window comes from, carried from stage 1 through stages 2 and 3 to the trainers.

Per split: the transcript and base offset of every window (``sources.txt``), the split group of
each transcript (``metadata.json``), and for val/test which positions' contexts were not found
in any train transcript (``novel.txt``). The trainers need them to rebuild each transcript's
token stream (windows at every offset, not only every 32nd), to score the novel-context
subset, and to resample whole gene groups for confidence intervals.

In the token files (``{split}.pt`` of stages 2 and 3 and of the classical-benchmark tokens)
they sit under one key, ``sources``, beside the existing keys, so older readers are unaffected
and older files (without the key) still load.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import UserError
from .windows import stage1_split_file


@dataclass
class WindowSources:
    """Provenance of the ``N`` windows of one split (``W`` k-mers each)."""

    accessions: list[str]  # distinct transcripts, in order of their first window
    transcript: np.ndarray  # int32 [N]: index into accessions
    offsets: np.ndarray  # int64 [N]: 0-based base offset of the window's first k-mer
    groups: list[str]  # split group of each transcript (parallel to accessions)
    novel: np.ndarray | None  # bool [N, W] for val/test: the context of position j is not in train

    def __len__(self) -> int:
        return int(self.transcript.shape[0])

    def window_groups(self) -> np.ndarray:
        """int64 [N]: a dense id per split group (groups sorted by name)."""
        _, ids = np.unique(np.asarray(self.groups, dtype=object), return_inverse=True)
        return ids.astype(np.int64)[self.transcript]

    @classmethod
    def from_stage1(cls, data_dir: str | os.PathLike, split: str, metadata: dict) -> "WindowSources":
        """Read ``sources.txt`` (and ``novel.txt`` for val/test) of a stage-1 directory."""
        split_dir = Path(data_dir) / split
        accessions: list[str] = []
        index: dict[str, int] = {}
        rows, offsets = [], []
        with open(stage1_split_file(data_dir, split, "sources.txt"), encoding="ascii") as fh:
            for line in fh:
                acc, offset = line.split()
                rows.append(index.setdefault(acc, len(index)))
                if rows[-1] == len(accessions):
                    accessions.append(acc)
                offsets.append(int(offset))
        groups_of = metadata.get("transcript_groups") or {}
        groups = [groups_of.get(a, a) for a in accessions]
        novel = None
        if (split_dir / "novel.txt").exists():
            with open(split_dir / "novel.txt", "rb") as fh:
                text = fh.read().replace(b"\n", b"")
            width = int(metadata["window_size"])
            if len(text) != len(rows) * width:
                raise UserError(f"{split_dir / 'novel.txt'}: does not match sources.txt ({len(rows)} windows of {width})")
            novel = np.frombuffer(text, dtype=np.uint8).reshape(len(rows), width) == ord("1")
        return cls(accessions, np.asarray(rows, dtype=np.int32), np.asarray(offsets, dtype=np.int64), groups, novel)

    def to_torch(self) -> dict:
        """The ``sources`` entry of a token file."""
        import torch

        return {"accessions": list(self.accessions), "transcript": torch.from_numpy(self.transcript),
                "offsets": torch.from_numpy(self.offsets), "groups": list(self.groups),
                "novel": None if self.novel is None else torch.from_numpy(self.novel.copy())}

    @classmethod
    def from_torch(cls, obj, path: Path, n: int, width: int) -> "WindowSources | None":
        """Validate the ``sources`` entry of a token file; ``None`` when the file has none."""
        if obj is None:
            return None
        try:
            sources = cls(list(obj["accessions"]), obj["transcript"].numpy().astype(np.int32),
                          obj["offsets"].numpy().astype(np.int64), list(obj["groups"]),
                          None if obj.get("novel") is None else obj["novel"].numpy().astype(bool))
        except (KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{path}: malformed 'sources' entry ({exc})") from None
        bad = (len(sources) != n or len(sources.groups) != len(sources.accessions)
               or (n and not 0 <= int(sources.transcript.min()) <= int(sources.transcript.max()) < len(sources.accessions))
               or (sources.novel is not None and sources.novel.shape != (n, width)))
        if bad:
            raise UserError(f"{path}: 'sources' does not match its {n} windows of width {width}")
        return sources
