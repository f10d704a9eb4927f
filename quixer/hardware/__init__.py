"""The hardware estimate of a trained Quixer run (``estimate_quixer_hardware.py``).

- ``estimate``    load and check a run, verify its circuit, compile, sample shots, write the estimate
- ``report``      what an estimate shows: hardware.md, hardware_shots.png, the main report's line
- ``circuit``     the Quixer circuit itself in pytket: PREPARE / SELECT, LCU of powers, feed-forward, bases
- ``simulation``  qiskit-aer simulation of that circuit with mid-circuit postselection
- ``resources``   pytket compilation to hardware gate sets and the resource counts
- ``shots``       test accuracy with features estimated from finite shots

Entered from the hardware script and the report only; it reads the model, the token data and
the scoring code, never the training loop or a stage module. The names below are importable
from ``quixer.hardware`` directly, each loaded from its module on first use.
"""
from .. import _lazy_exports

_EXPORTS = {
    "DEFAULT_GATE_SETS": "estimate",
    "DEFAULT_MAX_WINDOWS": "estimate",
    "DEFAULT_SHOTS": "estimate",
    "HARDWARE_JSON": "report",
    "HARDWARE_MD": "report",
    "HARDWARE_PNG": "report",
    "QuixerRun": "estimate",
    "estimate_hardware": "estimate",
    "hardware_summary_markdown": "report",
    "hardware_markdown": "report",
    "plot_shots": "report",
    "load_quixer_run": "estimate",
    "resolve_run_dir": "estimate",
    "verify_circuit": "estimate",
    "BASES": "circuit",
    "QuixerCircuit": "circuit",
    "model_circuit": "circuit",
    "simulate": "simulation",
    "pauli_features": "simulation",
    "GATE_SET_NAMES": "resources",
    "compile_circuit": "resources",
    "gate_counts": "resources",
    "resource_counts": "resources",
    "exact_outcomes": "shots",
    "sample_features": "shots",
    "shot_table": "shots",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
