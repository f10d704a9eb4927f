"""Fused GPU circuit kernels in Triton: the GPU counterpart of :mod:`quixer.sim.native`, same functions.

Why: on a GPU the torch butterfly simulation launches a few small kernels per gate (thousands per
training step), so a step costs the same at batch 32 as at 1,024. Here one program keeps a tile
of ``BLOCK`` circuit instances' statevectors on chip for all gates of the circuit, and in an LCU
power also sums the instances of a sequence with the LCU weights before writing anything. The
backward is adjoint, as in the CPU kernel: it walks the gates in reverse from the stored circuit
outputs, recovering each gate's input by applying its inverse instead of storing it.

Built for the hardware, because the kernels are bound by registers and warp shuffles:

- A state is four ``[BLOCK, 2^(n-1)]`` blocks: real and imaginary parts of the amplitudes whose top
  bit (qubit 0) is clear ("lo") or set ("hi"). With ``2^(n-1) = 32`` columns, Triton's layout for
  ``tl.gather`` puts one column on each lane of a warp, so the partner ``j ^ (1 << t)`` of a gate
  below the top bit costs one warp shuffle per value, and on the top bit none (the other block).
- Each gate branches (uniformly over the program) on top bit / below and on its kind (RY / CRX),
  so each branch consumes its partners where it makes them.
- The adjoint collects a chunk of ``2^(n-1)`` gates' angle gradients in registers (gate ``i`` of
  the chunk in column ``i``) and stores the chunk at once: no per-gate store, no barrier in the loop.
- Offsets are int64 and the grid is flat (``programs = sequences x lane blocks``), so neither wraps
  or overflows short of 2^31 programs; the launchers refuse more.
- :data:`TILES` sets lanes per program and warps per kernel and dtype such that nothing spills and
  at least 4 programs fit on an sm_90 multiprocessor; ``tests/test_triton.py`` compiles for sm_90
  and checks registers, spills and shuffles, barriers and instructions per gate
  (:mod:`quixer.sim.compiled_kernels`; ``bench/kernel_metadata.py`` prints them).

Eval (:func:`qsvt_eval`) is one launch per batch, one sequence per program: ``M |0>`` is the LCU sum
of cached first columns ``U_v |0>``; each further power copies the state to a tile of positions, runs
every position's token circuit with its coefficients read by token id from a per-vocabulary table
(no ``[B W, G]`` gather in memory), sums the tile with the LCU weights and keeps the result in
registers; the polynomial is summed on the way and only the final state is stored. Its gate loop reads a
packed gate word and takes the cheapest of five paths (e.g. a CRX controlled by qubit 0 exchanges half
the state). No host synchronisation, so a CUDA graph can hold the whole eval.

The gate list is read at run time from the plan's ``wiring`` tensors, so one compiled kernel per
qubit count, tile, gate count and dtype serves every circuit with that many gates; a kernel unrolled
over the gate list grows with the circuit and compiled far too slowly to be practical.

Addressing is by strides: a program handles lanes ``[blk * BLOCK, ...)`` of "sequence" ``seq``;
a lane's state row ``r`` sits at ``seq * s_seq + lane * s_lane + r * s_row`` and its gate
coefficients at ``seq * c_seq + lane * c_lane + k`` (``c_lane``, the gate count, is a constexpr so
that a thread's lanes are fixed offsets from one address). Plain circuits on ``[L, R, N]`` states
use ``(R N, 1, N)``; an LCU power reads ``psi [R, B]`` with ``(1, 0, B)`` (every position of a
sequence starts from the same state) and writes the circuit outputs ``[R, B W]`` with
``(W, 1, B W)``. Sums over lanes are written per lane block (``[blocks, R, B]``) and added by the
caller, so results do not depend on scheduling.

With ``TRITON_INTERPRET=1`` set before this module is imported, the kernels run on CPU tensors
(slowly): that is how CI checks them against the torch simulation without a GPU.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

MAX_BLOCK = 32
# fused multiply-adds, as the CPU kernel (-ffp-contract=fast); explicit, since Triton's default changes in 3.10
OPTIONS = {"enable_fp_fusion": True}


@triton.jit
def _tile(n_lanes, BLOCK: tl.constexpr):
    """This program's sequence and lane block (one flat grid axis: no 65,535 limit on either) and its
    lanes, as int64 so that offsets into arrays past 2^31 elements do not wrap."""
    blocks = tl.cdiv(n_lanes, BLOCK)
    pid = tl.program_id(0)
    seq, blk = (pid // blocks).to(tl.int64), (pid % blocks).to(tl.int64)
    lanes = blk * BLOCK + tl.arange(0, BLOCK)
    return seq, blk, lanes, lanes < n_lanes


@triton.jit
def _quarters(base, row_stride, col, HALF: tl.constexpr):
    """Offsets of the four row ranges of a state (real lo/hi, imaginary lo/hi), ``[BLOCK, HALF]`` each."""
    rows = col.to(tl.int64)
    return (base[:, None] + rows * row_stride, base[:, None] + (rows + HALF) * row_stride,
            base[:, None] + (rows + 2 * HALF) * row_stride, base[:, None] + (rows + 3 * HALF) * row_stride)


@triton.jit
def _load(ptr, base, row_stride, col, live, HALF: tl.constexpr):
    """The lanes' states as ``(re_lo, re_hi, im_lo, im_hi)``: ``[BLOCK, HALF]`` blocks of the amplitudes
    whose top bit (qubit 0) is clear (lo) or set (hi); row ``r`` of a lane at ``base + r * row_stride``."""
    o = _quarters(base, row_stride, col, HALF)
    m = live[:, None]
    return (tl.load(ptr + o[0], mask=m, other=0.0), tl.load(ptr + o[1], mask=m, other=0.0),
            tl.load(ptr + o[2], mask=m, other=0.0), tl.load(ptr + o[3], mask=m, other=0.0))


@triton.jit
def _store(ptr, base, row_stride, col, live, x, HALF: tl.constexpr):
    o = _quarters(base, row_stride, col, HALF)
    m = live[:, None]
    tl.store(ptr + o[0], x[0], mask=m)
    tl.store(ptr + o[1], x[1], mask=m)
    tl.store(ptr + o[2], x[2], mask=m)
    tl.store(ptr + o[3], x[3], mask=m)


@triton.jit
def _store_lane_sum(ptr, blk, seq, n_seq, x, HALF: tl.constexpr):
    """Sum over the tile's lanes, written to ``ptr[blk, r, seq]`` of a ``[blocks, 4 HALF, n_seq]`` array."""
    row = blk * 4 * HALF + tl.arange(0, HALF).to(tl.int64)
    tl.store(ptr + row * n_seq + seq, tl.sum(x[0], axis=0))
    tl.store(ptr + (row + HALF) * n_seq + seq, tl.sum(x[1], axis=0))
    tl.store(ptr + (row + 2 * HALF) * n_seq + seq, tl.sum(x[2], axis=0))
    tl.store(ptr + (row + 3 * HALF) * n_seq + seq, tl.sum(x[3], axis=0))


@triton.jit
def _weighted(x, w_re, w_im, CONJUGATE: tl.constexpr):
    """``w x`` (or ``conj(w) x``) per lane for a state tuple."""
    if CONJUGATE:
        w_im = -w_im
    return (w_re * x[0] - w_im * x[2], w_re * x[1] - w_im * x[3],
            w_re * x[2] + w_im * x[0], w_re * x[3] + w_im * x[1])


@triton.jit
def _coefficient_rows(seq, blk, coef_seq, coef_lane: tl.constexpr, BLOCK: tl.constexpr):
    """Where the tile's gate coefficients start (int64, one per program) and each lane's row relative
    to it: compile-time offsets (``coef_lane`` is a constexpr), so one address serves all of a
    thread's lanes."""
    first = blk * BLOCK
    return seq * coef_seq + first * coef_lane, tl.arange(0, BLOCK) * coef_lane


@triton.jit
def _gate(kind_ptr, wire0_ptr, wire1_ptr, c_ptr, s_ptr, rows, k, live, NQ: tl.constexpr):
    """Gate ``k``: kind (0 RY, 1 CRX), target and control bits, and per lane the half-angle cosine
    and sine as ``[BLOCK, 1]`` (zero on padding lanes, whose state is zero and never stored)."""
    kind = tl.load(kind_ptr + k)
    target = NQ - 1 - tl.load(wire1_ptr + k)
    control = NQ - 1 - tl.load(wire0_ptr + k)
    c = tl.load(c_ptr + k + rows, mask=live, other=0.0)[:, None]
    s = tl.load(s_ptr + k + rows, mask=live, other=0.0)[:, None]
    return kind, target, control, c, s


@triton.jit
def _swapped(x):
    """The partners on the top bit: the other half (no data movement)."""
    return x[1], x[0], x[3], x[2]


@triton.jit
def _exchanged(x, target, col):
    """The partners ``j ^ (1 << target)`` on a bit below the top: one lane-to-lane exchange per value
    (one warp shuffle each, the gather axis being spread over the lanes one element per lane)."""
    swap = tl.broadcast_to(col ^ (1 << target), x[0].shape)
    return tl.gather(x[0], swap, 1), tl.gather(x[1], swap, 1), tl.gather(x[2], swap, 1), tl.gather(x[3], swap, 1)


@triton.jit
def _bits(col, b, HALF: tl.constexpr):
    """Bit ``b`` of the amplitude index for the lo and hi halves, ``[1, HALF]``."""
    return (col >> b) & 1, ((col + HALF) >> b) & 1


@triton.jit
def _ry(x, p, c, s, target, col, HALF: tl.constexpr):
    """RY (or its inverse with ``-s``): ``x' = c x + (-1)^(bit+1) s x[partner]``."""
    lo, hi = _bits(col, target, HALF)
    s_lo, s_hi = tl.where(lo != 0, s, -s), tl.where(hi != 0, s, -s)
    return c * x[0] + s_lo * p[0], c * x[1] + s_hi * p[1], c * x[2] + s_lo * p[2], c * x[3] + s_hi * p[3]


@triton.jit
def _crx(x, p, c, s, control, col, HALF: tl.constexpr):
    """Controlled RX (or its inverse with ``-s``): where the control bit is 1, ``x' = c x - i s x[partner]``."""
    lo, hi = _bits(col, control, HALF)
    a_lo, a_hi = tl.where(lo != 0, c, 1.0), tl.where(hi != 0, c, 1.0)
    b_lo, b_hi = tl.where(lo != 0, s, 0.0), tl.where(hi != 0, s, 0.0)
    return (a_lo * x[0] + b_lo * p[2], a_hi * x[1] + b_hi * p[3],
            a_lo * x[2] - b_lo * p[0], a_hi * x[3] - b_hi * p[1])


@triton.jit
def _rotate(x, p, kind, target, control, c, s, col, HALF: tl.constexpr):
    if kind == 0:
        x = _ry(x, p, c, s, target, col, HALF)
    else:
        x = _crx(x, p, c, s, control, col, HALF)
    return x


@triton.jit
def _apply(x, kind, target, control, c, s, col, NQ: tl.constexpr):
    """One gate on a state tuple. Each branch consumes its partners where they are made (no join
    holding all of them at once)."""
    HALF: tl.constexpr = 1 << (NQ - 1)
    if target == NQ - 1:
        x = _rotate(x, _swapped(x), kind, target, control, c, s, col, HALF)
    else:
        x = _rotate(x, _exchanged(x, target, col), kind, target, control, c, s, col, HALF)
    return x


@triton.jit
def _derivative(g, p, kind, target, control, col, HALF: tl.constexpr):
    """dL/dtheta per lane, ``1/2 Re <g| -i P y>`` with ``p`` the partners of the gate's output ``y``:
    RY: the sign of the target bit times ``<g, p>``; CRX: ``Im``-like pairing where the control is 1."""
    if kind == 0:
        lo, hi = _bits(col, target, HALF)
        t = tl.where(lo != 0, 1.0, -1.0) * (g[0] * p[0] + g[2] * p[2]) + \
            tl.where(hi != 0, 1.0, -1.0) * (g[1] * p[1] + g[3] * p[3])
    else:
        lo, hi = _bits(col, control, HALF)
        t = tl.where(lo != 0, g[0] * p[2] - g[2] * p[0], 0.0) + tl.where(hi != 0, g[1] * p[3] - g[3] * p[1], 0.0)
    return 0.5 * tl.sum(t, axis=1)


@triton.jit
def _forward_kernel(src, dst, sums, cos, sin, kind, wire0, wire1, lcu_re, lcu_im, n_seq, n_lanes, n_gates,
                    src_seq, src_lane, src_row, dst_seq, dst_lane, dst_row, coef_seq, coef_lane: tl.constexpr,
                    NQ: tl.constexpr, BLOCK: tl.constexpr, LCU: tl.constexpr):
    """All gates on a tile of lanes; stores each lane's output and, with ``LCU``, the lane sum
    weighted by the complex LCU weights of the lanes (positions)."""
    HALF: tl.constexpr = 1 << (NQ - 1)
    seq, blk, lanes, live = _tile(n_lanes, BLOCK)
    col = tl.arange(0, HALF)[None, :]
    x = _load(src, seq * src_seq + lanes * src_lane, src_row, col, live, HALF)
    coef, rows = _coefficient_rows(seq, blk, coef_seq, coef_lane, BLOCK)
    for k in range(n_gates):
        gate_kind, target, control, c, s = _gate(kind, wire0, wire1, cos + coef, sin + coef, rows, k, live, NQ)
        x = _apply(x, gate_kind, target, control, c, s, col, NQ)
    if LCU:  # before the outputs' store: fewer values live at once
        w_re = tl.load(lcu_re + lanes, mask=live, other=0.0)[:, None]
        w_im = tl.load(lcu_im + lanes, mask=live, other=0.0)[:, None]
        _store_lane_sum(sums, blk, seq, n_seq, _weighted(x, w_re, w_im, False), HALF)
    _store(dst, seq * dst_seq + lanes * dst_lane, dst_row, col, live, x, HALF)


@triton.jit
def _unrotate(y, g, p, q, kind, target, control, c, s, col, HALF: tl.constexpr):
    """dL/dtheta per lane from ``g`` and the partners ``p`` of the gate's output ``y``, then ``y`` and ``g``
    through the inverse gate (the transpose of its real form: ``s -> -s``); ``q``: the partners of ``g``."""
    d = _derivative(g, p, kind, target, control, col, HALF)
    if kind == 0:
        y, g = _ry(y, p, c, -s, target, col, HALF), _ry(g, q, c, -s, target, col, HALF)
    else:
        y, g = _crx(y, p, c, -s, control, col, HALF), _crx(g, q, c, -s, control, col, HALF)
    return y, g, d


@triton.jit
def _adjoint_gate(y, g, kind, target, control, c, s, col, NQ: tl.constexpr):
    """One gate backwards (see :func:`_apply` for the branches)."""
    HALF: tl.constexpr = 1 << (NQ - 1)
    if target == NQ - 1:
        y, g, d = _unrotate(y, g, _swapped(y), _swapped(g), kind, target, control, c, s, col, HALF)
    else:
        y, g, d = _unrotate(y, g, _exchanged(y, target, col), _exchanged(g, target, col), kind, target, control,
                            c, s, col, HALF)
    return y, g, d


@triton.jit
def _store_gradients(d_gates, instance, n_gates, start, count, col, live, acc):
    """dL/dtheta of gates ``n_gates - 1 - start - i`` (``i < count``: column ``i`` of ``acc``), one
    store per chunk."""
    offsets = instance[:, None] * n_gates + (n_gates - 1 - start - col)
    tl.store(d_gates + offsets, acc, mask=live[:, None] & (col < count))


@triton.jit
def _lcu_backward(y, g, d_lcu, lcu_re, lcu_im, instance, lanes, live):
    """out = sum_w b_w y_w: dL/db_w = <y_w, g> (real-linear) into ``d_lcu``; returns dL/dy_w = conj(b_w) g."""
    tl.store(d_lcu + 2 * instance, tl.sum(g[0] * y[0] + g[1] * y[1] + g[2] * y[2] + g[3] * y[3], axis=1), mask=live)
    tl.store(d_lcu + 2 * instance + 1, tl.sum(g[2] * y[0] + g[3] * y[1] - g[0] * y[2] - g[1] * y[3], axis=1),
             mask=live)
    w_re = tl.load(lcu_re + lanes, mask=live, other=0.0)[:, None]
    w_im = tl.load(lcu_im + lanes, mask=live, other=0.0)[:, None]
    return _weighted(g, w_re, w_im, True)


@triton.jit
def _adjoint_kernel(ys, grads, grad_in, d_gates, d_lcu, cos, sin, kind, wire0, wire1, lcu_re, lcu_im,
                    n_seq, n_lanes, n_gates, y_seq, y_lane, y_row, g_seq, g_lane, g_row, coef_seq,
                    coef_lane: tl.constexpr, NQ: tl.constexpr, BLOCK: tl.constexpr, LCU: tl.constexpr,
                    INPUT_GRAD: tl.constexpr):
    """Backward of :func:`_forward_kernel` from the lanes' outputs ``ys`` and ``grads`` = dL/d(output)
    (with ``LCU``: dL/d(lane sum), one per sequence, and dL/d(LCU weight) per lane into ``d_lcu``).
    Writes dL/dtheta per lane and gate into ``d_gates`` (a chunk of ``HALF`` gates at a time, from
    registers) and, with ``LCU``, the lane sums of dL/d(input) per block into ``grad_in``, else (with
    ``INPUT_GRAD``) dL/d(input) per lane in the layout of ``ys``."""
    HALF: tl.constexpr = 1 << (NQ - 1)
    seq, blk, lanes, live = _tile(n_lanes, BLOCK)
    instance = seq * n_lanes + lanes
    col = tl.arange(0, HALF)[None, :]
    y = _load(ys, seq * y_seq + lanes * y_lane, y_row, col, live, HALF)
    g = _load(grads, seq * g_seq + lanes * g_lane, g_row, col, live, HALF)
    if LCU:
        g = _lcu_backward(y, g, d_lcu, lcu_re, lcu_im, instance, lanes, live)
    coef, rows = _coefficient_rows(seq, blk, coef_seq, coef_lane, BLOCK)
    for start in range(0, n_gates, HALF):
        count = tl.minimum(n_gates - start, HALF)
        acc = tl.zeros_like(y[0])
        for i in range(count):
            gate_kind, target, control, c, s = _gate(kind, wire0, wire1, cos + coef, sin + coef, rows,
                                                     n_gates - 1 - start - i, live, NQ)
            y, g, d = _adjoint_gate(y, g, gate_kind, target, control, c, s, col, NQ)
            acc = tl.where(col == i, d[:, None], acc)
        _store_gradients(d_gates, instance, n_gates, start, count, col, live, acc)
    if LCU:
        _store_lane_sum(grad_in, blk, seq, n_seq, g, HALF)
    elif INPUT_GRAD:
        _store(grad_in, seq * y_seq + lanes * y_lane, y_row, col, live, g, HALF)


# --------------------------------------------------------------------------------------------
# Eval: the whole QSVT state of a sequence in one program, from per-vocabulary tables
# --------------------------------------------------------------------------------------------

@triton.jit
def _ry_top(x, c, s):
    """RY on qubit 0 (the top bit: lo and hi blocks are the partners): no data movement, no select."""
    return c * x[0] - s * x[1], c * x[1] + s * x[0], c * x[2] - s * x[3], c * x[3] + s * x[2]


@triton.jit
def _ry_low(x, p, c, s, target, col):
    """RY on a bit below the top: that bit is the same in the lo and hi halves, so one sign select per
    lane serves both."""
    signed = tl.where(((col >> target) & 1) != 0, s, -s)
    return c * x[0] + signed * p[0], c * x[1] + signed * p[1], c * x[2] + signed * p[2], c * x[3] + signed * p[3]


@triton.jit
def _crx_low(x, p, c, s, control, col):
    """CRX with its control below the top bit (the same in both halves): one select pair per lane."""
    on = ((col >> control) & 1) != 0
    a, b = tl.where(on, c, 1.0), tl.where(on, s, 0.0)
    return a * x[0] + b * p[2], a * x[1] + b * p[3], a * x[2] - b * p[0], a * x[3] - b * p[1]


@triton.jit
def _crx_top_control(x, c, s, target, col):
    """CRX controlled by qubit 0: the lo half is untouched, so only the hi half's partners are exchanged."""
    swap = tl.broadcast_to(col ^ (1 << target), x[1].shape)
    p_re, p_im = tl.gather(x[1], swap, 1), tl.gather(x[3], swap, 1)
    return x[0], c * x[1] + s * p_im, x[2], c * x[3] - s * p_re


@triton.jit
def _token_gate(x, word, c, s, col, NQ: tl.constexpr):
    """One gate of a packed gate word (:func:`gate_words`) on a state tuple, by the cheapest of five
    paths: the branch is uniform over the program (every lane runs the same gate)."""
    TOP: tl.constexpr = NQ - 1
    kind, target, control = word & 1, (word >> 8) & 255, word >> 16
    if kind == 0:
        if target == TOP:
            x = _ry_top(x, c, s)
        else:
            x = _ry_low(x, _exchanged(x, target, col), c, s, target, col)
    elif control == TOP:
        x = _crx_top_control(x, c, s, target, col)
    elif target == TOP:
        x = _crx_low(x, _swapped(x), c, s, control, col)
    else:
        x = _crx_low(x, _exchanged(x, target, col), c, s, control, col)
    return x


@triton.jit
def _lane_sum(x, acc):
    """``acc`` plus the sum over the tile's lanes of a state tuple (``[HALF]`` vectors)."""
    return (acc[0] + tl.sum(x[0], axis=0), acc[1] + tl.sum(x[1], axis=0), acc[2] + tl.sum(x[2], axis=0),
            acc[3] + tl.sum(x[3], axis=0))


@triton.jit
def _positions(ids, lcu_re, lcu_im, seq, start, n_lanes, BLOCK: tl.constexpr):
    """Token ids (int64) and complex LCU weights ``[BLOCK, 1]`` of positions ``start ..`` of a sequence
    (token 0 and weight 0 on padding lanes: they add nothing)."""
    lanes = start + tl.arange(0, BLOCK)
    live = lanes < n_lanes
    tok = tl.load(ids + seq * n_lanes + lanes, mask=live, other=0).to(tl.int64)
    w_re = tl.load(lcu_re + lanes, mask=live, other=0.0)[:, None]
    w_im = tl.load(lcu_im + lanes, mask=live, other=0.0)[:, None]
    return tok, live, w_re, w_im


@triton.jit
def _first_power(ids, first, lcu_re, lcu_im, seq, n_lanes, col, zero, BLOCK: tl.constexpr, HALF: tl.constexpr):
    """``M |0> = sum_w b_w U_{x_w} |0>`` from the cached first columns (rows ``[V, 4 HALF]``)."""
    acc = (zero, zero, zero, zero)
    for start in range(0, n_lanes, BLOCK):
        tok, live, w_re, w_im = _positions(ids, lcu_re, lcu_im, seq, start, n_lanes, BLOCK)
        u = _load(first, tok * (4 * HALF), 1, col, live, HALF)
        acc = _lane_sum(_weighted(u, w_re, w_im, False), acc)
    return acc


@triton.jit
def _next_power(psi, ids, table, words, lcu_re, lcu_im, seq, n_lanes, n_gates, col, zero, NQ: tl.constexpr,
                BLOCK: tl.constexpr):
    """``M psi``: ``psi`` copied to every lane of a tile, the lane's token circuit applied with its
    coefficients read by token id (``table [V, G, 2]``: cosine, sine), the lanes summed with the LCU weights."""
    HALF: tl.constexpr = 1 << (NQ - 1)
    acc = (zero, zero, zero, zero)
    for start in range(0, n_lanes, BLOCK):
        tok, live, w_re, w_im = _positions(ids, lcu_re, lcu_im, seq, start, n_lanes, BLOCK)
        coefficients = table + tok * (2 * n_gates)
        x = (tl.broadcast_to(psi[0][None, :], (BLOCK, HALF)), tl.broadcast_to(psi[1][None, :], (BLOCK, HALF)),
             tl.broadcast_to(psi[2][None, :], (BLOCK, HALF)), tl.broadcast_to(psi[3][None, :], (BLOCK, HALF)))
        for k in range(n_gates):
            c, s = tl.split(tl.load(coefficients[:, None] + (2 * k + tl.arange(0, 2)[None, :]).to(tl.int64)))
            c, s = c[:, None], s[:, None]
            x = _token_gate(x, tl.load(words + k), c, s, col, NQ)
        acc = _lane_sum(_weighted(x, w_re, w_im, False), acc)
    return acc


@triton.jit
def _qsvt_eval_kernel(ids, out, table, first, words, lcu_re, lcu_im, poly, n_lanes, n_gates, degree,
                      NQ: tl.constexpr, BLOCK: tl.constexpr):
    """The unnormalised QSVT state ``sum_k poly_k M^k |0>`` of one sequence per program, written as row
    ``seq`` of ``out [B, 4 HALF]``: the first power from cached ``U_v |0>``, each further one with the
    state in registers, and the polynomial summed on the way (nothing else leaves the program)."""
    HALF: tl.constexpr = 1 << (NQ - 1)
    seq = tl.program_id(0).to(tl.int64)
    col = tl.arange(0, HALF)[None, :]
    index = tl.arange(0, HALF)
    zero = tl.zeros([HALF], dtype=first.dtype.element_ty)
    psi = _first_power(ids, first, lcu_re, lcu_im, seq, n_lanes, col, zero, BLOCK, HALF)
    c0, c1 = tl.load(poly), tl.load(poly + 1)
    total = (c1 * psi[0] + tl.where(index == 0, c0, 0.0), c1 * psi[1], c1 * psi[2], c1 * psi[3])
    for k in range(2, degree + 1):
        psi = _next_power(psi, ids, table, words, lcu_re, lcu_im, seq, n_lanes, n_gates, col, zero, NQ, BLOCK)
        ck = tl.load(poly + k)
        total = (total[0] + ck * psi[0], total[1] + ck * psi[1], total[2] + ck * psi[2], total[3] + ck * psi[3])
    row = out + seq * (4 * HALF) + index
    tl.store(row, total[0])
    tl.store(row + HALF, total[1])
    tl.store(row + 2 * HALF, total[2])
    tl.store(row + 3 * HALF, total[3])


# whether TRITON_INTERPRET=1 was set when the kernels above were decorated (this module's import)
INTERPRETED = isinstance(_forward_kernel, InterpretedFunction)

# --------------------------------------------------------------------------------------------
# Launchers: the signatures of quixer.sim.native's forward, adjoint, lcu_power and lcu_power_adjoint
# --------------------------------------------------------------------------------------------

def supports(tensor: torch.Tensor) -> bool:
    """Whether the kernels can run on this tensor: CUDA, or CPU under the Triton interpreter."""
    return tensor.dtype in (torch.float32, torch.float64) and (
        tensor.device.type == "cuda" or (INTERPRETED and tensor.device.type == "cpu"))


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


# the register file of a multiprocessor (sm_70 to sm_90) and the programs the tiles leave room for
SM_REGISTERS, PROGRAMS_PER_SM = 65536, 4


class Tile(NamedTuple):
    """One program's shape: lanes (circuit instances) per program and warps."""
    block: int
    warps: int

    @property
    def max_registers(self) -> int:
        """The cap given to ptxas: registers per thread that leave room for :data:`PROGRAMS_PER_SM`
        programs (without it ptxas may take more for some strides and fit fewer)."""
        return min(255, SM_REGISTERS // (PROGRAMS_PER_SM * 32 * self.warps))


# Per kernel and dtype at 6 qubits: the largest tile that compiles for sm_90 without spills within
# Tile.max_registers, as measured by bench/kernel_metadata.py and asserted by tests/test_triton.py.
# The adjoint holds twice the state of the forward, and float64 twice the registers of float32.
TILES = {
    ("forward", torch.float32): Tile(32, 4),
    ("forward", torch.float64): Tile(16, 4),
    ("adjoint", torch.float32): Tile(16, 4),
    ("adjoint", torch.float64): Tile(8, 4),
    ("eval", torch.float32): Tile(32, 4),
    ("eval", torch.float64): Tile(16, 4),
}
# a flat grid of at most this many programs (CUDA's limit on the grid's x dimension)
MAX_PROGRAMS = 2**31 - 1


def _tiles(kind: str, dtype: torch.dtype, n_qubits: int, n_seq: int, n_lanes: int, device: torch.device
           ) -> tuple[Tile, int]:
    """The tile of :data:`TILES` (halved per qubit above 6: a lane's state doubles; at most
    :data:`MAX_BLOCK` lanes) and lane blocks per sequence: smaller tiles where whole tiles would
    leave streaming multiprocessors idle, and no more warps than lanes (a warp holds whole lanes)."""
    tile = TILES[kind, dtype]
    block = min(MAX_BLOCK, max(1, tile.block >> max(0, n_qubits - 6)), triton.next_power_of_2(max(n_lanes, 1)))
    processors = _multiprocessors(device.index or 0) if device.type == "cuda" else 1
    while block > 4 and n_seq * triton.cdiv(n_lanes, block) < 2 * processors:
        block //= 2
    blocks = triton.cdiv(n_lanes, block)
    if n_seq * blocks > MAX_PROGRAMS:
        raise ValueError(f"{n_seq} x {n_lanes} circuit instances need more than {MAX_PROGRAMS} Triton programs")
    return Tile(block, min(tile.warps, block)), blocks


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


def _run(kernel, tile: Tile, programs: int, tensors: tuple, wiring: tuple, lcu: tuple, sizes: tuple,
         layouts: tuple, **flags):
    """Launch one of the kernels on a flat grid of ``programs``: ``layouts`` are the (seq, lane, row)
    strides of its two state arrays and the (seq, lane) row strides of its gate coefficients."""
    strides = [stride for layout in layouts for stride in layout]
    meta = dict(flags, BLOCK=tile.block, num_warps=tile.warps, maxnreg=tile.max_registers, **OPTIONS)
    _execute(kernel, (programs,), (*tensors, *wiring, *lcu, *sizes, *strides), meta)


def _execute(kernel, grid: tuple, args: tuple, meta: dict) -> None:
    """The launch itself (:mod:`quixer.sim.compiled_kernels` records these arguments instead)."""
    kernel[grid](*args, **meta)


def forward(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, wiring: tuple, n_qubits: int) -> torch.Tensor:
    """Circuit instance ``i`` applied to ``states[..., i]`` of contiguous ``[L, 2^(n+1), N]`` states;
    ``cos``/``sin``: ``[N, G]`` half-angle cosines and sines; ``wiring``: the plan's, on the device."""
    L, rows, N = states.shape
    _checked(rows, n_qubits, cos, sin, wiring, states)
    G = cos.shape[1]
    out = torch.empty_like(states)
    tile, blocks = _tiles("forward", states.dtype, n_qubits, L, N, states.device)
    _run(_forward_kernel, tile, L * blocks, (states, out, out, cos, sin), wiring, (cos, sin), (L, N, G),
         (_stacked(rows, N), _stacked(rows, N), (0, G)), NQ=n_qubits, LCU=False)
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
    tile, blocks = _tiles("adjoint", output.dtype, n_qubits, L, N, output.device)
    _run(_adjoint_kernel, tile, L * blocks, (output, grad, grad_in, d_gates, d_gates, cos, sin), wiring, (cos, sin),
         (L, N, G), (_stacked(rows, N), _stacked(rows, N), (0, G)), NQ=n_qubits, LCU=False, INPUT_GRAD=input_grad)
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
    tile, blocks = _tiles("forward", psi.dtype, n_qubits, B, W, psi.device)
    sums = psi.new_empty(blocks, rows, B)
    _run(_forward_kernel, tile, B * blocks, (psi, outputs, sums, cos, sin), wiring, _lcu_parts(lcu, psi), (B, W, G),
         (_per_sequence(B), _per_position(B, W), (W * G, G)), NQ=n_qubits, LCU=True)
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
    tile, blocks = _tiles("adjoint", grad.dtype, n_qubits, B, W, grad.device)
    dpsi = grad.new_empty(blocks, rows, B)
    d_lcu = grad.new_empty(B, W, 2)
    d_gates = grad.new_empty(B * W, G)
    _run(_adjoint_kernel, tile, B * blocks, (outputs, grad, dpsi, d_gates, d_lcu, cos, sin), wiring,
         _lcu_parts(lcu, grad), (B, W, G), (_per_position(B, W), _per_sequence(B), (W * G, G)),
         NQ=n_qubits, LCU=True, INPUT_GRAD=True)
    return (dpsi[0] if blocks == 1 else dpsi.sum(0)), d_lcu.sum(0), d_gates


def gate_words(wiring: tuple, n_qubits: int) -> torch.Tensor:
    """The plan's gates packed one int32 each for :func:`qsvt_eval`: kind (0 RY, 1 CRX) in bits 0-7, the
    target's bit in the amplitude index in bits 8-15 and the control's in 16-23 (one load per gate instead
    of three). Torch ops on the device's ``wiring``: no host round trip, so a graph capture may hold them."""
    kind, wire0, wire1 = wiring
    return (kind | ((n_qubits - 1 - wire1) << 8) | ((n_qubits - 1 - wire0) << 16)).to(torch.int32).contiguous()


def coefficient_table(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Per-vocabulary half-angle cosines and sines ``[V, G]`` interleaved as ``[V, G, 2]``: a lane reads
    both of a gate from one row address."""
    return torch.stack((cos, sin), -1).contiguous()


def qsvt_eval(ids: torch.Tensor, table: torch.Tensor, first: torch.Tensor, words: torch.Tensor, n_qubits: int,
              lcu: tuple[torch.Tensor, torch.Tensor], poly: torch.Tensor) -> torch.Tensor:
    """The eval-mode QSVT state ``sum_k poly_k M_b^k |0>`` of each sequence of token ``ids [B, W]``, one
    launch for the whole batch (no host synchronisation: it may be captured in a CUDA graph).

    ``table``: :func:`coefficient_table` of the vocabulary ``[V, G, 2]``; ``first``: the first columns
    ``U_v |0>`` as real rows ``[V, 2^(n+1)]``; ``words``: :func:`gate_words`; ``lcu``: the real and
    imaginary parts of the LCU weights ``[W]``; ``poly``: the ``d + 1 >= 2`` polynomial coefficients
    divided by their L1 norm. All of ``first``'s dtype. Returns real rows ``[B, 2^(n+1)]`` (real parts,
    then imaginary parts).
    """
    B, W = ids.shape
    rows, G = 2 ** (n_qubits + 1), words.shape[0]
    lcu_re, lcu_im = lcu
    if (table.shape != (first.shape[0], G, 2) or first.shape[1] != rows or lcu_re.shape != (W,)
            or lcu_im.shape != (W,) or poly.shape[0] < 2):
        raise ValueError("inconsistent shapes for the Triton QSVT eval kernel")
    for t in (table, first, lcu_re, lcu_im, poly):
        if not supports(t) or t.dtype != first.dtype or not t.is_contiguous() or t.device != first.device:
            raise ValueError(f"the Triton kernels need contiguous {first.dtype} tensors on one CUDA device "
                             f"(or CPU under TRITON_INTERPRET=1), got {t.dtype} on {t.device}")
    if (not ids.is_contiguous() or ids.dtype not in (torch.int32, torch.int64) or words.dtype != torch.int32
            or ids.device != first.device or words.device != first.device):
        raise ValueError("the Triton QSVT eval kernel needs contiguous integer token ids and int32 gate words "
                         "on the tables' device")
    if B > MAX_PROGRAMS:
        raise ValueError(f"{B} sequences need more than {MAX_PROGRAMS} Triton programs")
    out = first.new_empty(B, rows)
    tile = TILES["eval", first.dtype]
    block = min(MAX_BLOCK, max(1, tile.block >> max(0, n_qubits - 6)), triton.next_power_of_2(max(W, 1)))
    meta = dict(NQ=n_qubits, BLOCK=block, num_warps=min(tile.warps, block), maxnreg=tile.max_registers, **OPTIONS)
    _execute(_qsvt_eval_kernel, (B,), (ids, out, table, first, words, lcu_re, lcu_im, poly, W, G,
                                        poly.shape[0] - 1), meta)
    return out
