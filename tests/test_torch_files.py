"""An unreadable .pt input is one ``error:`` line naming the file and the script that writes it.

For every torch file a stage reads (stage-2 output read by stage 3, stage-3 and classical
tokens read by the trainers, checkpoints read on resume and at the end, the cluster centres read
by the centroid init), the real script is run on a copy of real (small) data with the file
truncated, emptied, replaced by a directory or by a pickle holding more than tensors. Nothing of
torch's own multi-line explanation may leak (its ``weights_only=False`` advice is unsafe for
files from elsewhere), and nothing may be written.
"""
from __future__ import annotations

import argparse
import pickle
import re
import shutil
from itertools import islice
from pathlib import Path

import pytest
import torch

from quixer.fasta import iter_fasta
from tests.helpers import SAMPLE_FASTA, run_script


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def foreign_pickle(path: Path) -> None:
    torch.save({"sequences": torch.zeros(2, 2), "args": argparse.Namespace(lr=1.0)}, path)


def plain_pickle(path: Path) -> None:
    """A pickle that is no torch file (torch warns about its protocol before failing)."""
    with open(path, "wb") as fh:
        pickle.dump({"embeddings": [[1.0]]}, fh, protocol=4)


DAMAGE = {"truncated": truncate, "empty": empty, "directory": directory, "foreign": foreign_pickle,
          "pickle": plain_pickle}
CORRUPT = "truncated, corrupt or not a torch file"
WHY = {"truncated": CORRUPT, "empty": CORRUPT, "pickle": CORRUPT, "directory": "not a file",
       "foreign": "holds Python objects besides tensors"}


def assert_one_line(proc, path: Path, writer: str, why: str) -> None:
    """Exit 2 and, besides the stage's own INFO progress lines, exactly one line: the error."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if not re.match(r"\d\d:\d\d:\d\d INFO ", line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert str(path) in lines[0] and writer in lines[0] and why in lines[0], lines[0]
    assert "weights_only" not in proc.stderr


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> dict[str, Path]:
    """Stages 1-3, the classical tokens and two finished two-epoch runs, on 40 real transcripts."""
    from quixer.encoding import RunOptions, encode_windows
    from quixer.kmer_tokens import prepare_classical_benchmarks
    from quixer.quantize import QuantizeConfig, quantize_embeddings
    from quixer.windows import WindowConfig, prepare_autoregressive_data

    root = tmp_path_factory.mktemp("torch_files")
    fasta = root / "rna.fa"
    fasta.write_text("".join(f">{r.header}\n{r.sequence}\n" for r in islice(iter_fasta(SAMPLE_FASTA), 40)))
    d = {name: root / name for name in ("windows", "embeddings", "tokens", "kmers", "quixer", "lstm")}
    prepare_autoregressive_data(fasta, d["windows"], WindowConfig(window_size=8, window_stride=24))
    encode_windows(d["windows"], d["embeddings"], {"embedding_dim": 16}, RunOptions(device="cpu"))
    quantize_embeddings(d["embeddings"], d["tokens"], QuantizeConfig(n_clusters=16, n_init=1))
    prepare_classical_benchmarks(d["kmers"], data_dir=d["windows"])
    common = ["--epochs", 2, "--max_train_batches", 2, "--device", "cpu", "--batch_size", 16]
    quixer = run_script("train_quixer_hybrid.py", "--data_dir", d["tokens"], "--output_dir", d["quixer"], *common,
                        "--qubits", 2, "--degree", 2, "--ansatz_layers", 1, "--embedding_dim", 8, env={"OMP_NUM_THREADS": "1"})
    assert quixer.returncode == 0, quixer.stderr[-3000:]
    lstm = run_script("train_classical_baselines.py", "--model", "lstm", "--data_dir", d["tokens"], "--output_dir",
                      d["lstm"], *common, "--embedding_dim", 8, "--hidden_dim", 8, env={"OMP_NUM_THREADS": "1"})
    assert lstm.returncode == 0, lstm.stderr[-3000:]
    return d


def damaged_copy(src: Path, dst: Path, name: str, damage: str) -> Path:
    shutil.copytree(src, dst)
    DAMAGE[damage](dst / name)
    return dst / name


SHA_MISMATCH = "does not match the sha256 recorded"


@pytest.mark.parametrize("name, damage, why", [
    ("train.pt", "truncated", SHA_MISMATCH),  # stage 2 records its files' hashes: checked first
    ("kmer_embeddings.pt", "foreign", SHA_MISMATCH),
    ("val.pt", "directory", WHY["directory"]),
])
def test_stage2_output_read_by_stage3(stages, tmp_path, name, damage, why):
    bad = damaged_copy(stages["embeddings"], tmp_path / "emb", name, damage)
    proc = run_script("quantize_lambeq_embeddings.py", "--embeddings_dir", tmp_path / "emb", "--output_dir", tmp_path / "q")
    assert_one_line(proc, bad, "lambeq_encoder.py", why)
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("damage", ["foreign", "pickle"])
def test_original_full_tensor_stage2_format_read_by_stage3(tmp_path, damage):
    """The original plan's stage-2 files ({split}.pt with embeddings [N, W, D], no metadata)."""
    emb = tmp_path / "emb"
    emb.mkdir()
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val", "test"):
        torch.save({"embeddings": torch.rand(6, 4, 8, generator=gen)}, emb / f"{split}.pt")
    DAMAGE[damage](emb / "test.pt")
    proc = run_script("quantize_lambeq_embeddings.py", "--embeddings_dir", emb, "--output_dir", tmp_path / "q",
                      "--n_clusters", 4)
    assert_one_line(proc, emb / "test.pt", "lambeq_encoder.py", WHY[damage])
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("trainer, source, writer", [
    (["train_quixer_hybrid.py"], "tokens", "quantize_lambeq_embeddings.py"),
    (["train_classical_baselines.py", "--model", "lstm"], "kmers", "prepare_classical_benchmarks.py"),
])
def test_tokens_read_by_trainers(stages, tmp_path, trainer, source, writer):
    bad = damaged_copy(stages[source], tmp_path / "tok", "val.pt", "truncated")
    proc = run_script(*trainer, "--data_dir", tmp_path / "tok", "--output_dir", tmp_path / "run")
    assert_one_line(proc, bad, writer, WHY["truncated"])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", ["truncated"])
def test_cluster_centres_read_by_the_centroid_init(stages, tmp_path, damage):
    bad = damaged_copy(stages["tokens"], tmp_path / "tok", "cluster_centers.pt", damage)
    proc = run_script("train_quixer_hybrid.py", "--data_dir", tmp_path / "tok", "--output_dir", tmp_path / "run",
                      "--init_strategy", "centroid", "--qubits", 2, "--embedding_dim", 16)
    assert_one_line(proc, bad, "quantize_lambeq_embeddings.py", WHY[damage])
    assert not (tmp_path / "run").exists()


# the flags the two runs of the fixture were made with, to resume them
RUN_FLAGS = {
    "quixer": ["train_quixer_hybrid.py", "--qubits", 2, "--degree", 2, "--ansatz_layers", 1, "--embedding_dim", 8],
    "lstm": ["train_classical_baselines.py", "--model", "lstm", "--embedding_dim", 8, "--hidden_dim", 8],
}


@pytest.mark.parametrize("run, writer, name", [("quixer", "train_quixer_hybrid.py", "last.pt"),
                                             ("lstm", "train_classical_baselines.py", "best.pt")])
def test_checkpoints_read_on_resume(stages, tmp_path, run, writer, name):
    """A run killed before results.json: --resume reads last.pt (epoch 2 of 2 done) and best.pt."""
    out = tmp_path / run
    bad = damaged_copy(stages[run], out, name, "truncated")
    (out / "results.json").unlink()
    before = sorted(p.name for p in out.iterdir())
    script, *model_flags = RUN_FLAGS[run]
    proc = run_script(script, *model_flags, "--data_dir", stages["tokens"], "--output_dir", out, "--resume",
                      "--epochs", 2, "--max_train_batches", 2, "--device", "cpu", "--batch_size", 16)
    assert_one_line(proc, bad, writer, WHY["truncated"])
    assert sorted(p.name for p in out.iterdir()) == before


def test_writer_named_without_metadata(tmp_path):
    """Files outside a stage directory (no metadata.json / config.json): the writer comes from the
    caller, else from the file name, else a generic phrase; still one line."""
    from quixer.common import UserError, load_torch_file

    for name, writer in [("train.pt", "an earlier stage"), ("cluster_centers.pt", "quantize_lambeq_embeddings.py"),
                         ("kmer_embeddings.pt", "lambeq_encoder.py")]:
        path = tmp_path / name
        path.write_bytes(b"PK\x03\x04 not really a zip")
        with pytest.raises(UserError) as err:
            load_torch_file(path)
        assert str(err.value) == f"{path}: truncated, corrupt or not a torch file (written by {writer}; rerun it to replace the file)"
    with pytest.raises(UserError, match=r"written by my_script\.py;"):
        load_torch_file(tmp_path / "train.pt", written_by="my_script.py")
    with pytest.raises(UserError, match=r"missing\.pt: file not found \(written by an earlier stage; run it first\)"):
        load_torch_file(tmp_path / "missing.pt")
