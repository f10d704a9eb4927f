"""Streaming FASTA input: validation with one-line errors, normalisation, and split groups.

Records are read one at a time from plain or gzipped FASTA, so memory grows with the longest
transcript, not with the file. Anything that is not a nucleotide FASTA (binary data, FASTQ,
text without a header, a protein FASTA) is reported as a :class:`~quixer.common.UserError`
naming the file and, where it helps, the record.
"""
from __future__ import annotations

import gzip
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .common import UserError

#: IUPAC nucleotide codes (U included) plus the gap characters some tools write.
NUCLEOTIDE_CODES = frozenset("ACGTURYKMSWBDHVN-.*")
_GZIP_MAGIC = b"\x1f\x8b"
_RUN_SPLIT = re.compile(r"[^ACGT]+")
_TAG = re.compile(r"\b(?:locus|gene)=(\S+)")
# "... tumor protein p53 (TP53), transcript variant 1, mRNA" -> TP53
_TITLE_SYMBOL = re.compile(r"\(([A-Za-z0-9][A-Za-z0-9._:/-]*)\)(?:,[^()]*)?$")


@dataclass(frozen=True)
class FastaRecord:
    header: str  # the header line without '>'
    sequence: str  # as in the file (case kept, line breaks removed)

    @property
    def accession(self) -> str:
        return accession_of(self.header)


def accession_of(header: str) -> str:
    """The record id: first token, or the accession inside an old ``gi|..|ref|ACC|`` id."""
    token = header.split(None, 1)[0] if header.strip() else ""
    if token.startswith("gi|"):
        parts = [p for p in token.split("|") if p]
        if len(parts) >= 4:
            return parts[3]
    return token


def group_of(header: str) -> str:
    """Split group of a record: ``locus=``/``gene=`` tag, else the NCBI title's gene symbol,
    else the accession. Isoforms of one gene share a group, so they never straddle splits."""
    tag = _TAG.search(header)
    if tag:
        return tag.group(1)
    parts = header.split(None, 1)
    if len(parts) == 2:
        symbol = _TITLE_SYMBOL.search(parts[1].strip())
        if symbol:
            return symbol.group(1)
    return accession_of(header)


def normalise(sequence: str) -> str:
    """Uppercase and U -> T; every other character is kept (it ends an A/C/G/T run later)."""
    return sequence.upper().replace("U", "T")


def acgt_runs(normalised: str) -> Iterator[tuple[int, str]]:
    """(offset, run) for each maximal run of A/C/G/T; N or any other code ends a run."""
    pos = 0
    for match in _RUN_SPLIT.finditer(normalised):
        if match.start() > pos:
            yield pos, normalised[pos : match.start()]
        pos = match.end()
    if pos < len(normalised):
        yield pos, normalised[pos:]


def _open_checked(path: Path) -> io.TextIOBase:
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a FASTA file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: file is empty")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    raw = gzip.open(path, "rb") if magic == _GZIP_MAGIC else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline=None)


def iter_fasta(path: str | os.PathLike) -> Iterator[FastaRecord]:
    """Yield records one at a time; raise :class:`UserError` on anything not a nucleotide FASTA."""
    path = Path(path)
    header: str | None = None
    chunks: list[str] = []
    seen_any = False
    try:
        with _open_checked(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if "\x00" in line:
                    raise UserError(f"{path}: binary data (NUL byte at line {lineno}), not a FASTA file")
                line = line.strip()
                if not line:
                    continue
                if line.startswith(">"):
                    if header is not None:
                        yield _finish(path, header, chunks)
                    header, chunks, seen_any = line[1:].strip(), [], True
                    if not header:
                        raise UserError(f"{path}: empty FASTA header at line {lineno}")
                    continue
                if header is None:
                    if line.startswith("@"):
                        raise UserError(f"{path}: looks like FASTQ (line 1 starts with '@'); convert it to FASTA first")
                    raise UserError(f"{path}: no FASTA header ('>') before sequence data at line {lineno}")
                chunks.append(line)
    except UnicodeDecodeError:
        raise UserError(f"{path}: binary or non-UTF-8 data, not a FASTA file") from None
    except (EOFError, gzip.BadGzipFile, OSError) as exc:
        raise UserError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    if header is not None:
        yield _finish(path, header, chunks)
    if not seen_any:
        raise UserError(f"{path}: no FASTA records found")


def _finish(path: Path, header: str, chunks: list[str]) -> FastaRecord:
    sequence = "".join(chunks)
    bad = set(sequence.upper()) - NUCLEOTIDE_CODES
    if bad:
        shown = "".join(sorted(bad))[:10]
        raise UserError(
            f"{path}: record {accession_of(header)} has non-nucleotide letters {shown!r} "
            "(protein FASTA?); expected DNA/RNA"
        )
    return FastaRecord(header, sequence)
