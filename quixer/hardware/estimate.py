"""From simulation to hardware: what a trained Quixer run costs on a quantum computer.

:func:`estimate_hardware` (``estimate_quixer_hardware.py``) takes a Quixer run directory and

1. builds the real circuit of one test window (:mod:`quixer.hardware.circuit`: LCU + QSVT with
   mid-circuit postselection, feed-forward, X/Y/Z measurement) and checks it by simulating it
   in qiskit-aer (:mod:`quixer.hardware.simulation`) against the torch model (state,
   postselection probability, features);
2. compiles it with pytket to named native gate sets (:mod:`quixer.hardware.resources`);
3. scores the test set with features estimated from S shots per basis
   (:mod:`quixer.hardware.shots`);

and writes ``hardware.json``, ``hardware.md`` and ``hardware_shots.png``.
The files are written by :mod:`quixer.hardware.report`, which also gives the main report its line.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..common import UserError, atomic_write_json, atomic_write_text, load_torch_file, read_json, sha256_file
from .report import HARDWARE_JSON, HARDWARE_MD, HARDWARE_PNG, hardware_markdown, plot_shots

if TYPE_CHECKING:
    from ..model import QuixerConfig

log = logging.getLogger("quixer")

DEFAULT_SHOTS = (100, 1000, 10000)
DEFAULT_MAX_WINDOWS = 2000
DEFAULT_GATE_SETS = ("ibm", "ion")


@dataclass
class QuixerRun:
    run_dir: Path
    config: dict
    model: "torch.nn.Module"
    data_dir: Path
    checkpoint_sha256: str


def _find_data_dir(run_dir: Path, configured: str | None, override: str | os.PathLike | None) -> Path:
    if override is not None:
        candidates = [Path(override)]
    elif configured:
        p = Path(configured)
        candidates = [p] if p.is_absolute() else [p, run_dir.parent / p, run_dir.parent.parent / p]
    else:
        raise UserError(f"{run_dir / 'config.json'}: no data_dir recorded; pass --data_dir")
    for c in candidates:
        if (c / "test.pt").is_file():
            return c
    raise UserError(f"test split not found: {candidates[0] / 'test.pt'} "
                    "(pass --data_dir with the run's token directory)")


def resolve_run_dir(run_dir: str | os.PathLike, run_seed: int | None = None) -> Path:
    """A run directory, or one seed run of a model folder of ``seed_<s>/`` runs (``run_seed``,
    else the lowest seed), said in the log, so the pipeline's own layout is accepted."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    if (run_dir / "config.json").is_file() and run_seed is None:
        return run_dir
    seeds = sorted(int(p.name[5:]) for p in run_dir.glob("seed_*") if p.name[5:].isdigit() and (p / "config.json").is_file())
    if not seeds:
        if run_seed is not None:
            raise UserError(f"{run_dir}: --run_seed given, but it holds no seed_<s>/ runs")
        raise UserError(f"{run_dir}: config.json not found (not a run directory, and no seed_<s>/ runs in it)")
    seed = seeds[0] if run_seed is None else run_seed
    if seed not in seeds:
        raise UserError(f"{run_dir}: no seed_{seed}/ run (seeds: {', '.join(map(str, seeds))})")
    log.info("%s: a model folder of %d seed runs (%s); using seed_%d%s", run_dir, len(seeds),
             ", ".join(map(str, seeds)), seed, "" if run_seed is not None else " (--run_seed picks another)")
    return run_dir / f"seed_{seed}"


def _check_same_data(run_dir: Path, data_dir: Path) -> None:
    """Refuse to score a run on tokens other than those it was trained on (by content)."""
    from ..data import data_fingerprint

    results = run_dir / "results.json"
    recorded = read_json(results).get("data_fingerprint") if results.is_file() else None
    if recorded is None:
        log.info("%s: no data fingerprint recorded (an older run); %s not checked", run_dir, data_dir)
        return
    if data_fingerprint(data_dir) != recorded:
        raise UserError(f"{data_dir}: not the tokens {run_dir} was trained on (data fingerprint differs); "
                        "pass the run's own --data_dir")


def load_quixer_run(run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                    run_seed: int | None = None) -> QuixerRun:
    """The best checkpoint of a Quixer run as a complex128 model in eval mode.

    Built from the checkpoint's configuration (:func:`_checkpoint_config`), checked against
    ``config.json``; the data directory must hold the tokens the run was trained on.
    """
    from ..model import Quixer

    run_dir = resolve_run_dir(run_dir, run_seed)
    config = read_json(run_dir / "config.json")
    results_path = run_dir / "results.json"
    model_name = read_json(results_path).get("model") if results_path.is_file() else None
    if not isinstance(config, dict) or "qubits" not in config or model_name not in (None, "quixer"):
        raise UserError(f"{run_dir}: not a Quixer run (model {model_name or 'unknown'}); "
                        "this estimate needs a run of train_quixer_hybrid.py")
    best_path = run_dir / "best.pt"
    if not best_path.is_file():
        raise UserError(f"{best_path}: not found (the run has not finished an epoch)")
    best = load_torch_file(best_path)
    state = best.get("model") if isinstance(best, dict) else None
    if not isinstance(state, dict) or "lcu_coefficients" not in state:
        raise UserError(f"{best_path}: not a Quixer checkpoint (no lcu_coefficients)")
    cfg, n_tokens, vocab = _checkpoint_config(best_path, best, state)
    for key in ("qubits", "degree", "ansatz_layers", "embedding_dim"):
        if key in config and config[key] != getattr(cfg, key):
            raise UserError(f"{run_dir}: config.json says {key}={config[key]} but best.pt has {getattr(cfg, key)}")
    model = Quixer.from_config(cfg, n_tokens=n_tokens, vocabulary_size=vocab, dtype=torch.complex128)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{best_path}: does not load into Quixer ({str(exc).splitlines()[0]})") from None
    if best.get("active_layers"):
        model.set_active_layers(int(best["active_layers"]))
    model.eval()
    found = _find_data_dir(run_dir, config.get("data_dir"), data_dir)
    _check_same_data(run_dir, found)
    return QuixerRun(run_dir, config, model, found, sha256_file(best_path))


def _checkpoint_config(best_path: Path, best: dict, state: dict) -> tuple["QuixerConfig", int, int]:
    """The QuixerConfig of a best.pt, and the sizes the data gave it (input tokens, vocabulary) from
    its tensors. The configuration is the checkpoint's ``model_config`` where it carries one; older
    checkpoints' sizes are read off the tensors (dropout 0: the model is only evaluated)."""
    from ..model import QuixerConfig

    try:
        vocab, embed = state["embedding.weight"].shape
        n_tokens = state["lcu_coefficients"].shape[0]
        if best.get("model_config") is not None:
            return QuixerConfig(**best["model_config"]), n_tokens, vocab
        n = state["quantum_feedforward_parameters"].shape[0] // 4
        degree = state["qsvt_polynomial_coefficients"].shape[0] - 1
        layers = state["embedding_to_angles.weight"].shape[0] // (4 * n)
    except (KeyError, IndexError, ZeroDivisionError, ValueError) as exc:
        raise UserError(f"{best_path}: incomplete Quixer checkpoint ({exc})") from None
    except (TypeError, UserError) as exc:  # a model_config of other fields or values
        raise UserError(f"{best_path}: its model_config is not a Quixer configuration ({exc})") from None
    cfg = QuixerConfig(qubits=n, degree=degree, ansatz_layers=layers, embedding_dim=embed, dropout=0.0)
    return cfg, n_tokens, vocab


def _test_windows(run: QuixerRun, max_windows: int, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, int, np.ndarray | None]:
    """Input tokens and targets of the test targets the run was scored on (the protocol of
    :mod:`quixer.streams`; a seeded subset of ``max_windows`` if there are more), their indices
    among those targets, how many there are, and their gene groups (None without sources)."""
    from ..data import load_token_data
    from ..streams import DEFAULT_EVAL_TARGETS, eval_targets

    data = load_token_data(run.data_dir, splits=("test",))
    model = run.model
    if data.window_size - 1 != model.n_tokens:
        raise UserError(f"{run.data_dir}: windows of {data.window_size} tokens, but the model reads {model.n_tokens} + 1")
    if data.vocab_size > model.vocabulary_size:
        raise UserError(f"{run.data_dir}: a vocabulary of {data.vocab_size} tokens, but the model has "
                        f"{model.vocabulary_size}")
    streams = data.streams("test")
    targets = eval_targets(streams, data.window_size, run.config.get("eval_targets", DEFAULT_EVAL_TARGETS))
    total = len(targets)
    keep = np.arange(total)
    if max_windows and total > max_windows:
        keep = np.sort(np.random.default_rng(seed).choice(total, max_windows, replace=False))
    seq = streams.windows(targets.starts[keep], data.window_size)
    groups = targets.groups[keep] if targets.groups is not None else None
    return seq[:, :-1].contiguous(), seq[:, -1].contiguous(), keep, total, groups


def verify_circuit(model, x: torch.Tensor) -> tuple:
    """The circuit of window ``x`` and how its qiskit-aer simulation compares with the model
    (box level: the multiplexors as qiskit's own; the gate-level decomposition is checked in the tests)."""
    from .circuit import BASES, model_circuit
    from .simulation import pauli_features, simulate

    captured = []
    hook = model.output_feedforward.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    try:
        with torch.no_grad():
            _, post = model(x[None])
            state = model.qsvt_state(x[None])[0].to(torch.complex128).numpy()
    finally:
        hook.remove()
    circuit = model_circuit(model, x)
    start = time.perf_counter()
    sim = simulate(circuit.state, decompose=False)
    outputs = {b: simulate(circuit.tail(b), decompose=False, initial=sim).outputs for b in BASES}
    seconds = time.perf_counter() - start
    expected = state / np.linalg.norm(state)
    return circuit, {
        "state_max_abs_error": float(np.abs(sim.register_state("tok") - expected).max()),
        "postselection_circuit": sim.success, "postselection_model": float(post[0]),
        "features_max_abs_error": float(np.abs(pauli_features(outputs, model.n_qubits)
                                               - captured[0][0].double().numpy()).max()),
        "simulation_seconds": round(seconds, 2),
    }


def _signature(run: QuixerRun, shots, seed, max_windows, gate_sets) -> dict:
    return {"checkpoint_sha256": run.checkpoint_sha256, "test_sha256": sha256_file(run.data_dir / "test.pt"),
            "shots": list(shots), "seed": seed, "max_windows": max_windows, "gate_sets": list(gate_sets)}


def _checked_shots(shots: Sequence[int], batch_size: int, max_windows: int, gate_sets: Sequence[str]) -> list[int]:
    """The flags checked (one clear error each); the shot budgets sorted, without repeats."""
    from .resources import GATE_SET_NAMES

    if not shots or any(int(s) != s or s < 1 for s in shots):
        raise UserError(f"--shots must be positive integers, got {list(shots)}")
    if batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {batch_size}")
    if max_windows < 0:
        raise UserError(f"--max_windows must be >= 0 (0 = all), got {max_windows}")
    unknown = sorted(set(gate_sets) - set(GATE_SET_NAMES))
    if unknown:
        raise UserError(f"unknown gate set {unknown[0]!r}; choose from {', '.join(GATE_SET_NAMES)}")
    return sorted({int(s) for s in shots})


def _finished_estimate(out: Path, signature: dict, force: bool) -> dict | None:
    """The estimate already in ``out`` for the same signature (None: none, or ``force``); an
    estimate for other flags is refused rather than overwritten."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    old_path = out / HARDWARE_JSON
    if not old_path.is_file() or force:
        return None
    old = read_json(old_path)
    if not isinstance(old, dict) or old.get("signature") != signature:
        raise UserError(f"{old_path}: holds an estimate with other flags or another checkpoint; "
                        "pass --force to replace it")
    if (out / HARDWARE_MD).is_file() and (out / HARDWARE_PNG).is_file():
        return old
    return None


def _checked_circuit(model, x: torch.Tensor, window: int):
    """The circuit of one test window, refused unless it reproduces the model."""
    circuit, verification = verify_circuit(model, x)
    log.info("circuit of test window %d vs the model: state error %.1e, features error %.1e, "
             "postselection %.6f vs %.6f",
             window, verification["state_max_abs_error"], verification["features_max_abs_error"],
             verification["postselection_circuit"], verification["postselection_model"])
    if max(verification["state_max_abs_error"], verification["features_max_abs_error"]) > 1e-6:
        raise RuntimeError(f"the circuit does not reproduce the model: {verification}")
    return circuit, verification


def _compiled_resources(circuit, gate_sets: Sequence[str], progress: bool) -> dict:
    """Gate counts per gate set, with the chance of a run free of two-qubit errors."""
    from .resources import resource_counts

    resources = resource_counts(circuit, gate_sets, progress=progress)
    fewest = min((g["after"]["two_qubit_gates"] for g in resources["gate_sets"].values()),
                 default=resources["decomposed"]["two_qubit_gates"])
    resources["error_free_run_probability"] = {  # two-qubit errors only: a rough upper bound
        "two_qubit_gates": fewest, **{f"{eps:g}": (1 - eps) ** fewest for eps in (1e-3, 1e-4)}}
    return resources


def _circuit_report(model, circuit, window: int, verification: dict) -> dict:
    return {
        "qubits": circuit.width, "token_qubits": model.n_qubits, "lcu_qubits": circuit.lcu_qubits,
        "polynomial_qubits": model.degree,
        "qubits_with_fresh_lcu_registers": model.n_qubits + model.degree * circuit.lcu_qubits + model.degree,
        "construction": "PREPARE (binary tree of multiplexed RY, amplitudes sqrt|b_w|), SELECT (one "
                        "multiplexed rotation per ansatz-14 gate, controlled by the polynomial qubit; LCU "
                        "phases as a diagonal), PREPARE^dag, mid-circuit measurement of the LCU register "
                        "kept on 0 (register reused); polynomial as an LCU over powers in unary code with "
                        "sign Z gates; feed-forward; X/Y/Z basis",
        "verification_window": window, "verification": verification,
    }


def _shots_report(rows: list[dict], postselection: np.ndarray, windows: int, total: int, seed: int) -> dict:
    from .shots import INTERVAL_METHOD

    return {"windows": windows, "test_windows": total, "seed": seed, "rows": rows,
            "postselection_mean": float(postselection.mean()), "postselection_median": float(np.median(postselection)),
            "postselection_min": float(postselection.min()),
            "zero_success_fallback": "features of a basis with no kept shot are 0 (a fair +-1 coin)",
            "intervals": INTERVAL_METHOD}


def _write_estimate(out: Path, report: dict, title: str) -> None:
    """The plot, the markdown and, last, ``hardware.json``: its signature marks a complete estimate."""
    from .shots import INTERVAL_METHOD

    out.mkdir(parents=True, exist_ok=True)
    plot_shots(report["shots"]["rows"], out / HARDWARE_PNG, title, caption=INTERVAL_METHOD + ".")
    atomic_write_text(out / HARDWARE_MD, hardware_markdown(report))
    atomic_write_json(out / HARDWARE_JSON, report)
    log.info("wrote %s, %s and %s in %s", HARDWARE_JSON, HARDWARE_MD, HARDWARE_PNG, out)


def estimate_hardware(run_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None, *,
                      shots: Sequence[int] = DEFAULT_SHOTS, seed: int = 0, max_windows: int = DEFAULT_MAX_WINDOWS,
                      gate_sets: Sequence[str] = DEFAULT_GATE_SETS, data_dir: str | os.PathLike | None = None,
                      batch_size: int = 1024, force: bool = False, progress: bool = True,
                      run_seed: int | None = None) -> dict:
    """Circuit, resources and finite-shot accuracy of a Quixer run (or of seed ``run_seed`` of a
    model folder); see the module docstring."""
    from .shots import exact_outcomes, shot_table

    shots = _checked_shots(shots, batch_size, max_windows, gate_sets)
    logging.getLogger("qiskit").setLevel(logging.WARNING)  # its transpiler logs every pass at INFO
    run = load_quixer_run(run_dir, data_dir, run_seed)
    out = Path(output_dir) if output_dir is not None else run.run_dir
    signature = _signature(run, shots, seed, max_windows, gate_sets)
    finished = _finished_estimate(out, signature, force)
    if finished is not None:
        log.info("%s is up to date (same checkpoint, test data and flags); nothing to do", out / HARDWARE_JSON)
        return finished
    model = run.model
    x, y, indices, total, groups = _test_windows(run, max_windows, seed)
    log.info("%s: %d qubits, %d tokens, degree %d, %d layers; %d of %d test windows", run.run_dir, model.n_qubits,
             model.n_tokens, model.degree, model.active_layers, len(y), total)

    circuit, verification = _checked_circuit(model, x[0], int(indices[0]))
    resources = _compiled_resources(circuit, gate_sets, progress)
    exact = exact_outcomes(model, x, batch_size=batch_size, progress=progress)
    rows = shot_table(model, exact, y.numpy(), shots, seed, groups)
    report = {
        "run_dir": str(run.run_dir), "data_dir": str(run.data_dir), "signature": signature,
        "model": {"qubits": model.n_qubits, "tokens": model.n_tokens, "degree": model.degree,
                  "ansatz_layers": model.active_layers, "vocabulary_size": model.vocabulary_size},
        "circuit": _circuit_report(model, circuit, int(indices[0]), verification),
        "resources": resources,
        "shots": _shots_report(rows, exact["postselection"], len(y), total, seed),
        "versions": _versions(),
    }
    _write_estimate(out, report, f"{run.run_dir.name}: {len(y):,} test windows, features from S shots per basis")
    return report


def _versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("pytket", "pytket-qiskit", "qiskit", "qiskit-aer", "torch", "numpy")}
