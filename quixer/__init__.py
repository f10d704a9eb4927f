"""Reusable code of the RNA next-k-mer pipeline with the Quixer quantum transformer.

Modules (one obvious place for each idea):

- ``common``       one-line user errors, logging, atomic writes, hashes, seeds and RNG states, devices, torch files
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
- ``sim``          subpackage: the statevector simulation behind the model (circuits, simulators, CPU / GPU kernels)
- ``devices``      which device trains a model fastest, measured (``--device auto``)
- ``baselines``    LSTM / Transformer / FNet and the Quixer ablation (its quantum block replaced by pooling)
- ``kneser_ney``   interpolated modified Kneser-Ney: count tables, discounts tuned on validation, order choice
- ``reference``    the uniform / unigram / n-gram reference predictors and the ceilings, run as one stage
- ``ceilings``     the task's ceiling from the bases behind the tokens: token_ceiling (exact inference), raw_bases
- ``training``     the one training loop: its TrainConfig, metrics, checkpoints, resume, early stopping
- ``run_dir``      a run directory's rules: fresh, resume, extend or finished; other flags or data refused
- ``flags``        the trainers' flags (--config, --protocol) and the configurations built once from them
- ``live_curves``  optional TensorBoard event files of a training run (``--tensorboard``)
- ``distributed``  the DDP context (torchrun): process group, ranks, gathered metrics
- ``tuning``       the Optuna hyperparameter search (tune_quixer_hybrid.py)
- ``report_rows``  the report's rows: runs found, intervals over groups and seeds, gain shares, the two tracks paired
- ``report``       the results report (report_results.py): results.json, results.md and the plots
- ``report_markdown`` ``results.md``: the report's tables and sentences
- ``report_plots`` the report's plots: one colour per model, grey references, intervals, seed bands
- ``hardware``     subpackage: the hardware estimate of a trained Quixer run (pytket circuit, qiskit-aer, shots)

The names below are importable from ``quixer`` directly (``from quixer import Quixer``). Each
is loaded from its module on first use, so ``import quixer`` itself imports neither torch nor
lambeq.
"""
import importlib as _importlib
import sys as _sys

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

def _lazy_exports(package: str, exports: dict[str, str]):
    """``__getattr__`` and ``__dir__`` for a package whose public names live in its modules:
    each is imported on first use (so importing a package imports neither torch nor lambeq)."""

    def getattr_(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(_importlib.import_module(f"{package}.{module}"), name)
        setattr(_sys.modules[package], name, value)  # later lookups skip this function
        return value

    def dir_() -> list[str]:
        names = vars(_sys.modules[package])
        return sorted(set(exports) | {k for k in names if not k.startswith("_")})

    return getattr_, dir_


__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
