"""A local E-utilities server for the downloader's tests: real replies, injectable faults.

It serves esearch replies shaped from NCBI's real ``esearch2.xml`` (WebEnv, QueryKey, Count
and IdList templated), TSeq XML efetch replies built from real human RNA records (the 20 in
``efetch_fasta_genes_oldstyle.fasta`` and records of ``grch38_chrX_refseq_rna.fasta.gz``),
and the real ERROR / zero-hit documents as faults. Each request can be given a fault:

  429 (with ``retry_after``), 500, 503, timeout (sleeps ``sleep_s`` first), reset (TCP RST),
  truncate (XML cut in half, honest Content-Length), short_body (Content-Length promises more
  than is sent), malformed (mismatched tag), not_xml (an HTML page), error_<fixture> (a real
  ERROR document), bad_length (a record's sequence shorter than its TSeq_length),
  missing_record, wrong_record, short_listing (esearch lists fewer ids than due),
  zero_hits (the real esearch8 reply), block (wait for ``release`` then drop the connection).
"""
from __future__ import annotations

import gzip
import http.server
import os
import re
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from Bio import SeqIO

from tests.helpers import BENCHMARK_FASTA as CHRX_FASTA
from tests.helpers import NCBI_FIXTURES as FIXTURES

OLDSTYLE_FASTA = FIXTURES / "efetch_fasta_genes_oldstyle.fasta"

TSEQ_HEAD = ('<?xml version="1.0" encoding="UTF-8"  ?>\n'
             '<!DOCTYPE TSeqSet PUBLIC "-//NCBI//NCBI TSeq/EN" "https://www.ncbi.nlm.nih.gov/dtd/NCBI_TSeq.dtd">\n'
             '<TSeqSet>\n')


@dataclass(frozen=True)
class SourceRecord:
    """A real record the server hands out: what efetch would say about it."""

    accver: str
    defline: str
    sequence: str
    sid: str
    gi: str | None = None


def load_source_records(n_chrx: int = 40) -> list[SourceRecord]:
    """The 20 fixture mRNAs (old gi|..|ref|ACC| ids split as NCBI's TSeq does) + chrX records."""
    out = []
    for rec in SeqIO.parse(OLDSTYLE_FASTA, "fasta"):
        _, gi, kind, accver = rec.id.split("|")[:4]
        out.append(SourceRecord(accver, rec.description[len(rec.id):].strip(), str(rec.seq),
                                f"{kind}|{accver}|", gi))
    with gzip.open(CHRX_FASTA, "rt") as fh:
        taken = 0
        for rec in SeqIO.parse(fh, "fasta"):
            if "_dup" in rec.id:  # the file's own duplicates; tests add duplicates on purpose
                continue
            out.append(SourceRecord(rec.id, rec.description[len(rec.id):].strip(), str(rec.seq), f"ref|{rec.id}|"))
            taken += 1
            if taken == n_chrx:
                break
    return out


def tseq_xml(records: list[SourceRecord], *, bad_length_index: int | None = None) -> bytes:
    parts = [TSEQ_HEAD]
    for i, r in enumerate(records):
        seq = r.sequence[:-10] if i == bad_length_index else r.sequence
        gi = f"  <TSeq_gi>{r.gi}</TSeq_gi>\n" if r.gi else ""
        parts.append(
            "<TSeq>\n  <TSeq_seqtype value=\"nucleotide\"/>\n" + gi
            + f"  <TSeq_accver>{escape(r.accver)}</TSeq_accver>\n  <TSeq_sid>{escape(r.sid)}</TSeq_sid>\n"
            "  <TSeq_taxid>9606</TSeq_taxid>\n  <TSeq_orgname>Homo sapiens</TSeq_orgname>\n"
            f"  <TSeq_defline>{escape(r.defline)}</TSeq_defline>\n  <TSeq_length>{len(r.sequence)}</TSeq_length>\n"
            f"  <TSeq_sequence>{seq}</TSeq_sequence>\n</TSeq>\n")
    parts.append("</TSeqSet>\n")
    return "".join(parts).encode("utf-8")


def esearch_xml(count: int, retstart: int, retmax: int, ids: list[str], term: str,
                history: tuple[str, str] | None) -> bytes:
    """NCBI's real esearch2.xml with this search's numbers, ids and history handles."""
    text = (FIXTURES / "biopython_Entrez_esearch2.xml").read_text(encoding="utf-8")
    text = re.sub(r"<Count>\d+</Count>", f"<Count>{count}</Count>", text)
    text = re.sub(r"<RetMax>\d+</RetMax>", f"<RetMax>{retmax}</RetMax>", text)
    text = re.sub(r"<RetStart>\d+</RetStart>", f"<RetStart>{retstart}</RetStart>", text)
    if history:
        text = re.sub(r"<QueryKey>[^<]*</QueryKey>", f"<QueryKey>{history[1]}</QueryKey>", text)
        text = re.sub(r"<WebEnv>[^<]*</WebEnv>", f"<WebEnv>{history[0]}</WebEnv>", text)
    else:
        text = re.sub(r"<QueryKey>[^<]*</QueryKey><WebEnv>[^<]*</WebEnv>", "", text)
    id_list = "<IdList>\n" + "".join(f"<Id>{escape(i)}</Id>\n" for i in ids) + "</IdList>"
    text = re.sub(r"<IdList>.*?</IdList>", lambda _: id_list, text, flags=re.S)
    text = re.sub(r"<QueryTranslation>.*?</QueryTranslation>",
                  lambda _: f"<QueryTranslation>{escape(term)}</QueryTranslation>", text, flags=re.S)
    return text.encode("utf-8")


@dataclass
class Hit:
    t: float  # time.monotonic() when the request arrived
    endpoint: str
    params: dict
    fault: str | None


@dataclass
class FakeEutils:
    """``with FakeEutils(records) as srv:`` serves at ``srv.url`` on 127.0.0.1:<ephemeral>."""

    records: list[SourceRecord]
    api_key: str | None = None
    retry_after: str = "0"
    sleep_s: float = 2.0
    faults: dict = field(default_factory=lambda: {"esearch": [], "efetch": []})  # per request, in order
    always: dict = field(default_factory=dict)  # endpoint -> fault for every request
    hits: list = field(default_factory=list)
    webenv: str = "MCID_6927d6e7fee3e90f880ec190"
    query_key: str = "1"

    def __post_init__(self):
        self.blocked = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    # ---- lifecycle ----
    def __enter__(self) -> "FakeEutils":
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                srv._handle(self)

            def log_message(self, *args):
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/entrez/eutils/"
        return self

    def __exit__(self, *exc):
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    # ---- what the tests read ----
    def calls(self, endpoint: str) -> list[Hit]:
        return [h for h in self.hits if h.endpoint == endpoint]

    # ---- serving ----
    def _next_fault(self, endpoint: str) -> str | None:
        with self._lock:
            queue = self.faults.setdefault(endpoint, [])
            return queue.pop(0) if queue else self.always.get(endpoint)

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(h.path)
        endpoint = url.path.rsplit("/", 1)[-1].removesuffix(".fcgi")
        params = dict(urllib.parse.parse_qsl(url.query))
        fault = self._next_fault(endpoint)
        with self._lock:
            self.hits.append(Hit(time.monotonic(), endpoint, params, fault))
        problem = self._check(endpoint, params)
        if problem:
            return _send(h, 400, problem.encode(), "text/plain")
        if fault in ("429", "500", "503"):
            code = int(fault)
            body = (b'{"error":"API rate limit exceeded","count":"4","limit":"3"}' if code == 429
                    else b"<html><body><h1>Service unavailable</h1></body></html>")
            return _send(h, code, body, "text/html", {"Retry-After": self.retry_after} if code == 429 else {})
        if fault == "reset":
            return _reset(h)
        if fault == "block":
            self.blocked.set()
            self.release.wait(60)
            return _reset(h)
        if fault == "timeout":
            time.sleep(self.sleep_s)
        if fault and fault.startswith("error_"):
            return _send(h, 200, (FIXTURES / f"biopython_Entrez_{fault[6:]}.xml").read_bytes(), "text/xml")
        if fault == "not_xml":
            return _send(h, 200, b"<html><body>Temporarily unavailable</body></html>", "text/html")
        body = self._esearch(params, fault) if endpoint == "esearch" else self._efetch(params, fault)
        if fault == "truncate":
            body = body[: len(body) // 2]
        if fault == "malformed":
            body = body.replace(b"</Count>", b"</Cnt>", 1).replace(b"</TSeq_defline>", b"</TSeq_def>", 1)
        if fault == "short_body":
            return _send(h, 200, body[: len(body) // 2], "text/xml", content_length=len(body))
        _send(h, 200, body, "text/xml")

    def _check(self, endpoint: str, p: dict) -> str | None:
        if endpoint not in ("esearch", "efetch"):
            return f"unknown endpoint {endpoint}"
        if not p.get("tool") or p.get("db") != "nuccore":
            return "tool and db=nuccore required"
        if self.api_key and p.get("api_key") != self.api_key:
            return "API key invalid"
        if endpoint == "esearch" and p.get("idtype") != "acc":
            return "idtype=acc expected"
        if endpoint == "efetch" and (p.get("WebEnv") != self.webenv or p.get("query_key") != self.query_key
                                     or p.get("rettype") != "fasta" or p.get("retmode") != "xml"):
            return "efetch needs this WebEnv/query_key and rettype=fasta&retmode=xml"
        return None

    def _esearch(self, p: dict, fault: str | None) -> bytes:
        if fault == "zero_hits":
            return (FIXTURES / "biopython_Entrez_esearch8.xml").read_bytes()
        start, size = int(p.get("retstart", 0)), int(p.get("retmax", 20))
        ids = [r.accver for r in self.records[start:start + size]]
        if fault == "short_listing":
            ids = ids[:-1]
        history = (self.webenv, self.query_key) if p.get("usehistory") == "y" else None
        return esearch_xml(len(self.records), start, size, ids, p.get("term", ""), history)

    def _efetch(self, p: dict, fault: str | None) -> bytes:
        start, size = int(p["retstart"]), int(p["retmax"])
        batch = list(self.records[start:start + size])
        if fault == "missing_record":
            batch = batch[:-1]
        if fault == "wrong_record":
            batch[-1] = self.records[(start + size + 1) % len(self.records)]
        return tseq_xml(batch, bad_length_index=len(batch) // 2 if fault == "bad_length" else None)


def _send(h, code: int, body: bytes, ctype: str, headers: dict | None = None,
          content_length: int | None = None) -> None:
    try:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)
        h.wfile.flush()
    except OSError:  # the client gave up (a timeout fault)
        pass
    h.close_connection = True


def _reset(h) -> None:
    """Drop the connection with a TCP RST, as an overloaded front end does."""
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    os.close(h.connection.detach())  # closing with linger 0 sends RST instead of FIN
    h.close_connection = True
