#include "ops/attention_decode_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/parallel.h"
#include "ops/attention_cpu.h"

namespace scanline::cpu {

Tensor attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& lengths,
                        double scale) {
  using attention_detail::dot;
  const int64_t B = q.shape()[0], H = q.shape()[1], D = q.shape()[2];
  const int64_t max_len = k_cache.shape()[1], KVH = k_cache.shape()[2], G = H / KVH;
  Tensor out = empty(q.shape(), q.options());
  if (out.numel() == 0) return out;
  // q as (batch, 1, heads, headdim) and the caches in (batch, kv_heads, max_len, headdim) order.
  const std::vector<double> Q = attention_detail::gather_bhld(as_strided(
      q, {B, 1, H, D}, {q.strides()[0], 0, q.strides()[1], q.strides()[2]}, q.offset()));
  const std::vector<double> K = attention_detail::gather_bhld(k_cache), V = attention_detail::gather_bhld(v_cache);
  const std::vector<int64_t> len = as_contiguous(lengths).to_vector<int64_t>();
  std::vector<double> O(size_t(B * H * D));
  parallel_for(B * H, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, max_len * D)), [&](int64_t begin, int64_t end) {
    std::vector<double> s(static_cast<size_t>(max_len));
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, h = row % H, n = len[size_t(b)];
      const double* qh = Q.data() + row * D;
      const double* Kg = K.data() + (b * KVH + h / G) * max_len * D;
      const double* Vg = V.data() + (b * KVH + h / G) * max_len * D;
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < n; ++j) m = std::max(m, s[size_t(j)] = scale * dot(qh, Kg + j * D, D));
      double total = 0.0;
      for (int64_t j = 0; j < n; ++j) total += (s[size_t(j)] = std::exp(s[size_t(j)] - m));
      double* o = O.data() + row * D;
      for (int64_t j = 0; j < n; ++j)
        for (int64_t c = 0; c < D; ++c) o[c] += s[size_t(j)] / total * Vg[j * D + c];
    }
  });
  dispatch_floating(out.dtype(), "attention_decode", [&]<typename T>() {
    T* p = out.data_ptr<T>();
    for (size_t i = 0; i < O.size(); ++i) p[i] = T(O[i]);
  });
  return out;
}

}  // namespace scanline::cpu
