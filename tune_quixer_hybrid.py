#!/usr/bin/env python
"""Hyperparameter search for Quixer with Optuna.

Seeded TPE sampling over the learning rate (log scale), QSVT degree, qubits, ansatz layers,
embedding width, dropout and initialisation; a median pruner stops trials whose validation
loss after an epoch is worse than the median of earlier trials at that epoch. Each trial is
an ordinary training run under <output_dir>/trials/trial_NNNN/ (same loop and files as
train_quixer_hybrid.py) and is scored by its best validation loss.

The study is stored in --storage (default sqlite:///<output_dir>/study.db): rerunning the
same command continues it until --n_trials trials have finished; a trial that was killed is
retried with the same values. The best values go to <output_dir>/best_config.json, which
train_quixer_hybrid.py --config accepts.

--search_space FILE replaces ranges of the default space; null takes a parameter out of the
search (its flag's value is used), e.g.
  {"qubits": {"low": 4, "high": 6}, "embedding_dim": {"choices": [128, 512]},
   "lr": {"low": 0.0005, "high": 0.005, "log": true}, "init_strategy": null}

Examples:
  python tune_quixer_hybrid.py --n_trials 40 --epochs_per_trial 5
  python train_quixer_hybrid.py --config runs/tune/best_config.json --output_dir runs/quixer_tuned
"""
from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C from here on, imports included: one line, exit status 130
    from quixer.interrupts import exit_on_interrupt
    exit_on_interrupt()

import argparse
import sys
from typing import Sequence

from quixer.common import run_cli, setup_logging
from quixer.flags import DEFAULT_QUIXER_DATA_DIR, add_quixer_model_args, add_training_args
from quixer.tuning import tune_quixer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("search")
    g.add_argument("--n_trials", type=int, default=20, help="finished trials the study should reach (default: %(default)s)")
    g.add_argument("--epochs_per_trial", type=int, default=5, help="training epochs of each trial (default: %(default)s)")
    g.add_argument("--output_dir", default="runs/tune", help="study directory (default: %(default)s)")
    g.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///<output_dir>/study.db)")
    g.add_argument("--study_name", default="quixer", help="study name inside the storage (default: %(default)s)")
    g.add_argument("--search_space", default=None, help="JSON file overriding ranges of the default search space")
    add_training_args(parser, data_dir=DEFAULT_QUIXER_DATA_DIR, lr=0.002, run_flags=False)
    add_quixer_model_args(parser, "Quixer model (used for parameters the search space leaves out)")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    tune_quixer(args)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
