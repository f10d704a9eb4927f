"""Documented commands run as written: the original plan's command sequence, and every example in
every top-level script's ``--help``, as subprocesses in a working directory of their own.

Each example may get flags appended (later flags override earlier ones) that only shorten it:
fewer epochs / batches / trials / scored targets, or the local E-utilities server instead of NCBI. The tables
below name every example; an example added to a help text without an entry here fails the
coverage check, so a new example cannot go untested.
"""
from __future__ import annotations

import gzip
import json
import re
import socket
import subprocess
from itertools import islice
from pathlib import Path

import pytest
import torch

from quixer.fasta import iter_fasta
from tests.commands import Workspace, extract_commands, help_text, is_synopsis, runnable, top_level_scripts
from tests.helpers import SAMPLE_FASTA
from tests.ncbi_server import FakeEutils, load_source_records

SPLITS = ("train", "val", "test")
CAP = "--epochs 1 --max_train_batches 2 --eval_targets 2000"  # appended to every training example

# The original plan's commands, verbatim (the users' copy).
ORIGINAL_PLAN = """
python prepare_autoregressive_data.py --fasta GRCh38_genomic_dataset/rna_sequences.fasta --output_dir autoregressive_data
bash run_lambeq_gpu.sh autoregressive_data lambeq_embeddings_autoregressive 64 8 cuda
bash run_lambeq_gpu.sh autoregressive_data lambeq_embeddings_autoregressive 64 1 cpu
python quantize_lambeq_embeddings.py --embeddings_dir lambeq_embeddings_autoregressive --output_dir quantized_embeddings_autoregressive
python train_quixer_hybrid.py --data_dir quantized_embeddings_autoregressive --task autoregressive --epochs 50 --init_strategy small_gaussian --use_layerwise_training
bash run_classical_prep.sh GRCh38_genomic_dataset/rna_sequences.fasta classical_benchmarks_data
python train_classical_baselines.py --data_dir classical_benchmarks_data --model lstm --epochs 100
python train_classical_baselines.py --data_dir classical_benchmarks_data --model transformer --epochs 100
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    # torchrun's fixed default port (29500) may be taken by another job on a shared machine;
    # PET_MASTER_PORT is torchrun's own environment form of --master_port.
    return {"PET_MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}


def _results(ws: Workspace, run: str) -> dict:
    return json.loads(ws.path("runs", run, "results.json").read_text())


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.search(r"\bwarning\b", line, re.I)]


# ------------------------------------------------------------------ the original plan
@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_original_plan_commands_run_as_written(tmp_path):
    ws = Workspace(tmp_path / "plan", _env())
    fasta = ws.path("GRCh38_genomic_dataset", "rna_sequences.fasta")
    fasta.parent.mkdir()
    fasta.write_bytes(gzip.decompress(SAMPLE_FASTA.read_bytes()))  # the embedded sample, as the plan's file
    commands = extract_commands(ORIGINAL_PLAN)
    assert len(commands) == 8
    shorten = {4: "--epochs 2 --max_train_batches 2 --eval_targets 2000", 6: CAP, 7: CAP}
    procs = [ws.run(cmd, shorten.get(i, ""), timeout=900) for i, cmd in enumerate(commands)]

    meta1 = json.loads(ws.path("autoregressive_data", "metadata.json").read_text())
    assert all(meta1["counts"][s]["windows"] > 0 for s in SPLITS)
    # stage 2, DEVICE cuda: on the GPU when torch sees one, else on the CPU after one warning line
    meta2 = json.loads(ws.path("lambeq_embeddings_autoregressive", "metadata.json").read_text())
    if torch.cuda.is_available():
        assert meta2["torch_device"].startswith("cuda") and not _warnings(procs[1].stderr)
    else:
        assert meta2["torch_device"] == "cpu"
        assert _warnings(procs[1].stderr) == [
            "run_lambeq_gpu.sh: warning: DEVICE cuda but torch sees no CUDA GPU; running on the CPU instead"]
    # the same stage with DEVICE cpu and 1 worker into the same directory: up to date, untouched
    assert "up to date" in procs[2].stderr and not _warnings(procs[2].stderr)
    assert json.loads(ws.path("lambeq_embeddings_autoregressive", "metadata.json").read_text()) == meta2
    # stage 3 through the original flag name --embeddings_dir
    meta3 = json.loads(ws.path("quantized_embeddings_autoregressive", "metadata.json").read_text())
    assert meta3["input_dir"] == "lambeq_embeddings_autoregressive"
    quixer = _results(ws, "quixer")
    config = json.loads(ws.path("runs", "quixer", "config.json").read_text())
    assert config["use_layerwise_training"] and config["init_strategy"] == "small_gaussian"
    assert config["data_dir"] == "quantized_embeddings_autoregressive" and quixer["epochs_run"] == 2
    tokens = torch.load(ws.path("classical_benchmarks_data", "train.pt"))
    assert tokens["sequences"].shape[0] == meta1["counts"]["train"]["windows"] and len(tokens["vocab"]) == 4096
    for model in ("lstm", "transformer"):
        assert _results(ws, model)["model"] == model
        assert json.loads(ws.path("runs", model, "config.json").read_text())["data_dir"] == "classical_benchmarks_data"


# ------------------------------------------------------------------ the --help examples
# The help examples run as a user following them would: the download ones against the local
# E-utilities server, all others in one directory in pipeline order (each group's examples read
# what the groups before wrote), on a 60-transcript slice of the embedded sample as
# data/sample_rna.fasta.gz (and as the plan's GRCh38 file). EXTRA is what each example gets
# appended; an example missing from it (or an entry no help shows any more) fails the coverage test.
GROUPS = {
    "download": ("download_rna_sequences.py",),
    "windows": ("prepare_autoregressive_data.py", "prepare_classical_benchmarks.py", "run_classical_prep.sh"),
    "encoder": ("lambeq_encoder.py", "run_lambeq_gpu.sh"),
    "quantize": ("quantize_lambeq_embeddings.py",),
    "quixer": ("tune_quixer_hybrid.py", "train_quixer_hybrid.py"),
    "hardware": ("estimate_quixer_hardware.py",),
    "classical": ("train_classical_baselines.py", "report_results.py"),
}
EXTRA = {
    "python download_rna_sequences.py --email you@example.org": "--eutils_url {url}",
    "python download_rna_sequences.py --email you@example.org --max_sequences 500": "--eutils_url {url}",
    "NCBI_API_KEY=... python download_rna_sequences.py --max_sequences 20000": "--eutils_url {url}",
    "python download_rna_sequences.py --query '\"Homo sapiens\"[Organism] AND refseq[filter] AND biomol_ncrna[PROP]'"
    " --output ncrna/rna_sequences.fasta": "--eutils_url {url}",
    "python prepare_autoregressive_data.py --fasta data/sample_rna.fasta.gz --output_dir autoregressive_data": "",
    "python prepare_classical_benchmarks.py --fasta data/sample_rna.fasta.gz --output_dir classical_benchmarks": "",
    "python prepare_classical_benchmarks.py --data_dir autoregressive_data --output_dir classical_benchmarks": "",
    "bash run_classical_prep.sh GRCh38_genomic_dataset/rna_sequences.fasta classical_benchmarks_data": "",
    "python lambeq_encoder.py --data_dir autoregressive_data --output_dir lambeq_embeddings_autoregressive": "",
    "bash run_lambeq_gpu.sh autoregressive_data lambeq_embeddings_autoregressive 64 4 cuda": "",
    "bash run_lambeq_gpu.sh autoregressive_data lambeq_embeddings_autoregressive 64 1 cpu": "",
    "python quantize_lambeq_embeddings.py --input_dir lambeq_embeddings_autoregressive"
    " --output_dir quantized_embeddings_autoregressive": "",
    "python quantize_lambeq_embeddings.py --embeddings_dir lambeq_embeddings_autoregressive"
    " --output_dir quantized_embeddings_autoregressive": "",
    "python tune_quixer_hybrid.py --n_trials 40 --epochs_per_trial 5": "--n_trials 1 --epochs_per_trial 1 --max_train_batches 2 --eval_targets 2000",
    "python train_quixer_hybrid.py --config runs/tune/best_config.json --output_dir runs/quixer_tuned": CAP,
    "python train_quixer_hybrid.py --epochs 50": CAP,
    "python train_quixer_hybrid.py --resume": CAP,
    "torchrun --nproc_per_node 4 train_quixer_hybrid.py --output_dir runs/quixer_ddp": CAP,
    # the hardware estimate of the Quixer run above: fewer windows; compiling only where the example asks
    "python estimate_quixer_hardware.py --run_dir runs/quixer": "--max_windows 300 --gate_sets",
    "python estimate_quixer_hardware.py --run_dir runs/quixer --shots 100 1000 10000 100000 --max_windows 0 --force":
        "--max_windows 300 --gate_sets",
    "python estimate_quixer_hardware.py --run_dir runs/quixer --gate_sets ibm --output_dir hw_quixer": "--max_windows 300",
    "python train_classical_baselines.py --model lstm": CAP,
    "python train_classical_baselines.py --model transformer --preset paper128 --epochs 30": CAP,
    "python train_classical_baselines.py --model ngram": "",
    "python train_classical_baselines.py --model token_ceiling": "",
    "python train_classical_baselines.py --model raw_bases": "",
    "python train_classical_baselines.py --model quixer_ablation": CAP,
    "python train_classical_baselines.py --model quixer_ablation_matched --protocol official": CAP,
    "python train_classical_baselines.py --model lstm --data_dir classical_benchmarks --output_dir runs/lstm_kmers": CAP,
    "python train_classical_baselines.py --model lstm --data_dir classical_benchmarks --output_dir runs_raw/lstm": CAP,
    "python report_results.py runs": "",
    "python report_results.py runs --output_dir report --title 'chrX RNA, K=512 tokens'": "",
    "python report_results.py runs --raw_runs runs_raw --output_dir report_tracks": "",
}
# No --help examples to run: the installer, and the main job (a usage synopsis only; its run is
# tests/test_pipeline.py).
NOT_GROUPED = ("run_pipeline.sh", "setup.sh")


def group_commands(group: str) -> list[str]:
    """The runnable examples of a group's help texts in order, each once (the tuner's help repeats
    the trainer's --config example, and the same run a second time is refused by design)."""
    return runnable([c for script in GROUPS[group] for c in extract_commands(help_text(script))])


def test_every_help_example_has_an_entry_and_every_script_a_group():
    grouped = [s for scripts in GROUPS.values() for s in scripts]
    assert sorted(grouped + list(NOT_GROUPED)) == top_level_scripts()
    examples = [c for group in GROUPS for c in group_commands(group)]
    assert sorted(set(examples)) == sorted(EXTRA), "a --help example without an entry in EXTRA (or a stale entry)"
    synopsis = extract_commands(help_text("run_pipeline.sh"))
    assert synopsis and all(is_synopsis(c) for c in synopsis)


def _run_group(group: str, ws: Workspace, **fmt) -> dict[str, subprocess.CompletedProcess]:
    return {cmd: ws.run(cmd, EXTRA[cmd].format(**fmt), timeout=900) for cmd in group_commands(group)}


def _records(path: Path) -> int:
    return sum(1 for _ in iter_fasta(path))


def test_help_examples_download(tmp_path):
    source = load_source_records()
    ws = Workspace(tmp_path / "ws", _env())
    with FakeEutils(source) as srv:
        procs = _run_group("download", ws, url=srv.url)
    assert _records(ws.path("GRCh38_genomic_dataset", "rna_sequences.fasta")) == len(source)
    assert ws.path("GRCh38_genomic_dataset", "rna_sequences.fasta.manifest.json").is_file()
    assert _records(ws.path("ncrna", "rna_sequences.fasta")) == len(source)
    no_email = [cmd for cmd, p in procs.items() if "no --email" in p.stderr]
    assert no_email == [cmd for cmd in procs if "--email" not in cmd] and len(no_email) == 2


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_help_examples_in_pipeline_order(tmp_path):
    ws = Workspace(tmp_path / "ws", _env())
    text = "".join(f">{r.header}\n{r.sequence}\n" for r in islice(iter_fasta(SAMPLE_FASTA), 60))
    ws.path("data").mkdir()
    ws.path("data", "sample_rna.fasta.gz").write_bytes(gzip.compress(text.encode()))
    ws.path("GRCh38_genomic_dataset").mkdir()
    ws.path("GRCh38_genomic_dataset", "rna_sequences.fasta").write_text(text)

    # windows: the FASTA and stage-1 routes to classical tokens agree (the second is up to date)
    procs = _run_group("windows", ws)
    assert json.loads(ws.path("autoregressive_data", "metadata.json").read_text())["records_used"] == 60
    second = "python prepare_classical_benchmarks.py --data_dir autoregressive_data --output_dir classical_benchmarks"
    assert "up to date" in procs[second].stderr
    a, b = (torch.load(ws.path(d, "test.pt"))["sequences"] for d in ("classical_benchmarks", "classical_benchmarks_data"))
    assert torch.equal(a, b)

    # encoder: the launcher lines (same circuit, other device / workers) find it up to date
    procs = _run_group("encoder", ws)
    meta = json.loads(ws.path("lambeq_embeddings_autoregressive", "metadata.json").read_text())
    assert meta["embedding_dim"] == 64 and meta["vocab_size"] == 4096
    launches = [p for cmd, p in procs.items() if cmd.startswith("bash run_lambeq_gpu.sh")]
    assert len(launches) == 2 and all("up to date" in p.stderr for p in launches)

    # quantize: --embeddings_dir is --input_dir (the second line is up to date)
    first, alias = _run_group("quantize", ws).values()
    assert "up to date" not in first.stderr and "up to date" in alias.stderr
    assert torch.load(ws.path("quantized_embeddings_autoregressive", "cluster_centers.pt"))["cluster_centers"].shape[0] == 512

    # tuner and Quixer trainer
    _run_group("quixer", ws)
    best = json.loads(ws.path("runs", "tune", "best_config.json").read_text())
    assert json.loads(ws.path("runs", "quixer_tuned", "config.json").read_text())["qubits"] == best["qubits"]
    assert _results(ws, "quixer_tuned")["parameters"] > 0
    assert _results(ws, "quixer")["epochs_run"] == 1
    assert _results(ws, "quixer_ddp")["world_size"] == 4

    # the JSON search space shown in the tuner's help, copied from the help text as written
    help_ = help_text("tune_quixer_hybrid.py")
    start = help_.index('{"qubits"')
    space = json.JSONDecoder().raw_decode(" ".join(help_[start:].split()))[0]
    assert space["init_strategy"] is None
    ws.path("space.json").write_text(json.dumps(space))
    ws.run("python tune_quixer_hybrid.py --search_space space.json --output_dir runs/tune_space --init_strategy xavier",
           "--n_trials 1 --epochs_per_trial 1 --max_train_batches 2 --eval_targets 2000")
    best = json.loads(ws.path("runs", "tune_space", "best_config.json").read_text())
    summary = json.loads(ws.path("runs", "tune_space", "study_summary.json").read_text())
    assert best["init_strategy"] == "xavier" and "init_strategy" not in summary["best_params"]  # null: the flag's value
    assert 4 <= best["qubits"] <= 6 and best["embedding_dim"] in (128, 512)

    # the hardware estimate of the Quixer run: its files beside the run, or where --output_dir says
    _run_group("hardware", ws)
    hardware = json.loads(ws.path("runs", "quixer", "hardware.json").read_text())
    assert hardware["shots"]["windows"] == 300 and hardware["circuit"]["verification"]["state_max_abs_error"] < 1e-9
    compiled = json.loads(ws.path("hw_quixer", "hardware.json").read_text())
    assert list(compiled["resources"]["gate_sets"]) == ["ibm"] and not hardware["resources"]["gate_sets"]

    # classical baselines, then the report over every run so far (it links the hardware estimate)
    procs = _run_group("classical", ws)
    runs = ("lstm", "transformer_paper128", "ngram", "token_ceiling", "raw_bases", "lstm_kmers", "quixer",
            "quixer_tuned", "quixer_ddp")
    for run in runs:
        assert _results(ws, run)["test_loss"] > 0
    assert json.loads(ws.path("runs", "lstm_kmers", "config.json").read_text())["data_dir"] == "classical_benchmarks"
    table = ws.path("runs", "results.md").read_text()
    assert all(f" | {run} | " in table for run in runs) and "hardware.md" in table
    assert procs["python report_results.py runs"].stdout.strip()
    assert "chrX RNA, K=512 tokens" in ws.path("report", "results.md").read_text()
    assert {p.name for p in ws.path("report").glob("*.png")} == {"learning_curves.png", "test_accuracy.png",
                                                                  "test_perplexity.png"}
    # the two tracks side by side: the LSTM on both, paired on the same scored positions
    tracks = json.loads(ws.path("report_tracks", "results.json").read_text())
    assert [(d["model"], d["paired_on"]) for d in tracks["tokenisation_differences"]] == [("lstm", "positions")]
    assert "Tokenisation: raw 6-mers minus quantised tokens" in ws.path("report_tracks", "results.md").read_text()
