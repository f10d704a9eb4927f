"""Project a long Quixer run from a short one with capped epochs.

The short run trains ``--max_train_batches N`` batches per epoch and then validates on the whole
validation set. A full epoch is projected as (train windows / the measured training throughput) +
(the measured rest of the epoch: validation, checkpoints); the long run's time is the sum over its
epochs. With ``--use_layerwise_training`` (``--epochs L``, L = ansatz layers: epoch k has k active
layers) each epoch of the long run's layerwise schedule (:func:`quixer.training.active_layers_at`) costs
the measured epoch with as many active layers; without it (e.g. ``--cuda_graph``, which refuses
layerwise training) every epoch costs the short run's last epoch, all layers active: the first one
includes compiling the kernels and capturing the step. Prints one JSON line.

    python bench/project_epochs.py RUN_DIR --epochs 50
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from quixer.training import active_layers_at


def full_epoch_seconds(record: dict, capped_windows: int, train_windows: int) -> float:
    """A full epoch from a capped one's metrics record: all ``train_windows`` at its measured training
    throughput, plus the rest of its epoch (validation, checkpoints), which the cap does not change."""
    sps = record["sequences_per_second"]
    return train_windows / sps + (record["epoch_seconds"] - capped_windows / sps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="the short run's output directory")
    p.add_argument("--epochs", type=int, default=50, help="epochs of the long run")
    args = p.parse_args(argv)
    config = json.loads((args.run_dir / "config.json").read_text())
    records = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").read_text().splitlines() if line]
    n_train = json.loads((args.run_dir / "results.json").read_text())["windows"]["train"]
    capped = config["max_train_batches"] * config["batch_size"]
    layers, layerwise = config["ansatz_layers"], bool(config.get("use_layerwise_training"))
    per_layers = {}
    for r in records:  # a later epoch with the same active layers replaces an earlier one
        per_layers[r.get("active_layers", layers)] = full_epoch_seconds(r, capped, n_train)
    schedule = [active_layers_at(e, args.epochs, layers) if layerwise else layers for e in range(args.epochs)]
    total = sum(per_layers[k] for k in schedule)
    last = records[-1]
    print(json.dumps({"epochs": args.epochs, "train_windows": n_train, "batch_size": config["batch_size"],
                      "layerwise": layerwise, "cuda_graph": bool(config.get("cuda_graph")),
                      "train_sequences_per_second": round(last["sequences_per_second"], 1),
                      "full_epoch_seconds_by_active_layers": {k: round(v, 1) for k, v in per_layers.items()},
                      "projected_seconds": round(total, 1), "projected_hours": round(total / 3600, 3),
                      "measured_on_batches_per_epoch": config["max_train_batches"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
