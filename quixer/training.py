"""The one training loop, shared by the Quixer trainer, the classical baselines and the tuner.

One loop so that every model sees the same supervision, schedule, model selection and scoring
(the run directory's files and the protocols are described in the README). Why it is built as it
is: a run must survive being killed (``last.pt`` holds everything to continue, the windows of an
epoch are a pure function of the seed and the epoch, RNG states are checkpointed, so a resumed
run equals the unbroken one); it must never be mixed with other flags or data (the run
directory is checked before anything is written); and it must say how it ended (stop reason,
the convergence rule, provenance). ``--cuda_graph`` (one GPU) replays every full batch from one
captured step (:mod:`quixer.sim.cuda_graphs`) with the capture's warm-up undone, so the run is the
eager one up to float rounding. Layerwise training is a generic hook: any model with
``set_active_layers(k)``, ``frozen_masks()`` and ``n_ansatz_layers`` can use it.

The loop reads no flags: it takes a :class:`TrainConfig` and a model family's configuration (a
small frozen dataclass, such as :class:`quixer.model.QuixerConfig`) with a builder, all made once
from the command line by :mod:`quixer.flags`; the checkpoints carry the model's configuration.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common import (
    UserError,
    atomic_torch_save,
    atomic_write_json,
    load_torch_file,
    peak_rss_mb,
    read_json,
    rng_state,
    seed_everything,
    set_rng_state,
)
from .data import TokenData, data_fingerprint, eval_batches, load_cluster_centers, load_token_data, steps_per_epoch, train_batches
from .sim.cuda_graphs import CapturedSteps, capturable_optimizer
from .devices import fastest_device
from .distributed import DistContext, init_distributed
from .live_curves import STEP_EVERY, LiveCurves
from .provenance import now, provenance
from .run_dir import (CONVERGENCE_RULE, DIVERGED_FILE, is_converged, prepare_run_dir, rewrite_metrics, run_lock,
                      selection_losses)
from .scoring import TargetScores, format_perplexity, prefixed, score_logits
from .streams import DEFAULT_EVAL_TARGETS, EvalTargets, TrainSchedule, eval_targets

if TYPE_CHECKING:
    from .baselines import ClassicalConfig
    from .model import QuixerConfig

log = logging.getLogger("quixer")

ADAM_EPS = 1e-10  # as the official Quixer code
DEFAULT_QUIXER_DATA_DIR = "quantized_embeddings_autoregressive"
LR_SCHEDULES = ("plateau", "cosine")
# TrainConfig fields that are not part of a run's config.json: what to do, and how it was asked for.
_NOT_RECORDED = frozenset({"resume", "command"})

EpochCallback = Callable[[int, dict], None]
# build_model(data, model_config, train) -> the model for this data, initialised from train.seed
ModelBuilder = Callable[[TokenData, Any, "TrainConfig"], nn.Module]


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite (lower the learning rate)."""


# ----------------------------------------------------------------------------------------------
# The configuration of a run (built once from the flags by quixer.flags)


@dataclass(frozen=True)
class TrainConfig:
    """Data, optimisation and run settings of one training run, under the flags' own names.

    The defaults are those of train_quixer_hybrid.py's flags. ``resume`` and ``command`` (the
    command line, for provenance) say how the run was asked for; every other field, with the
    model's configuration, is the run's config.json (:func:`run_config`).
    """

    data_dir: str = DEFAULT_QUIXER_DATA_DIR
    epoch_size: int | None = None
    eval_targets: int | None = DEFAULT_EVAL_TARGETS
    max_train_batches: int | None = None
    selection_targets: int | None = 0
    protocol: str = "project"
    epochs: int = 50
    batch_size: int = 32
    eval_batch_size: int | None = 256
    lr: float = 0.002
    lr_schedule: str = "plateau"
    weight_decay: float = 1e-4
    max_grad_norm: float = 5.0
    patience: int = 3
    seed: int = 42
    device: str = "auto"
    cuda_graph: bool = False
    output_dir: str = "runs/quixer"
    resume: bool = False
    tensorboard: str | None = None
    command: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        """One clear line for impossible values before any work is done."""
        checks = [
            ("epochs", lambda v: v >= 1, ">= 1"),
            ("batch_size", lambda v: v >= 1, ">= 1"),
            ("eval_batch_size", lambda v: v is None or v >= 1, ">= 1"),
            ("lr", lambda v: v > 0 and math.isfinite(v), "> 0"),
            ("weight_decay", lambda v: v >= 0, ">= 0"),
            ("max_grad_norm", lambda v: v >= 0, ">= 0"),
            ("patience", lambda v: v >= 0, ">= 0"),
            ("epoch_size", lambda v: v is None or v >= 1, ">= 1"),
            ("eval_targets", lambda v: v is None or v >= 0, ">= 0"),
            ("selection_targets", lambda v: v is None or v >= 0, ">= 0"),
            ("max_train_batches", lambda v: v is None or v >= 1, ">= 1"),
            ("lr_schedule", lambda v: v in LR_SCHEDULES, "one of " + ", ".join(LR_SCHEDULES)),
        ]
        for key, ok, what in checks:
            value = getattr(self, key)
            if value is not None and not ok(value):
                raise UserError(f"--{key} must be {what}, got {value}")


def run_config(train: TrainConfig, model_config: Any) -> dict:
    """The values that define a run (its config.json): the training and model configurations'
    fields under their flag names, in sorted order."""
    values = {f.name: getattr(train, f.name) for f in fields(train) if f.name not in _NOT_RECORDED}
    model_values = asdict(model_config)
    shared = sorted(set(values) & set(model_values))
    if shared:
        raise ValueError(f"the model configuration repeats training fields: {', '.join(shared)}")
    return dict(sorted({**values, **model_values}.items()))


# ----------------------------------------------------------------------------------------------
# Evaluation


def split_output(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Models return logits, or (logits, postselection probability per window) like Quixer."""
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


@torch.no_grad()
def evaluate(model: nn.Module, data: TokenData, split: str, targets: EvalTargets, batch_size: int,
             dist: DistContext, desc: str = "eval") -> TargetScores:
    """Per-target scores of ``model`` on ``targets`` of ``split``, gathered over all processes."""
    model.eval()
    parts: dict[str, list] = {"nll": [], "top1": [], "top5": [], "post": []}
    batches = eval_batches(data.streams(split), targets, data.window_size, batch_size, rank=dist.rank,
                           world_size=dist.world_size)
    for x, y in _progress(batches, dist, desc, total=steps_per_epoch(len(targets), batch_size, dist.world_size)):
        x, y = x.to(dist.device, non_blocking=True), y.to(dist.device, non_blocking=True)
        logits, post = split_output(model(x))
        for key, value in zip(("nll", "top1", "top5"), score_logits(logits, y)):
            parts[key].append(value.cpu().numpy())
        if post is not None:
            parts["post"].append(post.detach().double().cpu().numpy())
    mine = {k: np.concatenate(v) if v else None for k, v in parts.items()}
    gathered = dist.gather_object(mine)  # contiguous shards: rank order is target order
    joined = {k: (np.concatenate([g[k] for g in gathered]) if gathered[0][k] is not None else None) for k in mine}
    return targets.scores(joined["nll"], joined["top1"], joined["top5"], joined["post"])


def _progress(iterable, dist: DistContext, desc: str, total: int | None = None):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True,
                disable=None if dist.is_main else True)



# ----------------------------------------------------------------------------------------------
# Layerwise training (generic: any model with set_active_layers / frozen_masks)


def layerwise_layer_count(model: nn.Module) -> int:
    """How many layers the model switches on one by one (its layerwise-training protocol)."""
    if hasattr(model, "set_active_layers") and hasattr(model, "frozen_masks"):
        for attr in ("n_layerwise_layers", "n_ansatz_layers"):
            if hasattr(model, attr):
                return int(getattr(model, attr))
    raise UserError(f"{type(model).__name__} does not support --use_layerwise_training")


def active_layers_at(epoch: int, epochs: int, n_layers: int) -> int:
    """Layers active in 0-based ``epoch``: layer l switches on at epoch floor(l * epochs / n_layers)."""
    return sum(1 for layer in range(n_layers) if (layer * epochs) // n_layers <= epoch)


class FrozenEntries:
    """Keeps the entries named by ``model.frozen_masks()`` exactly unchanged across a step.

    Their gradients are zeroed before clipping (so they do not count in the norm) and their
    values are restored after the optimizer step (undoing weight decay and Adam momentum).
    """

    def __init__(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        self.entries = []
        for name, mask in model.frozen_masks().items():
            if name not in params:
                raise RuntimeError(f"frozen_masks names unknown parameter {name!r}")
            p = params[name]
            mask = mask.to(p.device).expand_as(p)
            if bool(mask.any()):
                self.entries.append((p, mask))
        self.saved: list[torch.Tensor] = []

    def before_step(self) -> None:
        self.saved = [p.detach()[m].clone() for p, m in self.entries]
        for p, m in self.entries:
            if p.grad is not None:
                p.grad[m] = 0

    def after_step(self) -> None:
        with torch.no_grad():
            for (p, m), v in zip(self.entries, self.saved):
                p[m] = v


def _data_summary(data: TokenData) -> dict:
    return {"fingerprint": data.fingerprint, "vocab_size": data.vocab_size, "window_size": data.window_size,
            "windows": {s: int(t.shape[0]) for s, t in data.splits.items()},
            "tokens": {s: len(data.streams(s)) for s in data.splits}}


# ----------------------------------------------------------------------------------------------
# Parameter accounting


def count_parameters(model: nn.Module) -> int:
    """Trainable real numbers (a complex parameter counts twice)."""
    return sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters() if p.requires_grad)


def parameter_breakdown(model: nn.Module) -> dict[str, int]:
    """Trainable real numbers per component, from the model's ``PARAMETER_GROUPS`` (component ->
    parameter-name prefixes); whatever no prefix claims is counted as ``other``."""
    groups: dict[str, tuple[str, ...]] = getattr(model, "PARAMETER_GROUPS", {})
    out = dict.fromkeys(groups, 0)
    for name, p in model.named_parameters():
        if p.requires_grad:
            part = next((g for g, prefixes in groups.items() if name.startswith(prefixes)), "other")
            out[part] = out.get(part, 0) + p.numel() * (2 if p.is_complex() else 1)
    return out


# ----------------------------------------------------------------------------------------------
# The loop


@dataclass
class RunState:
    """What the loop carries from epoch to epoch (checkpointed in last.pt)."""

    epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    active_layers: int = 0
    stop_reason: str = ""  # "", then "early_stop" (patience ran out) or "max_epochs"
    extended_from: list = field(default_factory=list)  # the --epochs of each earlier end (extensions)
    started: str = ""  # UTC time the run's first epoch started (kept across resumptions)
    train_seconds: float = 0.0
    step_seconds: float = 0.0
    train_sequences: int = 0


@dataclass
class Run:
    """One training run, set up: its configurations, data and targets, model, optimiser, schedule and state."""

    train: TrainConfig
    model_config: Any  # the model family's configuration (a dataclass), carried by the checkpoints
    dist: DistContext
    out: Path
    config: dict  # config.json: run_config(train, model_config)
    model_name: str
    data: TokenData
    schedule: TrainSchedule
    targets: dict[str, EvalTargets]
    model: nn.Module
    step_model: nn.Module  # the DDP wrapper when distributed, else the model
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    steps: int  # optimizer steps per epoch
    n_layers: int  # layers switched on one by one (0: no layerwise training)
    state: RunState = field(default_factory=RunState)
    epoch_callback: EpochCallback | None = None
    curves: LiveCurves | None = None  # --tensorboard
    graphed: bool = False  # --cuda_graph on a GPU: full batches replayed from a captured step
    captured: CapturedSteps | None = None  # made on the first training batch
    lr_tensors: list = field(default_factory=list)  # the learning rates a captured step reads

    @property
    def eval_batch_size(self) -> int:
        return self.train.eval_batch_size or self.train.batch_size


def train_model(
    train: TrainConfig,
    model_config: Any,
    build_model: ModelBuilder,
    *,
    model_name: str,
    layerwise: bool = False,
    epoch_callback: EpochCallback | None = None,
    score_test: bool = True,
) -> dict:
    """Train, validate each epoch, checkpoint, test the best checkpoint; return results.json's dict.
    ``score_test=False`` (the tuner) never touches the test split: results hold validation only.

    ``model_config`` (a dataclass) is written to config.json with ``train`` and carried by the
    checkpoints. ``build_model(data, model_config, train)`` is called right after seeding, so
    initial weights depend on ``train.seed`` only. ``epoch_callback(epoch, record)`` runs after
    each epoch's checkpoint is written (the tuner reports to Optuna and may raise
    ``optuna.TrialPruned`` there).
    """
    if train.cuda_graph and layerwise:
        raise UserError("--cuda_graph cannot be combined with --use_layerwise_training (its frozen entries are "
                        "restored by indexing on the host, which a captured step cannot do)")
    dist = init_distributed(train.device)
    try:
        out = Path(train.output_dir)
        with run_lock(out) if dist.is_main else contextlib.nullcontext():  # one process trains a run at a time
            return _train_locked(train, model_config, build_model, dist, out, model_name, layerwise, epoch_callback,
                                 score_test)
    finally:
        dist.close()


def _train_locked(train: TrainConfig, model_config: Any, build_model: ModelBuilder, dist: DistContext, out: Path,
                  model_name: str, layerwise: bool, epoch_callback: EpochCallback | None, score_test: bool) -> dict:
    """:func:`train_model` once ``out`` is this process's: decide, set up, train, and on failure leave
    a diverged marker or nothing."""
    config = run_config(train, model_config)
    fingerprint = data_fingerprint(train.data_dir) if Path(train.data_dir).is_dir() else None
    mode, last = prepare_run_dir(out, config, train.resume, fingerprint)
    if mode == "done":
        log.info("%s: run already finished; results.json kept", out)
        return read_json(out / "results.json")
    created = not out.exists()
    try:
        run = _setup(train, model_config, build_model, dist, out, config, model_name, layerwise, fingerprint)
        run.epoch_callback = epoch_callback
        return _train(run, mode, score_test, last)
    except TrainingDiverged as exc:
        if dist.is_main:
            atomic_write_json(out / DIVERGED_FILE, {"message": str(exc), "stop_reason": "diverged"})
        raise
    except BaseException:
        if created and dist.is_main and not (out / "last.pt").exists():
            shutil.rmtree(out, ignore_errors=True)  # a run that never finished an epoch leaves nothing
        raise


def _train(run: Run, mode: str, score_test: bool, last: dict | None) -> dict:
    """Run the epochs (resuming or extending per ``mode`` from ``last``, last.pt's contents) and score
    the best checkpoint, with --tensorboard's event files open meanwhile."""
    if run.train.tensorboard and run.dist.is_main:
        run.curves = LiveCurves(run.train.tensorboard, run.out.name)
    try:
        return _run_to_end(run, mode, score_test, last)
    finally:
        if run.curves is not None:
            run.curves.close()


def _run_to_end(run: Run, mode: str, score_test: bool, last: dict | None) -> dict:
    """Resume or extend from ``last`` as ``mode`` says, train the remaining epochs, score the best checkpoint."""
    dist, out = run.dist, run.out
    if mode in ("resume", "extend"):
        _resume(run, last)
        if run.state.stop_reason == "max_epochs" and run.state.epoch < run.train.epochs:
            _extend(run)  # also an extension that was interrupted before its first new epoch
    run.state.started = run.state.started or now()
    if dist.is_main:
        rewrite_metrics(out / "metrics.jsonl", run.state.epoch)
    while not run.state.stop_reason:
        _run_epoch(run)
    return _finish(run, score_test)


def _extend(run: Run) -> None:
    """Continue a run that reached its old --epochs up to the new one. A cosine schedule is
    re-laid over the new length: the rate returns to that curve's value at the current step and
    decays to zero at the new --epochs (a plateau schedule simply continues)."""
    state, train = run.state, run.train
    old_epochs = state.epoch
    state.stop_reason = ""
    state.extended_from.append(old_epochs)
    if train.lr_schedule == "cosine":
        sched = run.lr_scheduler
        sched.T_max = train.epochs * run.steps
        t = sched.last_epoch
        for group, base in zip(run.optimizer.param_groups, sched.base_lrs):
            _set_lr(group, sched.eta_min + (base - sched.eta_min) * (1 + math.cos(math.pi * t / sched.T_max)) / 2)
        sched._last_lr = [float(g["lr"]) for g in run.optimizer.param_groups]
    log.info("%s: extending the run from %d to %d epochs", run.out, old_epochs, train.epochs)


def _setup(train: TrainConfig, model_config: Any, build_model: ModelBuilder, dist: DistContext, out: Path,
           config: dict, model_name: str, layerwise: bool, fingerprint: str | None) -> Run:
    data = _load_data(train, dist, lambda d: build_model(d, model_config, train), fingerprint)
    seed_everything(train.seed)
    model = build_model(data, model_config, train).to(dist.device)
    if dist.enabled:  # different dropout masks per process (restored per rank on resume)
        torch.manual_seed(train.seed + 7919 * dist.rank)
    epoch_size = train.epoch_size or int(data.splits["train"].shape[0])
    schedule = TrainSchedule(data.streams("train"), data.window_size, epoch_size, train.seed)
    targets = {s: eval_targets(data.streams(s), data.window_size, train.eval_targets) for s in ("val", "test")}
    targets["selection"] = targets["val"].sample(train.selection_targets)
    steps = steps_per_epoch(epoch_size, train.batch_size, dist.world_size, train.max_train_batches)
    graphed = _captures_steps(train, dist)
    optimizer, lr_scheduler = _optimizer(train, model, steps, graphed)
    step_model = model
    if dist.enabled:
        step_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    log.info("%s: %d trainable parameters on %s (%d process%s); %d windows per epoch, %d val / %d test targets, "
             "%d val targets per epoch for model selection", model_name, count_parameters(model), dist.device,
             dist.world_size, "es" if dist.enabled else "", min(epoch_size, steps * train.batch_size * dist.world_size),
             len(targets["val"]), len(targets["test"]), len(targets["selection"]))
    dist.barrier()  # every rank has read config.json before rank 0 writes it
    if dist.is_main:  # written once the run is set up: a refused or failed set-up leaves nothing behind
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", config)
    return Run(train, model_config, dist, out, config, model_name, data, schedule, targets, model, step_model,
               optimizer, lr_scheduler, steps, layerwise_layer_count(model) if layerwise else 0, graphed=graphed)


def _load_data(train: TrainConfig, dist: DistContext, build: Callable[[TokenData], nn.Module],
               fingerprint: str | None) -> TokenData:
    """The run's tokens (``fingerprint``: their :func:`data_fingerprint`, already computed to check the
    run directory); with --device auto and a GPU, the device that trains ``build(data)`` faster."""
    data = load_token_data(train.data_dir, fingerprint=fingerprint)
    log.info("data %s: %s windows, %s tokens in streams, window %d, vocabulary %d (%s)", data.data_dir,
             "/".join(str(int(data.splits[s].shape[0])) for s in data.splits),
             "/".join(str(len(data.streams(s))) for s in data.splits), data.window_size, data.vocab_size,
             data.vocab_source)
    if train.device == "auto" and dist.device.type == "cuda" and not dist.enabled:
        # a GPU is not always faster (a small model at a small batch is launch-bound): measure
        dist.device, seconds = fastest_device(lambda: build(data), data.n_input_tokens, data.vocab_size,
                                              train.batch_size)
        log.info("--device auto: %s (seconds per training step: %s)", dist.device,
                 ", ".join(f"{k} {v:.4f}" for k, v in seconds.items()))
    if dist.device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return data


def _optimizer(train: TrainConfig, model: nn.Module, steps: int, graphed: bool,
               split: bool = True) -> tuple[torch.optim.Optimizer, Any]:
    """Adam as the official code, and the learning-rate schedule of --lr_schedule.

    Adam is fused (one kernel for every tensor's update: the same arithmetic, far fewer passes over
    memory, which matters for the 4,096-row embeddings and heads of raw k-mers) unless a CUDA graph
    captures the step. Fused Adam takes real tensors only, so with ``split`` Quixer's complex LCU
    coefficients get a second parameter group that keeps the loop; ``split=False`` is the one group
    of runs begun before (:func:`_optimizer_for`). A resumed run keeps the implementation it began
    with: ``load_state_dict`` restores each group's flag.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    real = [p for p in params if p.is_floating_point()]
    if split and len(real) < len(params):
        groups = [{"params": real, "fused": not graphed or None},
                  {"params": [p for p in params if not p.is_floating_point()]}]
    else:
        groups = [{"params": params, "fused": (not graphed and len(real) == len(params)) or None}]
    optimizer = torch.optim.Adam(groups, lr=train.lr, weight_decay=train.weight_decay, eps=ADAM_EPS,
                                 capturable=graphed)
    if train.lr_schedule == "cosine":
        lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train.epochs * steps)
    else:
        lr_scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0, threshold=1e-4)
    if graphed:  # after the schedule is set up: its base rates stay floats
        capturable_optimizer(optimizer, True)
    return optimizer, lr_scheduler


def _optimizer_for(run: Run, saved: dict) -> tuple[torch.optim.Optimizer, Any]:
    """The run's optimizer and schedule, rebuilt as one parameter group where ``saved`` (a checkpoint's
    optimizer state) has one and the run has two: a Quixer run begun before the complex coefficients
    had their own group resumes with the layout, and so the arithmetic, it began with."""
    if len(saved.get("param_groups", ())) == 1 < len(run.optimizer.param_groups):
        return _optimizer(run.train, run.model, run.steps, run.graphed, split=False)
    return run.optimizer, run.lr_scheduler


def _captures_steps(train: TrainConfig, dist: DistContext) -> bool:
    """Whether --cuda_graph applies: on a GPU, in one process (a log line on a CPU, where it is a no-op)."""
    if not train.cuda_graph:
        return False
    if dist.enabled:
        raise UserError("--cuda_graph is not supported under torchrun (DistributedDataParallel); drop one of them")
    if dist.device.type != "cuda":
        log.info("--cuda_graph: training on %s, where nothing is captured; steps run as usual", dist.device)
        return False
    return True


def _resume(run: Run, ckpt: dict) -> None:
    """Continue from ``ckpt``, last.pt's contents (read by :func:`prepare_run_dir`)."""
    saved, now_data = dict(ckpt.get("data") or {}), _data_summary(run.data)
    if "fingerprint" not in saved:  # checkpoints written before data fingerprints: compare the rest
        now_data.pop("fingerprint")
    if saved != now_data:
        raise UserError(f"{run.out}/last.pt was trained on other data; choose another --output_dir or the run's "
                        "own --data_dir")
    run.model.load_state_dict(ckpt["model"])
    run.optimizer, run.lr_scheduler = _optimizer_for(run, ckpt["optimizer"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    capturable_optimizer(run.optimizer, run.graphed)  # whichever way the checkpoint was written
    run.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    run.state = RunState(**ckpt["state"])
    rng = ckpt["rng"]
    if len(rng) != run.dist.world_size:
        log.warning("resuming with %d processes, checkpoint had %d: the result will differ from an unbroken run",
                    run.dist.world_size, len(rng))
    set_rng_state(rng[run.dist.rank % len(rng)])
    log.info("resuming %s after epoch %d (best val loss %.4f at epoch %d)", run.out, run.state.epoch,
             run.state.best_val_loss, run.state.best_epoch)


def _run_epoch(run: Run) -> None:
    """Train one epoch, validate, update the schedule and the stopping state, checkpoint."""
    train, state = run.train, run.state
    epoch = state.epoch
    t_epoch = time.perf_counter()
    record: dict[str, Any] = {"epoch": epoch + 1, "lr": float(run.optimizer.param_groups[0]["lr"])}
    frozen = _activate_layers(run, record)
    replayed = run.captured.replayed if run.captured is not None else 0
    train_loss, n_seen, step_s = _train_steps(run, frozen, desc=f"epoch {epoch + 1}/{train.epochs}")
    if run.captured is not None:  # --cuda_graph on a GPU: how many of the epoch's steps were replays
        record["replayed_steps"] = run.captured.replayed - replayed
    if not math.isfinite(train_loss):
        raise TrainingDiverged(f"training loss became {train_loss} in epoch {epoch + 1}; lower --lr "
                               f"(now {train.lr}) or --max_grad_norm")
    val_scores = evaluate(run.model, run.data, "val", run.targets["selection"], run.eval_batch_size, run.dist,
                          desc="validation")
    val = val_scores.metrics()
    if not math.isfinite(val["loss"]):
        raise TrainingDiverged(f"validation loss became {val['loss']} in epoch {epoch + 1}; "
                               f"lower --lr (now {train.lr})")
    epoch_s = time.perf_counter() - t_epoch
    state.train_seconds += epoch_s
    state.step_seconds += step_s
    state.train_sequences += n_seen
    record.update(train_loss=train_loss, **{f"val_{k}": v for k, v in val.items() if not k.startswith("novel")},
                  epoch_seconds=epoch_s, sequences_per_second=n_seen / max(step_s, 1e-9))
    if "val_postselection" in record:
        record["postselection"] = record.pop("val_postselection")
    improved = _update_stopping(run, val["loss"])
    log.info("epoch %d/%d: train loss %.4f, val loss %.4f (perplexity %s, top-1 %.2f %%, top-5 %.2f %%)%s, %.1f s%s",
             epoch + 1, train.epochs, train_loss, val["loss"], format_perplexity(val["perplexity"]), 100 * val["top1"],
             100 * val["top5"],
             f", postselection {val['postselection']:.3f}" if "postselection" in val else "", epoch_s,
             f"; stop: {state.stop_reason}" if state.stop_reason else "")
    _checkpoint(run, record, improved, val, val_scores)
    if run.curves is not None:
        run.curves.epoch(epoch + 1, record)
    if run.epoch_callback is not None:
        run.epoch_callback(epoch + 1, dict(record))


def _activate_layers(run: Run, record: dict) -> "FrozenEntries | None":
    """Layerwise training: switch on this epoch's layers; a newly active layer resets patience."""
    if not run.n_layers:
        return None
    k = active_layers_at(run.state.epoch, run.train.epochs, run.n_layers)
    if k != run.state.active_layers:
        run.state.bad_epochs = 0
        run.state.active_layers = k
    run.model.set_active_layers(k)
    record["active_layers"] = k
    return FrozenEntries(run.model)


def _update_stopping(run: Run, val_loss: float) -> bool:
    """Best loss, patience, the plateau schedule and the stop reason after one epoch."""
    state, train = run.state, run.train
    improved = val_loss < state.best_val_loss
    if improved:
        state.best_val_loss, state.best_epoch, state.bad_epochs = val_loss, state.epoch + 1, 0
    else:
        state.bad_epochs += 1
    if train.lr_schedule == "plateau":
        run.lr_scheduler.step(val_loss)
        _keep_lr_tensors(run)
    state.epoch += 1
    if train.patience and state.bad_epochs >= train.patience:
        state.stop_reason = "early_stop"
    elif state.epoch >= train.epochs:
        state.stop_reason = "max_epochs"
    return improved


def _checkpoint(run: Run, record: dict, improved: bool, val: dict, val_scores: TargetScores) -> None:
    """metrics.jsonl, last.pt, and on a new best epoch best.pt with its validation scores (written
    first, so the scores file is never newer than a best.pt it does not belong to)."""
    ranks_rng = run.dist.gather_object(rng_state())
    if not run.dist.is_main:
        return
    rewrite_metrics(run.out / "metrics.jsonl", run.state.epoch - 1, record)
    if improved:
        val_scores.save(run.out / "val_scores.npz")
        atomic_torch_save(run.out / "best.pt", {
            "model": run.model.state_dict(), "epoch": run.state.epoch, "val": val,
            "active_layers": record.get("active_layers"), "config": run.config,
            "model_config": asdict(run.model_config),
        })
    atomic_torch_save(run.out / "last.pt", {
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "lr_scheduler": run.lr_scheduler.state_dict(), "state": asdict(run.state), "rng": ranks_rng,
        "data": _data_summary(run.data), "config": run.config, "model_name": run.model_name,
        "model_config": asdict(run.model_config),
    })


def _train_steps(run: Run, frozen: "FrozenEntries | None", desc: str) -> tuple[float, int, float]:
    """One epoch of optimizer steps; returns (mean loss over all processes, windows seen by all
    processes, seconds spent)."""
    train, dist = run.train, run.dist
    run.step_model.train()
    sums = torch.zeros(2, dtype=torch.float64, device=dist.device)
    step = _steps(run, frozen)
    t0 = time.perf_counter()
    batches = train_batches(run.data.streams("train"), run.schedule.epoch(run.state.epoch), run.data.window_size,
                            train.batch_size, rank=dist.rank, world_size=dist.world_size, limit=train.max_train_batches)
    bar = _progress(batches, dist, desc, total=run.steps)
    for i, (x, y) in enumerate(bar):
        x, y = x.to(dist.device, non_blocking=True), y.to(dist.device, non_blocking=True)
        loss = step(x, y)
        if train.lr_schedule == "cosine":
            run.lr_scheduler.step()
            _keep_lr_tensors(run)
        sums[0] += loss.double() * len(y)
        sums[1] += len(y)
        if i % STEP_EVERY == 0 and (run.curves is not None or not getattr(bar, "disable", True)):
            value = loss.item()
            bar.set_postfix(loss=f"{value:.3f}")
            if run.curves is not None:
                run.curves.step(run.state.epoch * run.steps + i, value)
    seconds = time.perf_counter() - t0
    dist.all_reduce_sum(sums)
    n = int(sums[1])
    return float(sums[0]) / max(n, 1), n, seconds


def make_step(run: Run, frozen: "FrozenEntries | None") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``step(x, y)``: forward, cross-entropy, backward, layerwise freezing, clipping and the optimizer
    step on one batch; returns the detached loss. The one step of every run: eager, or with --cuda_graph
    captured as it is (so nothing in it reads a value back to the host)."""
    params = [p for p in run.model.parameters() if p.requires_grad]
    max_norm = run.train.max_grad_norm

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, _ = split_output(run.step_model(x))
        loss = F.cross_entropy(logits.float(), y)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if frozen is not None:
            frozen.before_step()
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        run.optimizer.step()
        if frozen is not None:
            frozen.after_step()
        return loss.detach()

    return step


def _steps(run: Run, frozen: "FrozenEntries | None") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The epoch's step function: :func:`make_step`, or with --cuda_graph the run's captured steps
    (made once, on the first full batch, and kept for every epoch: the shapes do not change)."""
    if not run.graphed:
        return make_step(run, frozen)
    if run.captured is None:
        run.captured = CapturedSteps(make_step(run, frozen), run.model, run.optimizer, run.train.batch_size)
        run.lr_tensors = [group["lr"] for group in run.optimizer.param_groups]
    return run.captured


def _set_lr(group: dict, value: float) -> None:
    """A param group's learning rate, in place where it is a tensor (a captured step reads that tensor)."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


def _keep_lr_tensors(run: Run) -> None:
    """With a captured step: if a schedule replaced a group's learning-rate tensor (torch releases before
    2.10 assigned instead of filling in place), copy the new rate into the captured tensor and put it back."""
    for group, tensor in zip(run.optimizer.param_groups, run.lr_tensors):
        if group["lr"] is not tensor:
            if isinstance(group["lr"], torch.Tensor):
                tensor.copy_(group["lr"])
            else:
                tensor.fill_(group["lr"])
            group["lr"] = tensor


def _simulator_name(model: nn.Module) -> str | None:
    """The circuit simulator a Quixer-like model used on its device (None for classical models)."""
    simulator = getattr(model, "simulator", None)
    return simulator().name if callable(simulator) else None


def _best_val_scores(run: Run, best: dict) -> TargetScores:
    """The best epoch's validation scores as saved beside best.pt; scored again only when that file
    is missing or belongs to other targets or another checkpoint."""
    path = run.out / "val_scores.npz"
    if path.is_file():
        saved = TargetScores.load(path)
        if saved.key == run.targets["val"].key and saved.metrics()["loss"] == best.get("val", {}).get("loss"):
            return saved
    scores = evaluate(run.model, run.data, "val", run.targets["val"], run.eval_batch_size, run.dist, desc="best: val")
    if run.dist.is_main:
        scores.save(path)
    return scores


def _finish(run: Run, score_test: bool = True) -> dict:
    """Score the best checkpoint on all validation targets (and test, unless ``score_test`` is
    False); write the score files and results.json."""
    dist, out = run.dist, run.out
    dist.barrier()  # best.pt is complete before every rank reads it
    best = load_torch_file(out / "best.pt")
    run.model.load_state_dict(best["model"])
    if run.n_layers and best.get("active_layers") is not None:
        run.model.set_active_layers(best["active_layers"])
    scores = {"val": _best_val_scores(run, best)}
    eval_seconds = None
    if score_test:
        t0 = time.perf_counter()
        scores["test"] = evaluate(run.model, run.data, "test", run.targets["test"], run.eval_batch_size, dist,
                                  desc="best: test")
        eval_seconds = time.perf_counter() - t0
    results = _results(run, best, scores, eval_seconds)
    if dist.is_main:
        if "test" in scores:
            scores["test"].save(out / "test_scores.npz")
        atomic_write_json(out / "results.json", results)
        split = "test" if "test" in scores else "val"
        log.info("%s: loss %.4f, perplexity %s, top-1 %.2f %%, top-5 %.2f %% (%s after %d epochs) -> %s", split,
                 results[f"{split}_loss"], format_perplexity(results[f"{split}_perplexity"]),
                 100 * results[f"{split}_top1"], 100 * results[f"{split}_top5"], run.state.stop_reason,
                 run.state.epoch, out / "results.json")
    return results


def _results(run: Run, best: dict, scores: dict[str, TargetScores], eval_seconds: float | None) -> dict[str, Any]:
    """results.json: the scores of the best checkpoint, how the run went and how it was made."""
    state, dist = run.state, run.dist
    results: dict[str, Any] = {
        "model": run.model_name, "seed": run.train.seed, "data_dir": str(run.train.data_dir),
        "data_fingerprint": run.data.fingerprint,
        "parameters": count_parameters(run.model), "parameter_breakdown": parameter_breakdown(run.model),
    }
    for split in ("test", "val"):
        if split in scores:
            metrics = scores[split].metrics()
            results.update(prefixed(split, {k: v for k, v in metrics.items() if k != "postselection"}))
            results[f"{split}_targets"] = len(scores[split])
    if "test" in scores:
        results.update(targets_sha256=run.targets["test"].key,
                       eval_sequences_per_second=len(scores["test"]) / max(eval_seconds, 1e-9))
        if "postselection" in scores["test"].metrics():
            results["postselection"] = scores["test"].metrics()["postselection"]
    results.update(
        train_seconds=state.train_seconds,
        train_sequences_per_second=state.train_sequences / max(state.step_seconds, 1e-9),
        epochs_run=state.epoch, best_epoch=best["epoch"], stop_reason=state.stop_reason,
        converged=is_converged(state.stop_reason, selection_losses(run.out)),
        converged_rule=CONVERGENCE_RULE, extended_from=state.extended_from,
        protocol=run.train.protocol, lr_schedule=run.train.lr_schedule,
        selection_targets=len(run.targets["selection"]), max_epochs=run.train.epochs,
        epoch_size=run.schedule.epoch_size, vocabulary_size=run.data.vocab_size, window_size=run.data.window_size,
        windows={s: int(t.shape[0]) for s, t in run.data.splits.items()},
        world_size=dist.world_size, device=str(dist.device), peak_rss_mb=peak_rss_mb(),
        torch_version=torch.__version__,
        provenance=provenance(state.started, command=list(run.train.command or ()) or None, device=str(dist.device),
                              simulator=_simulator_name(run.model)),
    )
    return results


# ----------------------------------------------------------------------------------------------
# The model families: Quixer (train_quixer_hybrid.py and the tuner) and the classical baselines


def _check_quixer_fits(data: TokenData, cfg: QuixerConfig, train: TrainConfig) -> None:
    """One line instead of an allocation failure for a model too large for this machine."""
    from .model import quixer_memory_bytes

    need = quixer_memory_bytes(cfg.qubits, data.n_input_tokens, data.vocab_size, cfg.degree, train.batch_size,
                               train.eval_batch_size or train.batch_size)
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if torch.cuda.is_available() and train.device != "cpu":
        have = max(have, torch.cuda.get_device_properties(0).total_memory)
    if need > have:
        raise UserError(f"a Quixer of {cfg.qubits} qubits would need about {need / 2**30:.3g} GiB at batch "
                        f"{train.batch_size} (this machine has {have / 2**30:.0f} GiB); use fewer --qubits")


def build_quixer(data: TokenData, cfg: QuixerConfig, train: TrainConfig) -> nn.Module:
    """The Quixer of ``cfg`` for this data, initialised with ``cfg.init_strategy`` from ``train.seed``."""
    from .model import Quixer

    _check_quixer_fits(data, cfg, train)
    centroids = load_cluster_centers(data.data_dir) if cfg.init_strategy == "centroid" else None
    try:
        model = Quixer.from_config(cfg, n_tokens=data.n_input_tokens, vocabulary_size=data.vocab_size)
        model.initialize(cfg.init_strategy, centroids=centroids, generator=torch.Generator().manual_seed(train.seed))
    except ValueError as exc:  # sizes the model rejects, centroids of the wrong shape
        raise UserError(f"cannot build Quixer: {exc}") from None
    return model


def build_classical(data: TokenData, cfg: ClassicalConfig, train: TrainConfig) -> nn.Module:
    """The neural baseline of ``cfg`` for this data (initialised from the seeded global generator)."""
    return cfg.build_model(data.vocab_size, data.n_input_tokens)
