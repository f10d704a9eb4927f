"""Small real token datasets for the training tests, built straight from the real RNA sample.

Stages 2-3 (lambeq circuits, k-means) are too slow to run inside every training test, so the
k-mer -> token map here is a simple deterministic stand-in: a 6-mer's first ``prefix`` bases
read as a base-4 number (4^4 = 256 tokens). The windows themselves are real: overlapping
6-mers (stride 1) of real transcripts, split by locus like stage 1, so the next token is as
predictable as in the real task (it shares ``prefix - 1`` bases with the last input token).
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


def record_windows(seq: str, k: int, window: int, stride: int) -> list[list[str]]:
    """Windows of ``window`` overlapping k-mers (stride 1 inside), ``stride`` k-mers apart,
    never crossing a non-ACGT base."""
    out = []
    for run in "".join(c if c in _BASE else " " for c in seq).split():
        kmers = [run[i:i + k] for i in range(len(run) - k + 1)]
        out.extend(kmers[s:s + window] for s in range(0, len(kmers) - window + 1, stride))
    return out


def make_token_dir(
    out: Path,
    *,
    window: int = 8,
    k: int = 6,
    prefix: int = 4,
    sizes: tuple[int, int, int] = (640, 160, 160),
    stride: int = 5,
    max_records: int = 120,
    with_centers: bool = False,
) -> Path:
    """Write ``{train,val,test}.pt`` (stage-3 format) with at most ``sizes`` windows per split.

    Loci go to val / test / train by their position (every 5th to val, the next to test), so
    no locus spans two splits. ``with_centers`` also writes ``cluster_centers.pt``: each
    token's centre is the one-hot encoding of its ``prefix`` bases (``[4^prefix, 4 prefix]``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loci: dict[str, int] = {}
    rows: dict[str, list[list[int]]] = {"train": [], "val": [], "test": []}
    limit = dict(zip(rows, sizes))
    for locus, seq in read_records(real_fasta(), max_records):
        idx = loci.setdefault(locus, len(loci))
        split = "val" if idx % 5 == 3 else "test" if idx % 5 == 4 else "train"
        for win in record_windows(seq, k, window, stride):
            if len(rows[split]) < limit[split]:
                rows[split].append([kmer_token(km, prefix) for km in win])
        if all(len(rows[s]) >= limit[s] for s in rows):
            break
    for split, r in rows.items():
        assert r, f"no {split} windows: raise max_records"
        seq = torch.tensor(r, dtype=torch.int64)
        torch.save({"sequences": seq, "labels": seq[:, -1].clone()}, out / f"{split}.pt")
    if with_centers:
        vocab = 4**prefix
        ids = torch.arange(vocab)
        digits = torch.stack([(ids // 4**(prefix - 1 - i)) % 4 for i in range(prefix)], dim=1)
        centers = torch.nn.functional.one_hot(digits, 4).reshape(vocab, 4 * prefix).float()
        torch.save({"cluster_centers": centers}, out / "cluster_centers.pt")
    return out
