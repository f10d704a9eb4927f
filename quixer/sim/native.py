"""The fused CPU circuit kernels (``statevector_kernel.cpp``): built on first use, loaded with ctypes.

Why a native kernel: on a CPU the torch butterfly simulation in :mod:`quixer.sim.circuits` makes a
pass over the whole batch of states for every gate, so a training step is bound by memory
traffic and op overhead. The kernel runs all gates of a circuit on a tile of instances held in
L1 cache (see the C++ file's header). It is optional: where no C++ compiler is found, the build
fails, or ``QUIXER_NATIVE=0`` is set, the model uses the torch path (same maths; the tests check
that both agree).

The library is compiled with ``$CXX`` (default ``g++``) into ``$QUIXER_KERNEL_CACHE`` (default
``~/.cache/quixer/kernels``), under a name that hashes the source, the compiler and the CPU's
flags, so an edited source or another machine gets its own build; the write is atomic, so
concurrent first uses (several DDP ranks) are safe. ``python -m quixer.sim.native`` builds it ahead
of time and prints where it is.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("statevector_kernel.cpp")
FLAGS = ["-O3", "-march=native", "-std=c++17", "-ffp-contract=fast", "-shared", "-fPIC", "-fopenmp", "-fno-math-errno"]
ABI_VERSION = 1

_state: dict = {}  # "enabled": in use, "lib": the library (None: the build failed), "error": why it failed


def enabled_by_environment() -> bool:
    return os.environ.get("QUIXER_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "quixer" / "kernels"
    return Path(os.environ.get("QUIXER_KERNEL_CACHE", default))


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _compiler() -> list[str] | None:
    cxx = os.environ.get("CXX", "g++")
    parts = cxx.split()
    return parts if parts and shutil.which(parts[0]) else None


def library_path(compiler: list[str]) -> Path:
    version = subprocess.run(compiler + ["--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(compiler), version, " ".join(FLAGS),
                                    platform.machine(), _cpu_flags()]).encode()).hexdigest()[:16]
    return cache_dir() / f"quixer_statevector_{key}.so"


def build() -> Path:
    """Compile the kernel library if it is not in the cache; returns its path (raises on failure)."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError(f"no C++ compiler found (tried {os.environ.get('CXX', 'g++')!r}; set CXX)")
    path = library_path(compiler)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the fused CPU circuit kernel into %s (once, a few seconds)", path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    os.close(fd)
    try:
        result = subprocess.run(compiler + FLAGS + [str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} failed: {result.stderr.strip()[-2000:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    for suffix in ("f32", "f64"):
        fwd = getattr(lib, f"qx_forward_{suffix}")
        fwd.argtypes = [ptr, ptr, i64, i32, i64, ptr, ptr, i32, ptr, ptr, ptr, i32]
        fwd.restype = i32
        adj = getattr(lib, f"qx_adjoint_{suffix}")
        adj.argtypes = [ptr, ptr, ptr, ptr, i64, i32, i64, ptr, ptr, i32, ptr, ptr, ptr, i32]
        adj.restype = i32
        power = getattr(lib, f"qx_lcu_power_{suffix}")
        power.argtypes = [ptr, ptr, ptr, i64, i64, i32, ptr, ptr, i32, ptr, ptr, ptr, ptr, ptr, i32]
        power.restype = i32
        power_adjoint = getattr(lib, f"qx_lcu_power_adjoint_{suffix}")
        power_adjoint.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, i32, ptr, ptr, i32, ptr, ptr, ptr, ptr, ptr, i32]
        power_adjoint.restype = i32
        qsvt = getattr(lib, f"qx_qsvt_eval_{suffix}")
        qsvt.argtypes = [ptr, ptr, i64, i64, i64, i32, ptr, ptr, i32, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i32,
                         ptr, ptr, ptr, i32]
        qsvt.restype = i32
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        mask = getattr(lib, f"qx_dropout_mask_{suffix}")
        mask.argtypes = [ptr, i64, ctypes.c_uint64, ctypes.c_uint64, real, i32]
        mask.restype = None
    lib.qx_abi_version.restype = i32
    if lib.qx_abi_version() != ABI_VERSION:
        raise RuntimeError("kernel library ABI version mismatch")
    return lib


def set_enabled(flag: bool | None = None) -> None:
    """Use the kernel (True) or the torch simulation (False) in this process; None follows
    ``QUIXER_NATIVE`` again. Cheap: a library once loaded stays loaded. For comparisons
    (``bench/bench_quixer.py --impl kernels``) and tests."""
    _state["enabled"] = enabled_by_environment() if flag is None else bool(flag)


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (disabled, or it could not be built: logged once)."""
    if "enabled" not in _state:
        _state["enabled"] = enabled_by_environment()
    if not _state["enabled"]:
        return None
    if "lib" not in _state:
        try:
            _state["lib"] = _bind(ctypes.CDLL(str(build())))
        except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as exc:
            _state["lib"], _state["error"] = None, str(exc)
            log.warning("fused CPU circuit kernel unavailable, using the torch simulation: %s", exc)
    return _state["lib"]


def unavailable_reason() -> str:
    """Why :func:`library` returns None ('' when it does not)."""
    if library() is not None:
        return ""
    if not _state["enabled"]:
        return "disabled (QUIXER_NATIVE=0 or set_enabled(False))"
    return _state.get("error", "")


def available() -> bool:
    return library() is not None


def supports(tensor: torch.Tensor) -> bool:
    """Whether the kernel can run on this state tensor (CPU, float32/float64) and is available."""
    return tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64) and available()


def _pointer(t: torch.Tensor) -> int:
    return t.data_ptr()


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _check(t: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    if t.device.type != "cpu" or t.dtype != dtype or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous CPU {dtype} tensor, got {t.dtype} on {t.device}")


def _require() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise RuntimeError(f"the fused CPU circuit kernel is unavailable: {unavailable_reason()}")
    return lib


def _call(name: str, dtype: torch.dtype, *args) -> None:
    """Call ``name`` for ``dtype``; a nonzero status becomes an exception (2: token ids out of range)."""
    function = f"{name}_{'f32' if dtype == torch.float32 else 'f64'}"
    status = getattr(_require(), function)(*args)
    if status == 2:
        raise ValueError(f"{function}: token ids outside the vocabulary")
    if status:
        raise RuntimeError(f"{function} rejected its arguments")


def forward(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, wiring: tuple, n_qubits: int,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """Circuit instance ``i`` applied to ``states[..., i]``, written to ``out`` (new if None; may be ``states``).

    ``states``: contiguous ``[L, 2^(n+1), N]``; ``cos``/``sin``: contiguous ``[N, G]`` half-angle
    cosines and sines per instance and gate; ``wiring``: int32 tensors (kind, wire0, wire1), length ``G``.
    """
    L, rows, N = states.shape
    out = torch.empty_like(states) if out is None else out
    for t, name in ((states, "states"), (out, "out"), (cos, "cos"), (sin, "sin")):
        _check(t, states.dtype, name)
    kind, wire0, wire1 = wiring
    if (rows != 2 ** (n_qubits + 1) or cos.shape != sin.shape or cos.shape != (N, len(kind))
            or out.shape != states.shape):
        raise ValueError("inconsistent shapes for the circuit kernel")
    _call("qx_forward", states.dtype, _pointer(states), _pointer(out), L, n_qubits, N, _pointer(cos), _pointer(sin),
          cos.shape[1], _pointer(kind), _pointer(wire0), _pointer(wire1), _threads())
    return out


def adjoint(output: torch.Tensor, grad: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, wiring: tuple,
            n_qubits: int, input_grad: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Backward through the circuits from their ``output`` states and ``grad`` = dL/d(output)
    (both ``[L, 2^(n+1), N]``, read only): returns dL/d(input) (None unless ``input_grad``) and
    dL/d(theta) per instance and gate ``[N, G]``."""
    L, rows, N = output.shape
    for t, name in ((output, "output"), (grad, "grad"), (cos, "cos"), (sin, "sin")):
        _check(t, output.dtype, name)
    kind, wire0, wire1 = wiring
    if (rows != 2 ** (n_qubits + 1) or grad.shape != output.shape or cos.shape != sin.shape
            or cos.shape != (N, len(kind))):
        raise ValueError("inconsistent shapes for the circuit kernel")
    grad_in = torch.empty_like(output) if input_grad else None
    grad_gates = torch.empty(cos.shape, dtype=output.dtype)
    _call("qx_adjoint", output.dtype, _pointer(output), _pointer(grad), grad_in.data_ptr() if input_grad else None,
          _pointer(grad_gates), L, n_qubits, N, _pointer(cos), _pointer(sin), cos.shape[1], _pointer(kind),
          _pointer(wire0), _pointer(wire1), _threads())
    return grad_in, grad_gates


def lcu_power(psi: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, wiring: tuple, n_qubits: int,
              lcu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One LCU power for ``B`` sequences of ``W`` tokens: ``sum_w b_w U_{b,w} psi_b``.

    ``psi``: contiguous real ``[2^(n+1), B]`` (real rows, then imaginary rows); ``cos``/``sin``:
    ``[B * W, G]`` (instance ``b * W + w``); ``lcu``: complex ``[W]``. Returns ``[2^(n+1), B]`` and
    the circuit outputs ``U_{b,w} psi_b`` as ``[2^(n+1), B * W]`` (what the backward needs).
    """
    rows, B = psi.shape
    kind, wire0, wire1 = wiring
    W = lcu.shape[0]
    for t, name in ((psi, "psi"), (cos, "cos"), (sin, "sin")):
        _check(t, psi.dtype, name)
    if rows != 2 ** (n_qubits + 1) or cos.shape != sin.shape or cos.shape != (B * W, len(kind)):
        raise ValueError("inconsistent shapes for the LCU power kernel")
    lcu_re, lcu_im = lcu.real.to(psi.dtype).contiguous(), lcu.imag.to(psi.dtype).contiguous()
    out = torch.empty_like(psi)
    outputs = torch.empty(rows, B * W, dtype=psi.dtype)
    _call("qx_lcu_power", psi.dtype, _pointer(psi), _pointer(out), _pointer(outputs), B, W, n_qubits, _pointer(cos),
          _pointer(sin), cos.shape[1], _pointer(kind), _pointer(wire0), _pointer(wire1), _pointer(lcu_re),
          _pointer(lcu_im), _threads())
    return out, outputs


def lcu_power_adjoint(outputs: torch.Tensor, grad: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      wiring: tuple, n_qubits: int, lcu: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of :func:`lcu_power` from its circuit ``outputs`` ``[2^(n+1), B * W]`` and ``grad`` =
    dL/d(result) ``[2^(n+1), B]``: returns dL/dpsi ``[2^(n+1), B]``, dL/d(lcu) as real and imaginary
    parts ``[W, 2]``, and dL/d(theta) per instance and gate ``[B * W, G]``."""
    rows, B = grad.shape
    kind, wire0, wire1 = wiring
    W = lcu.shape[0]
    for t, name in ((outputs, "outputs"), (grad, "grad"), (cos, "cos"), (sin, "sin")):
        _check(t, grad.dtype, name)
    if (rows != 2 ** (n_qubits + 1) or outputs.shape != (rows, B * W) or cos.shape != sin.shape
            or cos.shape != (B * W, len(kind))):
        raise ValueError("inconsistent shapes for the LCU power kernel")
    lcu_re, lcu_im = lcu.real.to(grad.dtype).contiguous(), lcu.imag.to(grad.dtype).contiguous()
    dpsi = torch.empty_like(grad)
    dlcu = torch.empty(B, W, 2, dtype=grad.dtype)
    grad_gates = torch.empty(cos.shape, dtype=grad.dtype)
    _call("qx_lcu_power_adjoint", grad.dtype, _pointer(outputs), _pointer(grad), _pointer(dpsi), _pointer(dlcu),
          _pointer(grad_gates), B, W, n_qubits, _pointer(cos), _pointer(sin), cos.shape[1], _pointer(kind),
          _pointer(wire0), _pointer(wire1), _pointer(lcu_re), _pointer(lcu_im), _threads())
    return dpsi, dlcu.sum(0), grad_gates


def qsvt_eval(ids: torch.Tensor, cos_v: torch.Tensor, sin_v: torch.Tensor, first: torch.Tensor, wiring: tuple,
              n_qubits: int, lcu: tuple[torch.Tensor, torch.Tensor], poly: torch.Tensor,
              feedforward: torch.Tensor | None = None) -> tuple:
    """The eval-mode QSVT state ``sum_k poly_k M_b^k |0>`` of each sequence of token ``ids [B, W]``.

    From per-vocabulary half-angle cosines/sines ``[V, G]`` and first columns ``U_v |0>``
    (``first``, real ``[V, 2^(n+1)]``); ``lcu``: the real and imaginary parts of the LCU weights
    (``[W]`` each); ``poly``: ``[d + 1]``, already divided by its L1 norm (all contiguous, of
    ``first``'s dtype). Returns ``(state, features, postselection)``: the state as real
    ``[B, 2^(n+1)]`` (real parts, then imaginary parts) and, with ``feedforward`` (real
    ``[2 * 2^n, 2^n]``: the real then the imaginary part of ``F^T`` for a unitary ``F``), the
    state normalised, through ``F``, measured as :func:`quixer.sim.circuits.pauli_expectations` does
    (``[B, 3n]``), and ``<psi|psi>`` (``[B]``); without it those two are None.
    """
    B, W = ids.shape
    kind, wire0, wire1 = wiring
    dtype, rows = first.dtype, 2 ** (n_qubits + 1)
    lcu_re, lcu_im = lcu
    tables = [(cos_v, "cos_v"), (sin_v, "sin_v"), (first, "first"), (lcu_re, "lcu"), (lcu_im, "lcu"), (poly, "poly")]
    for t, name in tables + ([(feedforward, "feedforward")] if feedforward is not None else []):
        _check(t, dtype, name)
    if (cos_v.shape != sin_v.shape or cos_v.shape[1] != len(kind) or first.shape != (cos_v.shape[0], rows)
            or lcu_re.shape != (W,) or (feedforward is not None and feedforward.shape != (rows, rows // 2))):
        raise ValueError("inconsistent shapes for the QSVT eval kernel")
    ids = ids.to(torch.int64).contiguous()
    state = torch.empty(B, rows, dtype=dtype)
    features = postselection = None
    measured = (None, None, None)
    if feedforward is not None:
        features, postselection = torch.empty(B, 3 * n_qubits, dtype=dtype), torch.empty(B, dtype=dtype)
        measured = (_pointer(feedforward), _pointer(features), _pointer(postselection))
    _call("qx_qsvt_eval", dtype, _pointer(ids), _pointer(state), B, W, cos_v.shape[0], n_qubits, _pointer(cos_v),
          _pointer(sin_v), cos_v.shape[1], _pointer(kind), _pointer(wire0), _pointer(wire1), _pointer(first),
          _pointer(lcu_re), _pointer(lcu_im), _pointer(poly), poly.shape[0] - 1, *measured, _threads())
    return state, features, postselection


def dropout_mask(shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
    """A CPU dropout mask: ``1 / (1 - p)`` with probability ``1 - p`` (to 2^-32), else 0.

    The stream's seed is one draw from torch's global generator, so ``torch.manual_seed`` and
    ``torch.set_rng_state`` govern it (the values differ from ``bernoulli_``'s).
    """
    mask = torch.empty(shape, dtype=dtype)
    seed = int(torch.randint(0, 2**62, (1,)).item())
    threshold = min(2**32, round((1 - p) * 2**32))
    suffix = "f32" if dtype == torch.float32 else "f64"
    getattr(_require(), f"qx_dropout_mask_{suffix}")(_pointer(mask), mask.numel(), seed, threshold, 1.0 / (1 - p),
                                                     _threads())
    return mask


def main(argv: list[str] | None = None) -> int:
    """``python -m quixer.sim.native``: build the kernel now; prints its path (exit 1 if it cannot)."""
    try:
        print(build())
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        print(f"quixer.sim.native: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
