"""Stage 1: FASTA -> windows of overlapping k-mers, split by shared-sequence group (and the readers).

Three streaming passes over the FASTA keep memory at one transcript, output buffers and the
sequence indexes of :mod:`quixer.homology`: pass 1 validates every record, counts its windows
and collects the sequence evidence that joins transcripts into split groups; the groups are
then assigned to train/val/test so each split gets its share of windows; pass 2 indexes the
train transcripts' sequence; pass 3 writes the windows, marking for every val/test position
whether its context occurs in train (the leakage statistic and the ``novel`` flag). A window is ``window_size`` consecutive overlapping k-mers (stride 1), so it spans
``window_size + k - 1`` bases, all inside one run of A/C/G/T: bases are never invented or
skipped over.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from .common import UserError, check_output_dir, read_json, sha256_file, staged_output_dir, atomic_write_json
from .fasta import FastaRecord, acgt_runs, group_of, iter_fasta, normalise
from .homology import HomologyConfig, SharedSequenceGrouper, TrainIndex, context_length, context_seen

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
BASES = "ACGT"
DEFAULT_FASTA = "GRCh38_genomic_dataset/rna_sequences.fasta"
DEFAULT_DATA_DIR = "autoregressive_data"
SPLIT_METHODS = ("homology", "locus", "window")


# --------------------------------------------------------------------------- k-mer vocabulary
def all_kmers(k: int) -> list[str]:
    """Every k-mer over ACGT in lexicographic order; a k-mer's index is its base-4 number."""
    return ["".join(p) for p in itertools.product(BASES, repeat=k)]


_BASE_VALUE = {b: i for i, b in enumerate(BASES)}


def kmer_id(kmer: str) -> int:
    """Index of an ACGT k-mer in :func:`all_kmers` (A=0, C=1, G=2, T=3, most significant first)."""
    value = 0
    for base in kmer:
        value = value * 4 + _BASE_VALUE[base]
    return value


# --------------------------------------------------------------------------- windowing
@dataclass(frozen=True)
class WindowConfig:
    k: int = 6
    window_size: int = 32
    window_stride: int | None = None  # None: = window_size (non-overlapping windows)
    min_length: int = 0
    max_sequences: int | None = None
    max_windows_per_sequence: int | None = None
    seed: int = 42
    split_by: str = "homology"
    homology: HomologyConfig = HomologyConfig()

    @property
    def stride(self) -> int:
        return self.window_stride or self.window_size

    @property
    def span(self) -> int:
        """Bases covered by one window."""
        return self.window_size + self.k - 1

    def validate(self) -> None:
        for name in ("k", "window_size", "stride"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name if name != 'stride' else 'window_stride'} must be >= 1")
        if self.k > 12:
            raise UserError("--k must be <= 12 (4^k k-mers)")
        if self.split_by not in SPLIT_METHODS:
            raise UserError(f"--split_by must be one of {', '.join(SPLIT_METHODS)}, not {self.split_by!r}")
        self.homology.validate()
        for name in ("max_sequences", "max_windows_per_sequence"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name} must be >= 1")


def window_offsets(normalised: str, cfg: WindowConfig, accession: str) -> list[int]:
    """0-based start offsets of the windows of one normalised sequence.

    With ``max_windows_per_sequence`` a seeded, accession-specific subset is kept (in order), so
    the choice does not depend on which other records are in the file.
    """
    offsets: list[int] = []
    for run_start, run in acgt_runs(normalised):
        offsets.extend(range(run_start, run_start + len(run) - cfg.span + 1, cfg.stride))
    limit = cfg.max_windows_per_sequence
    if limit is not None and len(offsets) > limit:
        rng = np.random.default_rng([cfg.seed, zlib.crc32(accession.encode())])
        keep = np.sort(rng.choice(len(offsets), size=limit, replace=False))
        offsets = [offsets[i] for i in keep]
    return offsets


def window_kmers(normalised: str, offset: int, cfg: WindowConfig) -> list[str]:
    return [normalised[p : p + cfg.k] for p in range(offset, offset + cfg.window_size)]


@dataclass
class _Scan:
    """What pass 1 learns: kept records in order, their gene tags and windows, and skip counts."""

    kept: list[tuple[str, str | None, int]] = field(default_factory=list)  # (accession, gene tag, n_windows)
    skipped: Counter = field(default_factory=Counter)
    records: int = 0
    bases: int = 0


def _usable_records(fasta: Path, cfg: WindowConfig, desc: str) -> Iterator[tuple[FastaRecord, str, list[int]]]:
    """Records that give at least one window, de-duplicated by accession, up to max_sequences.

    Every pass calls this, so they agree on exactly which records and windows are used.
    """
    seen: set[str] = set()
    used = 0
    for record in tqdm(iter_fasta(fasta), desc=desc, unit=" seq", disable=None, leave=False):
        if cfg.max_sequences is not None and used >= cfg.max_sequences:
            break
        accession = record.accession
        if accession in seen:
            yield record, "duplicate", []
            continue
        seen.add(accession)
        seq = normalise(record.sequence)
        if len(seq) < cfg.min_length:
            yield record, "shorter_than_min_length", []
            continue
        offsets = window_offsets(seq, cfg, accession)
        if not offsets:
            has_kmer = any(len(run) >= cfg.k for _, run in acgt_runs(seq))
            yield record, ("shorter_than_window" if has_kmer else "no_valid_kmer"), []
            continue
        used += 1
        yield record, "", offsets


def _kept_records(fasta: Path, cfg: WindowConfig, desc: str) -> Iterator[tuple[FastaRecord, list[int]]]:
    for record, skip, offsets in _usable_records(fasta, cfg, desc):
        if not skip:
            yield record, offsets


def _gene_tag(header: str, accession: str) -> str | None:
    group = group_of(header)
    return None if group == accession else group


def scan_fasta(fasta: Path, cfg: WindowConfig, grouper: SharedSequenceGrouper | None = None) -> _Scan:
    """Pass 1: validate every record, count windows; feed used transcripts to ``grouper``."""
    scan = _Scan()
    for record, skip, offsets in _usable_records(fasta, cfg, "scan"):
        scan.records += 1
        scan.bases += len(record.sequence)
        if skip:
            scan.skipped[skip] += 1
            continue
        scan.kept.append((record.accession, _gene_tag(record.header, record.accession), len(offsets)))
        if grouper is not None:
            grouper.add(record.sequence)
    if not scan.kept:
        if scan.skipped.get("shorter_than_window") or scan.skipped.get("shorter_than_min_length"):
            raise UserError(
                f"{fasta}: no sequence is long enough for one window of {cfg.window_size} {cfg.k}-mers "
                f"({cfg.span} consecutive A/C/G/T bases)"
            )
        raise UserError(f"{fasta}: no record has a valid {cfg.k}-mer (A/C/G/T run of length >= {cfg.k})")
    return scan


def assign_groups(group_windows: dict[str, int], seed: int) -> dict[str, str]:
    """Assign whole groups to splits so each split gets close to 70/15/15 of the windows.

    Groups are visited in a seeded random order and each goes to the split furthest below its
    target share; each split is guaranteed at least one group.
    """
    groups = sorted(group_windows)
    if len(groups) < len(SPLITS):
        raise UserError(
            f"only {len(groups)} split group(s) in the input: a split by group needs at least 3 "
            "(add sequences, or use --split_by window and accept leakage)"
        )
    order = np.random.default_rng(seed).permutation(len(groups))
    total = sum(group_windows.values())
    filled = dict.fromkeys(SPLITS, 0)
    members: dict[str, list[str]] = {s: [] for s in SPLITS}
    for i in order:
        g = groups[i]
        split = max(SPLITS, key=lambda s: SPLIT_FRACTIONS[SPLITS.index(s)] * total - filled[s])
        filled[split] += group_windows[g]
        members[split].append(g)
    for split in SPLITS:  # tiny inputs: move the smallest group of the largest split over
        if not members[split]:
            donor = max(SPLITS, key=lambda s: len(members[s]))
            g = min(members[donor], key=lambda x: (group_windows[x], x))
            members[donor].remove(g)
            members[split].append(g)
    return {g: s for s, gs in members.items() for g in gs}


def _window_split(cfg: WindowConfig, accession: str, offset: int) -> str:
    """--split_by window: a seeded hash per window, the original (leaky) shuffled-window split."""
    u = zlib.crc32(f"{cfg.seed}:{accession}:{offset}".encode()) / 2**32
    return "train" if u < SPLIT_FRACTIONS[0] else ("val" if u < SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1] else "test")


@dataclass
class SplitPlan:
    """Where every used transcript goes: its split group, the group's split (``None`` per
    transcript with ``--split_by window``), the train sequence index, and grouping figures."""

    group_of: dict[str, str]
    split_of_group: dict[str, str] | None
    train_index: TrainIndex
    statistics: dict

    def split_of(self, accession: str) -> str | None:
        return None if self.split_of_group is None else self.split_of_group[self.group_of[accession]]


@dataclass(frozen=True)
class Window:
    split: str
    accession: str
    offset: int
    kmers: list[str]
    context_seen: np.ndarray | None  # [W] bools for val/test windows, None for train


def _group_transcripts(scan: _Scan, cfg: WindowConfig, grouper: SharedSequenceGrouper | None) -> tuple[dict[str, str], dict]:
    """accession -> group name (the group's first accession, or its gene tag with --split_by locus)."""
    accessions = [acc for acc, _, _ in scan.kept]
    if cfg.split_by == "window":
        return {a: a for a in accessions}, {"method": "window"}
    if cfg.split_by == "locus":
        return {a: (tag or a) for a, tag, _ in scan.kept}, {"method": "locus"}
    grouping = grouper.groups([tag for _, tag, _ in scan.kept], [n for _, _, n in scan.kept])
    stats = {"method": "homology", "joined_by_gene_tag": grouping.joined_by_tag,
             "sharing_pairs": grouping.joined_by_sequence, "refused_joins": grouping.refused,
             **grouping.statistics, **asdict(cfg.homology)}
    if grouping.refused:
        log.warning("%d joins of transcripts sharing sequence were refused (%d of them joins by gene tag) because "
                    "the group would hold more than %.1f %% of the windows (--max_group_share); their shared "
                    "sequence may leak", grouping.refused, grouping.statistics["refused_tag_joins"],
                    100 * cfg.homology.max_group_share)
    return {a: accessions[int(root)] for a, root in zip(accessions, grouping.labels)}, stats


def plan_splits(fasta: Path, cfg: WindowConfig) -> tuple[_Scan, SplitPlan]:
    """Pass 1, the split groups and their splits, and the pass that indexes train sequence."""
    grouper = SharedSequenceGrouper(cfg.homology) if cfg.split_by == "homology" else None
    scan = scan_fasta(fasta, cfg, grouper)
    group_of_acc, stats = _group_transcripts(scan, cfg, grouper)
    group_windows: dict[str, int] = Counter()
    for acc, _, n in scan.kept:
        group_windows[group_of_acc[acc]] += n
    total = sum(group_windows.values())
    stats.update(groups=len(group_windows), largest_group_windows=max(group_windows.values()),
                 largest_group_share=max(group_windows.values()) / total)
    if cfg.split_by == "window":
        log.warning("--split_by window: overlapping windows and shared exons leak between splits; "
                    "numbers from this split overstate generalisation")
        split_of_group = None
    else:
        split_of_group = assign_groups(group_windows, cfg.seed)
    index = TrainIndex(context_length(cfg.window_size, cfg.k))
    for record, _ in _kept_records(fasta, cfg, "index"):  # with --split_by window every transcript is train
        if split_of_group is None or split_of_group[group_of_acc[record.accession]] == "train":
            index.add(normalise(record.sequence))
    return scan, SplitPlan(group_of_acc, split_of_group, index.freeze(), stats)


def iter_windows(fasta: Path, cfg: WindowConfig, plan: SplitPlan) -> Iterator[Window]:
    """Pass 2: every window in file order, with whether each position's context is in train."""
    length = plan.train_index.length
    for record, offsets in _kept_records(fasta, cfg, "windows"):
        seq = normalise(record.sequence)
        acc = record.accession
        fixed = plan.split_of(acc)
        splits = [fixed or _window_split(cfg, acc, o) for o in offsets]
        seen = None
        if any(s != "train" for s in splits):
            seen = context_seen(plan.train_index.seen(seq), np.asarray(offsets), cfg.window_size, cfg.k, length)
        for i, (split, offset) in enumerate(zip(splits, offsets)):
            yield Window(split, acc, offset, window_kmers(seq, offset, cfg),
                         None if split == "train" else seen[i])


def check_fasta_path(fasta: str | os.PathLike) -> Path:
    fasta = Path(fasta)
    if not fasta.exists():
        raise UserError(f"{fasta}: file not found")
    if fasta.is_dir():
        raise UserError(f"{fasta}: is a directory, expected a FASTA file")
    return fasta


# --------------------------------------------------------------------------- stage-1 directory
def prepare_autoregressive_data(fasta: str | os.PathLike, output_dir: str | os.PathLike, cfg: WindowConfig, force: bool = False) -> dict:
    """Write the stage-1 directory; returns its metadata. Skips when it is already up to date."""
    cfg.validate()
    fasta, output_dir = check_fasta_path(fasta), Path(output_dir)
    signature = {"config": asdict(cfg), "input_sha256": sha256_file(fasta)}
    if check_output_dir(output_dir, signature, force, stage="prepare_autoregressive_data"):
        log.info("%s is up to date (same input and parameters); nothing to do", output_dir)
        return read_json(output_dir / "metadata.json")

    scan, plan = plan_splits(fasta, cfg)
    with staged_output_dir(output_dir) as tmp:
        counts = _write_windows(tmp, fasta, cfg, plan)
        empty = [s for s in SPLITS if counts[s]["windows"] == 0]
        if empty:
            raise UserError(f"split(s) {', '.join(empty)} got no windows: the input is too small to split")
        metadata = {
            "stage": "prepare_autoregressive_data",
            "signature": signature,
            "input_fasta": str(fasta),
            "input_sha256": signature["input_sha256"],
            "parameters": asdict(cfg) | {"window_stride": cfg.stride, "split_fractions": dict(zip(SPLITS, SPLIT_FRACTIONS))},
            "k": cfg.k,
            "window_size": cfg.window_size,
            "records_read": scan.records,
            "bases_read": scan.bases,
            "records_used": len(scan.kept),
            "records_skipped": dict(scan.skipped),
            "counts": counts,
            "labels": f"index of the window's last k-mer in the {4 ** cfg.k} k-mers over ACGT in lexicographic order",
            "split": plan.statistics | {"shares": _shares(counts)},
            "leakage": _leakage(counts, plan.train_index.length),
            "groups": (
                {s: sorted(g for g, gs in plan.split_of_group.items() if gs == s) for s in SPLITS}
                if plan.split_of_group is not None else None
            ),
            "transcript_groups": plan.group_of,
        }
        atomic_write_json(tmp / "metadata.json", metadata)
    return metadata


#: Text files per split; val and test also get novel.txt (see :meth:`quixer.window_sources.WindowSources.from_stage1`).
_SPLIT_FILES = ("sentences", "labels", "sources")
_HELD_OUT_FILES = _SPLIT_FILES + ("novel",)


def _write_windows(tmp: Path, fasta: Path, cfg: WindowConfig, plan: SplitPlan) -> dict:
    """Pass 3: the per-split text files; returns the counts (and context-in-train counts)."""
    counts = {s: {"windows": 0, "sequences": 0} | ({"context_in_train": 0} if s != "train" else {}) for s in SPLITS}
    handles = {}
    for split in SPLITS:
        (tmp / split).mkdir()
        names = _SPLIT_FILES if split == "train" else _HELD_OUT_FILES
        handles[split] = {n: open(tmp / split / f"{n}.txt", "w", encoding="ascii", buffering=1 << 20) for n in names}
    last_acc = dict.fromkeys(SPLITS)
    try:
        for w in iter_windows(fasta, cfg, plan):
            h, c = handles[w.split], counts[w.split]
            h["sentences"].write(" ".join(w.kmers) + "\n")
            h["labels"].write(f"{kmer_id(w.kmers[-1])}\n")
            h["sources"].write(f"{w.accession} {w.offset}\n")
            if w.context_seen is not None:
                h["novel"].write(np.where(w.context_seen, 48, 49).astype(np.uint8).tobytes().decode() + "\n")
                c["context_in_train"] += bool(w.context_seen[-1])
            c["windows"] += 1
            if last_acc[w.split] != w.accession:
                c["sequences"] += 1
                last_acc[w.split] = w.accession
    finally:
        for h in handles.values():
            for fh in h.values():
                fh.close()
    return counts


def _shares(counts: dict) -> dict[str, float]:
    total = sum(c["windows"] for c in counts.values())
    return {s: c["windows"] / total if total else 0.0 for s, c in counts.items()}


def _leakage(counts: dict, length: int) -> dict:
    """Share of val/test windows whose context's last ``length`` bases occur in a train transcript."""
    out: dict = {"context_bases": length}
    for split in ("val", "test"):
        n, leaked = counts[split]["windows"], counts[split]["context_in_train"]
        out[split] = {"windows": n, "context_in_train": leaked, "fraction": leaked / n if n else 0.0}
    return out


def add_window_args(parser: argparse.ArgumentParser) -> None:
    """The windowing flags, shared by stage 1 and the classical-benchmark tokens."""
    g = parser.add_argument_group("windowing")
    g.add_argument("--k", type=int, default=6, help="k-mer length (default: 6)")
    g.add_argument("--window_size", type=int, default=32, help="k-mers per window (default: 32)")
    g.add_argument("--window_stride", type=int, default=None,
                   help="bases between window starts (default: = window size; 1 = dense sliding windows)")
    g.add_argument("--min_length", type=int, default=0, help="skip sequences shorter than this (default: 0)")
    g.add_argument("--max_sequences", type=int, default=None, help="use at most this many sequences (default: all)")
    g.add_argument("--max_windows_per_sequence", type=int, default=None,
                   help="keep a seeded random subset of at most this many windows per sequence (default: all)")
    g.add_argument("--split_by", choices=SPLIT_METHODS + ("group",), default="homology",
                   help="homology: transcripts sharing sequence (isoforms, copies, paralogs) or a gene tag form "
                        "one group, no group in two splits (default); locus: group by the header's locus=/gene= "
                        "tag or gene symbol only ('group' is its old name); window: the original shuffled-window "
                        "split (leaks)")
    g.add_argument("--min_shared_kmers", type=int, default=HomologyConfig.min_shared_kmers,
                   help="homology: join two transcripts sharing at least this many informative 32-mers "
                        "(default: %(default)s)")
    g.add_argument("--max_kmer_transcripts", type=int, default=HomologyConfig.max_kmer_transcripts,
                   help="homology: ignore 32-mers found in more transcripts than this, as repeats "
                        "(default: %(default)s)")
    g.add_argument("--max_group_share", type=float, default=HomologyConfig.max_group_share,
                   help="homology: refuse a join that would put more than this share of the windows in one "
                        "group (default: %(default)s)")
    g.add_argument("--seed", type=int, default=42, help="seed for the split and window subsets (default: 42)")


def window_config_from_args(args: argparse.Namespace) -> WindowConfig:
    return WindowConfig(k=args.k, window_size=args.window_size, window_stride=args.window_stride,
                        min_length=args.min_length, max_sequences=args.max_sequences,
                        max_windows_per_sequence=args.max_windows_per_sequence, seed=args.seed,
                        split_by="locus" if args.split_by == "group" else args.split_by,
                        homology=HomologyConfig(min_shared_kmers=args.min_shared_kmers,
                                                max_kmer_transcripts=args.max_kmer_transcripts,
                                                max_group_share=args.max_group_share))


# --------------------------------------------------------------------------- readers
def load_metadata(data_dir: str | os.PathLike) -> dict:
    path = Path(data_dir) / "metadata.json"
    if not path.exists():
        raise UserError(f"{data_dir}: no metadata.json (not a prepare_autoregressive_data.py output directory)")
    return read_json(path)


def stage1_split_file(data_dir: str | os.PathLike, split: str, name: str) -> Path:
    """``data_dir/split/name`` of a stage-1 directory, or one clear error when it is missing."""
    path = Path(data_dir) / split / name
    if not path.exists():
        raise UserError(f"{path}: missing (run prepare_autoregressive_data.py first)")
    return path


def iter_split_windows(data_dir: str | os.PathLike, split: str) -> Iterator[list[str]]:
    """Stream the windows of one split as lists of k-mers."""
    with open(stage1_split_file(data_dir, split, "sentences.txt"), encoding="ascii") as fh:
        for line in fh:
            yield line.split()


def read_split_windows(data_dir: str | os.PathLike, split: str) -> list[list[str]]:
    return list(iter_split_windows(data_dir, split))


def split_kmer_ids(data_dir: str | os.PathLike, split: str, dtype=np.int16) -> np.ndarray:
    """[N, W] k-mer indices (see :func:`kmer_id`) of one split, read without holding the text."""
    meta = load_metadata(data_dir)
    k, w = int(meta["k"]), int(meta["window_size"])
    n = int(meta["counts"][split]["windows"])
    if 4**k > np.iinfo(dtype).max + 1:
        dtype = np.int32
    out = np.empty((n, w), dtype=dtype)
    table = {km: i for i, km in enumerate(all_kmers(k))}
    for row, kmers in enumerate(iter_split_windows(data_dir, split)):
        if row >= n or len(kmers) != w:
            raise UserError(f"{data_dir}/{split}/sentences.txt does not match metadata.json (line {row + 1})")
        out[row] = [table[km] for km in kmers]
    if n and row != n - 1:
        raise UserError(f"{data_dir}/{split}/sentences.txt has fewer windows than metadata.json says")
    return out
