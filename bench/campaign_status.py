"""Where the chrX campaign stands: each planned run finished, running, interrupted or pending.

Reads the campaign directory of ``bench/campaign_chrX.sh`` (its ``out/runs/``, ``heartbeat.log``)
and the phase list; prints one line per run (epochs done, stop reason, converged, test top-1),
the wall time the campaign has run so far, the training compute spent and an estimate of what
is left from the measured epoch times (the mean of a run's last few epochs: the current rate) and,
with --costs, from projected ones for the models and tracks not yet begun. Standard library only.

    python bench/campaign_status.py CAMPAIGN_DIR --phases bench/campaign_chrX.phases --costs bench/campaign_chrX.costs
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

DEFAULT_MODELS = "quixer,quixer_ablation,quixer_ablation_matched,lstm,transformer"
OFFICIAL_EPOCHS = 30
HEARTBEAT_GAP = 120  # seconds: a longer gap between heartbeats means the campaign was not running
RECENT_EPOCHS = 3  # a run's seconds per epoch: the mean of its last few epochs
TRACK_DIRS = {"quantized": ("runs",), "raw": ("runs_raw",), "both": ("runs", "runs_raw")}  # run_pipeline.sh --tokens


def planned_runs(phases: Path) -> list[tuple[str, str, int, int, str]]:
    """(phase, model, seed, epochs, runs folder) of every trained run the phases ask for; a run that
    an earlier phase already asks for (a later phase adding seeds to a model) is listed once."""
    runs, seen = [], set()
    for line in phases.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _commit, *flags = shlex.split(line)
        name = name.removeprefix("&")  # a phase that runs beside the one before it
        opts = dict(zip(flags[::2], flags[1::2]))
        epochs = int(opts.get("--epochs", OFFICIAL_EPOCHS if opts.get("--protocol") == "official" else 4))
        for folder in TRACK_DIRS[opts.get("--tokens", "quantized")]:
            for model in opts.get("--models", DEFAULT_MODELS).split(","):
                for seed in range(42, 42 + int(opts.get("--seeds", 1))):
                    if (folder, model, seed) not in seen:
                        seen.add((folder, model, seed))
                        runs.append((name, model, seed, epochs, folder))
    return runs


def _running_paths() -> str:
    """Command lines of the processes of this machine (to tell running from interrupted runs)."""
    out = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            out.append(cmd.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return "\n".join(out)


def run_state(run: Path, procs: str) -> dict:
    """State, epochs done, seconds per epoch and the results of one run directory."""
    metrics = []
    if (run / "metrics.jsonl").is_file():
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    recent = metrics[-RECENT_EPOCHS:]  # the current rate: runs share cores with other work, which comes and goes
    per_epoch = sum(m["epoch_seconds"] for m in recent) / len(recent) if recent else None
    if (run / "results.json").is_file():
        r = json.loads((run / "results.json").read_text())
        return {"state": "finished", "epochs": r["epochs_run"], "per_epoch": per_epoch, "results": r,
                "seconds": r.get("train_seconds", 0.0)}
    state = "running" if f"{run} " in procs or f"{run}\n" in procs else ("interrupted" if metrics else "pending")
    return {"state": state, "epochs": len(metrics), "per_epoch": per_epoch, "results": None,
            "seconds": sum(m["epoch_seconds"] for m in metrics)}


def wall_seconds(heartbeats: Path) -> float:
    """Seconds the campaign has been running: gaps between consecutive heartbeats, short ones only."""
    if not heartbeats.is_file():
        return 0.0
    stamps = [int(x) for x in heartbeats.read_text().split()]
    return float(sum(b - a for a, b in zip(stamps, stamps[1:]) if 0 < b - a <= HEARTBEAT_GAP))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("campaign_dir", type=Path)
    p.add_argument("--phases", type=Path, required=True)
    p.add_argument("--costs", type=Path, default=None,
                   help="JSON lines of bench/epoch_costs.py --track: projected seconds per epoch for the runs "
                        "of a model and track that has no epoch of its own yet")
    args = p.parse_args(argv)
    procs = _running_paths()
    runs, per_model, left, projected = [], {}, 0.0, 0.0
    costs = {}
    if args.costs is not None and args.costs.is_file():
        for line in args.costs.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                c = json.loads(line)
                costs[(TRACK_DIRS[c["track"]][0], c["model"])] = c["epoch_seconds"]
    for phase, model, seed, epochs, folder in planned_runs(args.phases):
        st = run_state(args.campaign_dir / "out" / folder / model / f"seed_{seed}", procs)
        runs.append((phase, model, seed, epochs, st))
        if st["per_epoch"]:
            per_model.setdefault((folder, model), st["per_epoch"])
    for (phase, model, seed, epochs, st), (*_, folder) in zip(runs, planned_runs(args.phases)):
        line = f"{phase:10s} {model:24s} seed {seed}  {st['state']:11s} {st['epochs']:2d}/{epochs} epochs"
        if st["results"]:
            r = st["results"]
            line += (f"  stop {r['stop_reason']}, converged {r.get('converged')}, best epoch {r['best_epoch']}, "
                     f"test top-1 {100 * r['test_top1']:.2f} %")
        elif (folder, model) in per_model:
            left += (epochs - st["epochs"]) * per_model[(folder, model)]
        elif (folder, model) in costs:
            projected += (epochs - st["epochs"]) * costs[(folder, model)]
        print(line)
    states = [st["state"] for *_, st in runs]
    compute = sum(st["seconds"] for *_, st in runs)
    print(f"{states.count('finished')} finished, {states.count('running')} running, "
          f"{states.count('interrupted')} interrupted, {states.count('pending')} pending of {len(runs)} runs; "
          f"wall time so far {wall_seconds(args.campaign_dir / 'heartbeat.log') / 3600:.2f} h, "
          f"training compute {compute / 3600:.2f} core-hours; left (runs with a measured epoch time) "
          f"about {left / 3600:.1f} core-hours" + (f", and {projected / 3600:.1f} projected for the runs not yet "
                                                    f"measured (--costs)" if projected else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
