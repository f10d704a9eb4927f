"""Small real token datasets for the training tests, built straight from the real RNA sample.

Stages 2-3 (lambeq circuits, k-means) are too slow to run inside every training test, so the
k-mer -> token map here is a simple deterministic stand-in: a 6-mer's first ``prefix`` bases
read as a base-4 number (4^4 = 256 tokens). The windows themselves are real: overlapping
6-mers (stride 1) of real transcripts, split by locus, so the next token is as predictable as
in the real task (it shares ``prefix - 1`` bases with the last input token). Like stage 1 the
files carry ``sources``: transcript, base offset and group of each window, and for val/test
the per-position novel-context flags, computed here by brute force (a set of every train
substring of the context length).
"""
from __future__ import annotations

import gzip
from pathlib import Path

import torch

from tests.helpers import BENCHMARK_FASTA, SAMPLE_FASTA
_BASE = {"A": 0, "C": 1, "G": 2, "T": 3}


def real_fasta() -> Path:
    return SAMPLE_FASTA if SAMPLE_FASTA.exists() else BENCHMARK_FASTA


def read_records(path: Path, max_records: int) -> list[tuple[str, str]]:
    """(locus, uppercase sequence) of the first ``max_records`` records."""
    records: list[tuple[str, list[str]]] = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            line = line.strip()
            if line.startswith(">"):
                if len(records) == max_records:
                    break
                fields = dict(f.split("=", 1) for f in line[1:].split()[1:] if "=" in f)
                records.append((fields.get("locus", line[1:].split()[0]), []))
            elif records:
                records[-1][1].append(line.upper())
    return [(locus, "".join(parts)) for locus, parts in records]


def kmer_token(kmer: str, prefix: int) -> int:
    value = 0
    for base in kmer[:prefix]:
        value = value * 4 + _BASE[base]
    return value


def record_windows(seq: str, k: int, window: int, stride: int) -> list[tuple[int, list[str]]]:
    """(base offset, k-mers) of windows of ``window`` overlapping k-mers (stride 1 inside),
    ``stride`` k-mers apart, never crossing a non-ACGT base."""
    out = []
    pos = 0
    for run in "".join(c if c in _BASE else " " for c in seq).split(" "):
        kmers = [run[i:i + k] for i in range(len(run) - k + 1)]
        out.extend((pos + s, kmers[s:s + window]) for s in range(0, len(kmers) - window + 1, stride))
        pos += len(run) + 1
    return out


def _novel_flags(seq: str, offset: int, window: int, k: int, seen: set[str]) -> list[bool]:
    """Per window position: the context's last ``window - 1 + k - 1`` bases (all of them here)
    do not occur in any train transcript."""
    length = window - 1 + k - 1
    flags = []
    for j in range(window):
        start = offset + j + k - 1 - length
        flags.append(start < 0 or seq[start:start + length] not in seen)
    return flags


def make_token_dir(
    out: Path,
    *,
    window: int = 8,
    k: int = 6,
    prefix: int = 4,
    sizes: tuple[int, int, int] = (640, 160, 160),
    stride: int = 5,
    max_records: int = 120,
    per_record: int = 40,
    with_centers: bool = False,
) -> Path:
    """Write ``{train,val,test}.pt`` (stage-3 format) with at most ``sizes`` windows per split.

    Loci go to val / test / train by their position (every 5th to val, the next to test), so
    no locus spans two splits; each record gives at most ``per_record`` windows. ``with_centers`` also writes ``cluster_centers.pt``: each
    token's centre is the one-hot encoding of its ``prefix`` bases (``[4^prefix, 4 prefix]``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loci: dict[str, int] = {}
    rows: dict[str, list[tuple[int, int, list[int]]]] = {"train": [], "val": [], "test": []}  # (record, offset, ids)
    limit = dict(zip(rows, sizes))
    records = read_records(real_fasta(), max_records)
    for rec, (locus, seq) in enumerate(records):
        idx = loci.setdefault(locus, len(loci))
        split = "val" if idx % 5 == 3 else "test" if idx % 5 == 4 else "train"
        for offset, win in record_windows(seq, k, window, stride)[:per_record]:
            if len(rows[split]) < limit[split]:
                rows[split].append((rec, offset, [kmer_token(km, prefix) for km in win]))
        if all(len(rows[s]) >= limit[s] for s in rows):
            break
    length = window - 1 + k - 1
    train_records = {rec for rec, _, _ in rows["train"]}
    seen = {records[r][1][i:i + length] for r in train_records for i in range(len(records[r][1]) - length + 1)}
    for split, r in rows.items():
        assert r, f"no {split} windows: raise max_records"
        seq = torch.tensor([ids for _, _, ids in r], dtype=torch.int64)
        used = sorted({rec for rec, _, _ in r})
        index = {rec: i for i, rec in enumerate(used)}
        novel = None if split == "train" else torch.tensor(
            [_novel_flags(records[rec][1], off, window, k, seen) for rec, off, _ in r])
        sources = {"accessions": [f"record{rec}" for rec in used],
                   "transcript": torch.tensor([index[rec] for rec, _, _ in r], dtype=torch.int32),
                   "offsets": torch.tensor([off for _, off, _ in r], dtype=torch.int64),
                   "groups": [records[rec][0] for rec in used], "novel": novel}
        torch.save({"sequences": seq, "labels": seq[:, -1].clone(), "sources": sources}, out / f"{split}.pt")
    if with_centers:
        vocab = 4**prefix
        ids = torch.arange(vocab)
        digits = torch.stack([(ids // 4**(prefix - 1 - i)) % 4 for i in range(prefix)], dim=1)
        centers = torch.nn.functional.one_hot(digits, 4).reshape(vocab, 4 * prefix).float()
        torch.save({"cluster_centers": centers}, out / "cluster_centers.pt")
    return out
