#pragma once
// CPU references of ssd (ops/ssd.h), the ground truth of the CUDA kernels. Two forms:
//  - the plain recurrence (ssd_cpu.cpp), forward and backward: what the op runs on CPU;
//  - the chunked SSD algorithm (ssd_chunked_cpu.cpp), forward only: the decomposition the CUDA
//    kernels implement, kept on CPU so that it is tested against the recurrence without a GPU.
// Inputs are first copied to contiguous float64 and every result is computed in double, then
// rounded once to its dtype. Inputs may have any strides; the caller has checked shapes/dtypes.
//
// Determinism: the forwards give each output element to one task. The backward splits work into
// tasks of up to kSsdHeadsPerTask heads of one group and batch row; a task adds its heads' dB/dC
// contributions into its own partial buffer in head order; dA, dD and d dt_bias are kept per
// (batch, head) and summed over batch in order; the task partials are summed in task order. No
// result depends on the thread count.
#include <array>
#include <cstdint>
#include <utility>

#include "core/tensor.h"

namespace scanline::cpu {

// Heads of one group sharing a dB/dC partial buffer: bounds the partials' memory to
// batch · heads / 8 · L · N doubles while leaving batch · heads / 8 tasks to spread.
inline constexpr int64_t kSsdHeadsPerTask = 8;
// The backward keeps the state every kSsdSegment steps and recomputes one segment's states at a
// time, so its scratch is (L / kSsdSegment + kSsdSegment) · headdim · N doubles a thread rather
// than L · headdim · N.
inline constexpr int64_t kSsdSegment = 64;

struct SsdArgs {
  Tensor x, dt, A, B, C, D, z, dt_bias, initial_state;  // D ... initial_state optional
  bool dt_softplus = false;
};

// The gradients, one per input (undefined where not asked for or the input is undefined).
struct SsdGrads {
  Tensor x, dt, A, B, C, D, z, dt_bias, initial_state;
};

// The recurrence. Returns y (x's dtype) and final_state (A's dtype), both contiguous.
std::pair<Tensor, Tensor> ssd_forward(const SsdArgs& args);

// grad_y: (batch, L, heads, headdim) of x's dtype; grad_final_state: (batch, heads, headdim, N)
// of A's dtype; either may have any strides (zero strides included). needs[i] says whether the
// gradient of input i (in the order x, dt, A, B, C, D, z, dt_bias, initial_state) is wanted.
SsdGrads ssd_backward(const SsdArgs& args, const Tensor& grad_y, const Tensor& grad_final_state,
                      const std::array<bool, 9>& needs);

// The chunked algorithm's result, with the intermediates a chunked kernel produces (in A's
// dtype), so that kernels can be checked step by step.
struct SsdChunkedResult {
  Tensor y;              // (batch, L, heads, headdim), x's dtype
  Tensor final_state;    // (batch, heads, headdim, N)
  Tensor decay_cumsum;   // (batch, heads, n_chunks, chunk_size): Σ_{j<=i} Δ_j A within each chunk,
                         // constant past the end of a short last chunk
  Tensor chunk_states;   // (batch, n_chunks, heads, headdim, N): the state entering each chunk
};

// The SSD algorithm in chunks of chunk_size (>= 1) steps, n_chunks = ceil(L / chunk_size):
// (1) per-chunk cumulative sum of Δ·A; (2) each chunk's own final state from B, x and the decays,
// starting from zero; (3) the state passed across chunks (initial_state in, final_state out);
// (4) per chunk the quadratic part (C·Bᵀ masked by the decays) times Δ·x, plus the incoming
// state's contribution C·h, plus D·x, then the gate.
SsdChunkedResult ssd_chunked_forward(const SsdArgs& args, int64_t chunk_size);

namespace ssd_detail {

// The inputs of both references as dense f64 arrays plus the sizes; the tensors keep the copies
// alive. Layouts are the inputs' own: x, z (batch, L, heads, headdim); dt (batch, L, heads);
// B, C (batch, L, ngroups, N); states (batch, heads, headdim, N).
struct Dense {
  int64_t batch, L, heads, headdim, ngroups, N, per_group;
  bool softplus, D_per_channel;
  Tensor x, dt, z, A, D, bias, h0, B, C;
  const double *px, *pdt, *pz, *pA, *pD, *pbias, *ph0, *pB, *pC;

  explicit Dense(const SsdArgs& a);

  // x or z (or y) of (b, t, h): headdim values.
  int64_t x_index(int64_t b, int64_t t, int64_t h) const { return ((b * L + t) * heads + h) * headdim; }
  // B or C of the group head h reads at (b, t): N values.
  int64_t bc_index(int64_t b, int64_t t, int64_t h) const { return ((b * L + t) * ngroups + h / per_group) * N; }
  int64_t state_index(int64_t b, int64_t h) const { return (b * heads + h) * headdim * N; }
  // dt + bias at (b, t, h), before softplus; and Δ itself.
  double raw_dt(int64_t b, int64_t t, int64_t h) const {
    return pdt[(b * L + t) * heads + h] + (pbias ? pbias[h] : 0.0);
  }
  double step(double raw) const;
  double skip(int64_t h, int64_t p) const {  // D for channel p of head h (0 without D)
    return pD ? pD[D_per_channel ? h * headdim + p : h] : 0.0;
  }
};

double softplus(double x);
double sigmoid(double x);
// Rounds a f64 result to the dtype its input had (once, at the end).
Tensor cast(const Tensor& t, DType dtype);

}  // namespace ssd_detail
}  // namespace scanline::cpu
