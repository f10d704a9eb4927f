#!/usr/bin/env python3
"""Benchmark stages 1-3 on the real chrX RNA set: wall time, peak memory, stage-2 output bytes.

  python bench/bench_stages.py [--fasta ../shared/data/grch38_chrX_refseq_rna.fasta.gz] [--workers 2]

Each stage runs as its own subprocess, so its peak resident memory is its own (read from
os.wait4's rusage for that child). Also compares the exact and Aer backends on all 4^6
k-mers (max abs difference, seconds each). Prints one JSON line, then a readable table.
Targets: stages 2 + 3 under 60 s on 2 cores with the exact backend, each stage under 1 GB,
stage-2 output bytes proportional to N x W (k-mer ids, not [N, W, D] floats).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FASTA = REPO.parent / "shared" / "data" / "grch38_chrX_refseq_rna.fasta.gz"


def run_stage_wait4(name: str, argv: list[str]) -> dict:
    """Run one stage script, reaped with os.wait4 so the rusage is that child's alone."""
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=log, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{text}")
    return {"stage": name, "seconds": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2)}


def exact_vs_aer(workers: int) -> dict:
    from quixer.encoding import EncoderSpec, KmerCircuits, aer_embeddings, exact_embeddings

    circuits = KmerCircuits(EncoderSpec())
    circuits.mixer  # build the lambeq circuit once, outside both timings
    t0 = time.perf_counter()
    exact = exact_embeddings(circuits, "cpu")
    t1 = time.perf_counter()
    aer, info = aer_embeddings(circuits, workers=workers)
    t2 = time.perf_counter()
    return {"kmers": len(exact), "max_abs_diff": float(abs(exact - aer).max()),
            "exact_seconds": round(t1 - t0, 3), "aer_seconds": round(t2 - t1, 3), "aer_device": info["aer_device"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fasta", default=str(DEFAULT_FASTA), help=f"input FASTA (default: {DEFAULT_FASTA})")
    p.add_argument("--workers", type=int, default=2, help="threads for stage 2 (default: 2)")
    p.add_argument("--work_dir", default=None, help="keep the stage outputs here (default: a temp dir, removed)")
    p.add_argument("--skip_aer", action="store_true", help="skip the exact-vs-Aer comparison")
    args = p.parse_args(argv)

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_stages."))
    d1, d2, d3 = work / "autoregressive_data", work / "lambeq_embeddings_autoregressive", work / "quantized"
    try:
        stages = [
            run_stage_wait4("1_prepare", ["prepare_autoregressive_data.py", "--fasta", args.fasta,
                                          "--output_dir", str(d1), "--force"]),
            run_stage_wait4("2_encode", ["lambeq_encoder.py", "--data_dir", str(d1), "--output_dir", str(d2),
                                         "--device", "cpu", "--workers", str(args.workers), "--force"]),
            run_stage_wait4("3_quantize", ["quantize_lambeq_embeddings.py", "--input_dir", str(d2),
                                           "--output_dir", str(d3), "--force"]),
        ]
        enc_meta = json.loads((d2 / "metadata.json").read_text())
        q_meta = json.loads((d3 / "metadata.json").read_text())
        n_windows = sum(enc_meta["counts"].values())
        w = enc_meta["window_size"]
        split_bytes = sum((d2 / f"{s}.pt").stat().st_size for s in enc_meta["counts"])
        total_bytes = sum(f.stat().st_size for f in d2.iterdir())
        result = {
            "fasta": args.fasta,
            "workers": args.workers,
            "cpu_count": os.cpu_count(),
            "stages": stages,
            "stages_2_3_seconds": round(stages[1]["seconds"] + stages[2]["seconds"], 2),
            "max_peak_rss_mb": max(s["peak_rss_mb"] for s in stages),
            "windows": n_windows,
            "window_size": w,
            "stage2_bytes": total_bytes,
            "stage2_split_bytes": split_bytes,
            "stage2_split_bytes_per_position": round(split_bytes / (n_windows * w), 3),
            "full_tensor_bytes_avoided": n_windows * w * enc_meta["embedding_dim"] * 4,
            "stage2_table_seconds": round(enc_meta["timings"]["table_seconds"], 3),
            "stage3_fit_seconds": round(q_meta["timings"]["fit_seconds"], 3),
            "hamming_within_cluster": q_meta["hamming_within_cluster"],
            "hamming_random_pairs": q_meta["hamming_random_pairs"],
        }
        if not args.skip_aer:
            result["exact_vs_aer"] = exact_vs_aer(args.workers)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    print(json.dumps(result))
    print()
    print(f"{'stage':<12} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9}")
    for s in stages:
        print(f"{s['stage']:<12} {s['seconds']:>8.2f} {s['cpu_seconds']:>8.2f} {s['peak_rss_mb']:>9.1f}")
    print(f"stages 2+3: {result['stages_2_3_seconds']:.1f} s (target < 60 s); max peak {result['max_peak_rss_mb']:.0f} MiB (target < 1024)")
    print(f"stage-2 output: {total_bytes:,} bytes ({split_bytes:,} in split files for {n_windows:,} x {w} positions = "
          f"{result['stage2_split_bytes_per_position']} bytes/position; the full float32 tensor would be "
          f"{result['full_tensor_bytes_avoided']:,})")
    if "exact_vs_aer" in result:
        e = result["exact_vs_aer"]
        print(f"exact vs Aer on {e['kmers']} k-mers: max |diff| {e['max_abs_diff']:.2e} "
              f"(exact {e['exact_seconds']} s, Aer {e['aer_seconds']} s on {e['aer_device']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
