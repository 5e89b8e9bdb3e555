#include "ops/attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/parallel.h"

namespace scanline::cpu {

namespace attention_detail {

std::vector<double> gather_bhld(const Tensor& x_in) {
  const Tensor x = as_contiguous(x_in);
  const int64_t B = x.shape()[0], L = x.shape()[1], H = x.shape()[2], D = x.shape()[3];
  std::vector<double> out(size_t(x.numel()));
  if (x.numel() == 0) return out;
  dispatch_floating(x.dtype(), "attention", [&]<typename T>() {
    const T* p = x.data_ptr<T>();
    parallel_for(B * L, std::max<int64_t>(1, 8192 / std::max<int64_t>(1, H * D)), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / L, t = r % L;
        for (int64_t h = 0; h < H; ++h)
          for (int64_t d = 0; d < D; ++d)
            out[size_t(((b * H + h) * L + t) * D + d)] = double(p[(r * H + h) * D + d]);
      }
    });
  });
  return out;
}

}  // namespace attention_detail

namespace {

using attention_detail::dot;
using attention_detail::gather_bhld;

// values in (batch, heads, L, headdim) order -> a contiguous (batch, L, heads, headdim) tensor.
Tensor scatter_blhd(const std::vector<double>& values, const Shape& shape, TensorOptions options) {
  Tensor out = empty(shape, options);
  const int64_t B = shape[0], L = shape[1], H = shape[2], D = shape[3];
  if (out.numel() == 0) return out;
  dispatch_floating(out.dtype(), "attention", [&]<typename T>() {
    T* p = out.data_ptr<T>();
    parallel_for(B * L, std::max<int64_t>(1, 8192 / std::max<int64_t>(1, H * D)), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / L, t = r % L;
        for (int64_t h = 0; h < H; ++h)
          for (int64_t d = 0; d < D; ++d) p[(r * H + h) * D + d] = T(values[size_t(((b * H + h) * L + t) * D + d)]);
      }
    });
  });
  return out;
}

struct Dims {
  int64_t B, L, H, KVH, D, G;
};

Dims dims_of(const Tensor& q, const Tensor& k) {
  const int64_t H = q.shape()[2], KVH = k.shape()[2];
  return {q.shape()[0], q.shape()[1], H, KVH, q.shape()[3], H / KVH};
}

// Rows (query rows or key rows) per parallel_for chunk: about 2^18 multiply-adds each.
int64_t row_grain(const Dims& d) { return std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, d.L * d.D)); }

}  // namespace

AttentionForward attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale) {
  const Dims d = dims_of(q, k);
  const DType lse_dtype = q.dtype() == DType::f64 ? DType::f64 : DType::f32;
  AttentionForward r;
  r.lse = empty({d.B, d.H, d.L}, {.dtype = lse_dtype});
  if (q.numel() == 0) {
    r.out = empty(q.shape(), q.options());
    return r;
  }
  const std::vector<double> Q = gather_bhld(q), K = gather_bhld(k), V = gather_bhld(v);
  std::vector<double> O(Q.size()), lse(size_t(d.B * d.H * d.L));
  parallel_for(d.B * d.H * d.L, row_grain(d), [&](int64_t begin, int64_t end) {
    std::vector<double> s(size_t(d.L));
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bh = row / d.L, i = row % d.L, b = bh / d.H, h = bh % d.H, g = h / d.G;
      const double* qi = Q.data() + row * d.D;
      const double* Kg = K.data() + (b * d.KVH + g) * d.L * d.D;
      const double* Vg = V.data() + (b * d.KVH + g) * d.L * d.D;
      const int64_t n = causal ? i + 1 : d.L;
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < n; ++j) {
        s[size_t(j)] = scale * dot(qi, Kg + j * d.D, d.D);
        m = std::max(m, s[size_t(j)]);
      }
      double total = 0.0;
      for (int64_t j = 0; j < n; ++j) total += (s[size_t(j)] = std::exp(s[size_t(j)] - m));
      double* oi = O.data() + row * d.D;
      for (int64_t j = 0; j < n; ++j) {
        const double p = s[size_t(j)] / total;
        const double* vj = Vg + j * d.D;
        for (int64_t c = 0; c < d.D; ++c) oi[c] += p * vj[c];
      }
      lse[size_t(row)] = m + std::log(total);
    }
  });
  r.out = scatter_blhd(O, q.shape(), q.options());
  dispatch_floating(lse_dtype, "attention", [&]<typename T>() {
    T* p = r.lse.data_ptr<T>();
    for (size_t i = 0; i < lse.size(); ++i) p[i] = T(lse[i]);
  });
  return r;
}

AttentionGrads attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lse_t,
                                  const Tensor& grad_out, bool causal, double scale) {
  const Dims d = dims_of(q, k);
  if (q.numel() == 0 || k.numel() == 0)
    return {zeros(q.shape(), q.options()), zeros(k.shape(), k.options()), zeros(v.shape(), v.options())};
  const std::vector<double> Q = gather_bhld(q), K = gather_bhld(k), V = gather_bhld(v), dO = gather_bhld(grad_out);
  const std::vector<double> lse = as_contiguous(lse_t).to_double_vector();
  std::vector<double> dQ(Q.size()), dK(K.size()), dV(V.size()), Drow(size_t(d.B * d.H * d.L));

  // Pass 1, one query row a task: p_ij, dp_ij = <dO_i, v_j>, D_i = Σ_j p_ij dp_ij, and
  // dq_i = scale Σ_j p_ij (dp_ij - D_i) k_j.
  parallel_for(d.B * d.H * d.L, row_grain(d), [&](int64_t begin, int64_t end) {
    std::vector<double> p(size_t(d.L)), dp(size_t(d.L));
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bh = row / d.L, i = row % d.L, b = bh / d.H, h = bh % d.H, g = h / d.G;
      const double* qi = Q.data() + row * d.D;
      const double* doi = dO.data() + row * d.D;
      const double* Kg = K.data() + (b * d.KVH + g) * d.L * d.D;
      const double* Vg = V.data() + (b * d.KVH + g) * d.L * d.D;
      const int64_t n = causal ? i + 1 : d.L;
      double Di = 0.0;
      for (int64_t j = 0; j < n; ++j) {
        p[size_t(j)] = std::exp(scale * dot(qi, Kg + j * d.D, d.D) - lse[size_t(row)]);
        dp[size_t(j)] = dot(doi, Vg + j * d.D, d.D);
        Di += p[size_t(j)] * dp[size_t(j)];
      }
      Drow[size_t(row)] = Di;
      double* dqi = dQ.data() + row * d.D;
      for (int64_t j = 0; j < n; ++j) {
        const double ds = scale * p[size_t(j)] * (dp[size_t(j)] - Di);
        const double* kj = Kg + j * d.D;
        for (int64_t c = 0; c < d.D; ++c) dqi[c] += ds * kj[c];
      }
    }
  });

  // Pass 2, one key row of a kv head a task, summing over the group's query heads and rows in
  // order: dv_j = Σ p_ij dO_i, dk_j = scale Σ p_ij (dp_ij - D_i) q_i.
  parallel_for(d.B * d.KVH * d.L, row_grain(d), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bg = row / d.L, j = row % d.L, b = bg / d.KVH, g = bg % d.KVH;
      const double* kj = K.data() + row * d.D;
      const double* vj = V.data() + row * d.D;
      double* dkj = dK.data() + row * d.D;
      double* dvj = dV.data() + row * d.D;
      for (int64_t hh = 0; hh < d.G; ++hh) {
        const int64_t bh = b * d.H + g * d.G + hh;
        for (int64_t i = causal ? j : 0; i < d.L; ++i) {
          const int64_t qrow = bh * d.L + i;
          const double* qi = Q.data() + qrow * d.D;
          const double* doi = dO.data() + qrow * d.D;
          const double p = std::exp(scale * dot(qi, kj, d.D) - lse[size_t(qrow)]);
          const double ds = scale * p * (dot(doi, vj, d.D) - Drow[size_t(qrow)]);
          for (int64_t c = 0; c < d.D; ++c) {
            dvj[c] += p * doi[c];
            dkj[c] += ds * qi[c];
          }
        }
      }
    }
  });
  return {scatter_blhd(dQ, q.shape(), q.options()), scatter_blhd(dK, k.shape(), k.options()),
          scatter_blhd(dV, v.shape(), v.options())};
}

}  // namespace scanline::cpu
