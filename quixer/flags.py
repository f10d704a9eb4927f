"""The trainers' command lines: their flags, and the configurations built once from them.

Flags are read here and nowhere else, so the training loop (:mod:`quixer.training`) and the
models see small frozen configurations (:class:`~quixer.training.TrainConfig`,
:class:`~quixer.model.QuixerConfig`, :class:`~quixer.baselines.ClassicalConfig`) whose fields
are the flags' own names. A flag's value comes from the command line, else from ``--config FILE``,
else from the named ``--protocol``, else from the flag's default (the configurations' defaults).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Any, Sequence

from .baselines import NEURAL_MODELS, PRESETS, ClassicalConfig, classical_defaults
from .common import UserError, read_json
from .model import INIT_STRATEGIES, QuixerConfig
from .training import (DEFAULT_QUIXER_DATA_DIR, LR_SCHEDULES, EpochCallback, TrainConfig, build_classical,
                       build_quixer, train_model)

# Named training protocols: defaults for the flags a command line (or --config) leaves unset.
# "project" keeps every flag's own default. "official" is the CQCL/Quixer run.py protocol: 30
# epochs of a cosine schedule to zero, Adam with weight decay 1e-4, batch 32, clipping at norm 5,
# no early stopping (each model keeps its own official rate: 0.002, the Transformer 0.001), and
# per-epoch model selection on a fixed 10,000-target sample of validation (docs/protocol.md).
PROTOCOLS: dict[str, dict[str, Any]] = {
    "project": {},
    "official": dict(epochs=30, lr_schedule="cosine", patience=0, weight_decay=1e-4, max_grad_norm=5.0,
                     batch_size=32, selection_targets=10_000),
}
# Flags that are never taken from a --config file (a run's config.json never holds them).
_NOT_CONFIG = frozenset({"config", "resume", "verbose", "command"})
_TRAIN, _QUIXER = TrainConfig(), QuixerConfig()  # the flags' defaults


# ----------------------------------------------------------------------------------------------
# Parsing (one block shared by every trainer and the tuner)


def add_training_args(
    parser: argparse.ArgumentParser,
    *,
    data_dir: str = DEFAULT_QUIXER_DATA_DIR,
    output_dir: str | None = _TRAIN.output_dir,
    lr: float | None = _TRAIN.lr,
    run_flags: bool = True,
) -> None:
    """Data, optimisation and run flags. ``run_flags=False`` leaves out the per-run flags
    (--epochs, --output_dir, --resume, --patience, --config) for the tuner, which sets them."""
    _add_data_args(parser, data_dir)
    _add_optimisation_args(parser, lr, run_flags)
    _add_run_args(parser, output_dir, run_flags)


def _add_data_args(parser: argparse.ArgumentParser, data_dir: str) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data_dir", default=data_dir,
                   help="token directory with {train,val,test}.pt (stage-3 output or classical-benchmark "
                        "tokens) (default: %(default)s)")
    g.add_argument("--epoch_size", type=int, default=_TRAIN.epoch_size,
                   help="training windows per epoch, drawn at every offset of the train transcripts "
                        "(default: the number of train windows in --data_dir)")
    g.add_argument("--eval_targets", type=int, default=_TRAIN.eval_targets,
                   help="scored validation / test positions: every position, or a fixed sample of this many "
                        "where there are more, the same for every model; 0 = all (default: %(default)s)")
    g.add_argument("--max_train_batches", type=int, default=_TRAIN.max_train_batches,
                   help="cap on training batches per epoch, for quick runs (default: all)")
    g.add_argument("--selection_targets", type=int, default=_TRAIN.selection_targets,
                   help="validation targets scored after each epoch to pick the best epoch: a fixed seeded sample "
                        "of the --eval_targets ones (the same for every model and seed); the best checkpoint is "
                        "then scored once on all of them; 0 = all every epoch (default: %(default)s)")


def _add_optimisation_args(parser: argparse.ArgumentParser, lr: float | None, run_flags: bool) -> None:
    g = parser.add_argument_group("optimisation")
    if run_flags:
        g.add_argument("--protocol", choices=tuple(PROTOCOLS), default=None,
                       help="named defaults for the flags not given: project (each flag's own default) or official "
                            "(the CQCL/Quixer protocol: --epochs 30 --lr_schedule cosine --patience 0 "
                            "--weight_decay 1e-4 --batch_size 32 --max_grad_norm 5 --selection_targets 10000) "
                            "(default: project)")
        g.add_argument("--epochs", type=int, default=_TRAIN.epochs,
                       help="most training epochs; early stopping (--patience) usually ends a run first "
                            "(default: %(default)s)")
    g.add_argument("--batch_size", type=int, default=_TRAIN.batch_size,
                   help="windows per optimizer step and process (default: %(default)s)")
    g.add_argument("--eval_batch_size", type=int, default=_TRAIN.eval_batch_size,
                   help="windows per evaluation batch (default: %(default)s)")
    g.add_argument("--lr", type=float, default=lr,
                   help="initial learning rate (default: %s)" % (lr if lr is not None else "the model's own default"))
    g.add_argument("--lr_schedule", choices=LR_SCHEDULES, default=_TRAIN.lr_schedule,
                   help="plateau: halve the learning rate after each epoch that lowers the best validation loss "
                        "by less than 0.01 %%; "
                        "cosine: the official schedule, to zero over all steps of --epochs (default: %(default)s)")
    g.add_argument("--weight_decay", type=float, default=_TRAIN.weight_decay,
                   help="Adam weight decay (default: %(default)s)")
    g.add_argument("--max_grad_norm", type=float, default=_TRAIN.max_grad_norm,
                   help="gradient clipping norm, 0 = no clipping (default: %(default)s)")
    if run_flags:
        g.add_argument("--patience", type=int, default=_TRAIN.patience,
                       help="stop after this many epochs in a row without a lower validation loss, 0 = never "
                            "(default: %(default)s)")


def _add_run_args(parser: argparse.ArgumentParser, output_dir: str | None, run_flags: bool) -> None:
    g = parser.add_argument_group("run")
    g.add_argument("--seed", type=int, default=_TRAIN.seed,
                   help="seed of weights, shuffling and dropout (default: %(default)s)")
    g.add_argument("--device", default=_TRAIN.device, choices=("auto", "cpu", "cuda"),
                   help="auto: with a GPU, whichever of CPU and GPU runs a few training steps of this model at "
                        "this batch size faster (measured at the start; one process), else the CPU "
                        "(default: %(default)s)")
    g.add_argument("--cuda_graph", action="store_true",
                   help="on a GPU, replay every full training batch from one captured CUDA graph (the last, partial "
                        "batch runs eagerly; dropout draws fresh masks): the eager run's trajectory up to float "
                        "rounding, without hundreds of kernel launches per step; a no-op on the CPU; not with "
                        "--use_layerwise_training or torchrun")
    if run_flags:
        g.add_argument("--output_dir", default=output_dir,
                       help="run directory: config, metrics, checkpoints, results (default: %s)"
                            % (output_dir or "runs/<model>, runs/<model>_<preset> for a paper preset"))
        g.add_argument("--resume", action="store_true",
                       help="continue the unfinished run in --output_dir from its last checkpoint (same flags "
                            "and data required), or extend a run to a larger --epochs")
        g.add_argument("--config", default=None,
                       help="JSON object of flag values (e.g. the tuner's best_config.json or a run's "
                            "config.json); flags given on the command line override it")
        g.add_argument("--tensorboard", default=_TRAIN.tensorboard, metavar="DIR",
                       help="also write TensorBoard event files (per-epoch metrics, the training loss every 25 "
                            "steps) under DIR/<output_dir name>; needs the optional tensorboard package "
                            "(default: none)")
    g.add_argument("--verbose", action="store_true", help="debug logging")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``. Unset flags come, in this order, from ``--config FILE``, from the named
    ``--protocol`` (given, or recorded in the config file) and from the flags' own defaults."""
    args = parser.parse_args(argv)
    path = getattr(args, "config", None)
    cfg = _read_config_values(parser, path) if path else {}
    if hasattr(args, "protocol"):
        protocol = args.protocol or cfg.get("protocol") or "project"
        parser.set_defaults(**PROTOCOLS[protocol])
        cfg["protocol"] = protocol
    if cfg:
        parser.set_defaults(**cfg)
        args = parser.parse_args(argv)
        if hasattr(args, "protocol"):
            args.protocol = args.protocol or cfg["protocol"]
    args.command = [parser.prog, *(sys.argv[1:] if argv is None else map(str, argv))]  # provenance only
    return args


def _read_config_values(parser: argparse.ArgumentParser, path: str) -> dict:
    """The flag values of a ``--config`` JSON file, checked against the parser's flags."""
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a JSON object of flag values")
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    unknown = sorted(set(cfg) - set(actions))
    if unknown:
        raise UserError(f"{path}: unknown flag(s) {', '.join(unknown)} for this script")
    values = {}
    for key, value in cfg.items():
        if key in _NOT_CONFIG:
            continue
        action = actions[key]
        if value is not None and action.type in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (action.type is int and value != int(value)):
                raise UserError(f"{path}: {key} must be {action.type.__name__}, got {value!r}")
            value = action.type(value)
        if action.nargs == 0 and not isinstance(value, bool):  # store_true flags
            raise UserError(f"{path}: {key} must be true or false, got {value!r}")
        if action.choices is not None and value not in action.choices:
            raise UserError(f"{path}: {key} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
        values[key] = value
    return values


# ----------------------------------------------------------------------------------------------
# Quixer (train_quixer_hybrid.py and the tuner)


def add_quixer_model_args(parser: argparse.ArgumentParser, title: str = "Quixer model") -> None:
    g = parser.add_argument_group(title)
    g.add_argument("--task", default=_QUIXER.task,
                   help="prediction task; only 'autoregressive' (next token of each window) (default: %(default)s)")
    g.add_argument("--qubits", type=int, default=_QUIXER.qubits,
                   help="qubits of the token register (default: %(default)s)")
    g.add_argument("--degree", type=int, default=_QUIXER.degree, help="QSVT polynomial degree (default: %(default)s)")
    g.add_argument("--ansatz_layers", type=int, default=_QUIXER.ansatz_layers,
                   help="layers of each token's PQC ansatz (default: %(default)s)")
    g.add_argument("--embedding_dim", type=int, default=_QUIXER.embedding_dim,
                   help="classical token embedding width (default: %(default)s)")
    g.add_argument("--dropout", type=float, default=_QUIXER.dropout, help="dropout rate (default: %(default)s)")
    g.add_argument("--init_strategy", choices=INIT_STRATEGIES, default=_QUIXER.init_strategy,
                   help="parameter initialisation; centroid uses the stage-3 cluster centres in --data_dir "
                        "(default: %(default)s)")
    g.add_argument("--use_layerwise_training", action="store_true",
                   help="switch the ansatz layers on one at a time over the epochs (layer l from epoch "
                        "floor(l * epochs / ansatz_layers)); inactive layers are not updated")


def quixer_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The complete flag set of train_quixer_hybrid.py."""
    parser = argparse.ArgumentParser(
        description=description or "Train the Quixer quantum transformer on next-token prediction.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_training_args(parser, data_dir=DEFAULT_QUIXER_DATA_DIR, output_dir="runs/quixer", lr=0.002)
    add_quixer_model_args(parser)
    return parser


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed flags; a field the script has no flag for (the tuner has no
    --protocol or --tensorboard) keeps its default."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    if values.get("command") is not None:
        values["command"] = tuple(values["command"])
    return TrainConfig(**values)


def quixer_configs(args: argparse.Namespace) -> tuple[TrainConfig, QuixerConfig]:
    """The training and model configurations of train_quixer_hybrid.py's parsed flags."""
    model = QuixerConfig(**{f.name: getattr(args, f.name) for f in fields(QuixerConfig)})
    return train_config(args), model


def train_quixer(args: argparse.Namespace, epoch_callback: EpochCallback | None = None,
                 score_test: bool = True) -> dict:
    """A Quixer run of parsed flags through :func:`quixer.training.train_model`."""
    train, model = quixer_configs(args)
    return train_model(train, model, build_quixer, model_name="quixer", layerwise=model.use_layerwise_training,
                       epoch_callback=epoch_callback, score_test=score_test)


# ----------------------------------------------------------------------------------------------
# Classical baselines and references (train_classical_baselines.py)


def add_classical_model_args(parser: argparse.ArgumentParser) -> None:
    """Size flags of the neural baselines; unset flags come from ``--preset``."""
    g = parser.add_argument_group("classical model size (unset flags come from --preset)")
    g.add_argument("--preset", choices=PRESETS, default="default",
                   help="size preset: default (LSTM ~220k, Transformer ~530k, FNet ~400k parameters at "
                        "vocab 512), paper96 / paper128 (the Quixer paper's baselines) (default: %(default)s)")
    g.add_argument("--embedding_dim", type=int, default=None, help="token embedding width")
    g.add_argument("--hidden_dim", type=int, default=None,
                   help="LSTM hidden size / feed-forward width of Transformer and FNet")
    g.add_argument("--num_layers", type=int, default=None, help="LSTM / Transformer / FNet layers")
    g.add_argument("--num_heads", type=int, default=None, help="Transformer attention heads")
    g.add_argument("--qubits", type=int, default=ClassicalConfig.qubits,
                   help="quixer_ablation: the Quixer qubits it mirrors (3 n features) (default: %(default)s)")
    g.add_argument("--ansatz_layers", type=int, default=ClassicalConfig.ansatz_layers,
                   help="quixer_ablation: the Quixer ansatz layers it mirrors (angle map width 4 n L) "
                        "(default: %(default)s)")


def classical_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The complete flag set of train_classical_baselines.py."""
    from .reference import DEFAULT_MAX_ORDER, REFERENCE_MODELS

    parser = argparse.ArgumentParser(description=description or "Classical baselines and references.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=NEURAL_MODELS + REFERENCE_MODELS, default="lstm",
                        help="baseline to run (default: %(default)s)")
    add_training_args(parser, data_dir=DEFAULT_QUIXER_DATA_DIR, output_dir=None, lr=None)
    parser.add_argument("--dropout", type=float, default=None,
                        help="dropout rate (default: the model's own: LSTM 0.3, Transformer / FNet 0.1)")
    add_classical_model_args(parser)
    g = parser.add_argument_group("reference models")
    g.add_argument("--max_order", type=int, default=DEFAULT_MAX_ORDER,
                   help="ngram, raw_bases, token_ceiling: largest order tried on validation (token_ceiling "
                        "stops at k; default: %(default)s)")
    return parser


def default_classical_output_dir(args: argparse.Namespace) -> str:
    suffix = f"_{args.preset}" if args.model in NEURAL_MODELS and args.preset != "default" else ""
    return f"runs/{args.model}{suffix}"


def resolve_classical_args(args: argparse.Namespace) -> None:
    """Fill unset size / lr / dropout flags of a neural baseline from its preset and its own
    training defaults (:func:`quixer.baselines.classical_defaults`)."""
    if args.model not in NEURAL_MODELS:
        return
    for key, value in classical_defaults(args.model, args.preset).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def classical_configs(args: argparse.Namespace) -> tuple[TrainConfig, ClassicalConfig]:
    """The training and model configurations of a neural baseline's parsed flags (the preset and
    the model's own defaults filled in; ``args`` itself is left as it is)."""
    resolved = argparse.Namespace(**vars(args))
    if resolved.output_dir is None:
        resolved.output_dir = default_classical_output_dir(resolved)
    resolve_classical_args(resolved)
    model = ClassicalConfig(**{f.name: getattr(resolved, f.name) for f in fields(ClassicalConfig)})
    return train_config(resolved), model


def train_classical(args: argparse.Namespace, epoch_callback: EpochCallback | None = None) -> dict:
    """A neural baseline through :func:`quixer.training.train_model`, or a reference predictor
    through :func:`quixer.reference.run_reference` (no gradient training)."""
    from .reference import REFERENCE_MODELS, run_reference

    if args.model in REFERENCE_MODELS:
        return run_reference(args.model, args.data_dir, args.output_dir or default_classical_output_dir(args),
                             max_order=args.max_order, eval_targets_count=args.eval_targets,
                             command=getattr(args, "command", None))
    train, model = classical_configs(args)
    return train_model(train, model, build_classical, model_name=model.model, epoch_callback=epoch_callback)
