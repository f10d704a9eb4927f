"""Optuna hyperparameter search over the Quixer flags (tune_quixer_hybrid.py).

Every trial is an ordinary :func:`quixer.flags.train_quixer` run under
``<output_dir>/trials/trial_NNNN/``; the validation loss of each epoch is reported to Optuna
so the median pruner can stop poor trials early. The study lives in an Optuna storage
(default sqlite in ``output_dir``) so rerunning the same command continues it, and the best
values are written as ``best_config.json``, which ``train_quixer_hybrid.py --config`` accepts.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from .common import UserError, atomic_write_json, read_json
from .data import data_fingerprint, load_token_data
from .provenance import now, provenance
from .flags import train_quixer
from .training import TrainingDiverged

log = logging.getLogger("quixer")

# Each entry: {"low", "high"[, "log"]} (int when both bounds are ints) or {"choices": [...]};
# a --search_space file may replace entries, or set them to null to use the flag's value instead.
DEFAULT_SEARCH_SPACE: dict[str, dict] = {
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "degree": {"low": 1, "high": 4},
    "qubits": {"low": 3, "high": 6},
    "ansatz_layers": {"low": 1, "high": 4},
    "embedding_dim": {"choices": [64, 128, 256, 512]},
    "dropout": {"low": 0.0, "high": 0.3},
    "init_strategy": {"choices": ["small_gaussian", "uniform", "xavier", "centroid"]},
}
# Flags copied from the tuner into best_config.json besides the tuned ones.
_TUNER_FIXED_FLAGS = ("data_dir", "batch_size", "weight_decay", "max_grad_norm", "use_layerwise_training", "task")


def load_search_space(path: str | None) -> dict[str, dict]:
    """The default space, with entries replaced (or, when null, removed) by the JSON file ``path``."""
    space = copy.deepcopy(DEFAULT_SEARCH_SPACE)
    if path:
        user = read_json(path)
        if not isinstance(user, dict):
            raise UserError(f"{path}: expected a JSON object of parameter -> range")
        unknown = sorted(set(user) - set(space))
        if unknown:
            raise UserError(f"{path}: unknown parameter(s) {', '.join(unknown)}; tunable: {', '.join(space)}")
        space.update({k: v for k, v in user.items() if v is not None})
        for k in [k for k, v in user.items() if v is None]:  # null: not searched, the flag's value is used
            del space[k]
    for name, spec in space.items():
        ok = isinstance(spec, dict) and (
            (set(spec) == {"choices"} and isinstance(spec["choices"], list) and spec["choices"])
            or ({"low", "high"} <= set(spec) <= {"low", "high", "log"} and spec["low"] <= spec["high"])
        )
        if not ok:
            raise UserError(f"search space {name}: expected {{\"low\": a, \"high\": b[, \"log\": true]}} "
                            f"or {{\"choices\": [...]}}, got {spec!r}")
    return space


def suggest(trial, space: dict[str, dict]) -> dict[str, Any]:
    """One value per searched parameter, drawn by ``trial`` (int ranges when both bounds are ints)."""
    values = {}
    for name, spec in space.items():
        if "choices" in spec:
            values[name] = trial.suggest_categorical(name, spec["choices"])
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int) and not isinstance(spec["low"], bool):
            values[name] = trial.suggest_int(name, spec["low"], spec["high"], log=bool(spec.get("log")))
        else:
            values[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return values


def tune_quixer(args: argparse.Namespace) -> dict:
    """Optuna search (seeded TPE, median pruning on per-epoch validation loss) over the Quixer
    hyperparameters; every trial is a full run under ``output_dir/trials/``. The study lives in
    ``--storage`` (default sqlite in ``output_dir``), so rerunning continues it up to
    ``--n_trials`` finished trials; a trial killed mid-way is retried with the same values."""
    import optuna

    with warnings.catch_warnings():  # heartbeats and retries are marked experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _tune_quixer(args)


def _search_space(args: argparse.Namespace) -> dict:
    """The search space, checked against the data (fail early on bad data); 'centroid'
    initialisation left out where the tokens have no cluster centres."""
    space = load_search_space(args.search_space)
    data = load_token_data(args.data_dir)
    inits = space.get("init_strategy", {}).get("choices")  # absent when the search space sets it to null
    if inits and "centroid" in inits and not (data.data_dir / "cluster_centers.pt").is_file():
        space["init_strategy"] = {"choices": [c for c in inits if c != "centroid"] or ["small_gaussian"]}
        log.warning("%s has no cluster_centers.pt: init strategy 'centroid' left out of the search", data.data_dir)
    return space


def _open_study(args: argparse.Namespace, out: Path, space: dict):
    """The study to run or resume, refused if it was begun with another search space or flags;
    its sampler seeded by the trials already run, so a resumed study does not repeat them."""
    import optuna

    storage_url = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    storage = optuna.storages.RDBStorage(  # heartbeats: a killed trial turns stale after 60 s and is retried
        storage_url, heartbeat_interval=20, grace_period=60,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
    )
    signature = {"search_space": space, "epochs_per_trial": args.epochs_per_trial,
                 "fixed": {k: getattr(args, k) for k in (*_TUNER_FIXED_FLAGS, "seed", "max_train_batches")}}
    signature = json.loads(json.dumps(signature))
    existing = optuna.get_all_study_summaries(storage)
    n_before = next((s.n_trials for s in existing if s.study_name == args.study_name), 0)
    sampler = optuna.samplers.TPESampler(seed=args.seed + n_before)
    study = optuna.create_study(
        study_name=args.study_name, storage=storage, direction="minimize", sampler=sampler,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1), load_if_exists=True,
    )
    old = study.user_attrs.get("signature")
    if old is None:
        study.set_user_attr("signature", signature)
    elif old != signature:
        raise UserError(f"study {args.study_name!r} in {storage_url} was run with another search space or flags; "
                        "use another --study_name or --output_dir")
    optuna.storages.fail_stale_trials(study)
    return study, storage_url


def _objective(args: argparse.Namespace, space: dict, out: Path):
    """One trial: train_quixer with the suggested values for --epochs_per_trial epochs, reporting
    each epoch's validation loss to the pruner (tuning never scores test)."""
    import optuna

    base = vars(args).copy()
    for key in ("n_trials", "epochs_per_trial", "storage", "study_name", "search_space"):
        base.pop(key)

    def objective(trial) -> float:
        targs = argparse.Namespace(**{**base, **suggest(trial, space)})
        targs.epochs = args.epochs_per_trial
        targs.output_dir = str(out / "trials" / f"trial_{trial.number:04d}")
        targs.resume, targs.config, targs.patience = False, None, 0

        def report(epoch: int, record: dict) -> None:
            trial.report(record["val_loss"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        return train_quixer(targs, epoch_callback=report, score_test=False)["val_loss"]

    return objective


def _write_best(study, args: argparse.Namespace, out: Path, storage_url: str, started) -> dict:
    """``best_config.json`` (a config train_quixer_hybrid.py reads) and ``study_summary.json``."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise UserError(f"no trial of study {args.study_name!r} completed (all pruned or failed)")
    best = study.best_trial
    best_config = {k: getattr(args, k) for k in (*_TUNER_FIXED_FLAGS, *DEFAULT_SEARCH_SPACE)}
    best_config.update(best.params)
    atomic_write_json(out / "best_config.json", best_config)
    summary = {
        "study_name": args.study_name, "storage": storage_url, "best_trial": best.number,
        "best_val_loss": best.value, "best_params": best.params,
        "states": {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in optuna.trial.TrialState},
        "data_fingerprint": data_fingerprint(args.data_dir),
        "provenance": provenance(started, command=getattr(args, "command", None)),
    }
    atomic_write_json(out / "study_summary.json", summary)
    log.info("best trial %d: val loss %.4f with %s -> %s", best.number, best.value, best.params,
             out / "best_config.json")
    return summary


def _tune_quixer(args: argparse.Namespace) -> dict:
    import optuna

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("run the tuner as one process (each trial trains on one device)")
    for key in ("n_trials", "epochs_per_trial"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key} must be >= 1, got {getattr(args, key)}")
    started = now()
    space = _search_space(args)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    study, storage_url = _open_study(args, out, space)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    remaining = max(0, args.n_trials - done)
    log.info("study %s: %d trials finished, %d to run", args.study_name, done, remaining)
    if remaining:
        study.optimize(_objective(args, space, out), n_trials=remaining, catch=(TrainingDiverged,), gc_after_trial=True)
    return _write_best(study, args, out, storage_url, started)
