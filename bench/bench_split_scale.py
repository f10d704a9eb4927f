#!/usr/bin/env python
"""Stage 1 at the design scale: wall time, peak memory and split figures, printed as one JSON line.

The project is designed for about 10,000 transcripts (35 Mnt); the shared benchmark set holds
2,304 (6.26 Mnt). This makes a design-scale input from it: the real transcripts plus ``--copies``
copies of each with ``--divergence`` of the bases substituted (seeded; case kept, so soft-masked
repeats stay masked), as bare accessions without gene tags, and runs
``prepare_autoregressive_data.py`` on it in a subprocess (its own peak memory).

At 15 % divergence two copies share only chance 32-mers (0.85^32: about 0.6 % of positions), so
the grouping sees about as many unrelated transcripts as a real 10,000-transcript input; the
copies still carry the real repeats and isoform structure.

  python bench/bench_split_scale.py                 # 5 copies: about 37 Mnt, 13,800 transcripts
  python bench/bench_split_scale.py --copies 0      # the benchmark set itself
"""
from __future__ import annotations

import argparse
import gzip
import json
import tempfile
from pathlib import Path

import numpy as np

from bench_stages import DEFAULT_FASTA, REPO, run_stage_wait4  # bench/ is the script's own directory
from quixer.fasta import iter_fasta

_CODE = np.full(256, 255, dtype=np.uint8)
for _i, _b in enumerate(b"ACGT"):
    _CODE[_b], _CODE[_b + 32] = _i, _i
_UPPER, _LOWER = np.frombuffer(b"ACGT", np.uint8), np.frombuffer(b"acgt", np.uint8)


def mutate(sequence: str, rate: float, rng: np.random.Generator) -> str:
    """``sequence`` with a ``rate`` share of its A/C/G/T bases (either case) replaced by another base."""
    raw = np.frombuffer(sequence.encode("ascii"), np.uint8).copy()
    code = _CODE[raw]
    hit = (code != 255) & (rng.random(len(raw)) < rate)
    new = (code[hit] + rng.integers(1, 4, int(hit.sum()))) % 4  # a different base, uniformly
    raw[hit] = np.where(raw[hit] >= 97, _LOWER[new], _UPPER[new])
    return raw.tobytes().decode("ascii")


def make_input(path: Path, copies: int, rate: float, seed: int) -> tuple[int, int]:
    rng = np.random.default_rng(seed)
    records, bases = 0, 0
    with gzip.open(path, "wt", compresslevel=1) as out:
        for rec in iter_fasta(DEFAULT_FASTA):
            for c in range(copies + 1):
                seq = rec.sequence if c == 0 else mutate(rec.sequence, rate, rng)
                out.write(f">{rec.accession}{'' if c == 0 else f'_copy{c}'}\n{seq}\n")
                records += 1
                bases += len(seq)
    return records, bases


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, default=5, help="diverged copies per real transcript (default: 5)")
    p.add_argument("--divergence", type=float, default=0.15, help="share of substituted bases (default: 0.15)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "design_scale.fa.gz"
        records, bases = make_input(fasta, args.copies, args.divergence, args.seed)
        stage = run_stage_wait4("prepare_autoregressive_data", [
            str(REPO / "prepare_autoregressive_data.py"), "--fasta", str(fasta), "--output_dir", str(Path(tmp) / "out")])
        meta = json.loads((Path(tmp) / "out" / "metadata.json").read_text())
    print(json.dumps({
        "records": records, "bases": bases, "copies": args.copies, "divergence": args.divergence,
        "wall_seconds": stage["seconds"], "peak_memory_mib": stage["peak_rss_mb"],
        "windows": sum(c["windows"] for c in meta["counts"].values()),
        "groups": meta["split"]["groups"], "largest_group_share": round(meta["split"]["largest_group_share"], 4),
        "refused_joins": meta["split"]["refused_joins"],
        "leaked_val": round(meta["leakage"]["val"]["fraction"], 4),
        "leaked_test": round(meta["leakage"]["test"]["fraction"], 4),
        "shares": {k: round(v, 4) for k, v in meta["split"]["shares"].items()},
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
