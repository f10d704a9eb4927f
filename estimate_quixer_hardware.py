#!/usr/bin/env python
"""What a trained Quixer costs on a quantum computer: circuit, gate counts, accuracy at finite shots.

Reads a run of train_quixer_hybrid.py (config.json, best.pt; the test split of its data_dir) and
writes into the run directory (or --output_dir):

  hardware.json       the circuit (registers, qubits), its check against the torch model on one
                      test window (qiskit-aer), resource counts per gate set before and after
                      pytket optimisation, and the test metrics per shot budget
  hardware.md         the same as a short report
  hardware_shots.png  test top-1 / top-5 and perplexity against shots per basis, exact as lines

The circuit is the paper's: token register, LCU register (PREPARE / SELECT of multiplexed
rotations), polynomial of the block-encoded operator as an LCU over its powers with mid-circuit
postselection, quantum feed-forward and X / Y / Z measurement. With S shots per basis, a shot
counts only when postselection succeeds (probability p per window), so the features are averages
of Binomial(S, p) kept outcomes; 3 S / p executions give S kept shots per basis on average.

Examples:
  python estimate_quixer_hardware.py --run_dir runs/quixer
  python estimate_quixer_hardware.py --run_dir runs/quixer --shots 100 1000 10000 100000 --max_windows 0 --force
  python estimate_quixer_hardware.py --run_dir runs/quixer --gate_sets ibm --output_dir hw_quixer
"""
from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C from here on, imports included: one line, exit status 130
    from quixer.interrupts import exit_on_interrupt
    exit_on_interrupt()

import argparse
import sys
from typing import Sequence

from quixer.common import run_cli, setup_logging
from quixer.hardware import DEFAULT_GATE_SETS, DEFAULT_MAX_WINDOWS, DEFAULT_SHOTS, estimate_hardware
from quixer.hardware.resources import GATE_SET_NAMES


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", default="runs/quixer",
                        help="a Quixer run directory, or a model folder of seed_<s>/ runs (default: %(default)s)")
    parser.add_argument("--run_seed", type=int, default=None,
                        help="in a model folder, the seed run to use (default: the lowest seed, as logged)")
    parser.add_argument("--output_dir", default=None, help="where the three files go (default: --run_dir)")
    parser.add_argument("--data_dir", default=None,
                        help="token directory with test.pt (default: the run's data_dir from config.json)")
    parser.add_argument("--shots", type=int, nargs="+", default=list(DEFAULT_SHOTS),
                        help="shot budgets S per basis (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the window subset and of the shots (default: %(default)s)")
    parser.add_argument("--max_windows", type=int, default=DEFAULT_MAX_WINDOWS,
                        help="test windows to score, a seeded subset when there are more; 0 = all "
                             "(default: %(default)s)")
    parser.add_argument("--gate_sets", nargs="*", default=list(DEFAULT_GATE_SETS), choices=sorted(GATE_SET_NAMES),
                        help="native gate sets to compile to; none skips compiling (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=1024,
                        help="windows per evaluation batch (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace an estimate made with other flags or checkpoint")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    estimate_hardware(args.run_dir, args.output_dir, shots=args.shots, seed=args.seed, max_windows=args.max_windows,
                      gate_sets=args.gate_sets, data_dir=args.data_dir, batch_size=args.batch_size, force=args.force,
                      run_seed=args.run_seed)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
