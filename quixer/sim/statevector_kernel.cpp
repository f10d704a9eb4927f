// Fused CPU kernels for the Quixer circuits (RY and CRX gates on real-layout statevectors).
//
// Why: on a CPU, applying a circuit gate by gate with torch ops makes one pass over the whole
// batch of states per gate (three ops each), so a training step is bound by memory traffic and
// op overhead, not arithmetic. These kernels take a tile of 8 (float) or 4 (double) circuit
// instances at a time (a row of a tile is one AVX register; wider tiles spill registers in the
// backward), keep its states in a small buffer that stays in L1, and run every gate on it before
// writing back: one pass over memory per circuit instead of three per gate.
//
// Layout (the same as quixer/model.py's CircuitPlan): a batch of states is a contiguous real
// array [L][R][N] with R = 2^(n+1) rows (real parts of the 2^n amplitudes, then imaginary parts;
// qubit 0 is the most significant bit of a basis index) and the N circuit instances last.
// Gate k of instance i has half-angle cosine c[i][k] and sine s[i][k] ([N][G] arrays, as the
// angles [N][P] they come from); the angle gradients are written in the same layout.
//
// - RY(theta) on q:  [[c, -s], [s, c]] on the pairs of rows differing in q's bit.
// - CRX(theta), control k, target t: RX = [[c, -i s], [-i s, c]] where k's bit is 1.
//
// qx_forward_* reads the input states and writes the output states (the same array is fine).
// qx_adjoint_* walks the gates backwards from the circuit's output y and dL/dy (g): each gate's
// angle gradient is 1/2 Re <g| (-i P) y> (P the gate's generator), then both y and g are mapped
// through the gate's transpose (its inverse: the real form is orthogonal), so no intermediate
// state is stored. It writes dL/d(input) (unless grad_in is null) and the per-gate angle gradients.
//
// qx_lcu_power_* applies the circuits of B sequences x W positions to each sequence's state and
// sums them with the LCU weights in the same pass (one power of M); qx_lcu_power_adjoint_* is its
// backward; qx_qsvt_eval_* computes the whole eval-mode QSVT state from per-vocabulary data.
// qx_dropout_mask_* draws dropout masks (torch's CPU bernoulli_ is slow).
//
// Every instance is computed by one thread in a fixed order: results do not depend on the
// thread count. Plain C++17 with OpenMP, no torch headers, so it builds quickly on first use
// (quixer/native.py).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>

namespace {

enum GateKind : int32_t { kRY = 0, kCRX = 1 };

int control_one_target_zero(int r, int cbit, int tbit);

// A gate list, and for each CRX the dim/4 basis indices where its control is 1 and its target 0
// (looked up rather than recomputed in the gate loops, which makes the CRX gates faster).
struct Circuit {
    int n_qubits;
    int n_gates;
    const int32_t* kind;
    const int32_t* wire0;  // RY: the qubit; CRX: the control
    const int32_t* wire1;  // CRX: the target
    std::vector<int> quads;

    Circuit(int n, int G, const int32_t* kind_, const int32_t* wire0_, const int32_t* wire1_)
        : n_qubits(n), n_gates(G), kind(kind_), wire0(wire0_), wire1(wire1_) {
        const int per = (1 << n) / 4;
        quads.assign(static_cast<size_t>(G) * per, 0);
        for (int k = 0; k < G; ++k)
            if (kind[k] != 0)
                for (int r = 0; r < per; ++r)
                    quads[static_cast<size_t>(k) * per + r] =
                        control_one_target_zero(r, n - 1 - wire0[k], n - 1 - wire1[k]);
    }
    const int* quads_of(int k) const { return quads.data() + static_cast<size_t>(k) * ((1 << n_qubits) / 4); }
};

// T lanes of Real as one value (GCC/Clang vector extension): every gate below is written on
// whole tiles, so it is vectorised whatever the compiler's loop heuristics think.
template <typename Real, int T>
struct VecOf {
    typedef Real type __attribute__((vector_size(T * sizeof(Real))));
};
template <typename Real, int T>
using Vec = typename VecOf<Real, T>::type;

template <typename Real, int T>
inline void load_tile(Vec<Real, T>* buf, const Real* x, int rows, int64_t N, int64_t n0, int nt) {
    for (int r = 0; r < rows; ++r) {
        Real* dst = reinterpret_cast<Real*>(buf + r);
        std::memcpy(dst, x + r * N + n0, sizeof(Real) * nt);
        std::fill(dst + nt, dst + T, Real(0));
    }
}

template <typename Real, int T>
inline void store_tile(Real* x, const Vec<Real, T>* buf, int rows, int64_t N, int64_t n0, int nt) {
    for (int r = 0; r < rows; ++r) std::memcpy(x + r * N + n0, buf + r, sizeof(Real) * nt);
}

// Per-gate coefficients of one tile: lane i < nt takes row row(i) of the [*][G] tables c, s
// (an instance, or a token id for per-vocabulary tables); padding lanes get the identity
// (c = 1, s = 0).
template <typename Real, int T, typename Row>
inline void load_coefficients(Vec<Real, T>* cb, Vec<Real, T>* sb, const Real* c, const Real* s, int G, int nt,
                              Row row) {
    for (int i = 0; i < T; ++i) {
        const Real* ci = i < nt ? c + row(i) * G : nullptr;
        const Real* si = i < nt ? s + row(i) * G : nullptr;
        for (int k = 0; k < G; ++k) {
            cb[k][i] = ci ? ci[k] : Real(1);
            sb[k][i] = si ? si[k] : Real(0);
        }
    }
}

// The complex LCU weights of positions w0 .. w0 + nt - 1 as lanes (zero on padding lanes).
template <typename Real, int T>
inline void lcu_lanes(const Real* lcu_re, const Real* lcu_im, int64_t w0, int nt, Vec<Real, T>& wr, Vec<Real, T>& wi) {
    wr = Vec<Real, T>{};
    wi = Vec<Real, T>{};
    for (int i = 0; i < nt; ++i) {
        wr[i] = lcu_re[w0 + i];
        wi[i] = lcu_im[w0 + i];
    }
}

// Every lane of the tile starts from the same state, row r being psi[r * stride].
template <typename Real, int T>
inline void broadcast_tile(Vec<Real, T>* buf, const Real* psi, int64_t stride, int rows) {
    for (int r = 0; r < rows; ++r) buf[r] = Vec<Real, T>{} + psi[r * stride];
}

// acc += the lanes of the tile weighted by the complex LCU weights (wr + i wi).
template <typename Real, int T>
inline void accumulate_lcu(Vec<Real, T>* acc, const Vec<Real, T>* buf, Vec<Real, T> wr, Vec<Real, T> wi, int dim) {
    for (int d = 0; d < dim; ++d) {
        const Vec<Real, T> yr = buf[d], yi = buf[dim + d];
        acc[d] += wr * yr - wi * yi;
        acc[dim + d] += wr * yi + wi * yr;
    }
}

// out[r * stride] = the sum of the lanes of acc[r].
template <typename Real, int T>
inline void lane_sums(const Vec<Real, T>* acc, int rows, Real* out, int64_t stride) {
    for (int r = 0; r < rows; ++r) {
        Real total = 0;
        for (int i = 0; i < T; ++i) total += acc[r][i];
        out[r * stride] = total;
    }
}

// Angle gradients of lanes i < nt (instances n0 + i) from the adjoint's accumulators.
template <typename Real, int T>
inline void store_angle_gradients(Real* grad_gates, const Vec<Real, T>* acc, int G, int64_t n0, int nt) {
    for (int i = 0; i < nt; ++i)
        for (int k = 0; k < G; ++k) grad_gates[(n0 + i) * G + k] = Real(0.5) * acc[k][i];
}

// The r-th basis index (r < dim / 4) whose control bit is 1 and target bit is 0: r with a zero
// inserted at both bit positions, then the control bit set. Enumerating these directly (instead
// of testing all dim indices) keeps the CRX loops free of unpredictable branches.
int control_one_target_zero(int r, int cbit, int tbit) {
    const int lo = cbit < tbit ? cbit : tbit, hi = cbit < tbit ? tbit : cbit;
    int j = ((r >> lo) << (lo + 1)) | (r & ((1 << lo) - 1));
    j = ((j >> hi) << (hi + 1)) | (j & ((1 << hi) - 1));
    return j | (1 << cbit);
}

// RY with (c, s) on the pairs of rows differing in basis bit `bit` (real and imaginary halves).
template <typename Real, int T>
inline void apply_ry(Vec<Real, T>* __restrict__ buf, int dim, int bit, Vec<Real, T> c, Vec<Real, T> s) {
    const int step = 1 << bit;
    for (int base = 0; base < 2 * dim; base += 2 * step) {
        for (int r0 = base; r0 < base + step; ++r0) {
            const Vec<Real, T> a = buf[r0], b = buf[r0 + step];
            buf[r0] = c * a - s * b;
            buf[r0 + step] = s * a + c * b;
        }
    }
}

// CRX with (c, s), control bit `cbit`, target bit `tbit`: RX on the rows where the control is 1.
template <typename Real, int T>
inline void apply_crx(Vec<Real, T>* __restrict__ buf, int dim, const int* quads, int tbit, Vec<Real, T> c,
                      Vec<Real, T> s) {
    const int tm = 1 << tbit;
    for (int r = 0; r < dim / 4; ++r) {
        const int ar = quads[r], br = ar | tm, ai = ar + dim, bi = br + dim;
        const Vec<Real, T> a_r = buf[ar], a_i = buf[ai], b_r = buf[br], b_i = buf[bi];
        buf[ar] = c * a_r + s * b_i;
        buf[ai] = c * a_i - s * b_r;
        buf[br] = c * b_r + s * a_i;
        buf[bi] = c * b_i - s * a_r;
    }
}

// One backward step through an RY: add dL/dtheta (without the factor 1/2) to acc, then map
// the state y and the gradient g through RY^T.
template <typename Real, int T>
inline void adjoint_ry(Vec<Real, T>* __restrict__ y, Vec<Real, T>* __restrict__ g, int dim, int bit, Vec<Real, T> c,
                       Vec<Real, T> s, Vec<Real, T>& acc) {
    const int step = 1 << bit;
    Vec<Real, T> sum = {};
    for (int base = 0; base < 2 * dim; base += 2 * step) {
        for (int r0 = base; r0 < base + step; ++r0) {
            const int r1 = r0 + step;
            const Vec<Real, T> y0 = y[r0], y1 = y[r1], g0 = g[r0], g1 = g[r1];
            sum += g1 * y0 - g0 * y1;
            y[r0] = c * y0 + s * y1;
            y[r1] = c * y1 - s * y0;
            g[r0] = c * g0 + s * g1;
            g[r1] = c * g1 - s * g0;
        }
    }
    acc += sum;
}

// One backward step through a CRX, as adjoint_ry (its inverse is RX(-theta): s -> -s).
template <typename Real, int T>
inline void adjoint_crx(Vec<Real, T>* __restrict__ y, Vec<Real, T>* __restrict__ g, int dim, const int* quads,
                        int tbit, Vec<Real, T> c, Vec<Real, T> s, Vec<Real, T>& acc) {
    const int tm = 1 << tbit;
    Vec<Real, T> sum = {};
    for (int r = 0; r < dim / 4; ++r) {
        const int ar = quads[r], br = ar | tm, ai = ar + dim, bi = br + dim;
        const Vec<Real, T> a_r = y[ar], a_i = y[ai], b_r = y[br], b_i = y[bi];
        const Vec<Real, T> ga_r = g[ar], ga_i = g[ai], gb_r = g[br], gb_i = g[bi];
        sum += ga_r * b_i - ga_i * b_r + gb_r * a_i - gb_i * a_r;
        y[ar] = c * a_r - s * b_i;
        y[ai] = c * a_i + s * b_r;
        y[br] = c * b_r - s * a_i;
        y[bi] = c * b_i + s * a_r;
        g[ar] = c * ga_r - s * gb_i;
        g[ai] = c * ga_i + s * gb_r;
        g[br] = c * gb_r - s * ga_i;
        g[bi] = c * gb_i + s * ga_r;
    }
    acc += sum;
}

// All gates of the circuit on one tile held in buf.
template <typename Real, int T>
inline void run_gates(Vec<Real, T>* buf, const Circuit& circ, const Vec<Real, T>* cb, const Vec<Real, T>* sb) {
    const int n = circ.n_qubits, dim = 1 << n;
    for (int k = 0; k < circ.n_gates; ++k) {
        if (circ.kind[k] == kRY)
            apply_ry<Real, T>(buf, dim, n - 1 - circ.wire0[k], cb[k], sb[k]);
        else
            apply_crx<Real, T>(buf, dim, circ.quads_of(k), n - 1 - circ.wire1[k], cb[k], sb[k]);
    }
}

// All gates backwards on one tile: y (output -> input states), g (dL/d output -> dL/d input),
// acc[k] += dL/dtheta_k without the factor 1/2.
template <typename Real, int T>
inline void run_adjoint_gates(Vec<Real, T>* y, Vec<Real, T>* g, const Circuit& circ, const Vec<Real, T>* cb,
                              const Vec<Real, T>* sb, Vec<Real, T>* acc) {
    const int n = circ.n_qubits, dim = 1 << n;
    for (int k = circ.n_gates - 1; k >= 0; --k) {
        if (circ.kind[k] == kRY)
            adjoint_ry<Real, T>(y, g, dim, n - 1 - circ.wire0[k], cb[k], sb[k], acc[k]);
        else
            adjoint_crx<Real, T>(y, g, dim, circ.quads_of(k), n - 1 - circ.wire1[k], cb[k], sb[k], acc[k]);
    }
}

template <typename Real, int T>
void forward_tiles(const Real* in, Real* out, int64_t L, int64_t N, const Real* c, const Real* s, const Circuit& circ,
                   int64_t tile_begin, int64_t tile_end) {
    using V = Vec<Real, T>;
    const int n = circ.n_qubits, dim = 1 << n, rows = 2 * dim, G = circ.n_gates;
    std::vector<V> buf(rows), cb(G), sb(G);
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
        const int64_t n0 = tile * T;
        const int nt = static_cast<int>(std::min<int64_t>(T, N - n0));
        load_coefficients<Real, T>(cb.data(), sb.data(), c, s, G, nt, [n0](int i) { return n0 + i; });
        for (int64_t l = 0; l < L; ++l) {
            load_tile<Real, T>(buf.data(), in + l * rows * N, rows, N, n0, nt);
            run_gates<Real, T>(buf.data(), circ, cb.data(), sb.data());
            store_tile<Real, T>(out + l * rows * N, buf.data(), rows, N, n0, nt);
        }
    }
}

template <typename Real, int T>
void adjoint_tiles(const Real* y, const Real* g, Real* grad_in, Real* grad_gates, int64_t L, int64_t N, const Real* c,
                   const Real* s, const Circuit& circ, int64_t tile_begin, int64_t tile_end) {
    using V = Vec<Real, T>;
    const int n = circ.n_qubits, dim = 1 << n, rows = 2 * dim, G = circ.n_gates;
    std::vector<V> yb(rows), gb(rows), cb(G), sb(G), acc(G);
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
        const int64_t n0 = tile * T;
        const int nt = static_cast<int>(std::min<int64_t>(T, N - n0));
        load_coefficients<Real, T>(cb.data(), sb.data(), c, s, G, nt, [n0](int i) { return n0 + i; });
        std::fill(acc.begin(), acc.end(), V{});
        for (int64_t l = 0; l < L; ++l) {
            load_tile<Real, T>(yb.data(), y + l * rows * N, rows, N, n0, nt);
            load_tile<Real, T>(gb.data(), g + l * rows * N, rows, N, n0, nt);
            run_adjoint_gates<Real, T>(yb.data(), gb.data(), circ, cb.data(), sb.data(), acc.data());
            if (grad_in) store_tile<Real, T>(grad_in + l * rows * N, gb.data(), rows, N, n0, nt);
        }
        store_angle_gradients<Real, T>(grad_gates, acc.data(), G, n0, nt);
    }
}

// Split the tiles over up to n_threads OpenMP threads. In a torch process this is torch's own
// OpenMP runtime (the same libgomp.so.1 is loaded once), so the kernel runs on the threads that
// torch's ops use instead of competing with them while they spin-wait between ops.
template <typename F>
void parallel_tiles(int64_t n_tiles, int n_threads, int64_t work_per_tile, F&& body) {
    // below ~2^18 real multiply-adds a thread costs more than it saves
    const int64_t useful = std::max<int64_t>(1, n_tiles * work_per_tile / (1 << 18));
    const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({n_threads, n_tiles, useful})));
    if (threads == 1) {
        body(0, n_tiles);
        return;
    }
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t per = n_tiles / nt, extra = n_tiles % nt;
        const int64_t begin = t * per + std::min<int64_t>(t, extra);
        body(begin, begin + per + (t < extra ? 1 : 0));
    }
}

template <typename Real, int T>
int run_forward(const Real* in, Real* out, int64_t L, int n_qubits, int64_t N, const Real* c, const Real* s, int G,
                const int32_t* kind, const int32_t* wire0, const int32_t* wire1, int n_threads) {
    if (n_qubits < 1 || n_qubits > 16 || L < 0 || N < 0 || G < 0) return 1;
    const Circuit circ(n_qubits, G, kind, wire0, wire1);
    const int64_t n_tiles = (N + T - 1) / T;
    const int64_t work = L * (int64_t(2) << n_qubits) * T * G;
    parallel_tiles(n_tiles, n_threads, work, [&](int64_t b, int64_t e) {
        forward_tiles<Real, T>(in, out, L, N, c, s, circ, b, e);
    });
    return 0;
}

template <typename Real, int T>
int run_adjoint(const Real* y, const Real* g, Real* grad_in, Real* grad_gates, int64_t L, int n_qubits, int64_t N,
                const Real* c, const Real* s, int G, const int32_t* kind, const int32_t* wire0, const int32_t* wire1,
                int n_threads) {
    if (n_qubits < 1 || n_qubits > 16 || L < 0 || N < 0 || G < 0) return 1;
    const Circuit circ(n_qubits, G, kind, wire0, wire1);
    const int64_t n_tiles = (N + T - 1) / T;
    const int64_t work = 3 * L * (int64_t(2) << n_qubits) * T * G;
    parallel_tiles(n_tiles, n_threads, work, [&](int64_t b, int64_t e) {
        adjoint_tiles<Real, T>(y, g, grad_in, grad_gates, L, N, c, s, circ, b, e);
    });
    return 0;
}

// One power of the LCU for B sequences of W tokens: out_b = sum_w b_w U_{b,w} psi_b, with
// psi [2 dim][B] (real rows then imaginary rows, sequences last), the circuit of instance b*W + w
// given by c/s [B*W][G], and the complex LCU weights (lcu_re, lcu_im) [W]. Tiles hold T
// positions of one sequence, all starting from psi_b, so no [2 dim][B*W] copy of the states is
// made; the circuit outputs U_{b,w} psi_b (which the backward needs) go to Y [2 dim][B*W].
template <typename Real, int T>
void lcu_power_sequences(const Real* psi, Real* out, Real* Y, int64_t B, int64_t W, const Real* c, const Real* s,
                         const Real* lcu_re, const Real* lcu_im, const Circuit& circ, int64_t b_begin, int64_t b_end) {
    using V = Vec<Real, T>;
    const int n = circ.n_qubits, dim = 1 << n, rows = 2 * dim, G = circ.n_gates;
    const int64_t N = B * W;
    std::vector<V> buf(rows), cb(G), sb(G), acc(rows);
    for (int64_t b = b_begin; b < b_end; ++b) {
        std::fill(acc.begin(), acc.end(), V{});
        for (int64_t w0 = 0; w0 < W; w0 += T) {
            const int nt = static_cast<int>(std::min<int64_t>(T, W - w0));
            const int64_t n0 = b * W + w0;
            load_coefficients<Real, T>(cb.data(), sb.data(), c, s, G, nt, [n0](int i) { return n0 + i; });
            broadcast_tile<Real, T>(buf.data(), psi + b, B, rows);
            run_gates<Real, T>(buf.data(), circ, cb.data(), sb.data());
            store_tile<Real, T>(Y, buf.data(), rows, N, n0, nt);
            V wr, wi;
            lcu_lanes<Real, T>(lcu_re, lcu_im, w0, nt, wr, wi);
            accumulate_lcu<Real, T>(acc.data(), buf.data(), wr, wi, dim);
        }
        lane_sums<Real, T>(acc.data(), rows, out + b, B);
    }
}

// Backward of lcu_power_sequences from its circuit outputs Y [2 dim][B*W] and gout = dL/d(out)
// [2 dim][B]: with out = sum_w b_w Y_w (complex), dL/dY_w = conj(b_w) gout and dL/db_w = <Y_w, gout>
// (real-linear). Writes dL/dpsi [2 dim][B], the per-instance (re, im) terms of dL/db as dlcu
// [B*W][2] (summed over sequences by the caller) and the angle gradients [B*W][G].
template <typename Real, int T>
void lcu_power_adjoint_sequences(const Real* Y, const Real* gout, Real* dpsi, Real* dlcu, Real* grad_gates, int64_t B,
                                 int64_t W, const Real* c, const Real* s, const Real* lcu_re, const Real* lcu_im,
                                 const Circuit& circ, int64_t b_begin, int64_t b_end) {
    using V = Vec<Real, T>;
    const int n = circ.n_qubits, dim = 1 << n, rows = 2 * dim, G = circ.n_gates;
    const int64_t N = B * W;
    std::vector<V> yb(rows), gb(rows), cb(G), sb(G), acc(G), dpsi_acc(rows);
    for (int64_t b = b_begin; b < b_end; ++b) {
        std::fill(dpsi_acc.begin(), dpsi_acc.end(), V{});
        for (int64_t w0 = 0; w0 < W; w0 += T) {
            const int nt = static_cast<int>(std::min<int64_t>(T, W - w0));
            const int64_t n0 = b * W + w0;
            load_coefficients<Real, T>(cb.data(), sb.data(), c, s, G, nt, [n0](int i) { return n0 + i; });
            load_tile<Real, T>(yb.data(), Y, rows, N, n0, nt);
            V wr, wi;
            lcu_lanes<Real, T>(lcu_re, lcu_im, w0, nt, wr, wi);
            V d_re = {}, d_im = {};
            for (int d = 0; d < dim; ++d) {
                const Real g_re = gout[d * B + b], g_im = gout[(dim + d) * B + b];
                const V y_re = yb[d], y_im = yb[dim + d];
                d_re += g_re * y_re + g_im * y_im;
                d_im += g_im * y_re - g_re * y_im;
                gb[d] = wr * g_re + wi * g_im;
                gb[dim + d] = wr * g_im - wi * g_re;
            }
            for (int i = 0; i < nt; ++i) {
                dlcu[2 * (n0 + i)] = d_re[i];
                dlcu[2 * (n0 + i) + 1] = d_im[i];
            }
            std::fill(acc.begin(), acc.end(), V{});
            run_adjoint_gates<Real, T>(yb.data(), gb.data(), circ, cb.data(), sb.data(), acc.data());
            store_angle_gradients<Real, T>(grad_gates, acc.data(), G, n0, nt);
            for (int r = 0; r < rows; ++r) dpsi_acc[r] += gb[r];  // padded lanes carry zero gradient
        }
        lane_sums<Real, T>(dpsi_acc.data(), rows, dpsi + b, B);
    }
}

template <typename Real, int T>
int run_lcu_power_adjoint(const Real* Y, const Real* gout, Real* dpsi, Real* dlcu, Real* grad_gates, int64_t B,
                          int64_t W, int n_qubits, const Real* c, const Real* s, int G, const int32_t* kind,
                          const int32_t* wire0, const int32_t* wire1, const Real* lcu_re, const Real* lcu_im,
                          int n_threads) {
    if (n_qubits < 1 || n_qubits > 16 || B < 0 || W < 0 || G < 0) return 1;
    const Circuit circ(n_qubits, G, kind, wire0, wire1);
    const int64_t work = 3 * ((W + T - 1) / T) * (int64_t(2) << n_qubits) * T * G;
    parallel_tiles(B, n_threads, work, [&](int64_t b, int64_t e) {
        lcu_power_adjoint_sequences<Real, T>(Y, gout, dpsi, dlcu, grad_gates, B, W, c, s, lcu_re, lcu_im, circ, b, e);
    });
    return 0;
}

// The measurement that ends the model, for one unnormalised state (real rows, then imaginary):
// postselection = <psi|psi>; psi / sqrt(postselection) (at least 1e-12) goes through the
// feed-forward unitary F, given transposed (ff = [Re F^T; Im F^T], each [dim][dim], so the
// matrix-vector product runs along contiguous rows), and features receives <X_q> for every
// qubit, then <Y_q>, then <Z_q> (qubit 0 the most significant bit), as
// quixer.model.pauli_expectations.
template <typename Real>
void measure(const Real* psi, const Real* ff, int n, Real* features, Real* postselection) {
    const int dim = 1 << n;
    Real norm2 = 0;
    for (int r = 0; r < 2 * dim; ++r) norm2 += psi[r] * psi[r];
    *postselection = norm2;
    const Real scale = Real(1) / std::max(std::sqrt(norm2), Real(1e-12));
    std::vector<Real> re(dim, Real(0)), im(dim, Real(0));
    const Real *ft_re = ff, *ft_im = ff + dim * dim;
    for (int j = 0; j < dim; ++j) {
        const Real pr = psi[j] * scale, pi = psi[dim + j] * scale;
        const Real *ar = ft_re + j * dim, *ai = ft_im + j * dim;
        for (int i = 0; i < dim; ++i) {
            re[i] += ar[i] * pr - ai[i] * pi;
            im[i] += ar[i] * pi + ai[i] * pr;
        }
    }
    for (int q = 0; q < n; ++q) {
        const int m = 1 << (n - 1 - q);
        Real x = 0, y = 0, z = 0;
        for (int j = 0; j < dim; ++j) {
            const Real p = re[j] * re[j] + im[j] * im[j];
            if (j & m) {
                z -= p;
                continue;
            }
            z += p;
            const int k = j | m;  // conj(a) b with a = psi_j, b = psi_k
            x += re[j] * re[k] + im[j] * im[k];
            y += re[j] * im[k] - im[j] * re[k];
        }
        features[q] = 2 * x;
        features[n + q] = 2 * y;
        features[2 * n + q] = z;
    }
}

// The whole eval-mode QSVT state for B sequences of W token ids, from per-vocabulary data:
// half-angle cosines and sines cos_v/sin_v [V][G] and first columns first [V][2 dim] (U_v |0>).
// state_b = sum_k poly[k] M_b^k |0> with M_b = sum_w b_w U_{ids[b,w]}; M_b |0> is the LCU sum
// of first columns, each further power applies the token circuits as lcu_power_sequences does.
// Writes state [B][2 dim]. poly holds the degree + 1 coefficients, already divided by ||c||_1.
template <typename Real, int T>
void qsvt_eval_sequences(const int64_t* ids, Real* state, int64_t W, const Real* cos_v, const Real* sin_v,
                         const Real* first, const Real* lcu_re, const Real* lcu_im, const Real* poly, int degree,
                         const Real* ff, Real* features, Real* postselection, const Circuit& circ, int64_t b_begin,
                         int64_t b_end) {
    using V = Vec<Real, T>;
    const int n = circ.n_qubits, dim = 1 << n, rows = 2 * dim, G = circ.n_gates;
    const int64_t n_tiles = (W + T - 1) / T;
    std::vector<V> buf(rows), cb(n_tiles * G), sb(n_tiles * G), acc(rows);
    std::vector<Real> psi(rows), total(rows);
    for (int64_t b = b_begin; b < b_end; ++b) {
        const int64_t* tok = ids + b * W;
        std::fill(total.begin(), total.end(), Real(0));
        total[0] = poly[0];
        std::fill(psi.begin(), psi.end(), Real(0));  // M |0>: LCU sum of the first columns
        for (int64_t w = 0; w < W; ++w) {
            const Real* col = first + tok[w] * rows;
            const Real wr = lcu_re[w], wi = lcu_im[w];
            for (int d = 0; d < dim; ++d) {
                psi[d] += wr * col[d] - wi * col[dim + d];
                psi[dim + d] += wr * col[dim + d] + wi * col[d];
            }
        }
        if (degree > 1) {  // this sequence's gate coefficients, gathered once for all powers
            for (int64_t w0 = 0, tile = 0; w0 < W; w0 += T, ++tile) {
                const int nt = static_cast<int>(std::min<int64_t>(T, W - w0));
                load_coefficients<Real, T>(cb.data() + tile * G, sb.data() + tile * G, cos_v, sin_v, G, nt,
                                           [tok, w0](int i) { return tok[w0 + i]; });
            }
        }
        for (int k = 1; k <= degree; ++k) {
            if (k > 1) {  // psi <- M psi
                std::fill(acc.begin(), acc.end(), V{});
                for (int64_t w0 = 0, tile = 0; w0 < W; w0 += T, ++tile) {
                    const int nt = static_cast<int>(std::min<int64_t>(T, W - w0));
                    broadcast_tile<Real, T>(buf.data(), psi.data(), 1, rows);
                    run_gates<Real, T>(buf.data(), circ, cb.data() + tile * G, sb.data() + tile * G);
                    V wr, wi;
                    lcu_lanes<Real, T>(lcu_re, lcu_im, w0, nt, wr, wi);
                    accumulate_lcu<Real, T>(acc.data(), buf.data(), wr, wi, dim);
                }
                lane_sums<Real, T>(acc.data(), rows, psi.data(), 1);
            }
            for (int r = 0; r < rows; ++r) total[r] += poly[k] * psi[r];
        }
        std::copy(total.begin(), total.end(), state + b * rows);
        if (ff) measure(total.data(), ff, n, features + b * 3 * n, postselection + b);
    }
}

template <typename Real, int T>
int run_qsvt_eval(const int64_t* ids, Real* state, int64_t B, int64_t W, int64_t n_vocab, int n_qubits,
                  const Real* cos_v, const Real* sin_v, int G, const int32_t* kind, const int32_t* wire0,
                  const int32_t* wire1, const Real* first, const Real* lcu_re, const Real* lcu_im, const Real* poly,
                  int degree, const Real* ff, Real* features, Real* postselection, int n_threads) {
    if (n_qubits < 1 || n_qubits > 16 || B < 0 || W < 0 || G < 0 || degree < 0) return 1;
    for (int64_t i = 0; i < B * W; ++i)
        if (ids[i] < 0 || ids[i] >= n_vocab) return 2;
    const Circuit circ(n_qubits, G, kind, wire0, wire1);
    const int64_t work = std::max(0, degree - 1) * ((W + T - 1) / T) * (int64_t(2) << n_qubits) * T * G;
    parallel_tiles(B, n_threads, work, [&](int64_t b, int64_t e) {
        qsvt_eval_sequences<Real, T>(ids, state, W, cos_v, sin_v, first, lcu_re, lcu_im, poly, degree, ff, features,
                                     postselection, circ, b, e);
    });
    return 0;
}

template <typename Real, int T>
int run_lcu_power(const Real* psi, Real* out, Real* Y, int64_t B, int64_t W, int n_qubits, const Real* c,
                  const Real* s, int G, const int32_t* kind, const int32_t* wire0, const int32_t* wire1,
                  const Real* lcu_re, const Real* lcu_im, int n_threads) {
    if (n_qubits < 1 || n_qubits > 16 || B < 0 || W < 0 || G < 0) return 1;
    const Circuit circ(n_qubits, G, kind, wire0, wire1);
    const int64_t work = ((W + T - 1) / T) * (int64_t(2) << n_qubits) * T * G;
    parallel_tiles(B, n_threads, work, [&](int64_t b, int64_t e) {
        lcu_power_sequences<Real, T>(psi, out, Y, B, W, c, s, lcu_re, lcu_im, circ, b, e);
    });
    return 0;
}

// SplitMix64's output function: a counter-based generator (value i of stream `seed` is
// mix64(seed + (i + 1) * golden)), so the mask does not depend on how the work is split.
inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// mask[i] = scale where the i-th 32-bit uniform of stream `seed` is below `threshold` (out of 2^32), else 0.
template <typename Real>
void dropout_mask(Real* mask, int64_t n, uint64_t seed, uint64_t threshold, Real scale, int n_threads) {
    constexpr int64_t kChunk = 4096;  // pairs of elements per work item
    const int64_t pairs = (n + 1) / 2, n_chunks = (pairs + kChunk - 1) / kChunk;
    parallel_tiles(n_chunks, n_threads, 8 * kChunk, [&](int64_t b, int64_t e) {
        const int64_t end = std::min(pairs, e * kChunk);
        for (int64_t j = b * kChunk; j < end; ++j) {
            const uint64_t r = mix64(seed + static_cast<uint64_t>(j + 1) * 0x9e3779b97f4a7c15ULL);
            mask[2 * j] = (r & 0xffffffffULL) < threshold ? scale : Real(0);
            if (2 * j + 1 < n) mask[2 * j + 1] = (r >> 32) < threshold ? scale : Real(0);
        }
    });
}

}  // namespace

extern "C" {

int qx_abi_version() { return 1; }

int qx_lcu_power_f32(const float* psi, float* out, float* Y, int64_t B, int64_t W, int n_qubits, const float* c,
                     const float* s, int G, const int32_t* kind, const int32_t* wire0, const int32_t* wire1,
                     const float* lcu_re, const float* lcu_im, int n_threads) {
    return run_lcu_power<float, 8>(psi, out, Y, B, W, n_qubits, c, s, G, kind, wire0, wire1, lcu_re, lcu_im, n_threads);
}

int qx_lcu_power_f64(const double* psi, double* out, double* Y, int64_t B, int64_t W, int n_qubits, const double* c,
                     const double* s, int G, const int32_t* kind, const int32_t* wire0, const int32_t* wire1,
                     const double* lcu_re, const double* lcu_im, int n_threads) {
    return run_lcu_power<double, 4>(psi, out, Y, B, W, n_qubits, c, s, G, kind, wire0, wire1, lcu_re, lcu_im,
                                    n_threads);
}

int qx_lcu_power_adjoint_f32(const float* Y, const float* gout, float* dpsi, float* dlcu, float* grad_gates,
                             int64_t B, int64_t W, int n_qubits, const float* c, const float* s, int G,
                             const int32_t* kind, const int32_t* wire0, const int32_t* wire1, const float* lcu_re,
                             const float* lcu_im, int n_threads) {
    return run_lcu_power_adjoint<float, 8>(Y, gout, dpsi, dlcu, grad_gates, B, W, n_qubits, c, s, G, kind, wire0,
                                           wire1, lcu_re, lcu_im, n_threads);
}

int qx_lcu_power_adjoint_f64(const double* Y, const double* gout, double* dpsi, double* dlcu, double* grad_gates,
                             int64_t B, int64_t W, int n_qubits, const double* c, const double* s, int G,
                             const int32_t* kind, const int32_t* wire0, const int32_t* wire1, const double* lcu_re,
                             const double* lcu_im, int n_threads) {
    return run_lcu_power_adjoint<double, 4>(Y, gout, dpsi, dlcu, grad_gates, B, W, n_qubits, c, s, G, kind, wire0,
                                            wire1, lcu_re, lcu_im, n_threads);
}

int qx_qsvt_eval_f32(const int64_t* ids, float* state, int64_t B, int64_t W, int64_t n_vocab, int n_qubits,
                     const float* cos_v, const float* sin_v, int G, const int32_t* kind, const int32_t* wire0,
                     const int32_t* wire1, const float* first, const float* lcu_re, const float* lcu_im,
                     const float* poly, int degree, const float* ff, float* features, float* postselection,
                     int n_threads) {
    return run_qsvt_eval<float, 8>(ids, state, B, W, n_vocab, n_qubits, cos_v, sin_v, G, kind, wire0, wire1, first,
                                   lcu_re, lcu_im, poly, degree, ff, features, postselection, n_threads);
}

int qx_qsvt_eval_f64(const int64_t* ids, double* state, int64_t B, int64_t W, int64_t n_vocab, int n_qubits,
                     const double* cos_v, const double* sin_v, int G, const int32_t* kind, const int32_t* wire0,
                     const int32_t* wire1, const double* first, const double* lcu_re, const double* lcu_im,
                     const double* poly, int degree, const double* ff, double* features, double* postselection,
                     int n_threads) {
    return run_qsvt_eval<double, 4>(ids, state, B, W, n_vocab, n_qubits, cos_v, sin_v, G, kind, wire0, wire1, first,
                                    lcu_re, lcu_im, poly, degree, ff, features, postselection, n_threads);
}

void qx_dropout_mask_f32(float* mask, int64_t n, uint64_t seed, uint64_t threshold, float scale, int n_threads) {
    dropout_mask<float>(mask, n, seed, threshold, scale, n_threads);
}

void qx_dropout_mask_f64(double* mask, int64_t n, uint64_t seed, uint64_t threshold, double scale, int n_threads) {
    dropout_mask<double>(mask, n, seed, threshold, scale, n_threads);
}

int qx_forward_f32(const float* in, float* out, int64_t L, int n_qubits, int64_t N, const float* c, const float* s,
                   int G, const int32_t* kind, const int32_t* wire0, const int32_t* wire1, int n_threads) {
    return run_forward<float, 8>(in, out, L, n_qubits, N, c, s, G, kind, wire0, wire1, n_threads);
}

int qx_forward_f64(const double* in, double* out, int64_t L, int n_qubits, int64_t N, const double* c,
                   const double* s, int G, const int32_t* kind, const int32_t* wire0, const int32_t* wire1,
                   int n_threads) {
    return run_forward<double, 4>(in, out, L, n_qubits, N, c, s, G, kind, wire0, wire1, n_threads);
}

int qx_adjoint_f32(const float* y, const float* g, float* grad_in, float* grad_gates, int64_t L, int n_qubits,
                   int64_t N, const float* c, const float* s, int G, const int32_t* kind, const int32_t* wire0,
                   const int32_t* wire1, int n_threads) {
    return run_adjoint<float, 8>(y, g, grad_in, grad_gates, L, n_qubits, N, c, s, G, kind, wire0, wire1, n_threads);
}

int qx_adjoint_f64(const double* y, const double* g, double* grad_in, double* grad_gates, int64_t L, int n_qubits,
                   int64_t N, const double* c, const double* s, int G, const int32_t* kind, const int32_t* wire0,
                   const int32_t* wire1, int n_threads) {
    return run_adjoint<double, 4>(y, g, grad_in, grad_gates, L, n_qubits, N, c, s, G, kind, wire0, wire1, n_threads);
}

}  // extern "C"
