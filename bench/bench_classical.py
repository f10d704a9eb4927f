"""Time the classical baselines: one training step (forward + cross-entropy + backward + Adam) of
the LSTM and the Transformer at each batch size, the figures to set beside Quixer's.

Prints one JSON line per model and batch size: seconds_per_step (median), sequences_per_second,
parameters, device and configuration, or an ``error`` where the step fails (the exit status is then
1; the other sizes are still measured). Sizes come from the baselines' ``--preset`` (default: LSTM
about 220k, Transformer about 530k parameters at vocabulary 512), with the window and vocabulary of
the Quixer benchmark (31 input tokens, 512 tokens).

    python bench/bench_classical.py --device cuda --batch-sizes 32 1024
"""
from __future__ import annotations

import argparse
import json

import torch

from quixer.baselines import NEURAL_MODELS, PRESETS, build_classical_model
from quixer.common import UserError, resolve_device, run_cli, setup_logging
from quixer.flags import resolve_classical_args
from quixer.devices import time_training_step


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", choices=NEURAL_MODELS, default=["lstm", "transformer"])
    p.add_argument("--batch-sizes", "--batch_sizes", dest="batch_sizes", nargs="+", type=int, default=[32, 1024])
    p.add_argument("--preset", choices=PRESETS, default="default", help="baseline sizes (quixer/baselines.py)")
    p.add_argument("--window", type=int, default=31, help="input tokens per sequence")
    p.add_argument("--vocab", type=int, default=512, help="vocabulary size")
    p.add_argument("--steps", type=int, default=20, help="timed training steps (after 3 untimed ones)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if min(args.batch_sizes) < 1 or args.window < 1 or args.vocab < 2 or args.steps < 1:
        raise UserError("--batch-sizes, --window and --steps must be >= 1 and --vocab >= 2")
    return args


def build(name: str, args: argparse.Namespace) -> torch.nn.Module:
    sizes = argparse.Namespace(model=name, preset=args.preset, embedding_dim=None, hidden_dim=None, num_layers=None,
                               num_heads=None, lr=None, dropout=None)
    resolve_classical_args(sizes)
    return build_classical_model(name, args.vocab, args.window, embedding_dim=sizes.embedding_dim,
                                 hidden_dim=sizes.hidden_dim, num_layers=sizes.num_layers,
                                 num_heads=sizes.num_heads, dropout=sizes.dropout)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    failed = False
    for name in args.models:
        for batch_size in args.batch_sizes:
            line = {"model": name}
            try:
                line.update(measure(name, batch_size, args, device))
            except Exception as exc:  # one failing size (memory, a driver error) does not end the others
                line["error"], failed = f"{type(exc).__name__}: {exc}", True
            line["config"] = {"batch_size": batch_size, "preset": args.preset, "window": args.window,
                              "vocab": args.vocab, "steps": args.steps}
            print(json.dumps(line), flush=True)
    return 1 if failed else 0


def measure(name: str, batch_size: int, args: argparse.Namespace, device: torch.device) -> dict:
    """Median seconds of a training step of a fresh ``name`` model at ``batch_size``, and its size."""
    torch.manual_seed(args.seed)
    model = build(name, args).to(device)
    seconds = time_training_step(model, args.window, args.vocab, batch_size, device, steps=args.steps, warmup=3)
    return {"seconds_per_step": round(seconds, 6), "sequences_per_second": round(batch_size / seconds, 2),
            "parameters": sum(p.numel() for p in model.parameters()), "device": str(device),
            "torch_threads": torch.get_num_threads()}


if __name__ == "__main__":
    run_cli(main)
