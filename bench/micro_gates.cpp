// Cycles per gate of the fused CPU kernel on one tile held in L1 cache (no memory traffic, one
// thread), against the floating-point minimum, to tell how far the gate loops are from the
// machine's peak. Build and run from the repository root:
//   g++ -O3 -march=native -std=c++17 -ffp-contract=fast -fopenmp bench/micro_gates.cpp -o /tmp/micro_gates
//   /tmp/micro_gates [GHz]      (the clock used to turn seconds into cycles; default 2.5)
// The minimum counts one 8-wide multiply or FMA per cycle (two 128-bit FMA pipes, as on AMD
// Zen 1): an RY pair needs 4, a CRX quad 8, the paper's circuit (6 qubits, 4 layers) 18,432.
#include "../quixer/statevector_kernel.cpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace {

using V = Vec<float, 8>;

double seconds_per_run(const Circuit& circ, std::vector<V>& buf, const std::vector<V>& cb, const std::vector<V>& sb,
                       int reps) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) run_gates<float, 8>(buf.data(), circ, cb.data(), sb.data());
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

}  // namespace

int main(int argc, char** argv) {
    const double ghz = argc > 1 ? std::atof(argv[1]) : 2.5;
    const int n = 6, rows = 2 << n, reps = 20000;
    std::vector<int32_t> kind, wire0, wire1;  // ansatz 14, official order (quixer.model.ansatz14_gates)
    for (int layer = 0; layer < 4; ++layer) {
        for (int q = 0; q < n; ++q) { kind.push_back(kRY); wire0.push_back(q); wire1.push_back(q); }
        for (int q = n - 1; q >= 0; --q) { kind.push_back(kCRX); wire0.push_back(q); wire1.push_back((q + 1) % n); }
        for (int q = 0; q < n; ++q) { kind.push_back(kRY); wire0.push_back(q); wire1.push_back(q); }
        for (int i = 0; i < n; ++i) {
            const int q = i == 0 ? n - 1 : i - 1;
            kind.push_back(kCRX); wire0.push_back(q); wire1.push_back((q + n - 1) % n);
        }
    }
    const int G = static_cast<int>(kind.size());
    std::vector<V> buf(rows), cb(G), sb(G);
    for (int r = 0; r < rows; ++r) buf[r] = V{} + (r == 0 ? 1.0f : 0.0f);
    for (int k = 0; k < G; ++k)
        for (int i = 0; i < 8; ++i) {
            cb[k][i] = std::cos(0.1f * k + i);
            sb[k][i] = std::sin(0.1f * k + i);
        }
    const Circuit ansatz(n, G, kind.data(), wire0.data(), wire1.data());
    const double cycles = seconds_per_run(ansatz, buf, cb, sb, reps) * ghz * 1e9;
    std::printf("ansatz 14 (%d gates): %.0f cycles per tile of 8 instances (minimum 18432: %.0f %%)\n", G, cycles,
                18432 / cycles * 100);
    for (const int32_t k : {kRY, kCRX}) {  // circuits of one gate kind
        std::vector<int32_t> only(G, k), a(G), b(G);
        for (int g = 0; g < G; ++g) { a[g] = g % n; b[g] = (g + 1) % n; }
        const Circuit circ(n, G, only.data(), a.data(), b.data());
        const double per = seconds_per_run(circ, buf, cb, sb, reps) * ghz * 1e9 / (G * (k == kRY ? 64.0 : 16.0));
        std::printf("%s only: %.2f cycles per %s (minimum %d)\n", k == kRY ? "RY" : "CRX", per,
                    k == kRY ? "pair" : "quad", k == kRY ? 4 : 8);
    }
    std::printf("(checksum %g)\n", static_cast<double>(buf[1][0]));
    return 0;
}
