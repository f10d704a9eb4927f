"""NCBI E-utilities client and the resumable, crash-safe RNA downloader (stage 0).

Why a client of our own: Biopython's ``Entrez.esearch``/``efetch`` hard-code NCBI's host, so
they cannot talk to a mirror or to the tests' local server. We speak HTTP with ``urllib`` and
still parse every reply with Biopython (``Bio.Entrez.read`` ships the esearch and TSeq DTDs),
after a stdlib structural check that never fetches a DTD from the network.

Protocol. One esearch with ``usehistory=y&idtype=acc`` stores the result set on NCBI's history
server and lists its accession.versions (paged past 10,000). efetch then reads the stored set
in windows (``WebEnv`` + ``query_key`` + ``retstart``/``retmax``) as TSeq XML
(``rettype=fasta&retmode=xml``): unlike plain FASTA, a reply cut short fails to parse, and
every record declares its length. A window is written only if it parses, every record's
sequence has its declared length, and it holds exactly the accessions the listing promised.

Good citizen. At most 3 requests/s (10 with an API key) through one limiter that also paces
retries; ``tool`` and ``email`` on every request. Retries with exponential backoff and jitter
on HTTP 429 (honouring Retry-After) and 5xx, timeouts, dropped connections, and replies that
are cut short, malformed, or an NCBI ``<ERROR>`` document; after the budget, one UserError.

Crash safety. The FASTA only grows by whole verified windows: one append, flush and fsync,
then the manifest (``<output>.manifest.json``) is replaced atomically with the committed byte
length, sha256 and accessions. On start, bytes past the committed length (a kill mid-append)
are cut off, and the committed prefix must match the manifest's sha256. Records are keyed by
accession without version, so a record is never written twice, even if NCBI lists it in two
windows or under a new version after an update.
"""
from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import http.client
import io
import json
import logging
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .common import UserError, atomic_write_json

try:  # POSIX only; elsewhere two concurrent downloads into one file are not prevented
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

log = logging.getLogger("quixer.ncbi")

NCBI_EUTILS_URL = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/"
DEFAULT_QUERY = '"Homo sapiens"[Organism] AND refseq[filter] AND biomol_mrna[PROP]'
DEFAULT_DB = "nuccore"
DEFAULT_OUTPUT = "GRCh38_genomic_dataset/rna_sequences.fasta"
DEFAULT_MAX_SEQUENCES = 10_000
DEFAULT_BATCH_SIZE = 200
TOOL_NAME = "quixer_download_rna_sequences"
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = "quixer-ncbi-download/1"
ESEARCH_PAGE_MAX = 10_000  # esearch lists at most this many ids per call
EFETCH_RETMAX_MAX = 10_000  # efetch returns at most this many records per call
FASTA_LINE_WIDTH = 70
RATE_WITHOUT_KEY = 3.0  # requests per second NCBI allows without / with an API key
RATE_WITH_KEY = 10.0


# --------------------------------------------------------------------------------------------
# HTTP client
# --------------------------------------------------------------------------------------------


class ReplyError(Exception):
    """A reply arrived but cannot be trusted (cut short, malformed, an ERROR document, ...)."""


class _Transient(Exception):
    """A failed request worth retrying; ``retry_after`` is the server's Retry-After, if any."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RateLimiter:
    """Starts calls at least ``1/rate`` seconds apart, plus a 10 % margin, across threads.

    NCBI counts requests as they arrive: a delay on the way (a busy machine, the network) can
    bring two requests sent exactly ``1/rate`` apart closer together there; the margin absorbs
    such delays of up to about 30 ms at 3 requests/s."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.interval = 1.10 / rate
        self._clock, self._sleep = clock, sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:  # held while sleeping: callers queue up in order
            delay = self._next - self._clock()
            if delay > 0:
                self._sleep(delay)
            self._next = self._clock() + self.interval


@dataclass(frozen=True)
class SearchPage:
    """One esearch reply: the total count, history handles, and accessions listed from retstart."""

    count: int
    retstart: int
    ids: list[str]
    webenv: str | None
    query_key: str | None
    notes: str  # NCBI's ErrorList / WarningList, for the zero-hit message


@dataclass(frozen=True)
class TSeqRecord:
    accver: str
    defline: str
    sequence: str


def is_ncbi_host(url: str) -> bool:
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return host == "nlm.nih.gov" or host.endswith(".nlm.nih.gov")


class EutilsClient:
    """esearch / efetch against an E-utilities base URL, rate-limited and retried.

    ``backoff_base``/``backoff_cap`` (seconds) shape the exponential backoff: retry ``n``
    waits a random time in ``[d/2, d]`` with ``d = min(cap, base * 2**(n-1))``, or the
    server's Retry-After (up to ``max_retry_after``) if longer. ``requests_per_second``
    defaults to NCBI's limit (3, or 10 with an API key) and may exceed it only off NCBI.
    """

    def __init__(self, base_url: str = NCBI_EUTILS_URL, *, email: str | None = None,
                 api_key: str | None = None, tool: str = TOOL_NAME, timeout: float = 60.0,
                 max_retries: int = 6, backoff_base: float = 1.0, backoff_cap: float = 60.0,
                 max_retry_after: float = 300.0, requests_per_second: float | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UserError(f"--eutils_url {base_url!r} is not an http(s) URL")
        if timeout <= 0 or max_retries < 0 or backoff_base < 0 or backoff_cap < 0:
            raise UserError("--timeout must be > 0, and --max_retries and the backoff times >= 0")
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.host = parts.netloc.rsplit("@", 1)[-1]
        self.email, self.api_key, self.tool = email or None, api_key or None, tool
        self.timeout, self.max_retries = float(timeout), int(max_retries)
        self.backoff_base, self.backoff_cap = float(backoff_base), float(backoff_cap)
        self.max_retry_after = float(max_retry_after)
        allowed = RATE_WITH_KEY if self.api_key else RATE_WITHOUT_KEY
        rate = allowed if requests_per_second is None else float(requests_per_second)
        if rate > allowed and is_ncbi_host(self.base_url):
            raise UserError(f"NCBI allows at most {allowed:g} requests/s "
                            f"({'with' if self.api_key else 'without'} an API key)")
        self.limiter = RateLimiter(rate, sleep=sleep)
        self._sleep = sleep
        self._random = random.Random()
        # a local server (a test, a mirror on this machine) is reached without the env's proxy
        local = parts.hostname in ("127.0.0.1", "localhost", "::1")
        self._opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if local else []))

    # ---- public calls -----------------------------------------------------------------------

    def esearch(self, db: str, term: str, *, retstart: int = 0, retmax: int = ESEARCH_PAGE_MAX,
                usehistory: bool = True) -> SearchPage:
        """List accession.versions matching ``term`` (and store the set on the history server)."""
        params = {"db": db, "term": term, "retstart": retstart, "retmax": retmax, "idtype": "acc"}
        if usehistory:
            params["usehistory"] = "y"
        what = f"esearch (db={db}, retstart={retstart})"
        return self._call("esearch", params, lambda body: parse_esearch(body, retstart, retmax, usehistory), what)

    def efetch_tseq(self, db: str, webenv: str, query_key: str, retstart: int,
                    accessions: Sequence[str]) -> list[TSeqRecord]:
        """Fetch ``len(accessions)`` records of the stored set from ``retstart`` as TSeq XML;
        the reply must hold exactly ``accessions``, each record whole."""
        params = {"db": db, "WebEnv": webenv, "query_key": query_key, "retstart": retstart,
                  "retmax": len(accessions), "rettype": "fasta", "retmode": "xml"}
        what = f"efetch (records {retstart + 1}-{retstart + len(accessions)})"
        return self._call("efetch", params, lambda body: parse_tseq(body, accessions), what)

    # ---- plumbing ---------------------------------------------------------------------------

    def url(self, endpoint: str, params: dict) -> str:
        full = dict(params)
        full["tool"] = self.tool
        if self.email:
            full["email"] = self.email
        if self.api_key:
            full["api_key"] = self.api_key
        return f"{self.base_url}{endpoint}.fcgi?{urllib.parse.urlencode(full)}"

    def _call(self, endpoint: str, params: dict, parse: Callable[[bytes], object], what: str):
        attempts = self.max_retries + 1
        url = self.url(endpoint, params)
        problem = "no attempt made"
        for attempt in range(1, attempts + 1):
            self.limiter.wait()
            log.debug("GET %s", _redact(url))
            retry_after = None
            try:
                return parse(self._get(url, endpoint))
            except _Transient as exc:
                problem, retry_after = str(exc), exc.retry_after
            except ReplyError as exc:
                problem = str(exc)
            if attempt == attempts:
                break
            delay = self.backoff_delay(attempt, retry_after)
            log.warning("%s: %s; retry %d/%d in %.1f s", what, problem, attempt, self.max_retries, delay)
            self._sleep(delay)
        raise UserError(f"{what} at {self.host} failed {attempts} time(s), last: {problem} "
                        f"(rerun later to resume; raise --max_retries to wait longer)")

    def backoff_delay(self, attempt: int, retry_after: float | None = None) -> float:
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        delay = self._random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay

    def _get(self, url: str, endpoint: str) -> bytes:
        request = urllib.request.Request(url, headers={"User-Agent": f"{self.tool} (Python urllib)"})
        try:
            with self._opener.open(request, timeout=self.timeout) as reply:
                return reply.read()
        except urllib.error.HTTPError as exc:
            detail = _http_error_detail(exc)
            if exc.code == 429 or 500 <= exc.code <= 599:
                raise _Transient(f"HTTP {exc.code} {exc.reason}{detail}",
                                 _parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None)) from None
            raise UserError(f"{endpoint} at {self.host}: HTTP {exc.code} {exc.reason}{detail}") from None
        except urllib.error.URLError as exc:
            raise _Transient(f"cannot reach {self.host}: {_one_line(exc.reason)}") from None
        except http.client.IncompleteRead as exc:
            raise _Transient(f"reply cut short: {len(exc.partial)} bytes arrived, "
                             f"{exc.expected} more were promised") from None
        except (TimeoutError, socket.timeout):
            raise _Transient(f"no reply within --timeout {self.timeout:g} s") from None
        except (http.client.HTTPException, OSError) as exc:
            raise _Transient(f"connection failed ({type(exc).__name__}: {_one_line(exc) or 'no reply'})") from None


def _http_error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        text = _one_line(re.sub(r"<[^>]*>", " ", exc.read()[:300].decode("utf-8", "replace")))  # HTML pages
    except (OSError, http.client.HTTPException):
        text = ""
    return f" ({text[:200]})" if text else ""


def _parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())


def _one_line(obj: object) -> str:
    return " ".join(str(obj).split())


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = "&".join(f"{k}={'***' if k == 'api_key' else urllib.parse.quote_plus(v)}"
                     for k, v in urllib.parse.parse_qsl(parts.query))
    return urllib.parse.urlunsplit(parts._replace(query=query))


# --------------------------------------------------------------------------------------------
# reply parsing (pure functions of the reply bytes)
# --------------------------------------------------------------------------------------------


def _checked_xml(body: bytes, root_tag: str) -> bytes:
    """Reject replies that are not a whole ``<root_tag>`` document, or that carry an ERROR.

    The stdlib parser ignores the DOCTYPE, so an error document of a kind Biopython has no
    DTD for (efetch's) is reported by its message instead of a DTD download.
    """
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise ReplyError(f"reply is not well-formed XML ({exc}; {len(body)} bytes), "
                         f"e.g. cut short or garbled") from None
    errors = [_one_line("".join(el.itertext())) for el in root.iter() if el.tag.upper() == "ERROR"]
    errors = [e for e in errors if e]
    if errors:
        raise ReplyError("NCBI replied with an error: " + "; ".join(errors)[:300])
    if root.tag != root_tag:
        raise ReplyError(f"expected a <{root_tag}> document, got <{root.tag}>")
    return body


def _bio_read(body: bytes):
    from Bio import Entrez

    try:
        # validate=False: a tag NCBI adds after Biopython's DTD copy must not fail every batch
        return Entrez.read(io.BytesIO(body), validate=False)
    except (ValueError, RuntimeError) as exc:  # CorruptedXMLError, ValidationError, ERROR, ...
        raise ReplyError(f"Biopython could not read the reply: {_one_line(exc)[:200]}") from None


def parse_esearch(body: bytes, retstart: int, retmax: int, usehistory: bool = True) -> SearchPage:
    """An esearch reply; it must list every id it promises (``min(retmax, count - retstart)``)."""
    rec = _bio_read(_checked_xml(body, "eSearchResult"))
    try:
        count = int(rec["Count"])
    except (KeyError, TypeError, ValueError):
        raise ReplyError("esearch reply has no valid <Count>") from None
    ids = [str(i).strip() for i in rec.get("IdList", [])]
    expected = max(0, min(retmax, count - retstart))
    if len(ids) != expected:
        raise ReplyError(f"esearch listed {len(ids)} ids where {expected} were due (count {count})")
    webenv, query_key = rec.get("WebEnv"), rec.get("QueryKey")
    if usehistory and count > 0 and not (webenv and query_key):
        raise ReplyError("esearch reply lacks WebEnv/QueryKey although usehistory=y")
    notes = []
    for section in ("ErrorList", "WarningList"):
        for key, values in (rec.get(section) or {}).items():
            for value in values or []:
                notes.append(f"{key}: {value}")
    return SearchPage(count, retstart, ids, str(webenv) if webenv else None,
                      str(query_key) if query_key else None, "; ".join(notes))


def parse_tseq(body: bytes, accessions: Sequence[str]) -> list[TSeqRecord]:
    """A TSeq XML efetch reply; every record whole, and exactly ``accessions``, no more, no less."""
    recs = _bio_read(_checked_xml(body, "TSeqSet"))
    out = []
    for i, rec in enumerate(recs, 1):
        accver = str(rec.get("TSeq_accver", "")).strip()
        if not accver:
            raise ReplyError(f"record {i} of the reply has no <TSeq_accver>")
        sequence = str(rec.get("TSeq_sequence", ""))
        declared = rec.get("TSeq_length")
        try:
            declared = int(declared)
        except (TypeError, ValueError):
            raise ReplyError(f"{accver}: missing or invalid <TSeq_length> {declared!r}") from None
        if len(sequence) != declared:
            raise ReplyError(f"{accver}: {len(sequence)} bases arrived but TSeq_length declares {declared}")
        if not (sequence.isascii() and sequence.isalpha()):
            raise ReplyError(f"{accver}: sequence is empty or holds characters other than letters")
        out.append(TSeqRecord(accver, _one_line(rec.get("TSeq_defline", "")), sequence))
    got, want = sorted(r.accver for r in out), sorted(accessions)
    if got != want:
        missing = sorted(set(want) - set(got))
        unexpected = sorted(set(got) - set(want))
        raise ReplyError(f"efetch's {len(got)} records are not the {len(want)} asked for "
                         f"(missing: {_few(missing)}; not asked for: {_few(unexpected)})")
    return out


def _few(items: Sequence[str], n: int = 3) -> str:
    if not items:
        return "none"
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


# --------------------------------------------------------------------------------------------
# the FASTA + manifest store
# --------------------------------------------------------------------------------------------


def manifest_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name + MANIFEST_SUFFIX)


def accession_key(accver: str) -> str:
    """Accession without version: NM_000546.6 and NM_000546.5 are one transcript."""
    return accver.rsplit(".", 1)[0] if "." in accver else accver


def format_fasta_record(rec: TSeqRecord, width: int = FASTA_LINE_WIDTH) -> bytes:
    """``>ACCESSION.VERSION DEFLINE`` as efetch's FASTA writes it, ``width`` bases per line."""
    header = f">{rec.accver} {rec.defline}" if rec.defline else f">{rec.accver}"
    lines = [header] + [rec.sequence[i:i + width] for i in range(0, len(rec.sequence), width)]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class FastaStore:
    """The output FASTA and its manifest: recovers the committed prefix, appends verified batches."""

    def __init__(self, output: Path, *, query: str, db: str, eutils_url: str):
        self.output = Path(output)
        self.manifest = manifest_path(self.output)
        self.query, self.db, self.eutils_url = query, db, eutils_url
        self.accessions: list[str] = []
        self.keys: set[str] = set()
        self.nbytes = 0
        self.created: str | None = None
        self.search_count: int | None = None
        self._sha = hashlib.sha256()
        self._started = False  # manifest and FASTA known to exist and agree

    def __len__(self) -> int:
        return len(self.accessions)

    def has(self, accver: str) -> bool:
        return accession_key(accver) in self.keys

    def recover(self) -> None:
        """Load what an earlier run committed; cut off what it left uncommitted."""
        for stale in self.output.parent.glob(f".{self.manifest.name}.*.tmp"):
            stale.unlink(missing_ok=True)  # an atomic write a kill interrupted
        manifest = self._read_manifest()
        size = self.output.stat().st_size if self.output.exists() else None
        if manifest is None:
            if size:
                raise UserError(f"{self.output} exists but has no manifest {self.manifest.name}, so it was not "
                                f"written by this downloader (or the manifest was deleted): move it away or "
                                f"choose another --output")
            return
        if manifest.get("query") != self.query or manifest.get("db") != self.db:
            raise UserError(f"{self.output} holds a download of --db {manifest.get('db')} --query "
                            f"{manifest.get('query')!r}; choose another --output for a different query")
        if size is None:
            log.warning("%s is missing; starting it over (its old manifest listed %d records)",
                        self.output, len(manifest.get("accessions", [])))
            return
        committed = manifest["fasta_bytes"]
        if size < committed:
            raise UserError(f"{self.output} has {size} bytes, fewer than the {committed} its manifest "
                            f"committed: it was changed outside this tool; delete it and "
                            f"{self.manifest.name} to start over")
        if size > committed:
            log.warning("%s: cutting off %d uncommitted bytes that an interrupted run left",
                        self.output, size - committed)
            with open(self.output, "r+b") as fh:
                fh.truncate(committed)
                fh.flush()
                os.fsync(fh.fileno())
        sha, accessions = hashlib.sha256(), []
        with open(self.output, "rb") as fh:
            for line in fh:
                sha.update(line)
                if line.startswith(b">"):
                    token = line[1:].split(None, 1)
                    accessions.append(token[0].decode("utf-8", "replace") if token else "")
        if sha.hexdigest() != manifest["sha256"] or accessions != manifest["accessions"]:
            raise UserError(f"{self.output} does not match its manifest {self.manifest.name} (sha256 or "
                            f"accessions differ): it was changed outside this tool; delete both to start over")
        self.accessions, self.nbytes, self._sha = accessions, committed, sha
        self.keys = {accession_key(a) for a in accessions}
        self.created = manifest.get("created")
        self.search_count = manifest.get("search_count")
        self._started = True

    def _read_manifest(self) -> dict | None:
        if not self.manifest.exists():
            return None
        try:
            data = json.loads(self.manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{self.manifest}: unreadable manifest ({_one_line(exc)}); "
                            f"delete it and {self.output.name} to start over") from None
        ok = (isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT
              and isinstance(data.get("fasta_bytes"), int) and isinstance(data.get("sha256"), str)
              and isinstance(data.get("accessions"), list))
        if not ok:
            raise UserError(f"{self.manifest} is not a manifest of this downloader; "
                            f"move it and {self.output.name} away or choose another --output")
        return data

    def select_new(self, records: Iterable[TSeqRecord], limit: int) -> list[TSeqRecord]:
        """Records whose accession is neither in the file nor earlier in ``records``, at most ``limit``."""
        seen, out = set(), []
        for rec in records:
            key = accession_key(rec.accver)
            if key in self.keys or key in seen:
                log.debug("skipping %s: already in %s", rec.accver, self.output.name)
                continue
            if len(out) >= limit:
                break
            seen.add(key)
            out.append(rec)
        return out

    def append(self, records: Sequence[TSeqRecord]) -> None:
        """One append + fsync of whole records, then the manifest that commits them."""
        if not records:
            return
        if not self._started:
            self._start()
        data = b"".join(format_fasta_record(r) for r in records)
        try:
            with open(self.output, "ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise UserError(f"cannot write {self.output}: {exc.strerror or exc} "
                            f"(nothing of this batch is committed; rerun to resume)") from None
        self._sha.update(data)
        self.nbytes += len(data)
        self.accessions.extend(r.accver for r in records)
        self.keys.update(accession_key(r.accver) for r in records)
        self._write_manifest()

    def _start(self) -> None:
        # The manifest exists before the FASTA's first byte: a FASTA without one is foreign.
        self.created = self.created or _utc_now()
        self._write_manifest()
        if not self.output.exists():
            self.output.touch()
            _fsync_dir(self.output.parent)
        self._started = True

    def _write_manifest(self) -> None:
        atomic_write_json(self.manifest, {
            "format": MANIFEST_FORMAT,
            "query": self.query,
            "db": self.db,
            "eutils_url": self.eutils_url,
            "created": self.created,
            "date": _utc_now(),
            "count": len(self.accessions),
            "search_count": self.search_count,
            "fasta": self.output.name,
            "fasta_bytes": self.nbytes,
            "sha256": self._sha.hexdigest(),
            "accessions": self.accessions,
        })


class OutputLock:
    """Exclusive lock (``.<output>.lock`` beside it) so two runs never append to one FASTA."""

    def __init__(self, output: Path):
        self.output = Path(output)
        self.path = self.output.with_name(f".{self.output.name}.lock")
        self._fd: int | None = None
        self._made_dir = False

    def __enter__(self) -> "OutputLock":
        parent = self.output.parent
        try:
            self._made_dir = not parent.exists()
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the output directory {parent}: {exc.strerror or exc}") from None
        if fcntl is None:  # pragma: no cover
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise UserError(f"another download is writing {self.output} (lock {self.path.name}); "
                                f"wait for it to finish or choose another --output") from None
            try:  # the holder before us may have unlinked the file we locked: lock the new one
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
        if self._made_dir:
            try:
                self.output.parent.rmdir()  # only if nothing was written there
            except OSError:
                pass


# --------------------------------------------------------------------------------------------
# the downloader
# --------------------------------------------------------------------------------------------


class _Listing:
    """The search's accessions in order, fetched page by page as the walk needs them."""

    def __init__(self, client: EutilsClient, db: str, query: str, first: SearchPage, page_size: int):
        self.client, self.db, self.query, self.page_size = client, db, query, page_size
        self.count = first.count
        self.ids = list(first.ids)

    def window(self, start: int, size: int) -> list[str]:
        end = min(start + size, self.count)
        while len(self.ids) < end:
            page = self.client.esearch(self.db, self.query, retstart=len(self.ids),
                                       retmax=self.page_size, usehistory=False)
            if page.count != self.count:
                log.warning("the query's count changed from %d to %d during the download; "
                            "efetch checks will catch any shift", self.count, page.count)
                self.count = page.count
                end = min(end, self.count)
            if not page.ids:
                break
            self.ids.extend(page.ids)
        return self.ids[start:end]


@dataclass(frozen=True)
class DownloadResult:
    output: Path
    manifest: Path
    records: int  # records in the FASTA now
    added: int  # records this run appended
    search_count: int | None  # records the query matched at NCBI (None: no search was needed)


def download_sequences(client: EutilsClient, output: str | os.PathLike, *, query: str = DEFAULT_QUERY,
                       db: str = DEFAULT_DB, max_sequences: int = DEFAULT_MAX_SEQUENCES,
                       batch_size: int = DEFAULT_BATCH_SIZE, esearch_page_size: int = ESEARCH_PAGE_MAX,
                       progress: bool | None = None) -> DownloadResult:
    """Grow ``output`` to ``max_sequences`` records of ``query``, in search order, resumably.

    Records already in the file are kept and never fetched again; a larger ``max_sequences``
    extends the file. ``progress=None`` shows a tqdm bar only on a terminal.
    """
    if not query.strip():
        raise UserError("--query is empty")
    if max_sequences < 1:
        raise UserError(f"--max_sequences must be >= 1, got {max_sequences}")
    if not 1 <= batch_size <= EFETCH_RETMAX_MAX:
        raise UserError(f"--batch_size must be in 1..{EFETCH_RETMAX_MAX}, got {batch_size}")
    if not 1 <= esearch_page_size <= ESEARCH_PAGE_MAX:
        raise ValueError(f"esearch_page_size must be in 1..{ESEARCH_PAGE_MAX}")
    output = Path(output)
    if output.is_dir():
        raise UserError(f"--output {output} is a directory; give a file name such as {output / 'rna_sequences.fasta'}")
    with OutputLock(output):
        store = FastaStore(output, query=query, db=db, eutils_url=client.base_url)
        store.recover()
        if len(store) >= max_sequences:
            log.info("%s already holds %d records (>= --max_sequences %d): nothing to fetch",
                     output, len(store), max_sequences)
            return DownloadResult(output, store.manifest, len(store), 0, None)
        first = client.esearch(db, query, retstart=0,
                               retmax=min(esearch_page_size, max_sequences + len(store) + batch_size))
        if first.count == 0:
            notes = f" (NCBI: {first.notes})" if first.notes else ""
            raise UserError(f"no records in --db {db} match --query {query!r}{notes}")
        log.info("NCBI lists %d records for the query; %s holds %d, fetching up to %d more",
                 first.count, output, len(store), max_sequences - len(store))
        store.search_count = first.count
        listing = _Listing(client, db, query, first, esearch_page_size)
        added = _walk(client, store, listing, first, db, max_sequences, batch_size, progress)
    if len(store) < max_sequences:
        log.info("the query matched only %d records: %s holds %d", listing.count, output, len(store))
    log.info("added %d records; %s holds %d (manifest %s)", added, output, len(store), store.manifest.name)
    return DownloadResult(output, store.manifest, len(store), added, listing.count)


def _walk(client: EutilsClient, store: FastaStore, listing: _Listing, first: SearchPage, db: str,
          max_sequences: int, batch_size: int, progress: bool | None) -> int:
    from tqdm import tqdm

    added, pos = 0, 0
    total = min(max_sequences, max(listing.count, len(store)))
    with tqdm(total=total, initial=len(store), unit="seq", desc="download", dynamic_ncols=True,
              disable=None if progress is None else not progress) as bar:
        while len(store) < max_sequences and pos < listing.count:
            window = listing.window(pos, min(batch_size, max_sequences - len(store)))
            if not window:
                break
            if any(not store.has(a) for a in window):
                records = client.efetch_tseq(db, first.webenv, first.query_key, pos, window)
                order = {acc: i for i, acc in reversed(list(enumerate(window)))}
                records.sort(key=lambda r: order[r.accver])  # search order, whatever efetch's
                new = store.select_new(records, max_sequences - len(store))
                store.append(new)
                added += len(new)
                bar.update(len(new))
            pos += len(window)
    return added
