"""Stage 1 (prepare_autoregressive_data.py) and the classical-benchmark tokens, on real RNA."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from tests.helpers import SAMPLE_FASTA, run_script
from quixer.fasta import accession_of, group_of, iter_fasta, normalise
from quixer.windows import SPLITS, WindowConfig, all_kmers, kmer_id, prepare_autoregressive_data, read_split_windows

CHRX_HEADER = "NM_001256186 locus=MSTRG.486 chromosome=X assembly=GRCh38"


def write_fasta(path: Path, records: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f">{h}\n{s}\n" for h, s in records))
    return path


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ------------------------------------------------------------------ headers and groups
def test_group_and_accession_from_real_header_styles():
    assert group_of(CHRX_HEADER) == "MSTRG.486"
    assert group_of("NM_000546.6 Homo sapiens tumor protein p53 (TP53), transcript variant 1, mRNA") == "TP53"
    assert group_of("NR_104216.1 Homo sapiens BRCA1 associated RING domain 1 (BARD1), transcript variant 8, non-coding RNA") == "BARD1"
    assert group_of("XM_1.1 gene=ABC1 something") == "ABC1"
    assert group_of("NM_999.1") == "NM_999.1"
    old = "gi|543583796|ref|NR_104216.1| Homo sapiens BRCA1 associated RING domain 1 (BARD1), transcript variant 8, non-coding RNA"
    assert accession_of(old) == "NR_104216.1" and group_of(old) == "BARD1"


def test_oldstyle_efetch_fixture_parses(tmp_path):
    from tests.helpers import NCBI_FIXTURES

    records = list(iter_fasta(NCBI_FIXTURES / "efetch_fasta_genes_oldstyle.fasta"))
    assert len(records) == 20
    assert all(set(normalise(r.sequence)) <= set("ACGTN") for r in records)


# ------------------------------------------------------------------ windows
def test_windows_are_exact_substrings_of_the_normalised_sequence(stage1_dir):
    sequences = {r.accession: normalise(r.sequence) for r in iter_fasta(SAMPLE_FASTA)}
    meta = json.loads((stage1_dir / "metadata.json").read_text())
    total = 0
    for split in SPLITS:
        sentences = read_lines(stage1_dir / split / "sentences.txt")
        sources = read_lines(stage1_dir / split / "sources.txt")
        labels = read_lines(stage1_dir / split / "labels.txt")
        assert len(sentences) == len(sources) == len(labels) == meta["counts"][split]["windows"] > 0
        for sentence, source, label in list(zip(sentences, sources, labels))[::97]:
            acc, offset = source.split()
            kmers = sentence.split()
            assert len(kmers) == 32 and all(len(km) == 6 for km in kmers)
            span = sequences[acc][int(offset): int(offset) + 37]
            assert [span[i:i + 6] for i in range(32)] == kmers
            assert int(label) == kmer_id(kmers[-1]) == all_kmers(6).index(kmers[-1])
        total += len(sentences)
    assert meta["input_sha256"] and meta["k"] == 6 and meta["window_size"] == 32
    shares = [meta["counts"][s]["windows"] / total for s in SPLITS]
    assert shares == pytest.approx([0.70, 0.15, 0.15], abs=0.03)


def test_no_group_in_two_splits(stage1_dir):
    meta = json.loads((stage1_dir / "metadata.json").read_text())
    headers = {r.accession: group_of(r.header) for r in iter_fasta(SAMPLE_FASTA)}
    loci, groups = {}, {}
    for split in SPLITS:
        accs = {line.split()[0] for line in read_lines(stage1_dir / split / "sources.txt")}
        loci[split] = {headers[a] for a in accs}  # gene tags are one of the joining signals
        groups[split] = {meta["transcript_groups"][a] for a in accs}
    for named in (loci, groups):
        assert not (named["train"] & named["val"]) and not (named["train"] & named["test"]) and not (named["val"] & named["test"])
    assert {s: set(meta["groups"][s]) for s in SPLITS} == groups


def test_runs_never_cross_non_acgt_and_rna_is_read_as_dna(tmp_path):
    # 40 clean bases, an N, 40 bases with U and lowercase: each run yields windows on its own.
    left = "ACGTTGCAAC" * 4
    right = ("ugcaacgu" * 5).upper().replace("U", "T").lower()
    fasta = write_fasta(tmp_path / "x.fa", [("A1 gene=G1", left + "N" + right.replace("t", "u")),
                                            ("A2 gene=G2", left), ("A3 gene=G3", left)])
    out = tmp_path / "out"
    prepare_autoregressive_data(fasta, out, WindowConfig(window_stride=1))
    rows = []
    for split in SPLITS:
        rows += list(zip(read_lines(out / split / "sources.txt"), read_lines(out / split / "sentences.txt")))
    a1 = sorted((int(s.split()[1]), w) for s, w in rows if s.startswith("A1 "))
    assert [o for o, _ in a1] == [0, 1, 2, 3, 41, 42, 43, 44]
    assert all("N" not in w for _, w in a1)
    assert a1[-1][1].split()[0] == right.upper()[3:9]


def test_stride_subsampling_and_determinism(tmp_path):
    cfg = WindowConfig(window_stride=5, max_windows_per_sequence=3, max_sequences=40, seed=7)
    a = prepare_autoregressive_data(SAMPLE_FASTA, tmp_path / "a", cfg)
    assert prepare_autoregressive_data(SAMPLE_FASTA, tmp_path / "b", cfg) == json.loads((tmp_path / "b" / "metadata.json").read_text())
    for split in SPLITS:
        assert (tmp_path / "a" / split / "sentences.txt").read_bytes() == (tmp_path / "b" / split / "sentences.txt").read_bytes()
        per_acc = {}
        for line in read_lines(tmp_path / "a" / split / "sources.txt"):
            acc, off = line.split()
            per_acc.setdefault(acc, []).append(int(off))
        assert all(len(v) <= 3 and all((o % 5) == 0 for o in v) for v in per_acc.values())
    assert a["records_used"] == 40
    c = prepare_autoregressive_data(SAMPLE_FASTA, tmp_path / "c", WindowConfig(window_stride=5, max_windows_per_sequence=3, max_sequences=40, seed=8))
    assert c["groups"] != a["groups"]


def test_split_by_window_warns_and_mixes_groups(tmp_path, caplog):
    meta = prepare_autoregressive_data(SAMPLE_FASTA, tmp_path / "w", WindowConfig(split_by="window", max_sequences=30))
    assert "leak" in caplog.text
    assert meta["groups"] is None
    train = {line.split()[0] for line in read_lines(tmp_path / "w" / "train" / "sources.txt")}
    test = {line.split()[0] for line in read_lines(tmp_path / "w" / "test" / "sources.txt")}
    assert train & test  # the same transcript on both sides: the leakage the default avoids


def test_rerun_is_a_no_op_and_other_flags_are_refused(tmp_path):
    out = tmp_path / "out"
    assert run_script("prepare_autoregressive_data.py", "--fasta", SAMPLE_FASTA, "--output_dir", out, "--max_sequences", 30).returncode == 0
    stamp = (out / "train" / "sentences.txt").stat().st_mtime_ns
    again = run_script("prepare_autoregressive_data.py", "--fasta", SAMPLE_FASTA, "--output_dir", out, "--max_sequences", 30)
    assert again.returncode == 0 and "up to date" in again.stderr
    assert (out / "train" / "sentences.txt").stat().st_mtime_ns == stamp
    other = run_script("prepare_autoregressive_data.py", "--fasta", SAMPLE_FASTA, "--output_dir", out, "--max_sequences", 31)
    assert other.returncode == 2 and other.stderr.strip().splitlines() == [other.stderr.strip()]
    assert "different run" in other.stderr and "Traceback" not in other.stderr
    assert (out / "train" / "sentences.txt").stat().st_mtime_ns == stamp
    forced = run_script("prepare_autoregressive_data.py", "--fasta", SAMPLE_FASTA, "--output_dir", out, "--max_sequences", 31, "--force")
    assert forced.returncode == 0


# ------------------------------------------------------------------ bad input: one line, nothing written
def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    short = "ACGT" * 8  # 32 bases < one window of 37
    protein = "MEEPQSDPSVEPPLSQETFSDLWKLLPENNVLSPLPSQAMDDLMLSPDDIEQWFTEDPGP"
    return {
        "missing": (tmp / "nope.fa", "not found"),
        "empty": (write_fasta(tmp / "empty.fa", []), "empty"),
        "directory": (tmp, "directory"),
        "binary": (_write_bytes(tmp / "bin.fa", bytes(range(256)) * 4), "binary"),
        "protein": (write_fasta(tmp / "prot.fa", [("sp|P04637|P53_HUMAN", protein)]), "non-nucleotide"),
        "fastq": (_write_bytes(tmp / "r.fq", b"@r1\nACGTACGT\n+\nIIIIIIII\n"), "FASTQ"),
        "no_header": (_write_bytes(tmp / "plain.txt", b"ACGTACGTACGT\nACGT\n"), "no FASTA header"),
        "no_kmer": (write_fasta(tmp / "nk.fa", [("A1", "ACGNNACGNRYAC"), ("A2", "NNNNN")]), "no record has a valid 6-mer"),
        "too_short": (write_fasta(tmp / "short.fa", [("A1", short), ("A2", short)]), "long enough for one window"),
        "gzip_garbage": (_write_bytes(tmp / "bad.fa.gz", b"\x1f\x8b" + b"garbage" * 10), "cannot read"),
    }


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", ["missing", "empty", "directory", "binary", "protein", "fastq", "no_header",
                                  "no_kmer", "too_short", "gzip_garbage"])
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, case):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    path, expected = _bad_inputs(inputs)[case]
    out = tmp_path / "out"
    res = run_script("prepare_autoregressive_data.py", "--fasta", path, "--output_dir", out)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], res.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_output_dir_with_foreign_files_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for extra in ((), ("--force",)):
        res = run_script("prepare_autoregressive_data.py", "--fasta", SAMPLE_FASTA, "--output_dir", out, *extra)
        assert res.returncode == 2 and "not an output of this pipeline (notes.txt)" in res.stderr
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_force_never_deletes_a_training_run_or_another_stage(tmp_path):
    run = tmp_path / "runs" / "lstm"
    run.mkdir(parents=True)
    files = {"config.json": "{}", "best.pt": "weights", "last.pt": "state", "metrics.jsonl": ""}
    for name, text in files.items():
        (run / name).write_text(text)
    res = run_script("prepare_autoregressive_data.py", "--fasta", SAMPLE_FASTA, "--output_dir", run, "--force")
    assert res.returncode == 2 and "holds a training run (config.json, best.pt, last.pt, metrics.jsonl)" in res.stderr
    assert {p.name: p.read_text() for p in run.iterdir()} == files
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "metadata.json").write_text(json.dumps({"stage": "quantize_lambeq_embeddings", "signature": {}}))
    res = run_script("prepare_autoregressive_data.py", "--fasta", SAMPLE_FASTA, "--output_dir", tokens, "--force")
    assert res.returncode == 2 and "holds the output of quantize_lambeq_embeddings.py" in res.stderr
    assert [p.name for p in tokens.iterdir()] == ["metadata.json"]


def test_gzip_and_plain_inputs_agree(tmp_path):
    plain = tmp_path / "sample.fa"
    plain.write_bytes(gzip.decompress(SAMPLE_FASTA.read_bytes()))
    cfg = WindowConfig(max_sequences=25)
    prepare_autoregressive_data(plain, tmp_path / "p", cfg)
    prepare_autoregressive_data(SAMPLE_FASTA, tmp_path / "g", cfg)
    assert read_split_windows(tmp_path / "p", "val") == read_split_windows(tmp_path / "g", "val")


# ------------------------------------------------------------------ classical-benchmark tokens
def test_classical_tokens_match_stage1_windows(tmp_path, stage1_dir):
    out = tmp_path / "cb"
    import subprocess

    res = subprocess.run(["bash", "run_classical_prep.sh", str(SAMPLE_FASTA), str(out)], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    vocab = all_kmers(6)
    for split in SPLITS:
        blob = torch.load(out / f"{split}.pt")
        seqs = blob["sequences"]
        assert seqs.dtype == torch.int64 and seqs.shape[1] == 32
        assert torch.equal(blob["labels"], seqs[:, -1]) and blob["vocab"] == vocab
        windows = read_split_windows(stage1_dir, split)
        assert seqs.shape[0] == len(windows)
        for row in range(0, len(windows), 53):
            assert [vocab[i] for i in seqs[row].tolist()] == windows[row]
    from_dir = tmp_path / "cb2"
    assert run_script("prepare_classical_benchmarks.py", "--data_dir", stage1_dir, "--output_dir", from_dir).returncode == 0
    a, b = torch.load(from_dir / "test.pt"), torch.load(out / "test.pt")
    assert torch.equal(a["sequences"], b["sequences"])
    assert torch.equal(a["sources"]["offsets"], b["sources"]["offsets"]) and torch.equal(a["sources"]["novel"], b["sources"]["novel"])
    assert a["sources"]["accessions"] == b["sources"]["accessions"] and a["sources"]["novel"].shape == a["sequences"].shape


def test_classical_prep_usage_error():
    import subprocess

    res = subprocess.run(["bash", "run_classical_prep.sh"], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert res.returncode == 2 and "usage" in res.stderr
