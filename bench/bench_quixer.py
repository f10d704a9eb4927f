"""Time the Quixer model: one training step and one eval batch, fast or naive simulation.

Prints one JSON line: seconds_per_step (median of forward + cross-entropy + backward + Adam
step), eval_seconds_per_batch (median over eval batches under no_grad, once the per-vocabulary
eval cache exists; eval_first_batch_seconds includes building it), sequences_per_second,
parameters, peak_memory_mb (CUDA: max allocated; CPU: peak resident set, reset where Linux
allows before one extra, untimed training step and eval batch) and the configuration.
Defaults are the paper's: 6 qubits, degree 3, 4 ansatz layers, window 32, embedding 512,
vocabulary 512, batch 32.

``--impl both`` runs the fast and the naive simulation step by step in alternation on the same
batches, so that both see the same machine load, and adds their speed ratios; ``--impl kernels``
does the same for the fused kernel of the device (C++ on a CPU, Triton on CUDA) and the torch
simulation. On a CPU shared with other jobs, pass ``--threads 1``. ``--device auto`` times a few
training steps on each device first and uses the faster (:func:`quixer.devices.fastest_device`).
An implementation whose step fails (a Triton kernel that does not compile, memory) is reported
with its ``error`` while the other is still measured, and the exit status is 1;
``triton_fallbacks`` lists the kernel configurations that an automatically chosen Triton simulator
computed with torch ops instead.

    python bench/bench_quixer.py --steps 10                 # fast simulation
    python bench/bench_quixer.py --steps 3 --impl naive     # gate by gate, official cost structure
    python bench/bench_quixer.py --steps 5 --impl both --threads 1   # interleaved, with speedups
    python bench/bench_quixer.py --steps 20 --impl kernels          # fused CPU kernel vs torch ops
    python bench/bench_quixer.py --device cuda --impl kernels --cuda-graph   # Triton (graphed) vs torch ops
    python bench/bench_quixer.py --device cuda --gpu-impl triton --cuda-graph --batch-size 4096 \
        --eval-batch-sizes 16384 65536          # captured training at 4,096, captured eval at 16 k and 64 k

``--eval-batch-sizes`` also times eval batches of those sizes with the first implementation
(``eval_by_batch``: median seconds per batch and sequences per second); with ``--cuda-graph`` each
size is one captured graph (:func:`quixer.sim.cuda_graphs.capture_eval`, the per-vocabulary tables built
inside it), and its first batch, which captures, is reported apart.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from pathlib import Path

import torch

from quixer.sim import native
from quixer.common import UserError, peak_rss_mb, resolve_device, run_cli, setup_logging
from quixer.sim.cuda_graphs import capture_eval, capture_step
from quixer.devices import fastest_device, synchronize, training_step
from quixer.model import Quixer
from quixer.sim.naive import NaiveQuixer
from quixer.sim.simulators import KERNEL_GUARD, TritonSimulator

log = logging.getLogger("bench_quixer")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32, help="sequences per batch")
    p.add_argument("--qubits", type=int, default=6, help="qubits per token circuit")
    p.add_argument("--degree", type=int, default=3, help="QSVT polynomial degree")
    p.add_argument("--ansatz-layers", type=int, default=4, help="ansatz-14 layers per token circuit")
    p.add_argument("--window", type=int, default=32, help="input tokens per sequence (n_tokens)")
    p.add_argument("--embed-dim", type=int, default=512, help="token embedding dimension")
    p.add_argument("--vocab", type=int, default=512, help="vocabulary size")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout on the embeddings (training steps)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps and timed eval batches")
    p.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, or auto: the one where a few timed training steps of this model are faster")
    p.add_argument("--impl", choices=("fast", "naive", "both", "kernels"), default="fast",
                   help="fast: quixer.model; naive: gate by gate, token circuits re-run per power; both: fast and "
                        "naive alternately; kernels: quixer.model with the device's fused kernel (C++ on a CPU, "
                        "Triton on CUDA) and with the torch simulation alternately")
    p.add_argument("--kernel", choices=("auto", "native", "torch"), default="auto",
                   help="CPU circuit simulation for 'fast': the fused C++ kernel (quixer/sim/native.py) where it "
                        "builds (auto), required (native), or the torch ops (torch)")
    p.add_argument("--gpu-impl", "--gpu_impl", dest="gpu_impl", choices=("auto", "triton", "torch"), default="auto",
                   help="CUDA circuit simulation for 'fast': the fused Triton kernels (quixer/sim/triton_kernels.py) "
                        "where triton imports (auto), required (triton), or the torch ops (torch)")
    p.add_argument("--cuda-graph", "--cuda_graph", dest="cuda_graph", action="store_true",
                   help="replay the training step of 'fast' as one captured CUDA graph (quixer/sim/cuda_graphs.py; "
                        "CUDA only, Adam with capturable=True)")
    p.add_argument("--eval-batch-sizes", "--eval_batch_sizes", dest="eval_batch_sizes", type=int, nargs="*",
                   default=[], help="also time eval batches of these sizes (first implementation only; captured as "
                                    "CUDA graphs with --cuda-graph)")
    p.add_argument("--eval-steps", type=int, default=5, help="timed eval batches per --eval-batch-sizes size")
    p.add_argument("--compile", action="store_true",
                   help="wrap the model in torch.compile (experimental: on CPU it compiles for minutes and "
                        "recompiles, making steps slower)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default); use 1 on a machine shared with other jobs, "
                        "where OpenMP threads waiting for each other make every small op slow")
    p.add_argument("--seed", type=int, default=0, help="seed for parameters and random token batches")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    for name in ("batch_size", "degree", "ansatz_layers", "window", "embed_dim", "vocab", "steps", "eval_steps"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.qubits < 2:
        raise UserError("--qubits must be >= 2")
    if any(size < 1 for size in args.eval_batch_sizes):
        raise UserError("--eval-batch-sizes must be >= 1")
    if args.warmup < 0 or args.threads < 0:
        raise UserError("--warmup and --threads must be >= 0")
    if not 0 <= args.dropout < 1:
        raise UserError("--dropout must be in [0, 1)")
    return args


class PeakMemory:
    """Peak memory of one call: CUDA max allocated, or the process's peak RSS (VmHWM) on CPU.

    On Linux, freed heap memory is first handed back (glibc ``malloc_trim``) and writing 5 to
    /proc/self/clear_refs resets VmHWM, so each call is measured on its own (the figure includes
    the process's baseline: torch, the model, the optimiser state). Where that is not possible
    the figure is the process's peak so far.
    """

    def __init__(self, device: torch.device):
        self.device = device
        try:
            import ctypes

            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            self._trim = None

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        if self._trim is not None:
            self._trim(0)
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def read_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return peak_rss_mb()


def build_model(args: argparse.Namespace) -> Quixer:
    model = Quixer(n_qubits=args.qubits, n_tokens=args.window, qsvt_polynomial_degree=args.degree,
                   n_ansatz_layers=args.ansatz_layers, vocabulary_size=args.vocab,
                   embedding_dimension=args.embed_dim, dropout=args.dropout)
    model.initialize("small_gaussian", generator=torch.Generator().manual_seed(args.seed))
    return model


def choose_device(args: argparse.Namespace) -> tuple[torch.device, dict]:
    """``--device``; for auto, the device where a few timed training steps are faster (and their times)."""
    if args.device != "auto":
        return resolve_device(args.device), {}
    return fastest_device(lambda: build_model(args), args.window, args.vocab, args.batch_size)


def simulations(args: argparse.Namespace, device: torch.device) -> dict[str, tuple[bool, str | None]]:
    """Per implementation: whether the fused CPU kernel is on (it also draws the CPU dropout masks)
    and the simulator the model pins (None: the device's default)."""
    if args.kernel == "native" and not native.available():
        raise UserError(f"--kernel native: the fused CPU kernel is unavailable: {native.unavailable_reason()}")
    wants_triton = device.type == "cuda" and (args.gpu_impl == "triton" or args.impl == "kernels")
    if wants_triton and not TritonSimulator.runs_on(device):
        raise UserError("the Triton kernels are unavailable here (is triton installed? QUIXER_TRITON=0?)")
    if device.type == "cpu" and args.impl == "kernels" and not native.available():
        raise UserError("--impl kernels needs the fused CPU kernel, which is unavailable here")
    if args.cuda_graph and device.type != "cuda":
        raise UserError("--cuda-graph needs --device cuda")
    kernel = args.kernel != "torch" and native.available()
    if device.type == "cpu":
        fast = {"native": "native", "torch": "torch"}.get(args.kernel)
    else:
        fast = {"triton": "triton", "torch": "torch"}.get(args.gpu_impl)
        if args.impl == "kernels":
            fast = "triton"
    return {"fast": (kernel, fast), "naive": (kernel, None), "torch": (False, "torch")}


def time_alternately(impls: list[str], calls: dict, use, batches, warmup: int, peak: PeakMemory,
                     device: torch.device, errors: dict[str, str]) -> dict:
    """Per implementation: seconds of each call on each batch after ``warmup`` batches, alternating
    who goes first, and the peak memory of one extra, untimed call on the last batch.

    An implementation whose call raises (a Triton kernel that does not compile, memory) is dropped
    with its error in ``errors``, so that the others are still measured and reported.
    """
    results = {name: {"times": [], "peak": 0.0} for name in impls}
    for i, batch in enumerate(batches):
        for name in impls if i % 2 == 0 else impls[::-1]:
            if name in errors:
                continue
            try:
                seconds = _timed_call(calls[name], batch, use, name, peak, device, last=i == len(batches) - 1)
            except Exception as exc:  # reported in the JSON line instead of ending the benchmark
                errors[name] = f"{type(exc).__name__}: {exc}"
                log.error("%s failed: %s", name, errors[name])
                continue
            if seconds is None:
                results[name]["peak"] = max(results[name]["peak"], peak.read_mb())
            elif i >= warmup:
                results[name]["times"].append(seconds)
    return results


def _timed_call(call, batch, use, name: str, peak: PeakMemory, device: torch.device, last: bool) -> float | None:
    """Seconds of ``call(*batch)`` with ``name`` in use; on the ``last`` batch the call is not timed
    but measured for peak memory (resetting the peak hands freed memory back), and None returned."""
    use(name)
    if last:
        peak.reset()
        call(*batch)
        return None
    synchronize(device)
    start = time.perf_counter()
    call(*batch)
    synchronize(device)
    return time.perf_counter() - start


def run_benchmark(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device, device_choice = choose_device(args)
    torch.manual_seed(args.seed)
    model = build_model(args).to(device)
    settings = simulations(args, device)
    impls = {"both": ["fast", "naive"], "kernels": ["fast", "torch"]}.get(args.impl, [args.impl])

    def use(name):
        native.set_enabled(settings[name][0])
        model.use_simulator(settings[name][1])

    runners = {"fast": model, "naive": NaiveQuixer(model), "torch": model}
    if args.compile:
        runners = {k: torch.compile(v) for k, v in runners.items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=args.cuda_graph)
    gen = torch.Generator().manual_seed(args.seed + 1)

    def batch():
        x = torch.randint(0, args.vocab, (args.batch_size, args.window + 1), generator=gen).to(device)
        return x[:, :-1], x[:, -1]

    steps = {name: training_step(runners[name], optimizer) for name in impls}
    errors: dict[str, str] = {}
    if args.cuda_graph:
        use("fast")
        try:
            steps["fast"] = capture_step(steps["fast"], *batch())
        except Exception as exc:  # the other implementation is still measured
            errors["fast"] = f"capture: {type(exc).__name__}: {exc}"
    peak = PeakMemory(device)
    model.train()
    train = time_alternately(impls, steps, use, [batch() for _ in range(args.warmup + args.steps + 1)],
                             args.warmup, peak, device, errors)
    model.eval()
    with torch.no_grad():
        evaluate = {name: (lambda x, y, r=runners[name]: r(x)) for name in impls}
        evaluation = time_alternately(impls, evaluate, use, [batch() for _ in range(args.steps + 2)], 0, peak, device,
                                      errors)
    out = report(args, model, device, device_choice, impls, use, train, evaluation, errors)
    if args.eval_batch_sizes and impls[0] not in errors:
        out["eval_by_batch"] = eval_by_batch(args, model, device, lambda: use(impls[0]))
    return out


def eval_by_batch(args: argparse.Namespace, model: Quixer, device: torch.device, use) -> dict:
    """Per ``--eval-batch-sizes`` size: the median seconds of ``--eval-steps`` eval batches after a first,
    untimed one (which builds the tables, compiles or captures), and sequences per second. A size that
    fails (memory) is reported with its error while the others are still measured."""
    use()
    model.eval()
    gen = torch.Generator().manual_seed(args.seed + 2)
    results = {}
    for size in args.eval_batch_sizes:
        try:
            batches = [torch.randint(0, args.vocab, (size, args.window), generator=gen).to(device) for _ in range(2)]
            run = capture_eval(model, batches[0]) if args.cuda_graph else _no_grad(model)
            first = _seconds(run, batches[0], device)
            seconds = statistics.median(_seconds(run, batches[i % 2], device) for i in range(args.eval_steps))
            results[str(size)] = {"seconds_per_batch": round(seconds, 6), "sequences_per_second": round(size / seconds),
                                  "first_batch_seconds": round(first, 4), "captured": args.cuda_graph}
        except Exception as exc:  # reported in the JSON line; the other sizes are still measured
            results[str(size)] = {"error": f"{type(exc).__name__}: {exc}"}
            log.error("eval at batch %d failed: %s", size, results[str(size)]["error"])
        run = batches = None  # a captured graph's memory goes with it
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def _no_grad(model):
    def run(x):
        with torch.no_grad():
            return model(x)

    return run


def _seconds(call, x, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    call(x)
    synchronize(device)
    return time.perf_counter() - start


def report(args, model, device, device_choice, impls, use, train, evaluation, errors) -> dict:
    def summary(name: str) -> dict:
        if name in errors:
            return {"impl": name, "error": errors[name]}
        step, evaluate = statistics.median(train[name]["times"]), statistics.median(evaluation[name]["times"][1:])
        use(name)
        return {"impl": name,
                "simulator": "naive" if name == "naive" else model.simulator().name,
                "seconds_per_step": round(step, 6),
                "eval_seconds_per_batch": round(evaluate, 6),
                "eval_first_batch_seconds": round(evaluation[name]["times"][0], 6),
                "sequences_per_second": round(args.batch_size / step, 2),
                "eval_sequences_per_second": round(args.batch_size / evaluate, 2),
                "peak_memory_mb": round(max(train[name]["peak"], evaluation[name]["peak"]), 1)}

    out = summary(impls[0])
    if len(impls) == 2:
        other = summary(impls[1])
        key = {"naive": ("naive", "speedup"), "torch": ("torch_ops", "kernel_speedup")}[impls[1]]
        out[key[0]] = other
        if not errors:
            out[f"{key[1]}_train"] = round(other["seconds_per_step"] / out["seconds_per_step"], 2)
            out[f"{key[1]}_eval"] = round(other["eval_seconds_per_batch"] / out["eval_seconds_per_batch"], 2)
    native.set_enabled(None if args.kernel == "auto" else args.kernel == "native")
    out.update({
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        # a device whose step failed was timed as infinitely slow: null here (JSON has no infinity)
        "device_choice_seconds_per_step": {k: (v if math.isfinite(v) else None) for k, v in device_choice.items()},
        "triton_fallbacks": KERNEL_GUARD.failures(),
        "cuda_graph": args.cuda_graph,
        "torch_threads": torch.get_num_threads(),
        "config": {"batch_size": args.batch_size, "qubits": args.qubits, "degree": args.degree,
                   "ansatz_layers": args.ansatz_layers, "window": args.window, "embed_dim": args.embed_dim,
                   "vocab": args.vocab, "dropout": args.dropout, "steps": args.steps, "warmup": args.warmup,
                   "compile": args.compile, "seed": args.seed, "eval_batch_sizes": args.eval_batch_sizes},
    })
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    result = run_benchmark(args)
    print(json.dumps(result), flush=True)
    nested = list(result.get("eval_by_batch", {}).values())
    failed = [v for v in (result, *result.values(), *nested) if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
