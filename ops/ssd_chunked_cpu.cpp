// The chunked SSD algorithm (Dao & Gu 2024, section 6) on CPU in double: the decomposition the
// CUDA kernels implement, written as the same four passes over whole tensors so each pass's
// output can serve as a kernel's reference. Within chunk c (steps s = c·Q .. s + Q − 1, the last
// chunk possibly short) with a_i = Σ_{j<=i} Δ_j A (the cumulative log-decay):
//   state entering chunk c+1:  H_{c+1} = exp(a_last) H_c + Σ_j exp(a_last − a_j) Δ_j x_j ⊗ B_j
//   y_i = exp(a_i) C_i·H_c  +  Σ_{j<=i} (C_i·B_j) exp(a_i − a_j) Δ_j x_j  +  D x_i
// which unrolls the recurrence h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t ⊗ B_t exactly.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "ops/ssd_cpu.h"

namespace scanline::cpu {
namespace {

using ssd_detail::cast;
using ssd_detail::Dense;
using ssd_detail::sigmoid;

struct Chunking {
  int64_t Q, n_chunks;
  int64_t length(int64_t c, int64_t L) const { return std::min(Q, L - c * Q); }
};

// (1) Δ (batch, heads, L) and the per-chunk cumulative Σ Δ·A (batch, heads, n_chunks, Q), which
// stays constant past the end of a short last chunk (Δ counts as 0 there).
void chunk_cumsum(const Dense& in, const Chunking& ck, double* delta, double* cum) {
  parallel_for(in.batch * in.heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / in.heads, h = row % in.heads;
      for (int64_t c = 0; c < ck.n_chunks; ++c) {
        double acc = 0.0;
        for (int64_t i = 0; i < ck.Q; ++i) {
          const int64_t t = c * ck.Q + i;
          if (t < in.L) {
            delta[row * in.L + t] = in.step(in.raw_dt(b, t, h));
            acc += delta[row * in.L + t] * in.pA[h];
          }
          cum[(row * ck.n_chunks + c) * ck.Q + i] = acc;
        }
      }
    }
  });
}

// (2) Each chunk's own contribution to the state at its end, from a zero state:
// S_c = Σ_j exp(a_last − a_j) Δ_j x_j ⊗ B_j, (batch, n_chunks, heads, headdim, N).
void chunk_states(const Dense& in, const Chunking& ck, const double* delta, const double* cum, double* S) {
  const int64_t P = in.headdim, N = in.N, H = in.heads;
  parallel_for(in.batch * ck.n_chunks * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (ck.n_chunks * H), c = task / H % ck.n_chunks, h = task % H;
      const double* a = cum + ((b * H + h) * ck.n_chunks + c) * ck.Q;
      double* out = S + task * P * N;
      std::fill(out, out + P * N, 0.0);
      for (int64_t j = 0; j < ck.length(c, in.L); ++j) {
        const int64_t t = c * ck.Q + j;
        const double w = std::exp(a[ck.Q - 1] - a[j]) * delta[(b * H + h) * in.L + t];
        const double* x = in.px + in.x_index(b, t, h);
        const double* B = in.pB + in.bc_index(b, t, h);
        for (int64_t p = 0; p < P; ++p)
          for (int64_t n = 0; n < N; ++n) out[p * N + n] += w * x[p] * B[n];
      }
    }
  });
}

// (3) The scan over chunks: the state entering each chunk (batch, n_chunks, heads, headdim, N)
// and the final state, H_{c+1} = exp(a_last(c)) H_c + S_c from H_0 = initial_state.
void state_passing(const Dense& in, const Chunking& ck, const double* cum, const double* S, double* entering,
                   double* final_state) {
  const int64_t size = in.headdim * in.N, H = in.heads;
  parallel_for(in.batch * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, h = row % H;
      double* state = final_state + in.state_index(b, h);
      for (int64_t i = 0; i < size; ++i) state[i] = in.ph0 ? in.ph0[in.state_index(b, h) + i] : 0.0;
      for (int64_t c = 0; c < ck.n_chunks; ++c) {
        const int64_t slot = ((b * ck.n_chunks + c) * H + h) * size;
        std::copy(state, state + size, entering + slot);
        const double decay = std::exp(cum[(row * ck.n_chunks + c) * ck.Q + ck.Q - 1]);
        for (int64_t i = 0; i < size; ++i) state[i] = decay * state[i] + S[slot + i];
      }
    }
  });
}

// (4a) C_i·B_j for j <= i of every chunk and group: (batch, n_chunks, ngroups, Q, Q), shared by
// the group's heads (zero above the diagonal and past a short chunk's end).
void chunk_cb(const Dense& in, const Chunking& ck, double* CB) {
  const int64_t G = in.ngroups, N = in.N, Q = ck.Q;
  parallel_for(in.batch * ck.n_chunks * G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (ck.n_chunks * G), c = task / G % ck.n_chunks, g = task % G;
      double* out = CB + task * Q * Q;
      std::fill(out, out + Q * Q, 0.0);
      const int64_t len = ck.length(c, in.L);
      for (int64_t i = 0; i < len; ++i)
        for (int64_t j = 0; j <= i; ++j) {
          const double* Ci = in.pC + ((b * in.L + c * Q + i) * G + g) * N;
          const double* Bj = in.pB + ((b * in.L + c * Q + j) * G + g) * N;
          double dot = 0.0;
          for (int64_t n = 0; n < N; ++n) dot += Ci[n] * Bj[n];
          out[i * Q + j] = dot;
        }
    }
  });
}

// (4b) The chunk's outputs: the incoming state's part exp(a_i) C_i·H_c, the intra-chunk part
// Σ_{j<=i} CB[i, j] exp(a_i − a_j) Δ_j x_j, the skip D x_i, then the gate.
void chunk_scan(const Dense& in, const Chunking& ck, const double* delta, const double* cum, const double* CB,
                const double* entering, double* y) {
  const int64_t P = in.headdim, N = in.N, H = in.heads, Q = ck.Q;
  parallel_for(in.batch * ck.n_chunks * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (ck.n_chunks * H), c = task / H % ck.n_chunks, h = task % H;
      const double* a = cum + ((b * H + h) * ck.n_chunks + c) * Q;
      const double* cb = CB + ((b * ck.n_chunks + c) * in.ngroups + h / in.per_group) * Q * Q;
      const double* state = entering + task * P * N;
      for (int64_t i = 0; i < ck.length(c, in.L); ++i) {
        const int64_t t = c * Q + i, xi = in.x_index(b, t, h);
        const double* C = in.pC + in.bc_index(b, t, h);
        const double incoming = std::exp(a[i]);
        for (int64_t p = 0; p < P; ++p) {
          double from_state = 0.0;
          for (int64_t n = 0; n < N; ++n) from_state += C[n] * state[p * N + n];
          double intra = 0.0;
          for (int64_t j = 0; j <= i; ++j)
            intra += cb[i * Q + j] * std::exp(a[i] - a[j]) * delta[(b * H + h) * in.L + c * Q + j] *
                     in.px[in.x_index(b, c * Q + j, h) + p];
          double out = incoming * from_state + intra + in.skip(h, p) * in.px[xi + p];
          if (in.pz) out *= in.pz[xi + p] * sigmoid(in.pz[xi + p]);
          y[xi + p] = out;
        }
      }
    }
  });
}

}  // namespace

SsdChunkedResult ssd_chunked_forward(const SsdArgs& args, int64_t chunk_size) {
  SCANLINE_CHECK(chunk_size >= 1, "ssd_chunked_forward: expected chunk_size >= 1 but found ", chunk_size);
  const Dense in(args);
  const Chunking ck{chunk_size, (in.L + chunk_size - 1) / chunk_size};
  const int64_t P = in.headdim, N = in.N, H = in.heads;
  const TensorOptions f64{.dtype = DType::f64};
  std::vector<double> delta(size_t(in.batch * H * in.L));
  Tensor cum = empty({in.batch, H, ck.n_chunks, ck.Q}, f64);
  std::vector<double> own(size_t(in.batch * ck.n_chunks * H * P * N));
  Tensor entering = empty({in.batch, ck.n_chunks, H, P, N}, f64);
  Tensor final_state = empty({in.batch, H, P, N}, f64);
  std::vector<double> CB(size_t(in.batch * ck.n_chunks * in.ngroups * ck.Q * ck.Q));
  Tensor y = empty(args.x.shape(), f64);

  chunk_cumsum(in, ck, delta.data(), cum.data_ptr<double>());
  chunk_states(in, ck, delta.data(), cum.data_ptr<double>(), own.data());
  state_passing(in, ck, cum.data_ptr<double>(), own.data(), entering.data_ptr<double>(),
                final_state.data_ptr<double>());
  chunk_cb(in, ck, CB.data());
  chunk_scan(in, ck, delta.data(), cum.data_ptr<double>(), CB.data(), entering.data_ptr<double>(),
             y.data_ptr<double>());

  const DType param = args.A.dtype();
  return {cast(y, args.x.dtype()), cast(final_state, param), cast(cum, param), cast(entering, param)};
}

}  // namespace scanline::cpu
