"""The one training loop, shared by the Quixer trainer, the classical baselines and the tuner.

What a run does (``runs/<name>/``):

- ``config.json``  every flag value of the run (also accepted back by ``--config``);
- ``metrics.jsonl`` one JSON object per epoch (epoch, train_loss, val_loss, val_perplexity,
  val_top1, val_top5, epoch_seconds, lr, sequences_per_second, and postselection /
  active_layers where the model has them);
- ``best.pt`` (lowest validation loss) and ``last.pt`` (everything needed to continue:
  model, optimizer, scheduler, completed epochs, the RNG states of python / numpy / torch /
  CUDA / the data-loader generator of every rank, best loss, patience counter, timers),
  both written atomically after every epoch;
- ``results.json`` at the end: test (and validation) metrics of the best checkpoint.

Optimisation follows the official Quixer code: Adam (eps 1e-10, weight decay 1e-4 by
default), gradient clipping at norm 5, cross-entropy on the last token; the learning rate
follows one cosine curve over all optimizer steps of the run.

Determinism: the shuffling order of epoch ``e`` is a pure function of ``(seed, e)``
(:func:`quixer.data.make_loader`) and the RNG states are checkpointed, so ``--resume`` after a
kill reproduces the unbroken run bit for bit on the same device and world size.

Distributed: launched by ``torchrun`` (``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` set), the
loop wraps the model in DistributedDataParallel (gloo on CPU, NCCL on CUDA), each process
reads ``--batch_size`` windows per step (global batch = batch_size x world size), metrics
are summed over all processes and only rank 0 writes files.

Layerwise training is a generic hook: any model with ``set_active_layers(k)``,
``frozen_masks()`` and ``n_ansatz_layers`` (or ``n_layerwise_layers``) can use it.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common import (
    UserError,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    load_torch_file,
    peak_rss_mb,
    read_json,
    resolve_device,
    seed_everything,
)
from .data import TokenData, batches_per_epoch, load_cluster_centers, load_token_data, make_loader

log = logging.getLogger("quixer")

ADAM_EPS = 1e-10  # as the official Quixer code
DEFAULT_QUIXER_DATA_DIR = "quantized_embeddings_autoregressive"
# Flags that do not change what a run computes: they may differ when resuming.
_IGNORED_ON_RESUME = frozenset({"output_dir", "data_dir", "device", "num_workers", "verbose", "resume", "config"})
# Flags that are never part of a run's config.json.
_NOT_CONFIG = frozenset({"config", "resume", "verbose"})

EpochCallback = Callable[[int, dict], None]


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite (lower the learning rate)."""


# ----------------------------------------------------------------------------------------------
# Command-line flags (one block shared by every trainer and the tuner)


def add_training_args(
    parser: argparse.ArgumentParser,
    *,
    data_dir: str = DEFAULT_QUIXER_DATA_DIR,
    output_dir: str | None = "runs/quixer",
    lr: float | None = 0.002,
    run_flags: bool = True,
) -> None:
    """Data, optimisation and run flags. ``run_flags=False`` leaves out the per-run flags
    (--epochs, --output_dir, --resume, --patience, --config) for the tuner, which sets them."""
    g = parser.add_argument_group("data")
    g.add_argument("--data_dir", default=data_dir,
                   help="token directory with {train,val,test}.pt (stage-3 output or classical-benchmark "
                        "tokens) (default: %(default)s)")
    g.add_argument("--num_workers", type=int, default=0, help="data-loader worker processes (default: %(default)s)")
    g.add_argument("--max_train_batches", type=int, default=None,
                   help="cap on training batches per epoch, for quick runs (default: all)")
    g = parser.add_argument_group("optimisation")
    if run_flags:
        g.add_argument("--epochs", type=int, default=50, help="training epochs (default: %(default)s)")
    g.add_argument("--batch_size", type=int, default=32,
                   help="windows per optimizer step and process (default: %(default)s)")
    g.add_argument("--eval_batch_size", type=int, default=None,
                   help="windows per evaluation batch (default: --batch_size)")
    g.add_argument("--lr", type=float, default=lr,
                   help="peak learning rate of the cosine schedule (default: %s)"
                        % (lr if lr is not None else "the model's own default"))
    g.add_argument("--weight_decay", type=float, default=1e-4, help="Adam weight decay (default: %(default)s)")
    g.add_argument("--max_grad_norm", type=float, default=5.0,
                   help="gradient clipping norm, 0 = no clipping (default: %(default)s)")
    if run_flags:
        g.add_argument("--patience", type=int, default=0,
                       help="stop after this many epochs without a lower validation loss, 0 = never "
                            "(default: %(default)s)")
    g = parser.add_argument_group("run")
    g.add_argument("--seed", type=int, default=42, help="seed of weights, shuffling and dropout (default: %(default)s)")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto = CUDA when available (default: %(default)s)")
    if run_flags:
        g.add_argument("--output_dir", default=output_dir,
                       help="run directory: config, metrics, checkpoints, results (default: %(default)s)")
        g.add_argument("--resume", action="store_true",
                       help="continue the run in --output_dir from its last checkpoint (same flags required)")
        g.add_argument("--config", default=None,
                       help="JSON object of flag values (e.g. the tuner's best_config.json or a run's "
                            "config.json); flags given on the command line override it")
    g.add_argument("--verbose", action="store_true", help="debug logging")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; with ``--config FILE`` its values become defaults that explicit flags override."""
    args = parser.parse_args(argv)
    path = getattr(args, "config", None)
    if not path:
        return args
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
    parser.set_defaults(**values)
    return parser.parse_args(argv)


def validate_training_args(args: argparse.Namespace) -> None:
    """One clear line for impossible values before any work is done."""
    checks = [
        ("epochs", lambda v: v >= 1, ">= 1"),
        ("batch_size", lambda v: v >= 1, ">= 1"),
        ("eval_batch_size", lambda v: v is None or v >= 1, ">= 1"),
        ("lr", lambda v: v > 0 and math.isfinite(v), "> 0"),
        ("weight_decay", lambda v: v >= 0, ">= 0"),
        ("max_grad_norm", lambda v: v >= 0, ">= 0"),
        ("patience", lambda v: v >= 0, ">= 0"),
        ("num_workers", lambda v: v >= 0, ">= 0"),
        ("max_train_batches", lambda v: v is None or v >= 1, ">= 1"),
        ("dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ]
    for key, ok, what in checks:
        if hasattr(args, key) and getattr(args, key) is not None and not ok(getattr(args, key)):
            raise UserError(f"--{key} must be {what}, got {getattr(args, key)}")


def run_config(args: argparse.Namespace) -> dict:
    """The flag values that define a run (written to config.json)."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_CONFIG}


# ----------------------------------------------------------------------------------------------
# Distributed context


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
        return values

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def gather_object(self, obj: Any) -> list:
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_distributed(device_flag: str) -> DistContext:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_flag)
    if world <= 1:
        return DistContext(device=device)
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if rank != 0:  # one copy of the progress log
        log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
    owns = not torch.distributed.is_initialized()
    if owns:
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device, owns_group=owns)


# ----------------------------------------------------------------------------------------------
# Metrics


def split_output(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Models return logits, or (logits, postselection probability per window) like Quixer."""
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, dist: DistContext | None = None,
             desc: str = "eval") -> dict[str, float]:
    """Cross-entropy (nats), perplexity = exp(mean CE), top-1 / top-5 accuracy and, for models
    that return it, the mean postselection probability; summed exactly over all processes."""
    dist = dist or DistContext(device=device)
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, top1, top5, postselection, n
    has_post = torch.zeros(1, dtype=torch.float64, device=device)
    for x, y in _progress(loader, dist, desc):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits, post = split_output(model(x))
        logits = logits.float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (logits.argmax(-1) == y).sum()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        sums[2] += (top == y[:, None]).any(-1).sum()
        if post is not None:
            sums[3] += post.detach().double().sum()
            has_post[0] = 1
        sums[4] += len(y)
    dist.all_reduce_sum(sums)
    dist.all_reduce_sum(has_post)
    n = float(sums[4])
    if n == 0:
        raise UserError("evaluation split is empty")
    loss = float(sums[0]) / n
    metrics = {"loss": loss, "perplexity": _perplexity(loss), "top1": float(sums[1]) / n, "top5": float(sums[2]) / n}
    if float(has_post[0]) > 0:
        metrics["postselection"] = float(sums[3]) / n
    return metrics


def _progress(iterable, dist: DistContext, desc: str):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, disable=None if dist.is_main else True)


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


# ----------------------------------------------------------------------------------------------
# RNG state (checkpointed for exact resume)


def _rng_state(loader_generator: torch.Generator) -> dict:
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": loader_generator.get_state(),
    }


def _set_rng_state(state: dict, loader_generator: torch.Generator) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
                         "has_gauss": npst["has_gauss"], "gauss": npst["gauss"]})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    loader_generator.set_state(state["loader"])


# ----------------------------------------------------------------------------------------------
# Run directory


def _describe_diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if k not in _IGNORED_ON_RESUME and old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4]) + (" ..." if len(keys) > 4 else "")


def prepare_run_dir(out: Path, config: dict, resume: bool) -> str:
    """Decide, without writing, what to do with ``out``: 'fresh', 'resume' or 'done'.

    A directory holding another run (different flags) is refused; so is the same run without
    ``--resume`` (that would overwrite it). ``--resume`` with nothing to resume starts fresh.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    cfg_path = out / "config.json"
    if not cfg_path.exists():
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out}: not empty and holds no config.json of a training run; choose another --output_dir")
        if resume:
            log.info("%s: no run to resume, starting a fresh one", out)
        return "fresh"
    old = read_json(cfg_path)
    diff = _describe_diff(old, json.loads(json.dumps(config)))
    if diff:
        raise UserError(f"{out} holds a different run ({diff}); choose another --output_dir")
    if not resume:
        raise UserError(f"{out} already holds this run; pass --resume to continue it or choose another --output_dir")
    if (out / "results.json").exists():
        return "done"
    return "resume" if (out / "last.pt").exists() else "fresh"


def _rewrite_metrics(path: Path, keep_through_epoch: int, new: dict | None = None) -> None:
    """metrics.jsonl without lines past ``keep_through_epoch`` (plus ``new``), written atomically."""
    lines = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and json.loads(line).get("epoch", 0) <= keep_through_epoch:
                lines.append(line)
    if new is not None:
        lines.append(json.dumps(new))
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def _data_summary(data: TokenData) -> dict:
    return {"vocab_size": data.vocab_size, "window_size": data.window_size,
            "windows": {s: int(t.shape[0]) for s, t in data.splits.items()}}


# ----------------------------------------------------------------------------------------------
# The loop


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_model(
    args: argparse.Namespace,
    *,
    model_name: str,
    build_model: Callable[[TokenData, argparse.Namespace], nn.Module],
    layerwise: bool = False,
    epoch_callback: EpochCallback | None = None,
) -> dict:
    """Train, validate each epoch, checkpoint, test the best checkpoint; return results.json's dict.

    ``build_model(data, args)`` is called right after seeding, so initial weights depend on
    ``--seed`` only. ``epoch_callback(epoch, record)`` runs after each epoch's checkpoint is
    written (the tuner reports to Optuna and may raise ``optuna.TrialPruned`` there).
    """
    validate_training_args(args)
    dist = init_distributed(args.device)
    try:
        return _train(args, dist, model_name, build_model, layerwise, epoch_callback)
    finally:
        dist.close()


def _train(args, dist: DistContext, model_name, build_model, layerwise, epoch_callback) -> dict:
    device = dist.device
    out = Path(args.output_dir)
    config = run_config(args)
    mode = prepare_run_dir(out, config, args.resume)
    if mode == "done":
        log.info("%s: run already finished; results.json kept", out)
        return read_json(out / "results.json")
    data = load_token_data(args.data_dir)
    log.info("data %s: %s windows, window %d, vocabulary %d (%s)", data.data_dir,
             "/".join(str(int(data.splits[s].shape[0])) for s in data.splits), data.window_size,
             data.vocab_size, data.vocab_source)
    dist.barrier()  # every rank has read config.json before rank 0 writes it
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", config)

    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    seed_everything(args.seed)
    model = build_model(data, args).to(device)
    n_params = count_parameters(model)
    if dist.enabled:  # different dropout masks per process (restored per rank on resume)
        torch.manual_seed(args.seed + 7919 * dist.rank)
    n_layers = layerwise_layer_count(model) if layerwise else 0
    log.info("%s: %d trainable parameters on %s (%d process%s)", model_name, n_params, device,
             dist.world_size, "es" if dist.enabled else "")

    eval_bs = args.eval_batch_size or args.batch_size
    common = dict(seed=args.seed, rank=dist.rank, world_size=dist.world_size, num_workers=args.num_workers,
                  pin_memory=device.type == "cuda")
    train_loader = make_loader(data.dataset("train"), args.batch_size, train=True, **common)
    val_loader = make_loader(data.dataset("val"), eval_bs, train=False, **common)
    test_loader = make_loader(data.dataset("test"), eval_bs, train=False, **common)
    steps = batches_per_epoch(len(train_loader.dataset), args.batch_size, dist.world_size, args.max_train_batches)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay, eps=ADAM_EPS)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * steps)

    state = {"epoch": 0, "best_val_loss": float("inf"), "best_epoch": 0, "bad_epochs": 0, "stopped_early": False,
             "train_seconds": 0.0, "step_seconds": 0.0, "train_sequences": 0}
    if mode == "resume":
        ckpt = load_torch_file(out / "last.pt")
        if ckpt.get("data") != _data_summary(data):
            raise UserError(f"{out}/last.pt was trained on other data ({ckpt.get('data')}); choose another --output_dir")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state.update(ckpt["state"])
        rng = ckpt["rng"]
        if len(rng) != dist.world_size:
            log.warning("resuming with %d processes, checkpoint had %d: the result will differ from an "
                        "unbroken run", dist.world_size, len(rng))
        _set_rng_state(rng[dist.rank % len(rng)], train_loader.generator)
        log.info("resuming %s after epoch %d (best val loss %.4f at epoch %d)", out, state["epoch"],
                 state["best_val_loss"], state["best_epoch"])
    if dist.is_main:
        _rewrite_metrics(out / "metrics.jsonl", state["epoch"])

    ddp_model: nn.Module = model
    if dist.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    for epoch in range(state["epoch"], args.epochs):
        if state["stopped_early"]:
            break
        t_epoch = time.perf_counter()
        record: dict[str, Any] = {"epoch": epoch + 1}
        frozen = None
        if layerwise:
            k = active_layers_at(epoch, args.epochs, n_layers)
            model.set_active_layers(k)
            frozen = FrozenEntries(model)
            record["active_layers"] = k
        record["lr"] = optimizer.param_groups[0]["lr"]
        train_loader.sampler.set_epoch(epoch)
        train_loss, n_seen, step_s = _train_epoch(
            ddp_model, params, train_loader, optimizer, scheduler, frozen, args, dist,
            desc=f"epoch {epoch + 1}/{args.epochs}",
        )
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training loss became {train_loss} in epoch {epoch + 1}; lower --lr "
                                   f"(now {args.lr}) or --max_grad_norm")
        val = evaluate(model, val_loader, device, dist, desc="validation")
        if not math.isfinite(val["loss"]):
            raise TrainingDiverged(f"validation loss became {val['loss']} in epoch {epoch + 1}; lower --lr (now {args.lr})")
        epoch_s = time.perf_counter() - t_epoch
        state["train_seconds"] += epoch_s
        state["step_seconds"] += step_s
        state["train_sequences"] += n_seen
        record.update(train_loss=train_loss, **{f"val_{k}": v for k, v in val.items()},
                      epoch_seconds=epoch_s, sequences_per_second=n_seen / max(step_s, 1e-9))
        if "val_postselection" in record:
            record["postselection"] = record.pop("val_postselection")
        improved = val["loss"] < state["best_val_loss"]
        if improved:
            state.update(best_val_loss=val["loss"], best_epoch=epoch + 1, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        if args.patience and state["bad_epochs"] >= args.patience:
            state["stopped_early"] = True
        log.info("epoch %d/%d: train loss %.4f, val loss %.4f (ppl %.2f, top1 %.3f, top5 %.3f)%s, %.1f s",
                 epoch + 1, args.epochs, train_loss, val["loss"], val["perplexity"], val["top1"], val["top5"],
                 f", postselection {val['postselection']:.3f}" if "postselection" in val else "", epoch_s)
        rng = dist.gather_object(_rng_state(train_loader.generator))
        if dist.is_main:
            _rewrite_metrics(out / "metrics.jsonl", epoch, record)
            if improved:
                atomic_torch_save(out / "best.pt", {
                    "model": model.state_dict(), "epoch": epoch + 1, "val": val,
                    "active_layers": record.get("active_layers"), "config": config,
                })
            atomic_torch_save(out / "last.pt", {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "state": dict(state), "rng": rng,
                "data": _data_summary(data), "config": config, "model_name": model_name,
            })
        if epoch_callback is not None:
            epoch_callback(epoch + 1, dict(record))
        if state["stopped_early"]:
            log.info("early stop: no lower validation loss for %d epochs", args.patience)

    dist.barrier()  # best.pt is complete before every rank reads it
    best = load_torch_file(out / "best.pt")
    model.load_state_dict(best["model"])
    if layerwise and best.get("active_layers") is not None:
        model.set_active_layers(best["active_layers"])
    val = evaluate(model, val_loader, device, dist, desc="best: validation")
    test = evaluate(model, test_loader, device, dist, desc="best: test")
    results: dict[str, Any] = {
        "model": model_name,
        "parameters": n_params,
        **{f"test_{k}": v for k, v in test.items() if k != "postselection"},
        "train_seconds": state["train_seconds"],
        "sequences_per_second": state["train_sequences"] / max(state["step_seconds"], 1e-9),
    }
    if "postselection" in test:
        results["postselection"] = test["postselection"]
    results.update({f"val_{k}": v for k, v in val.items()})
    results.update(
        epochs_run=state["epoch"], best_epoch=best["epoch"], stopped_early=state["stopped_early"],
        vocabulary_size=data.vocab_size, window_size=data.window_size,
        windows={s: int(t.shape[0]) for s, t in data.splits.items()},
        world_size=dist.world_size, device=str(device), peak_rss_mb=peak_rss_mb(),
        torch_version=torch.__version__,
    )
    if dist.is_main:
        atomic_write_json(out / "results.json", results)
        log.info("test: loss %.4f, perplexity %.2f, top1 %.3f, top5 %.3f -> %s", results["test_loss"],
                 results["test_perplexity"], results["test_top1"], results["test_top5"], out / "results.json")
    return results


def _train_epoch(model, params, loader, optimizer, scheduler, frozen: FrozenEntries | None, args,
                 dist: DistContext, desc: str) -> tuple[float, int, float]:
    """One pass over the (capped) training batches; returns (mean loss over all processes,
    windows seen by all processes, seconds spent)."""
    model.train()
    device = dist.device
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    t0 = time.perf_counter()
    bar = _progress(loader, dist, desc)
    for step, (x, y) in enumerate(bar):
        if args.max_train_batches and step >= args.max_train_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits, _ = split_output(model(x))
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if frozen is not None:
            frozen.before_step()
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
        if frozen is not None:
            frozen.after_step()
        scheduler.step()
        sums[0] += loss.detach().double() * len(y)
        sums[1] += len(y)
        if step % 25 == 0 and not getattr(bar, "disable", True):
            bar.set_postfix(loss=f"{float(loss):.3f}")
    if hasattr(bar, "close"):
        bar.close()
    seconds = time.perf_counter() - t0
    dist.all_reduce_sum(sums)
    n = int(sums[1])
    return float(sums[0]) / max(n, 1), n, seconds


# ----------------------------------------------------------------------------------------------
# Quixer: flags and model construction (shared by train_quixer_hybrid.py and the tuner)

QUIXER_TASKS = ("autoregressive",)


def add_quixer_model_args(parser: argparse.ArgumentParser, title: str = "Quixer model") -> None:
    from .model import Quixer

    g = parser.add_argument_group(title)
    g.add_argument("--task", default="autoregressive",
                   help="prediction task; only 'autoregressive' (next token of each window) (default: %(default)s)")
    g.add_argument("--qubits", type=int, default=6, help="qubits of the token register (default: %(default)s)")
    g.add_argument("--degree", type=int, default=3, help="QSVT polynomial degree (default: %(default)s)")
    g.add_argument("--ansatz_layers", type=int, default=4, help="layers of each token's PQC ansatz (default: %(default)s)")
    g.add_argument("--embedding_dim", type=int, default=512, help="classical token embedding width (default: %(default)s)")
    g.add_argument("--dropout", type=float, default=0.1, help="dropout rate (default: %(default)s)")
    g.add_argument("--init_strategy", choices=Quixer.INIT_STRATEGIES, default="small_gaussian",
                   help="parameter initialisation; centroid uses the stage-3 cluster centres in --data_dir "
                        "(default: %(default)s)")
    g.add_argument("--use_layerwise_training", action="store_true",
                   help="switch the ansatz layers on one at a time over the epochs (layer l from epoch "
                        "floor(l * epochs / ansatz_layers)); inactive layers are not updated")


def validate_quixer_args(args: argparse.Namespace) -> None:
    if args.task not in QUIXER_TASKS:
        raise UserError(f"--task {args.task!r} is not supported: the only task is 'autoregressive'")
    for key in ("qubits", "degree", "ansatz_layers", "embedding_dim"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key} must be >= 1, got {getattr(args, key)}")


def build_quixer(data: TokenData, args: argparse.Namespace) -> nn.Module:
    """The Quixer model for this data, initialised with ``--init_strategy`` from ``--seed``."""
    from .model import Quixer

    centroids = load_cluster_centers(data.data_dir) if args.init_strategy == "centroid" else None
    try:
        model = Quixer(
            n_qubits=args.qubits, n_tokens=data.n_input_tokens, qsvt_polynomial_degree=args.degree,
            n_ansatz_layers=args.ansatz_layers, vocabulary_size=data.vocab_size,
            embedding_dimension=args.embedding_dim, dropout=args.dropout,
        )
        model.initialize(args.init_strategy, centroids=centroids, generator=torch.Generator().manual_seed(args.seed))
    except ValueError as exc:  # sizes the model rejects, centroids of the wrong shape
        raise UserError(f"cannot build Quixer: {exc}") from None
    return model


def quixer_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The complete flag set of train_quixer_hybrid.py."""
    parser = argparse.ArgumentParser(
        description=description or "Train the Quixer quantum transformer on next-token prediction.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_training_args(parser, data_dir=DEFAULT_QUIXER_DATA_DIR, output_dir="runs/quixer", lr=0.002)
    add_quixer_model_args(parser)
    return parser


def train_quixer(args: argparse.Namespace, epoch_callback: EpochCallback | None = None) -> dict:
    validate_quixer_args(args)
    return train_model(args, model_name="quixer", build_model=build_quixer,
                       layerwise=args.use_layerwise_training, epoch_callback=epoch_callback)


# ----------------------------------------------------------------------------------------------
# Classical baselines (train_classical_baselines.py)


def default_classical_output_dir(args: argparse.Namespace) -> str:
    from .baselines import NEURAL_MODELS

    suffix = f"_{args.preset}" if args.model in NEURAL_MODELS and args.preset != "default" else ""
    return f"runs/{args.model}{suffix}"


def train_classical(args: argparse.Namespace, epoch_callback: EpochCallback | None = None) -> dict:
    """A neural baseline through :func:`train_model`, or a reference predictor through
    :func:`quixer.reference.run_reference` (no gradient training)."""
    from .baselines import build_classical_model, resolve_classical_args
    from .reference import REFERENCE_MODELS, run_reference

    if args.output_dir is None:
        args.output_dir = default_classical_output_dir(args)
    if args.model in REFERENCE_MODELS:
        opts = {k: getattr(args, k) for k in ("max_order", "positions") if getattr(args, k, None) is not None}
        return run_reference(args.model, args.data_dir, args.output_dir, **opts)
    resolve_classical_args(args)

    def build(data: TokenData, a: argparse.Namespace) -> nn.Module:
        return build_classical_model(
            a.model, data.vocab_size, data.n_input_tokens, embedding_dim=a.embedding_dim, hidden_dim=a.hidden_dim,
            num_layers=a.num_layers, num_heads=a.num_heads, dropout=a.dropout,
        )

    return train_model(args, model_name=args.model, build_model=build, epoch_callback=epoch_callback)
