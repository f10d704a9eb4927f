#!/usr/bin/env python
"""What one epoch of each model costs on a token directory, from a short capped run of each.

Each model trains one epoch of ``--batches`` batches under the official protocol (one thread, as
a campaign lane has), with the per-epoch selection on ``--selection_targets`` validation targets
as the campaign does. A full epoch is projected as (train windows / the measured training
throughput) + (the rest of the measured epoch: the selection pass, the checkpoints); a run as
``--epochs`` such epochs plus the final scoring of ``--eval_targets`` validation and test targets at
the measured scoring throughput. Prints one JSON line per model; plans the chrX campaign's runs
that have no epoch of their own yet (e.g. the raw track: tokens from
``prepare_classical_benchmarks.py --data_dir OUT/autoregressive_data``).

    python bench/epoch_costs.py TOKENS_DIR --models quixer_ablation,quixer_ablation_matched
    python bench/epoch_costs.py RAW_TOKENS_DIR --track raw >> bench/campaign_chrX.costs
    python bench/epoch_costs.py TOKENS_DIR --code ../campaign_chrX/code-05e71ce --track quantized   # the pinned code
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from project_epochs import full_epoch_seconds  # bench/, this script's own folder

REPO = Path(__file__).resolve().parent.parent
MODELS = "quixer,quixer_ablation,quixer_ablation_matched,lstm,transformer"


def capped_run(model: str, tokens: Path, out: Path, args: argparse.Namespace) -> None:
    """One capped official-protocol epoch of ``model`` into ``out`` (the trainer's own CLI)."""
    script = ["train_quixer_hybrid.py"] if model == "quixer" else ["train_classical_baselines.py", "--model", model]
    command = [sys.executable, str(args.code / script[0]), *script[1:], "--data_dir", str(tokens), "--output_dir", str(out),
               "--protocol", "official", "--epochs", "1", "--max_train_batches", str(args.batches),
               "--eval_targets", str(args.eval_targets), "--selection_targets", str(args.selection_targets),
               "--device", "cpu", "--seed", "42"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: {model}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")


def projection(out: Path, epochs: int) -> dict:
    """The full epoch and run projected from the capped run's metrics and results."""
    config = json.loads((out / "config.json").read_text())
    epoch = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line][-1]
    results = json.loads((out / "results.json").read_text())
    capped = config["max_train_batches"] * config["batch_size"]
    train_sps = epoch["sequences_per_second"]
    rest = epoch["epoch_seconds"] - capped / train_sps
    full_epoch = full_epoch_seconds(epoch, capped, results["windows"]["train"])
    final = 2 * config["eval_targets"] / results["eval_sequences_per_second"]
    return {"model": config.get("model", "quixer"), "train_windows": results["windows"]["train"],
            "train_sequences_per_second": round(train_sps, 1), "epoch_rest_seconds": round(rest, 1),
            "epoch_seconds": round(full_epoch, 1), "epochs": epochs,
            "run_hours": round((epochs * full_epoch + final) / 3600, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tokens", type=Path, help="a token directory (stage 3 or prepare_classical_benchmarks.py)")
    p.add_argument("--models", default=MODELS, help=f"comma-separated (default: {MODELS})")
    p.add_argument("--batches", type=int, default=150, help="training batches of the capped epoch (default: 150)")
    p.add_argument("--selection_targets", type=int, default=10000, help="per-epoch validation targets (default: 10000)")
    p.add_argument("--eval_targets", type=int, default=100000,
                   help="validation / test targets of the campaign's final scoring (default: 100000)")
    p.add_argument("--epochs", type=int, default=30, help="epochs of a campaign run (default: 30)")
    p.add_argument("--code", type=Path, default=REPO,
                   help="the checkout whose trainers run, e.g. a campaign phase's pinned worktree (default: this one)")
    p.add_argument("--track", choices=("quantized", "raw"), default=None,
                   help="label each line with the campaign track these tokens are (bench/campaign_status.py --costs)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            out = Path(tmp) / model
            capped_run(model, args.tokens, out, args)
            label = {"track": args.track} if args.track else {}
            print(json.dumps({**label, "tokens": str(args.tokens), **projection(out, args.epochs)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
