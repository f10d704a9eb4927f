"""Reusable code of the RNA next-k-mer pipeline with the Quixer quantum transformer.

Modules (one obvious place for each idea):

- ``common``       one-line user errors, logging, atomic writes, hashes, seeds, devices, torch files
- ``interrupts``   Ctrl-C in a stage script: one line and exit status 130, installed before heavy imports
- ``provenance``   how a run was made: git commit, package versions, command line, host, times
- ``fasta``        streaming FASTA reading, input validation, normalisation, gene tags
- ``homology``     split groups by shared sequence, the exact train-sequence index behind the leakage statistic
- ``windows``      k-mer windows, group splits, the stage-1 directory (write and read)
- ``window_sources`` where each window comes from (transcript, offset, group, novel flags), carried to the tokens
- ``kmer_tokens``  stage-1 windows as ids over the raw 4^k k-mer vocabulary (classical benchmarks)
- ``ncbi``         the NCBI E-utilities client and the resumable downloader (stage 0)
- ``encoding``     lambeq k-mer circuits, exact and qiskit-aer backends (stage 2)
- ``quantize``     weighted k-means into tokens (stage 3)
- ``data``         token datasets the trainers read (stage 3 and classical-benchmark tokens), batches
- ``streams``      per-transcript token streams: training windows at every offset, the scored targets
- ``scoring``      per-target scores (tie-aware top-k), one format for trained models and references
- ``intervals``    95 % intervals: test gene groups (bootstrap) plus seed variance (t), paired differences
- ``model``        the Quixer LCU + QSVT model in torch (and the official-checkpoint loader)
- ``circuits``     gates, circuit plans, autograd functions, polynomial and Pauli measurement
- ``simulators``   one simulator per device (torch ops, fused CPU kernel, Triton), chosen per forward
- ``native``       the fused C++ CPU kernel (``statevector_kernel.cpp``, built on first use)
- ``triton_kernels`` the fused GPU kernels (Triton; interpreted on a CPU in the tests)
- ``compiled_kernels`` those kernels compiled for sm_90 without a GPU: registers, spills, instructions per gate
- ``cuda_graphs``  capture of a whole training step as one CUDA graph
- ``devices``      which device trains a model fastest, measured (``--device auto``)
- ``naive``        a gate-by-gate Quixer simulation: test oracle and benchmark baseline, not the pipeline
- ``baselines``    LSTM / Transformer / FNet and the Quixer ablation (its quantum block replaced by pooling)
- ``reference``    the uniform / unigram / n-gram (Kneser-Ney) reference predictors
- ``ceilings``     the task's ceiling from the bases behind the tokens: token_ceiling (exact inference), raw_bases
- ``training``     the one training loop: its TrainConfig, metrics, checkpoints, resume, early stopping
- ``flags``        the trainers' flags (--config, --protocol) and the configurations built once from them
- ``live_curves``  optional TensorBoard event files of a training run (``--tensorboard``)
- ``distributed``  the DDP context and the checkpointed RNG state
- ``tuning``       the Optuna hyperparameter search (tune_quixer_hybrid.py)
- ``report``       the results report: runs found, rows with intervals, gain shares, the two tracks paired
- ``report_markdown`` ``results.md``: the report's tables and sentences
- ``report_plots`` the report's plots: one colour per model, grey references, intervals, seed bands
- ``hardware``     the hardware estimate of a trained Quixer run (estimate_quixer_hardware.py): load, check, report
- ``hardware_circuit`` the Quixer circuit itself in pytket: PREPARE / SELECT, LCU of powers, feed-forward, bases
- ``hardware_simulation`` qiskit-aer simulation of that circuit with mid-circuit postselection
- ``hardware_resources`` pytket compilation to hardware gate sets and the resource counts
- ``hardware_shots`` test accuracy with features estimated from finite shots

The names below are importable from ``quixer`` directly (``from quixer import Quixer``). Each
is loaded from its module on first use, so ``import quixer`` itself imports neither torch nor
lambeq.
"""
import importlib as _importlib

# public name -> module that defines it
_EXPORTS = {
    "UserError": "common",
    "load_torch_file": "common",
    # stage 0: download
    "EutilsClient": "ncbi",
    "download_sequences": "ncbi",
    # stage 1: windows
    "WindowConfig": "windows",
    "prepare_autoregressive_data": "windows",
    "read_split_windows": "windows",
    "prepare_classical_benchmarks": "kmer_tokens",
    # stage 2: quantum k-mer embeddings
    "EncoderSpec": "encoding",
    "RunOptions": "encoding",
    "encode_windows": "encoding",
    "WindowEmbeddings": "encoding",
    # stage 3: tokens
    "QuantizeConfig": "quantize",
    "quantize_embeddings": "quantize",
    "load_token_data": "data",
    # models
    "Quixer": "model",
    "QuixerConfig": "model",
    "ClassicalConfig": "baselines",
    "build_classical_model": "baselines",
    # stage 4: training, references, tuning, report
    "TrainConfig": "training",
    "train_quixer": "flags",
    "train_classical": "flags",
    "train_model": "training",
    "run_reference": "reference",
    "tune_quixer": "tuning",
    "write_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'quixer' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(__all__) | {k for k in globals() if not k.startswith("_")})
