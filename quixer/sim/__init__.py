"""Statevector simulation of the Quixer circuits, under :mod:`quixer.model` and the training step.

- ``circuits``         gates, circuit plans, adjoint-backward autograd functions, polynomial and Pauli measurement
- ``simulators``       one simulator per device (torch ops, fused CPU kernel, guarded Triton), the eval cache
- ``native``           the fused C++ CPU kernel (``statevector_kernel.cpp``, built on first use)
- ``triton_kernels``   the fused GPU kernels (Triton; interpreted on a CPU in the tests)
- ``compiled_kernels`` those kernels compiled for sm_90 without a GPU: registers, spills, instructions per gate
- ``cuda_graphs``      a whole training step or evaluation captured as one CUDA graph
- ``naive``            a gate-by-gate Quixer simulation: test oracle and benchmark baseline, not the pipeline

Nothing here imports the model, the training loop or a stage module; the names below are
importable from ``quixer.sim`` directly, each loaded from its module on first use.
"""
from .. import _lazy_exports

_EXPORTS = {
    "CircuitPlan": "circuits",
    "CircuitFunction": "circuits",
    "LCUPowerFunction": "circuits",
    "ansatz14_gates": "circuits",
    "gate_coefficients": "circuits",
    "pauli_expectations": "circuits",
    "Simulator": "simulators",
    "TorchSimulator": "simulators",
    "NativeSimulator": "simulators",
    "TritonSimulator": "simulators",
    "GuardedTritonSimulator": "simulators",
    "KERNEL_GUARD": "simulators",
    "select": "simulators",
    "simulator_class": "simulators",
    "run_circuits": "simulators",
    "circuit_unitaries": "simulators",
    "capture_step": "cuda_graphs",
    "capture_eval": "cuda_graphs",
    "capturable_optimizer": "cuda_graphs",
    "CapturedSteps": "cuda_graphs",
    "naive_forward": "naive",
    "NaiveQuixer": "naive",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
