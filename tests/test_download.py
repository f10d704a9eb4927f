"""Stage 0 (download_rna_sequences.py) against a local E-utilities server speaking real replies.

Every test checks the FASTA byte for byte against the real source records (formatted here
independently of the downloader), so a record lost, doubled, cut or reordered fails.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from Bio import SeqIO

import download_rna_sequences
from quixer.common import UserError
from quixer.fasta import accession_of, group_of, iter_fasta
from quixer.ncbi import (DEFAULT_QUERY, TOOL_NAME, EutilsClient, OutputLock, _parse_retry_after,
                         download_sequences, manifest_path)
from tests.helpers import REPO, run_script
from tests.ncbi_server import OLDSTYLE_FASTA, FakeEutils, load_source_records

SOURCE = load_source_records()  # 20 fixture mRNAs + 40 chrX transcripts, all real
EMAIL = "tester@example.org"
KEY = "k3y"  # with an API key the client may send 10 requests/s: keeps CLI tests short


def expected_fasta(records) -> str:
    return "".join(f">{r.accver} {r.defline}\n" + "\n".join(textwrap.wrap(r.sequence, 70)) + "\n"
                   for r in records)


def assert_committed(out: Path, records) -> dict:
    """The FASTA holds exactly ``records`` and its manifest describes it."""
    assert out.read_text() == expected_fasta(records)
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["accessions"] == [r.accver for r in records]
    assert manifest["count"] == len(records)
    assert manifest["fasta_bytes"] == out.stat().st_size
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    return manifest


def fast_client(srv: FakeEutils, **kw) -> EutilsClient:
    """A client for the local server: no NCBI pacing, millisecond backoff."""
    opts = dict(email=EMAIL, requests_per_second=500, backoff_base=0.001, backoff_cap=0.01,
                timeout=10, max_retries=3)
    opts.update(kw)
    return EutilsClient(srv.url, **opts)


def efetch_starts(srv: FakeEutils) -> list[int]:
    return [int(h.params["retstart"]) for h in srv.calls("efetch")]


def cli_args(srv: FakeEutils, out: Path, *extra) -> list[str]:
    return ["--eutils_url", srv.url, "--output", str(out), "--email", EMAIL, "--api_key", KEY, *map(str, extra)]


# ------------------------------------------------------------------ the happy path
def test_cli_downloads_every_record_once_and_whole(tmp_path, monkeypatch):
    out = tmp_path / "GRCh38_genomic_dataset" / "rna_sequences.fasta"
    monkeypatch.setenv("NCBI_EMAIL", EMAIL)
    with FakeEutils(SOURCE, api_key=KEY) as srv:
        code = download_rna_sequences.main(["--eutils_url", srv.url, "--output", str(out), "--api_key", KEY,
                                            "--max_sequences", "100", "--batch_size", "16"])
    assert code == 0
    manifest = assert_committed(out, SOURCE)
    assert manifest["query"] == DEFAULT_QUERY and manifest["db"] == "nuccore"
    assert manifest["eutils_url"] == srv.url and manifest["search_count"] == len(SOURCE)
    assert dt.datetime.fromisoformat(manifest["date"]).utcoffset() == dt.timedelta(0)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name, manifest_path(out).name]  # no lock left
    # NCBI's etiquette on every request, the history protocol, TSeq XML in 16-record windows
    assert all(h.params["tool"] == TOOL_NAME and h.params["email"] == EMAIL and h.params["api_key"] == KEY
               for h in srv.hits)
    (search,) = srv.calls("esearch")
    assert search.params["usehistory"] == "y" and search.params["term"] == DEFAULT_QUERY
    assert efetch_starts(srv) == [0, 16, 32, 48]
    assert {h.params["retmax"] for h in srv.calls("efetch")} == {"16", "12"}


def test_current_style_header_from_real_record(tmp_path):
    """The fixture's BARD1 variant 2 (old gi|..|ref| FASTA) comes out as efetch's FASTA writes it
    today, and stage 1's reader takes accession and gene group from it."""
    out = tmp_path / "rna.fasta"
    with FakeEutils(SOURCE[:10]) as srv:
        download_sequences(fast_client(srv), out, max_sequences=10, batch_size=4)
    header = ">NM_001282543.1 Homo sapiens BRCA1 associated RING domain 1 (BARD1), transcript variant 2, mRNA"
    assert header in out.read_text().splitlines()
    source = {r.id: str(r.seq) for r in SeqIO.parse(OLDSTYLE_FASTA, "fasta")}
    parsed = {r.id: r for r in SeqIO.parse(out, "fasta")}
    assert str(parsed["NM_001282543.1"].seq) == source["gi|543583786|ref|NM_001282543.1|"]
    assert max(len(line) for line in out.read_text().splitlines() if not line.startswith(">")) == 70
    rec = next(r for r in iter_fasta(out) if r.accession == "NM_001282543.1")
    assert accession_of(rec.header) == "NM_001282543.1" and group_of(rec.header) == "BARD1"


# ------------------------------------------------------------------ faults are retried
EFETCH_FAULTS = ["429", "500", "503", "timeout", "reset", "truncate", "short_body", "malformed", "not_xml",
                 "error_epost2", "error_esummary8", "bad_length", "missing_record", "wrong_record"]
ESEARCH_FAULTS = ["503", "reset", "truncate", "malformed", "error_epost3", "short_listing"]


@pytest.mark.parametrize("endpoint,fault", [("efetch", f) for f in EFETCH_FAULTS]
                         + [("esearch", f) for f in ESEARCH_FAULTS])
def test_fault_is_retried_and_nothing_bad_is_written(tmp_path, endpoint, fault):
    out = tmp_path / "rna.fasta"
    with FakeEutils(SOURCE, sleep_s=1.5) as srv:
        srv.faults[endpoint] = [None, fault] if endpoint == "efetch" else [fault]
        client = fast_client(srv, timeout=0.5 if fault == "timeout" else 10)
        result = download_sequences(client, out, max_sequences=24, batch_size=8)
    assert result.added == 24
    assert_committed(out, SOURCE[:24])
    hits = srv.calls(endpoint)
    faulted = next(i for i, h in enumerate(hits) if h.fault == fault)
    assert hits[faulted + 1].params == hits[faulted].params  # the same request, retried
    if endpoint == "efetch":
        assert efetch_starts(srv) == [0, 8, 8, 16]


def test_retry_after_is_honoured(tmp_path):
    with FakeEutils(SOURCE, retry_after="1") as srv:
        srv.faults["efetch"] = ["429"]
        download_sequences(fast_client(srv), tmp_path / "rna.fasta", max_sequences=8, batch_size=8)
    first, second = srv.calls("efetch")
    assert first.fault == "429" and second.t - first.t >= 0.95  # backoff alone would be ~1 ms
    assert 3 < _parse_retry_after("Wed, 21 Oct 2099 07:28:00 GMT") and _parse_retry_after("7") == 7.0


def test_rate_limit_spaces_requests_and_retries(tmp_path):
    """Without a key at most 3 requests/s (retries too); with one 10/s; never faster at NCBI."""
    with FakeEutils(SOURCE) as srv:
        srv.faults["esearch"] = ["503"]
        client = EutilsClient(srv.url, email=EMAIL, backoff_base=0.001, backoff_cap=0.01)
        for _ in range(3):
            client.esearch("nuccore", DEFAULT_QUERY, retmax=5)
        gaps = [b.t - a.t for a, b in zip(srv.hits, srv.hits[1:])]
        assert len(gaps) == 3 and min(gaps) >= 0.32, gaps
    with FakeEutils(SOURCE, api_key=KEY) as srv:
        client = EutilsClient(srv.url, email=EMAIL, api_key=KEY)
        for _ in range(4):
            client.esearch("nuccore", DEFAULT_QUERY, retmax=5)
        gaps = [b.t - a.t for a, b in zip(srv.hits, srv.hits[1:])]
        assert min(gaps) >= 0.095, gaps
    with pytest.raises(UserError, match="at most 3 requests/s"):
        EutilsClient(requests_per_second=20)


# ------------------------------------------------------------------ clear failures, nothing half-written
def test_zero_hits_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "new_dir" / "rna.fasta"
    with FakeEutils(SOURCE, api_key=KEY) as srv:
        srv.always["esearch"] = "zero_hits"  # NCBI's real reply to a query matching nothing
        proc = run_script("download_rna_sequences.py", *cli_args(srv, out), cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no records in --db nuccore match --query")
    assert "PhraseNotFound: abcXYZ" in lines[0]
    assert not out.parent.exists()


def test_retry_budget_exhausted_then_resumed(tmp_path):
    out = tmp_path / "rna.fasta"
    args = ["--max_sequences", 24, "--batch_size", 8, "--max_retries", 2, "--backoff_base", 0.01, "--backoff_cap", 0.02,
            "--verbose"]
    with FakeEutils(SOURCE, api_key=KEY) as srv:
        srv.faults["efetch"] = [None]
        srv.always["efetch"] = "503"
        proc = run_script("download_rna_sequences.py", *cli_args(srv, out, *args), cwd=tmp_path, timeout=60)
        assert proc.returncode == 2
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert errors == [proc.stderr.strip().splitlines()[-1]]
        assert "efetch (records 9-16)" in errors[0] and "failed 3 time(s)" in errors[0] and "HTTP 503" in errors[0]
        assert efetch_starts(srv) == [0, 8, 8, 8]
        assert "api_key=***" in proc.stderr and KEY not in proc.stderr  # --verbose logs URLs, never the key
        assert_committed(out, SOURCE[:8])  # the verified first batch, nothing of the second
        srv.always.clear()
        proc = run_script("download_rna_sequences.py", *cli_args(srv, out, *args), cwd=tmp_path, timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert_committed(out, SOURCE[:24])
    assert efetch_starts(srv)[4:] == [8, 16]


def test_failure_on_first_batch_leaves_no_files(tmp_path):
    out = tmp_path / "fresh" / "rna.fasta"
    with FakeEutils(SOURCE) as srv:
        srv.always["efetch"] = "error_esummary8"
        with pytest.raises(UserError, match="failed 4 time.*Neither query_key nor id specified"):
            download_sequences(fast_client(srv), out, max_sequences=8, batch_size=8)
    assert not out.parent.exists()


# ------------------------------------------------------------------ resume, kill -9, extend
def test_kill_9_mid_run_then_resume(tmp_path):
    out = tmp_path / "rna.fasta"
    with FakeEutils(SOURCE, api_key=KEY) as srv:
        srv.faults["efetch"] = [None, None, "block"]  # the third batch hangs until the client dies
        argv = [sys.executable, str(REPO / "download_rna_sequences.py"),
                *cli_args(srv, out, "--max_sequences", 40, "--batch_size", 8, "--timeout", 30)]
        proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert srv.blocked.wait(30), "the client never reached the third batch"
            assert_committed(out, SOURCE[:16])  # what is on disk while the client is mid-run
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        # What a kill inside the next append leaves: a whole record that was never committed and
        # a record cut mid-sequence; plus a manifest temp file from an interrupted atomic write.
        whole, cut = expected_fasta(SOURCE[16:17]), expected_fasta(SOURCE[17:18])
        with open(out, "a") as fh:
            fh.write(whole + cut[: len(cut) // 2])
        stale = tmp_path / f".{manifest_path(out).name}.x1y2.tmp"
        stale.write_text("{")
        srv.release.set()
        proc = run_script("download_rna_sequences.py", *cli_args(srv, out, "--max_sequences", 40, "--batch_size", 8),
                          cwd=tmp_path, timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert "cutting off" in proc.stderr
    assert_committed(out, SOURCE[:40])
    assert efetch_starts(srv) == [0, 8, 16, 16, 24, 32]
    assert not stale.exists()


def test_extend_with_larger_max_sequences(tmp_path):
    out = tmp_path / "rna.fasta"
    with FakeEutils(SOURCE) as srv:
        download_sequences(fast_client(srv), out, max_sequences=20, batch_size=8)
        first = out.read_bytes()
        assert_committed(out, SOURCE[:20])
        assert efetch_starts(srv) == [0, 8, 16]
        n = len(srv.calls("efetch"))
        result = download_sequences(fast_client(srv), out, max_sequences=45, batch_size=8)
        assert result.added == 25 and out.read_bytes().startswith(first)
        assert_committed(out, SOURCE[:45])
        # committed windows are not fetched again; the part-filled one is, and nothing doubles
        assert efetch_starts(srv)[n:] == [16, 24, 32, 40]
        hits = len(srv.hits)
        assert download_sequences(fast_client(srv), out, max_sequences=45).added == 0
        assert download_sequences(fast_client(srv), out, max_sequences=10).added == 0
        assert len(srv.hits) == hits  # a satisfied file asks NCBI nothing
    assert_committed(out, SOURCE[:45])


def test_accession_listed_twice_or_under_new_version_is_written_once(tmp_path):
    bumped = replace(SOURCE[7], accver=SOURCE[7].accver.replace(".1", ".2"))  # NM_001282543.2
    listing = SOURCE[:5] + [SOURCE[2]] + SOURCE[5:30] + [SOURCE[3], bumped] + SOURCE[30:40]
    out = tmp_path / "rna.fasta"
    with FakeEutils(listing) as srv:
        result = download_sequences(fast_client(srv), out, max_sequences=100, batch_size=8, esearch_page_size=25)
    assert result.search_count == len(listing) == 43
    assert_committed(out, SOURCE[:40])
    assert [int(h.params["retstart"]) for h in srv.calls("esearch")] == [0, 25]  # paged listing


# ------------------------------------------------------------------ refusals
def test_refuses_foreign_edited_or_other_query_files(tmp_path):
    foreign = tmp_path / "theirs.fasta"
    foreign.write_text(expected_fasta(SOURCE[:2]))
    out = tmp_path / "rna.fasta"
    with FakeEutils(SOURCE) as srv:
        with pytest.raises(UserError, match="has no manifest"):
            download_sequences(fast_client(srv), foreign, max_sequences=5)
        download_sequences(fast_client(srv), out, max_sequences=8, batch_size=8)
        hits = len(srv.hits)
        with pytest.raises(UserError, match="choose another --output for a different query"):
            download_sequences(fast_client(srv), out, query="BRCA1[Gene]", max_sequences=20)
        text = out.read_text()
        out.write_text(text.replace("ATG", "ATC", 1))
        with pytest.raises(UserError, match="does not match its manifest"):
            download_sequences(fast_client(srv), out, max_sequences=20)
        out.write_text(text[:100])
        with pytest.raises(UserError, match="fewer than"):
            download_sequences(fast_client(srv), out, max_sequences=20)
        with OutputLock(tmp_path / "locked.fasta"):
            with pytest.raises(UserError, match="another download is writing"):
                download_sequences(fast_client(srv), tmp_path / "locked.fasta", max_sequences=5)
        assert len(srv.hits) == hits  # refused before asking NCBI
    assert foreign.read_text() == expected_fasta(SOURCE[:2])


def test_help_and_bad_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        download_rna_sequences.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for needle in ("rna_sequences.fasta.manifest.json", "$NCBI_API_KEY", "$NCBI_EMAIL", "default: 10000",
                   "biomol_mrna[PROP]", "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/"):
        assert needle in text
    with pytest.raises(UserError, match="--batch_size"):
        download_rna_sequences.main(["--batch_size", "0", "--email", EMAIL, "--eutils_url", "http://127.0.0.1:9/"])
    with pytest.raises(UserError, match="not an e-mail"):
        download_rna_sequences.main(["--email", "nobody"])
    with pytest.raises(UserError, match="not an http"):
        download_rna_sequences.main(["--email", EMAIL, "--eutils_url", "ftp://example.org/"])
