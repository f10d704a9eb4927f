"""Fused GPU circuit kernels in Triton: the GPU counterpart of :mod:`quixer.native`, same functions.

Why: on a GPU the torch butterfly simulation launches a few small kernels per gate (thousands per
training step), so a step costs the same at batch 32 as at 1,024. Here one program keeps a tile
of ``BLOCK`` circuit instances' statevectors (``2^n`` complex amplitudes each, as two
``[BLOCK, 2^n]`` blocks of real and imaginary parts) on chip for all gates of the circuit, and in
an LCU power also sums the instances of a sequence with the LCU weights before writing anything.
The backward is adjoint, as in the CPU kernel: it walks the gates in reverse from the stored
circuit outputs, recovering each gate's input by applying its inverse instead of storing it.

Gate ``k`` pairs amplitude ``j`` with ``j ^ (1 << t)`` (``t``: the target's bit) by ``tl.gather``
and then ``x' = a x + b_re x[partner] + b_im (i-swapped) x[partner]`` with per-lane, per-element
coefficients from the gate's kind, wires and half-angle cosine and sine. The gate list is read at
run time from the plan's ``wiring`` tensors, so one compiled kernel per qubit count, tile size and
dtype serves every circuit (any number of active layers, and the feed-forward); a kernel unrolled
over the gate list grows with the circuit and compiled far too slowly to be practical.

Addressing is by strides: a program handles lanes ``[blk * BLOCK, ...)`` of "sequence" ``seq``;
a lane's state row ``r`` sits at ``seq * s_seq + lane * s_lane + r * s_row`` and its gate
coefficients at ``seq * c_seq + lane * c_lane + k``. Plain circuits on ``[L, R, N]`` states use
``(R N, 1, N)``; an LCU power reads ``psi [R, B]`` with ``(1, 0, B)`` (every position of a
sequence starts from the same state) and writes the circuit outputs ``[R, B W]`` with
``(W, 1, B W)``. Sums over lanes are written per lane block (``[blocks, R, B]``) and added by the
caller, so results do not depend on scheduling.

With ``TRITON_INTERPRET=1`` set before this module is imported, the kernels run on CPU tensors
(slowly): that is how CI checks them against the torch simulation without a GPU.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

MAX_BLOCK = 32
# fused multiply-adds, as the CPU kernel (-ffp-contract=fast); explicit, since Triton's default changes in 3.10
OPTIONS = {"enable_fp_fusion": True}


@triton.jit
def _load(ptr, base, row_stride, idx, live, DIM: tl.constexpr):
    """Real and imaginary parts ``[BLOCK, DIM]`` of the lanes' states (row ``r`` at ``base + r * row_stride``)."""
    offsets = base[:, None] + idx * row_stride
    mask = live[:, None]
    return (tl.load(ptr + offsets, mask=mask, other=0.0),
            tl.load(ptr + offsets + DIM * row_stride, mask=mask, other=0.0))


@triton.jit
def _store(ptr, base, row_stride, idx, live, re, im, DIM: tl.constexpr):
    offsets = base[:, None] + idx * row_stride
    tl.store(ptr + offsets, re, mask=live[:, None])
    tl.store(ptr + offsets + DIM * row_stride, im, mask=live[:, None])


@triton.jit
def _store_lane_sum(ptr, blk, seq, n_seq, re, im, DIM: tl.constexpr):
    """Sum over the tile's lanes, written to ``ptr[blk, r, seq]`` of a ``[blocks, 2 DIM, n_seq]`` array."""
    rows = tl.arange(0, DIM)
    tl.store(ptr + (blk * 2 * DIM + rows) * n_seq + seq, tl.sum(re, axis=0))
    tl.store(ptr + (blk * 2 * DIM + DIM + rows) * n_seq + seq, tl.sum(im, axis=0))


@triton.jit
def _gate(kind_ptr, wire0_ptr, wire1_ptr, cos_ptr, sin_ptr, coef, k, live, idx, NQ: tl.constexpr):
    """Gate ``k`` for every lane: the partner index, the factors ``a``, ``b_re``, ``b_im`` of
    :func:`_rotate` and the derivative pattern (``k_re``: -1/+1 by the target bit for an RY;
    ``k_im``: 1 where the control is 1 for a CRX). Padding lanes get the identity."""
    kind = tl.load(kind_ptr + k)
    target = NQ - 1 - tl.load(wire1_ptr + k)
    control = NQ - 1 - tl.load(wire0_ptr + k)
    c = tl.load(cos_ptr + coef + k, mask=live, other=1.0)[:, None]
    s = tl.load(sin_ptr + coef + k, mask=live, other=0.0)[:, None]
    k_re = tl.where(kind == 0, 2 * ((idx >> target) & 1) - 1, 0)
    k_im = tl.where(kind == 0, 0, (idx >> control) & 1)
    a = tl.where((k_re != 0) | (k_im != 0), c, 1.0)
    return idx ^ (1 << target), a, k_re * s, k_im * s, k_re, k_im


@triton.jit
def _rotate(re, im, partner, a, b_re, b_im):
    """``x' = a x + b_re x[p] - i b_im x[p]``: an RY (``b_im = 0``) or a controlled RX (``b_re = 0``)."""
    p_re = tl.gather(re, partner, 1)
    p_im = tl.gather(im, partner, 1)
    return a * re + b_re * p_re + b_im * p_im, a * im + b_re * p_im - b_im * p_re


@triton.jit
def _adjoint_step(y_re, y_im, g_re, g_im, partner, a, b_re, b_im, k_re, k_im):
    """One gate backwards: dL/dtheta per lane (``1/2 Re <g| -i P y>``), then ``y`` and ``g`` through
    the inverse gate (the transpose of its real form: ``b -> -b``)."""
    p_re = tl.gather(y_re, partner, 1)
    p_im = tl.gather(y_im, partner, 1)
    d_theta = 0.5 * tl.sum(k_re * (g_re * p_re + g_im * p_im) + k_im * (g_re * p_im - g_im * p_re), axis=1)
    q_re = tl.gather(g_re, partner, 1)
    q_im = tl.gather(g_im, partner, 1)
    return (a * y_re - b_re * p_re - b_im * p_im, a * y_im - b_re * p_im + b_im * p_re,
            a * g_re - b_re * q_re - b_im * q_im, a * g_im - b_re * q_im + b_im * q_re, d_theta)


@triton.jit
def _forward_kernel(src, dst, sums, cos, sin, kind, wire0, wire1, lcu_re, lcu_im, n_seq, n_lanes, n_gates,
                    src_seq, src_lane, src_row, dst_seq, dst_lane, dst_row, coef_seq, coef_lane,
                    NQ: tl.constexpr, BLOCK: tl.constexpr, LCU: tl.constexpr):
    """All gates on a tile of lanes; stores each lane's output and, with ``LCU``, the lane sum
    weighted by the complex LCU weights of the lanes (positions)."""
    DIM: tl.constexpr = 1 << NQ
    seq, blk = tl.program_id(0), tl.program_id(1)
    lanes = blk * BLOCK + tl.arange(0, BLOCK)
    live = lanes < n_lanes
    idx = tl.broadcast_to(tl.arange(0, DIM)[None, :], (BLOCK, DIM))
    re, im = _load(src, seq * src_seq + lanes * src_lane, src_row, idx, live, DIM)
    coef = seq * coef_seq + lanes * coef_lane
    for k in range(n_gates):
        partner, a, b_re, b_im, _, _ = _gate(kind, wire0, wire1, cos, sin, coef, k, live, idx, NQ)
        re, im = _rotate(re, im, partner, a, b_re, b_im)
    _store(dst, seq * dst_seq + lanes * dst_lane, dst_row, idx, live, re, im, DIM)
    if LCU:
        w_re = tl.load(lcu_re + lanes, mask=live, other=0.0)[:, None]
        w_im = tl.load(lcu_im + lanes, mask=live, other=0.0)[:, None]
        _store_lane_sum(sums, blk, seq, n_seq, w_re * re - w_im * im, w_re * im + w_im * re, DIM)


@triton.jit
def _adjoint_kernel(ys, grads, grad_in, d_gates, d_lcu, cos, sin, kind, wire0, wire1, lcu_re, lcu_im,
                    n_seq, n_lanes, n_gates, y_seq, y_lane, y_row, g_seq, g_lane, g_row, coef_seq, coef_lane,
                    NQ: tl.constexpr, BLOCK: tl.constexpr, LCU: tl.constexpr, INPUT_GRAD: tl.constexpr):
    """Backward of :func:`_forward_kernel` from the lanes' outputs ``ys`` and ``grads`` = dL/d(output)
    (with ``LCU``: dL/d(lane sum), one per sequence, and dL/d(LCU weight) per lane into ``d_lcu``).
    Writes dL/dtheta per lane and gate into ``d_gates`` and, with ``LCU``, the lane sums of dL/d(input)
    per block into ``grad_in``, else (with ``INPUT_GRAD``) dL/d(input) per lane in the layout of ``ys``."""
    DIM: tl.constexpr = 1 << NQ
    seq, blk = tl.program_id(0), tl.program_id(1)
    lanes = blk * BLOCK + tl.arange(0, BLOCK)
    live = lanes < n_lanes
    instance = seq * n_lanes + lanes
    idx = tl.broadcast_to(tl.arange(0, DIM)[None, :], (BLOCK, DIM))
    y_re, y_im = _load(ys, seq * y_seq + lanes * y_lane, y_row, idx, live, DIM)
    g_re, g_im = _load(grads, seq * g_seq + lanes * g_lane, g_row, idx, live, DIM)
    if LCU:  # out = sum_w b_w y_w: dL/db_w = <y_w, g> (real-linear), dL/dy_w = conj(b_w) g
        tl.store(d_lcu + 2 * instance, tl.sum(g_re * y_re + g_im * y_im, axis=1), mask=live)
        tl.store(d_lcu + 2 * instance + 1, tl.sum(g_im * y_re - g_re * y_im, axis=1), mask=live)
        w_re = tl.load(lcu_re + lanes, mask=live, other=0.0)[:, None]
        w_im = tl.load(lcu_im + lanes, mask=live, other=0.0)[:, None]
        g_re, g_im = w_re * g_re + w_im * g_im, w_re * g_im - w_im * g_re
    coef = seq * coef_seq + lanes * coef_lane
    for j in range(n_gates):
        k = n_gates - 1 - j
        partner, a, b_re, b_im, k_re, k_im = _gate(kind, wire0, wire1, cos, sin, coef, k, live, idx, NQ)
        y_re, y_im, g_re, g_im, d_theta = _adjoint_step(y_re, y_im, g_re, g_im, partner, a, b_re, b_im, k_re, k_im)
        tl.store(d_gates + instance * n_gates + k, d_theta, mask=live)
    if LCU:
        _store_lane_sum(grad_in, blk, seq, n_seq, g_re, g_im, DIM)
    elif INPUT_GRAD:
        _store(grad_in, seq * y_seq + lanes * y_lane, y_row, idx, live, g_re, g_im, DIM)


# whether TRITON_INTERPRET=1 was set when the kernels above were decorated (this module's import)
INTERPRETED = isinstance(_forward_kernel, InterpretedFunction)

# --------------------------------------------------------------------------------------------
# Launchers: the signatures of quixer.native's forward, adjoint, lcu_power and lcu_power_adjoint
# --------------------------------------------------------------------------------------------

def supports(tensor: torch.Tensor) -> bool:
    """Whether the kernels can run on this tensor: CUDA, or CPU under the Triton interpreter."""
    return tensor.dtype in (torch.float32, torch.float64) and (
        tensor.device.type == "cuda" or (INTERPRETED and tensor.device.type == "cpu"))


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _tiles(n_seq: int, n_lanes: int, device: torch.device) -> tuple[int, int]:
    """Lanes per program (a power of two up to :data:`MAX_BLOCK`) and lane blocks per sequence:
    smaller tiles where whole tiles would leave streaming multiprocessors idle."""
    block = min(MAX_BLOCK, triton.next_power_of_2(max(n_lanes, 1)))
    processors = _multiprocessors(device.index or 0) if device.type == "cuda" else 1
    while block > 4 and n_seq * triton.cdiv(n_lanes, block) < 2 * processors:
        block //= 2
    return block, triton.cdiv(n_lanes, block)


def _checked(plan_rows: int, n_qubits: int, cos: torch.Tensor, sin: torch.Tensor, wiring: tuple, *states) -> None:
    if plan_rows != 2 ** (n_qubits + 1) or cos.shape != sin.shape or cos.shape[1] != len(wiring[0]):
        raise ValueError("inconsistent shapes for the Triton circuit kernels")
    for t in (cos, sin, *states):
        if not supports(t) or t.dtype != cos.dtype or not t.is_contiguous():
            raise ValueError(f"the Triton kernels need contiguous {cos.dtype} tensors on one CUDA device "
                             f"(or CPU under TRITON_INTERPRET=1), got {t.dtype} on {t.device}")


def _stacked(rows: int, n: int) -> tuple[int, int, int]:
    """Layout of ``[L, rows, N]`` states: sequence ``l``, lane ``i``."""
    return rows * n, 1, n


def _per_sequence(batch: int) -> tuple[int, int, int]:
    """Layout of ``[rows, B]``: one state per sequence, shared by all its lanes."""
    return 1, 0, batch


def _per_position(batch: int, window: int) -> tuple[int, int, int]:
    """Layout of ``[rows, B * W]``: lane ``w`` of sequence ``b`` in column ``b * W + w``."""
    return window, 1, batch * window


def _run(kernel, grid: tuple, tensors: tuple, wiring: tuple, lcu: tuple, sizes: tuple, layouts: tuple, **flags):
    """Launch one of the kernels: ``layouts`` are the (seq, lane, row) strides of its two state
    arrays and the (seq, lane) row strides of its gate coefficients."""
    strides = [stride for layout in layouts for stride in layout]
    kernel[grid](*tensors, *wiring, *lcu, *sizes, *strides, **flags, **OPTIONS)


def forward(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, wiring: tuple, n_qubits: int) -> torch.Tensor:
    """Circuit instance ``i`` applied to ``states[..., i]`` of contiguous ``[L, 2^(n+1), N]`` states;
    ``cos``/``sin``: ``[N, G]`` half-angle cosines and sines; ``wiring``: the plan's, on the device."""
    L, rows, N = states.shape
    _checked(rows, n_qubits, cos, sin, wiring, states)
    G = cos.shape[1]
    out = torch.empty_like(states)
    block, blocks = _tiles(L, N, states.device)
    _run(_forward_kernel, (L, blocks), (states, out, out, cos, sin), wiring, (cos, sin), (L, N, G),
         (_stacked(rows, N), _stacked(rows, N), (0, G)), NQ=n_qubits, BLOCK=block, LCU=False)
    return out


def adjoint(output: torch.Tensor, grad: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, wiring: tuple,
            n_qubits: int, input_grad: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Backward of :func:`forward` from its ``output`` and ``grad`` = dL/d(output): dL/d(input)
    (None unless ``input_grad``) and dL/dtheta per instance and gate ``[N, G]``."""
    L, rows, N = output.shape
    _checked(rows, n_qubits, cos, sin, wiring, output, grad)
    G = cos.shape[1]
    grad_in = torch.empty_like(output) if input_grad else output  # not written without input_grad
    d_gates = output.new_empty(L, N, G)
    block, blocks = _tiles(L, N, output.device)
    _run(_adjoint_kernel, (L, blocks), (output, grad, grad_in, d_gates, d_gates, cos, sin), wiring, (cos, sin),
         (L, N, G), (_stacked(rows, N), _stacked(rows, N), (0, G)),
         NQ=n_qubits, BLOCK=block, LCU=False, INPUT_GRAD=input_grad)
    return (grad_in if input_grad else None), d_gates.sum(0)


def _lcu_parts(lcu: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return lcu.real.to(like.dtype).contiguous(), lcu.imag.to(like.dtype).contiguous()


def lcu_power(psi: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, wiring: tuple, n_qubits: int,
              lcu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One LCU power ``sum_w b_w U_{b,w} psi_b`` for ``B`` sequences of ``W`` tokens.

    ``psi``: real ``[2^(n+1), B]``; ``cos``/``sin``: ``[B * W, G]`` (instance ``b * W + w``);
    ``lcu``: complex ``[W]``. Returns ``[2^(n+1), B]`` and the circuit outputs ``[2^(n+1), B * W]``.
    """
    rows, B = psi.shape
    W = lcu.shape[0]
    _checked(rows, n_qubits, cos, sin, wiring, psi)
    if cos.shape[0] != B * W:
        raise ValueError("inconsistent shapes for the Triton LCU power kernel")
    G = cos.shape[1]
    outputs = psi.new_empty(rows, B * W)
    block, blocks = _tiles(B, W, psi.device)
    sums = psi.new_empty(blocks, rows, B)
    _run(_forward_kernel, (B, blocks), (psi, outputs, sums, cos, sin), wiring, _lcu_parts(lcu, psi), (B, W, G),
         (_per_sequence(B), _per_position(B, W), (W * G, G)), NQ=n_qubits, BLOCK=block, LCU=True)
    return (sums[0] if blocks == 1 else sums.sum(0)), outputs


def lcu_power_adjoint(outputs: torch.Tensor, grad: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      wiring: tuple, n_qubits: int, lcu: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of :func:`lcu_power` from its circuit ``outputs`` and ``grad`` = dL/d(result)
    ``[2^(n+1), B]``: dL/dpsi ``[2^(n+1), B]``, dL/d(lcu) as real and imaginary parts ``[W, 2]``,
    and dL/dtheta per instance and gate ``[B * W, G]``."""
    rows, B = grad.shape
    W = lcu.shape[0]
    _checked(rows, n_qubits, cos, sin, wiring, outputs, grad)
    if outputs.shape != (rows, B * W) or cos.shape[0] != B * W:
        raise ValueError("inconsistent shapes for the Triton LCU power kernel")
    G = cos.shape[1]
    block, blocks = _tiles(B, W, grad.device)
    dpsi = grad.new_empty(blocks, rows, B)
    d_lcu = grad.new_empty(B, W, 2)
    d_gates = grad.new_empty(B * W, G)
    _run(_adjoint_kernel, (B, blocks), (outputs, grad, dpsi, d_gates, d_lcu, cos, sin), wiring, _lcu_parts(lcu, grad),
         (B, W, G), (_per_position(B, W), _per_sequence(B), (W * G, G)),
         NQ=n_qubits, BLOCK=block, LCU=True, INPUT_GRAD=True)
    return (dpsi[0] if blocks == 1 else dpsi.sum(0)), d_lcu.sum(0), d_gates
