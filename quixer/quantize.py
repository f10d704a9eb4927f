"""Stage 3: k-means over the per-k-mer embeddings -> one token id per k-mer (512 by default).

The clustering is fitted on the table of *distinct* k-mers that occur in the train split,
each weighted by its number of occurrences there (``sample_weight``): the same centres as
k-means over every train window position, at the cost of ~4^k points instead of N x W.
K-mers that never occur in train (weight 0) do not move the centres; like every k-mer of
the table they are then mapped to their nearest centre, so val/test windows are tokenised
with the train-fitted centres only (no information from val/test reaches the fit).

Two inputs are accepted: the stage-2 table format (``kmer_embeddings.pt`` + ``{split}.pt``
with ``kmer_ids``) and the original full-tensor format (``{split}.pt`` with ``embeddings``
``[N, W, D]``), whose distinct rows play the part of the k-mers.

From the table format the k-mer ids of every window travel on in ``kmer_ids.pt`` (beside the
token files, which stay as they were): the ceiling references (:mod:`quixer.ceilings`) need the
raw bases behind each token. A directory written before that file existed gets it added on the
next run with the same input and parameters, its token files untouched, so runs fitted on them
stay valid.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .common import (
    UserError,
    atomic_torch_save,
    atomic_write_json,
    check_output_dir,
    peak_rss_mb,
    read_json,
    sha256_file,
    staged_output_dir,
)
from .data import KMER_IDS_FILE
from .encoding import TABLE_FILE, _torch_load, load_encoder_metadata, load_split_ids, load_table, table_sha256
from .window_sources import WindowSources
from .windows import SPLITS, all_kmers

log = logging.getLogger(__name__)

DEFAULT_INPUT_DIR = "lambeq_embeddings_autoregressive"
DEFAULT_OUTPUT_DIR = "quantized_embeddings_autoregressive"


@dataclass(frozen=True)
class QuantizeConfig:
    n_clusters: int = 512
    seed: int = 42
    n_init: int = 4
    max_iter: int = 300

    def validate(self) -> None:
        for name in ("n_clusters", "n_init", "max_iter"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be >= 1")


@dataclass
class _Inputs:
    """What stage 3 needs, whichever input format: a table and per-split row indices into it."""

    table: np.ndarray  # [V, D] float32
    ids: dict[str, np.ndarray]  # split -> [N, W] int64 indices into table
    kmers: list[str] | None  # None for the full-tensor format
    source: dict  # identifies the input (hashes), goes into the signature
    sources: dict[str, WindowSources | None] = field(default_factory=dict)  # carried to the token files


def _check_splits_exist(input_dir: Path) -> None:
    missing = [s for s in SPLITS if not (input_dir / f"{s}.pt").exists()]
    if missing:
        raise UserError(f"{input_dir}: missing split file(s) {', '.join(f'{s}.pt' for s in missing)}")


def _load_table_format(input_dir: Path) -> _Inputs:
    meta = load_encoder_metadata(input_dir)
    recorded = meta.get("files") or {}
    for name in [TABLE_FILE] + [f"{s}.pt" for s in SPLITS]:
        path = input_dir / name
        if name in recorded and path.is_file() and sha256_file(path) != recorded[name]:
            raise UserError(
                f"{path}: does not match the sha256 recorded in {input_dir}/metadata.json: damaged, or from "
                "another run (written by lambeq_encoder.py; rerun it to replace the directory)"
            )
    kmers, table_t = load_table(input_dir)
    table = table_t.numpy().astype(np.float32, copy=False)
    digest = table_sha256(kmers, table)
    if meta.get("table_sha256") not in (None, digest):
        raise UserError(f"{input_dir}/{TABLE_FILE}: table hash differs from the one in metadata.json")
    ids: dict[str, np.ndarray] = {}
    sources: dict[str, WindowSources | None] = {}
    for split in SPLITS:
        kid, _, sources[split] = load_split_ids(input_dir, split, len(table))
        ids[split] = kid.numpy().astype(np.int64)
    widths = {s: a.shape[1] for s, a in ids.items()}
    if len(set(widths.values())) != 1:
        raise UserError(f"{input_dir}: window widths differ between splits {widths}")
    return _Inputs(table, ids, list(kmers), {
        "format": "table",
        "table_sha256": digest,
        "split_sha256": {s: recorded.get(f"{s}.pt") or sha256_file(input_dir / f"{s}.pt") for s in SPLITS},
        "encoder_signature": meta.get("signature"),
    }, sources)


def _load_full_format(input_dir: Path) -> _Inputs:
    """``{split}.pt`` with ``embeddings [N, W, D]``: distinct rows of all splits become the table."""
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        obj = _torch_load(input_dir / f"{split}.pt")
        emb = obj.get("embeddings")
        if not isinstance(emb, torch.Tensor) or emb.ndim != 3:
            raise UserError(f"{input_dir}/{split}.pt: expected embeddings [N, W, D] (or a stage-2 table directory)")
        arrays[split] = emb.to(torch.float32).numpy()
    dims = {s: a.shape[2] for s, a in arrays.items()}
    if len(set(dims.values())) != 1:
        raise UserError(f"{input_dir}: embedding dimensions differ between splits {dims}")
    widths = {s: a.shape[1] for s, a in arrays.items()}
    if len(set(widths.values())) != 1:
        raise UserError(f"{input_dir}: window widths differ between splits {widths}")
    d = next(iter(dims.values()))
    rows = np.concatenate([a.reshape(-1, d) for a in arrays.values()])
    table, inverse = np.unique(rows, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    ids, start = {}, 0
    for split, a in arrays.items():
        n = a.shape[0] * a.shape[1]
        ids[split] = inverse[start:start + n].reshape(a.shape[0], a.shape[1]).astype(np.int64)
        start += n
    return _Inputs(table.astype(np.float32), ids, None, {
        "format": "full",
        "table_sha256": table_sha256([], table),
        "split_sha256": {s: sha256_file(input_dir / f"{s}.pt") for s in SPLITS},
    })


def load_inputs(input_dir: str | os.PathLike) -> _Inputs:
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise UserError(f"{input_dir}: not a directory (run lambeq_encoder.py first)")
    _check_splits_exist(input_dir)
    if (input_dir / TABLE_FILE).exists():
        return _load_table_format(input_dir)
    return _load_full_format(input_dir)


def kmer_ids_payload(inputs: _Inputs) -> dict | None:
    """The content of ``kmer_ids.pt``: per split the windows' k-mer ids ``[N, W]`` (each k-mer's
    index in lexicographic order over ACGT, int16 while 4^k fits), or None where the input has no
    complete k-mer table (the full-tensor format), so no ids can be given."""
    kmers = inputs.kmers
    if not kmers:
        return None
    k = len(kmers[0])
    if kmers != all_kmers(k):
        log.warning("the k-mer table is not every %d-mer in lexicographic order: %s not written", k, KMER_IDS_FILE)
        return None
    dtype = torch.int16 if 4**k <= 2**15 else torch.int32
    return {"k": k, "kmer_ids": {s: torch.from_numpy(inputs.ids[s]).to(dtype) for s in SPLITS}}


def _add_missing_kmer_ids(output_dir: Path, inputs: _Inputs) -> None:
    """Give an up-to-date directory from before ``kmer_ids.pt`` existed that file (only)."""
    if (output_dir / KMER_IDS_FILE).exists():
        return
    payload = kmer_ids_payload(inputs)
    if payload is not None:
        atomic_torch_save(output_dir / KMER_IDS_FILE, payload)
        log.info("%s: added %s (the k-mer ids of every window; the token files are unchanged)",
                 output_dir, KMER_IDS_FILE)


def mean_hamming(kmers: list[str], labels: np.ndarray | None = None) -> float | None:
    """Mean Hamming distance over pairs of distinct k-mers (within the same label if given).

    Exact and O(V k): per position, pairs that differ = n^2 - sum over bases of n_b^2.
    """
    if not kmers:
        return None
    chars = np.frombuffer("".join(kmers).encode(), dtype=np.uint8).reshape(len(kmers), -1)
    groups = np.zeros(len(kmers), dtype=np.int64) if labels is None else np.asarray(labels)
    differing, pairs = 0.0, 0.0
    for g in np.unique(groups):
        sub = chars[groups == g]
        n = len(sub)
        if n < 2:
            continue
        pairs += n * (n - 1)
        for pos in range(sub.shape[1]):
            _, c = np.unique(sub[:, pos], return_counts=True)
            differing += n * n - float(np.sum(c.astype(np.float64) ** 2))
    return differing / pairs if pairs else None


def _size_histogram(sizes: np.ndarray) -> dict:
    """Clusters per size bucket (0, 1, 2-3, 4-7, ...), plus min / median / max."""
    edges = [0, 1] + [2**i for i in range(1, int(np.log2(max(int(sizes.max()), 1))) + 2)]
    hist = {}
    for lo, hi in zip(edges, edges[1:] + [None]):
        n = int(np.sum(sizes == 0)) if lo == 0 else int(np.sum((sizes >= lo) & (sizes < (hi or np.inf))))
        if lo == 0:
            hist["0"] = n
            continue
        label = f"{lo}" if hi == lo + 1 else f"{lo}-{(hi - 1) if hi else 'inf'}"
        if n:
            hist[label] = n
    return {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max()), "buckets": hist}


@dataclass
class _Clusters:
    """k-means fitted on the distinct train k-mers (weighted by their train occurrences) and the
    token of every row of the table, seen in train or not."""
    km: object  # sklearn.cluster.KMeans
    tokens: np.ndarray
    train_counts: np.ndarray
    fit_rows: np.ndarray
    distinct_embeddings: int
    fit_seconds: float


def _fit_clusters(inputs: _Inputs, cfg: QuantizeConfig) -> _Clusters:
    from sklearn.cluster import KMeans

    train_counts = np.bincount(inputs.ids["train"].reshape(-1), minlength=inputs.table.shape[0])
    fit_rows = np.flatnonzero(train_counts)
    x_fit = inputs.table[fit_rows].astype(np.float64)
    n_distinct = len(np.unique(x_fit, axis=0))
    if cfg.n_clusters > n_distinct:
        raise UserError(
            f"--n_clusters {cfg.n_clusters} is more than the {n_distinct} distinct embeddings of the "
            f"{len(fit_rows)} k-mers seen in train: lower --n_clusters (or use more data / a larger --embedding_dim)"
        )
    t0 = time.perf_counter()
    km = KMeans(n_clusters=cfg.n_clusters, n_init=cfg.n_init, max_iter=cfg.max_iter, random_state=cfg.seed)
    km.fit(x_fit, sample_weight=train_counts[fit_rows].astype(np.float64))
    fit_seconds = time.perf_counter() - t0
    tokens = km.predict(inputs.table.astype(np.float64)).astype(np.int64)
    log.info("k-means: %d clusters over %d train k-mers (%d occurrences) in %.1f s, inertia %.4g",
             cfg.n_clusters, len(fit_rows), int(train_counts.sum()), fit_seconds, km.inertia_)
    return _Clusters(km, tokens, train_counts, fit_rows, n_distinct, fit_seconds)


def _write_token_splits(tmp: Path, inputs: _Inputs, clusters: _Clusters) -> dict:
    """``{split}.pt`` (token windows, their last token as label, window sources); per-split counts."""
    stats = {}
    for split in SPLITS:
        seq = torch.from_numpy(clusters.tokens[inputs.ids[split]])
        out = {"sequences": seq, "labels": seq[:, -1].clone()}
        if inputs.sources.get(split) is not None:
            out["sources"] = inputs.sources[split].to_torch()
        atomic_torch_save(tmp / f"{split}.pt", out)
        unseen = int(np.sum(clusters.train_counts[inputs.ids[split]] == 0))
        stats[split] = {"windows": int(seq.shape[0]), "window_size": int(seq.shape[1]),
                        "positions_with_kmers_unseen_in_train": unseen}
    return stats


def _write_centers(tmp: Path, inputs: _Inputs, clusters: _Clusters) -> None:
    """``cluster_centers.pt`` (centres and the k-mer -> token map) and, from the table format,
    ``kmer_ids.pt`` for the ceilings."""
    kmers, tokens = inputs.kmers, clusters.tokens
    atomic_torch_save(tmp / "cluster_centers.pt", {
        "cluster_centers": torch.from_numpy(clusters.km.cluster_centers_.astype(np.float32)),
        "kmers": kmers or [],
        "kmer_tokens": torch.from_numpy(tokens),
        "kmer_to_token": dict(zip(kmers, tokens.tolist())) if kmers else {},
    })
    kmer_ids = kmer_ids_payload(inputs)
    if kmer_ids is not None:
        atomic_torch_save(tmp / KMER_IDS_FILE, kmer_ids)


def _cluster_metadata(inputs: _Inputs, clusters: _Clusters, k: int) -> dict:
    """What the clusters hold: their sizes, and how alike the k-mers inside one are (Hamming)."""
    tokens, fit_rows, counts = clusters.tokens, clusters.fit_rows, clusters.train_counts
    occ_sizes = np.bincount(tokens[fit_rows], weights=counts[fit_rows], minlength=k).astype(np.int64)
    distinct_sizes = np.bincount(tokens[fit_rows], minlength=k)
    fit_kmers = [inputs.kmers[i] for i in fit_rows] if inputs.kmers else []
    return {
        "vocab_size": int(inputs.table.shape[0]),
        "embedding_dim": int(inputs.table.shape[1]),
        "train_kmers_distinct": int(len(fit_rows)),
        "train_embeddings_distinct": int(clusters.distinct_embeddings),
        "train_occurrences": int(counts.sum()),
        "inertia": float(clusters.km.inertia_),
        "n_iter": int(clusters.km.n_iter_),
        "cluster_sizes_train_occurrences": _size_histogram(occ_sizes) | {"sizes": occ_sizes.tolist()},
        "cluster_sizes_distinct_kmers": _size_histogram(distinct_sizes) | {"sizes": distinct_sizes.tolist()},
        "empty_clusters": int(np.sum(distinct_sizes == 0)),
        "hamming_within_cluster": mean_hamming(fit_kmers, tokens[fit_rows]) if inputs.kmers else None,
        "hamming_random_pairs": mean_hamming(fit_kmers) if inputs.kmers else None,
    }


def quantize_embeddings(input_dir: str | os.PathLike, output_dir: str | os.PathLike,
                        cfg: QuantizeConfig = QuantizeConfig(), force: bool = False) -> dict:
    """Run stage 3; returns the metadata written (or found up to date)."""
    t_start = time.perf_counter()
    cfg.validate()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if output_dir.resolve() == input_dir.resolve():
        raise UserError("--output_dir must differ from --input_dir")
    inputs = load_inputs(input_dir)
    signature = {"parameters": asdict(cfg), "input": inputs.source}
    if check_output_dir(output_dir, signature, force, stage="quantize_lambeq_embeddings"):
        _add_missing_kmer_ids(output_dir, inputs)
        log.info("%s is up to date (same input and parameters); nothing to do", output_dir)
        return read_json(output_dir / "metadata.json")

    clusters = _fit_clusters(inputs, cfg)
    with staged_output_dir(output_dir) as tmp:
        splits = _write_token_splits(tmp, inputs, clusters)
        _write_centers(tmp, inputs, clusters)
        metadata = {
            "stage": "quantize_lambeq_embeddings",
            "signature": signature,
            "input_dir": str(input_dir),
            "input_format": inputs.source["format"],
            "input_table_sha256": inputs.source["table_sha256"],
            "parameters": asdict(cfg),
            "fit": "k-means on distinct train k-mers weighted by train occurrences; every table row mapped to its nearest centre",
            **_cluster_metadata(inputs, clusters, cfg.n_clusters),
            "splits": splits,
            "timings": {"fit_seconds": clusters.fit_seconds, "total_seconds": time.perf_counter() - t_start},
            "peak_rss_mb": peak_rss_mb(),
        }
        atomic_write_json(tmp / "metadata.json", metadata)
    if metadata["hamming_within_cluster"] is not None:
        log.info("mean Hamming distance inside a cluster %.2f vs %.2f for random k-mer pairs",
                 metadata["hamming_within_cluster"], metadata["hamming_random_pairs"])
    log.info("wrote %s in %.1f s (peak memory %.0f MiB)", output_dir, time.perf_counter() - t_start, peak_rss_mb())
    return metadata


def add_quantize_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("k-means")
    g.add_argument("--n_clusters", type=int, default=512, help="number of tokens K (default: 512)")
    g.add_argument("--seed", type=int, default=42, help="k-means seed (default: 42)")
    g.add_argument("--n_init", type=int, default=4, help="k-means restarts; the best inertia is kept (default: 4)")
    g.add_argument("--max_iter", type=int, default=300, help="k-means iterations per restart (default: 300)")


def config_from_args(args: argparse.Namespace) -> QuantizeConfig:
    return QuantizeConfig(n_clusters=args.n_clusters, seed=args.seed, n_init=args.n_init, max_iter=args.max_iter)
