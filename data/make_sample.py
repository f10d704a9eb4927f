#!/usr/bin/env python3
"""Rebuild data/sample_rna.fasta.gz: whole loci of the shared chrX benchmark set.

  python data/make_sample.py ../shared/data/grch38_chrX_refseq_rna.fasta.gz data/sample_rna.fasta.gz

Loci are taken in a seeded random order until at least 300 transcripts are in; every
isoform of a chosen locus comes along, so a split by locus stays honest on the sample.
Records keep their headers and bases; lines are 70 bases; gzip without a timestamp.
"""
import gzip
import random
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from quixer.fasta import group_of, iter_fasta  # noqa: E402

TARGET, SEED = 300, 2024


def main(src: str, dst: str) -> None:
    by_locus = defaultdict(list)
    for rec in iter_fasta(src):
        by_locus[group_of(rec.header)].append(rec)
    loci = sorted(by_locus)
    random.Random(SEED).shuffle(loci)
    chosen, n = set(), 0
    for locus in loci:
        if n >= TARGET:
            break
        chosen.add(locus)
        n += len(by_locus[locus])
    lines = []
    for rec in iter_fasta(src):  # keep the source file's order
        if group_of(rec.header) in chosen:
            lines.append(f">{rec.header}\n")
            lines.extend(rec.sequence[i:i + 70] + "\n" for i in range(0, len(rec.sequence), 70))
    with open(dst, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write("".join(lines).encode("ascii"))
    print(f"{dst}: {n} transcripts from {len(chosen)} loci")


if __name__ == "__main__":
    main(*sys.argv[1:3])
