#pragma once
// CPU reference of attention (ops/attention.h), the ground truth of the CUDA kernels: double
// math for every dtype, the scores of one query row at a time (never an L x L matrix), results
// rounded once to the output dtype. Every output row or key row comes from one thread in a fixed
// order, so results do not depend on the thread count. Inputs may have any strides; the caller
// has checked shapes and dtypes.
#include <vector>

#include "core/tensor.h"

namespace scanline::cpu {

struct AttentionForward {
  Tensor out;  // (batch, L, heads, headdim), q's dtype
  Tensor lse;  // (batch, heads, L): log Σ_j exp(s_ij); f32 (f64 for f64 inputs)
};

struct AttentionGrads {
  Tensor dq, dk, dv;  // shapes and dtypes of q, k, v
};

// scale is the resolved one (> 0).
AttentionForward attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale);

// lse: the forward's. grad_out: (batch, L, heads, headdim), any strides. The probabilities are
// recomputed as exp(s_ij - lse_i); D_i = Σ_j p_ij dp_ij (the exact form of rowsum(dO ∘ O)).
AttentionGrads attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lse,
                                  const Tensor& grad_out, bool causal, double scale);

namespace attention_detail {

// x: (batch, L, heads, headdim), any strides and floating dtype -> its values in double, ordered
// (batch, heads, L, headdim) so that one head's rows are contiguous.
std::vector<double> gather_bhld(const Tensor& x);

// Σ a[i] b[i] with four partial sums (fixed order).
inline double dot(const double* a, const double* b, int64_t n) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

}  // namespace attention_detail

}  // namespace scanline::cpu
