#!/usr/bin/env python3
"""Stage 0: download RNA sequences from NCBI (E-utilities) into one FASTA file, resumably.

  python download_rna_sequences.py --email you@example.org                 # 10,000 human RefSeq mRNAs
  python download_rna_sequences.py --email you@example.org --max_sequences 500
  NCBI_API_KEY=... python download_rna_sequences.py --max_sequences 20000  # extend the file, 10 req/s
  python download_rna_sequences.py --query '"Homo sapiens"[Organism] AND refseq[filter] AND biomol_ncrna[PROP]' \\
      --output ncrna/rna_sequences.fasta

esearch (history server, accession listing) then efetch in batches of --batch_size as TSeq
XML; a batch is appended only when every record is whole (declared length == sequence
length) and it holds exactly the accessions asked for. Headers read
">ACCESSION.VERSION DEFLINE" as efetch's FASTA gives them, 70 bases per line.
"""
from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C from here on, imports included: one line, exit status 130
    from quixer.interrupts import exit_on_interrupt
    exit_on_interrupt()

import argparse
import logging
import os

from quixer.common import UserError, run_cli, setup_logging
from quixer.ncbi import (DEFAULT_BATCH_SIZE, DEFAULT_DB, DEFAULT_MAX_SEQUENCES, DEFAULT_OUTPUT, DEFAULT_QUERY,
                         MANIFEST_SUFFIX, NCBI_EUTILS_URL, RATE_WITH_KEY, RATE_WITHOUT_KEY, EutilsClient,
                         download_sequences)

log = logging.getLogger("download_rna_sequences")

EPILOG = f"""\
Output: the FASTA (--output) and its manifest <output>{MANIFEST_SUFFIX} beside it
(e.g. {DEFAULT_OUTPUT}{MANIFEST_SUFFIX}): query, db, eutils_url, date (UTC ISO),
count, accessions in file order, sha256 and committed byte length of the FASTA. It is
replaced atomically after every batch.

Resuming: rerun the same command after an interruption (even kill -9): bytes past the
manifest's committed length are cut off, records already present are never fetched or
written again (keyed by accession without version), and a larger --max_sequences extends
the file. A different --query on an existing --output is refused.

Being a good NCBI citizen: at most {RATE_WITHOUT_KEY:g} requests/s, {RATE_WITH_KEY:g} with an API key
(https://www.ncbi.nlm.nih.gov/account/settings/); tool and email go with every request.
Retries back off exponentially (with jitter, honouring Retry-After) on HTTP 429/5xx,
timeouts, dropped connections and cut-short, malformed or ERROR replies.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--query", default=DEFAULT_QUERY, help="Entrez search term (default: %(default)s)")
    p.add_argument("--db", default=DEFAULT_DB, help="Entrez database (default: %(default)s)")
    p.add_argument("--max_sequences", type=int, default=DEFAULT_MAX_SEQUENCES,
                   help="grow the FASTA to this many records (default: %(default)s)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="output FASTA (default: %(default)s)")
    p.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="records per efetch request (default: %(default)s)")
    p.add_argument("--email", default=None,
                   help="contact address NCBI asks every tool for (default: $NCBI_EMAIL)")
    p.add_argument("--api_key", default=None,
                   help="NCBI API key, raises the limit to 10 requests/s (default: $NCBI_API_KEY)")
    p.add_argument("--eutils_url", default=NCBI_EUTILS_URL,
                   help="E-utilities base URL, e.g. a mirror (default: %(default)s)")
    p.add_argument("--max_retries", type=int, default=6,
                   help="retries per request before giving up (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a reply (default: %(default)s)")
    p.add_argument("--backoff_base", type=float, default=1.0,
                   help="first retry waits up to this many seconds, doubling each time (default: %(default)s)")
    p.add_argument("--backoff_cap", type=float, default=60.0,
                   help="longest wait between retries, in seconds (default: %(default)s)")
    p.add_argument("--verbose", action="store_true", help="log every request (API key redacted)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    email = args.email or os.environ.get("NCBI_EMAIL") or None
    api_key = args.api_key or os.environ.get("NCBI_API_KEY") or None
    if email is not None and "@" not in email:
        raise UserError(f"--email {email!r} is not an e-mail address")
    if email is None:
        log.warning("no --email (or NCBI_EMAIL): NCBI asks every tool for a contact address")
    client = EutilsClient(args.eutils_url, email=email, api_key=api_key, timeout=args.timeout,
                          max_retries=args.max_retries, backoff_base=args.backoff_base,
                          backoff_cap=args.backoff_cap)
    download_sequences(client, args.output, query=args.query, db=args.db,
                       max_sequences=args.max_sequences, batch_size=args.batch_size)
    return 0


if __name__ == "__main__":
    run_cli(main)
