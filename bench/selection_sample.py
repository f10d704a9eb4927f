"""How small can the per-epoch model-selection sample of validation targets be?

Trains one model with the trainers' loop (official protocol, a short budget by default) and,
after every epoch, scores its checkpoint on every scored validation target (the full
``--eval_targets`` set). Then, for each candidate sample size n, it draws ``--draws`` random
samples of n targets, picks the epoch with the lowest sample loss, and reports how often that is
the epoch the full set picks and how much full-set loss the choice gives up (the regret, nats).
The fixed sample the trainers use (``EvalTargets.sample``) is reported on its own line. It also
times the validation pass per epoch at the full size and at each n, the time a sample saves.

    python bench/selection_sample.py TOKENS_DIR --model lstm --epochs 8 --epoch_size 40000
Prints one JSON line per model and sample size.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from quixer.common import load_torch_file, setup_logging
from quixer.data import load_token_data
from quixer.distributed import DistContext
from quixer.flags import (classical_configs, classical_parser, parse_args, quixer_configs, quixer_parser,
                          train_classical, train_quixer)
from quixer.training import build_quixer, evaluate
from quixer.streams import eval_targets

SIZES = (1000, 2000, 5000, 10_000, 20_000, 50_000)


def _trainer_args(model: str, tokens: Path, out: Path, extra: list[str]) -> argparse.Namespace:
    common = ["--data_dir", str(tokens), "--output_dir", str(out), "--protocol", "official", "--device", "cpu",
              "--selection_targets", "1000", *extra]
    if model == "quixer":
        return parse_args(quixer_parser(), common)
    return parse_args(classical_parser(), ["--model", model, *common])


def _build(model: str, args: argparse.Namespace, data) -> torch.nn.Module:
    if model == "quixer":
        train, cfg = quixer_configs(args)
        return build_quixer(data, cfg, train)
    return classical_configs(args)[1].build_model(data.vocab_size, data.n_input_tokens)


def per_epoch_val_nll(model: str, tokens: Path, extra: list[str], eval_n: int) -> tuple[np.ndarray, dict]:
    """[epochs, targets] validation nll of every epoch's weights, and the full pass's seconds."""
    data = load_token_data(tokens)
    targets = eval_targets(data.streams("val"), data.window_size, eval_n)
    rows, seconds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        args = _trainer_args(model, tokens, Path(tmp) / "run", extra)
        net = _build(model, args, data)
        dist = DistContext(device=torch.device("cpu"))

        def score(epoch: int, record: dict) -> None:
            net.load_state_dict(load_torch_file(Path(args.output_dir) / "last.pt")["model"])
            t0 = time.perf_counter()
            rows.append(evaluate(net, data, "val", targets, args.eval_batch_size, dist).nll)
            seconds.append(time.perf_counter() - t0)

        (train_quixer if model == "quixer" else train_classical)(args, epoch_callback=score)
    return np.stack(rows), {"full_val_seconds": float(np.median(seconds)), "full_targets": len(targets),
                            "targets": targets}


def agreement(nll: np.ndarray, sizes, draws: int, fixed_choice) -> list[dict]:
    """Per sample size: share of random samples choosing the full set's epoch, and the regret."""
    full = nll.mean(axis=1)
    best = int(full.argmin())
    rng = np.random.default_rng(0)
    out = []
    for n in sizes:
        if n >= nll.shape[1]:
            continue
        picks = np.array([int(nll[:, rng.choice(nll.shape[1], n, replace=False)].mean(axis=1).argmin())
                          for _ in range(draws)])
        regret = full[picks] - full[best]
        fixed = fixed_choice(n)
        out.append({"n": n, "same_epoch_share": float((picks == best).mean()), "mean_regret_nats": float(regret.mean()),
                    "max_regret_nats": float(regret.max()), "fixed_sample_epoch": fixed + 1,
                    "fixed_sample_regret_nats": float(full[fixed] - full[best])})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tokens", type=Path, help="token directory (stage-3 output)")
    p.add_argument("--model", default="lstm", help="quixer or a neural baseline (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=8, help="epochs of the cosine schedule (default: %(default)s)")
    p.add_argument("--epoch_size", type=int, default=40_000, help="windows per epoch (default: %(default)s)")
    p.add_argument("--eval_targets", type=int, default=100_000, help="full validation targets (default: %(default)s)")
    p.add_argument("--draws", type=int, default=500, help="random samples per size (default: %(default)s)")
    args = p.parse_args(argv)
    setup_logging(False)
    torch.set_num_threads(1)
    extra = ["--epochs", str(args.epochs), "--epoch_size", str(args.epoch_size), "--eval_targets", str(args.eval_targets)]
    nll, info = per_epoch_val_nll(args.model, args.tokens, extra, args.eval_targets)
    targets = info.pop("targets")
    index = {s: i for i, s in enumerate(targets.starts)}

    def fixed_choice(n: int) -> int:
        cols = [index[s] for s in targets.sample(n).starts]
        return int(nll[:, cols].mean(axis=1).argmin())

    full = nll.mean(axis=1)
    print(json.dumps({"model": args.model, "epochs": args.epochs, "epoch_size": args.epoch_size,
                      "full_val_loss_by_epoch": [round(float(v), 5) for v in full],
                      "full_best_epoch": int(full.argmin()) + 1, **info}))
    for row in agreement(nll, SIZES, args.draws, fixed_choice):
        row["val_seconds_saved_per_epoch"] = round(info["full_val_seconds"] * (1 - row["n"] / info["full_targets"]), 2)
        print(json.dumps({"model": args.model, **row}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
