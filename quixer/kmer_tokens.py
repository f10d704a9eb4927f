"""Classical-benchmark tokens: the stage-1 windows as ids over the raw k-mer vocabulary.

The same windows and splits as stage 1 (from a FASTA, stage 1 runs on the side), written as
``{split}.pt`` with ``sequences [N, W]`` (int64 k-mer ids, see :func:`quixer.windows.kmer_id`),
``labels [N] = sequences[:, -1]``, ``vocab`` (all 4^k k-mers, no specials: every window is
made of A/C/G/T k-mers only) and ``sources`` (:class:`quixer.window_sources.WindowSources`). The classical baselines
then run on the un-quantised task.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .common import UserError, atomic_write_json, check_output_dir, read_json, sha256_file, staged_output_dir
from .window_sources import WindowSources
from .windows import SPLITS, WindowConfig, all_kmers, check_fasta_path, load_metadata, prepare_autoregressive_data, split_kmer_ids

log = logging.getLogger(__name__)


def prepare_classical_benchmarks(output_dir: str | os.PathLike, *, fasta: str | os.PathLike | None = None,
                                 cfg: WindowConfig | None = None, data_dir: str | os.PathLike | None = None,
                                 force: bool = False) -> dict:
    """Tokenise the windows of a stage-1 directory (``data_dir``) or of a FASTA (``fasta`` + ``cfg``)."""
    if (fasta is None) == (data_dir is None):
        raise UserError("give exactly one of --fasta or --data_dir")
    if fasta is not None:
        cfg = cfg or WindowConfig()
        cfg.validate()
        fasta = check_fasta_path(fasta)
        source = {"fasta": str(fasta)}
        windows = {"input_sha256": sha256_file(fasta), "config": asdict(cfg)}
        k = cfg.k
    else:
        meta = load_metadata(data_dir)
        source = {"data_dir": str(data_dir)}
        windows = {"input_sha256": meta["input_sha256"], "config": meta["signature"]["config"]}
        k = int(meta["k"])
    # The same FASTA and windowing flags give the same tokens by either route (and from any path),
    # so the signature holds only those: the other route then finds the directory up to date.
    signature = {"windows": windows}
    if check_output_dir(output_dir, signature, force, stage="prepare_classical_benchmarks"):
        log.info("%s is up to date; nothing to do", output_dir)
        return read_json(Path(output_dir) / "metadata.json")

    vocab = all_kmers(k)
    with staged_output_dir(output_dir) as tmp:
        if fasta is not None:  # the very windows, splits and sources of stage 1, made on the side
            data_dir = tmp / "_stage1"
            meta = prepare_autoregressive_data(fasta, data_dir, cfg)
        ids = {s: split_kmer_ids(data_dir, s).astype(np.int64) for s in SPLITS}
        for split in SPLITS:
            seq = torch.from_numpy(ids[split])
            sources = WindowSources.from_stage1(data_dir, split, meta).to_torch()
            torch.save({"sequences": seq, "labels": seq[:, -1].clone(), "vocab": vocab, "sources": sources},
                       tmp / f"{split}.pt")
        if fasta is not None:
            shutil.rmtree(data_dir)
        metadata = {
            "stage": "prepare_classical_benchmarks",
            "signature": signature,
            "source": source,
            "vocab_size": len(vocab),
            "k": k,
            "window_size": int(ids["train"].shape[1]),
            "counts": {s: int(ids[s].shape[0]) for s in SPLITS},
            "split": meta.get("split"),
            "leakage": meta.get("leakage"),
            "token_ids": "k-mer index in lexicographic order over ACGT (A=0, C=1, G=2, T=3, first base most significant)",
        }
        atomic_write_json(tmp / "metadata.json", metadata)
    return metadata
