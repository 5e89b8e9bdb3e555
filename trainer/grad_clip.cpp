#include "trainer/grad_clip.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <type_traits>
#include <utility>

#include "autograd/grad_mode.h"
#include "core/parallel.h"
#include "ops/concat.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/views.h"

namespace scanline {
namespace {

constexpr int64_t kBlock = 1 << 16;  // elements a CPU partial sum covers; fixed, so sums are reproducible

// Sum of squares of a CPU tensor in double: one partial per fixed block, added in block order.
double cpu_sum_of_squares(const Tensor& g_in) {
  const Tensor g = as_contiguous(g_in);
  const int64_t n = g.numel();
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(size_t(blocks), 0.0);
  dispatch_floating(g.dtype(), "global_grad_norm", [&]<typename T>() {
    const T* data = g.data_ptr<T>();
    parallel_for(blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        double s = 0.0;
        const int64_t stop = std::min(n, (b + 1) * kBlock);
        for (int64_t i = b * kBlock; i < stop; ++i) {
          double x;
          if constexpr (std::is_same_v<T, double>) x = data[i];
          else x = double(float(data[i]));
          s += x * x;
        }
        partial[size_t(b)] = s;
      }
    });
  });
  double total = 0.0;
  for (double s : partial) total += s;
  return total;
}

// A CUDA gradient's sum of squares as a one-element tensor on its device: squares summed in f32
// (f64 for f64 gradients; bf16/f16 are widened to f32 first).
Tensor device_sum_of_squares(const Tensor& g) {
  const Tensor wide = g.dtype() == DType::f64 || g.dtype() == DType::f32 ? g : to_dtype(g, DType::f32);
  return reshape(sum(square(wide)), {1});
}

}  // namespace

double global_grad_norm(const std::vector<Tensor>& params) {
  NoGradGuard no_grad;
  double total = 0.0;
  // Per (CUDA device index, sum dtype), in parameter order.
  std::map<std::pair<int, DType>, std::vector<Tensor>> device_sums;
  for (const Tensor& p : params) {
    SCANLINE_CHECK(p.defined(), "global_grad_norm: a parameter is undefined");
    const Tensor g = p.grad();
    if (!g.defined() || g.numel() == 0) continue;
    SCANLINE_CHECK(is_floating(g.dtype()), "global_grad_norm: expected a floating gradient, found ", describe(g));
    if (g.device().is_cpu()) total += cpu_sum_of_squares(g);
    else {
      Tensor s = device_sum_of_squares(g);
      device_sums[{g.device().index, s.dtype()}].push_back(s);
    }
  }
  // One host read per device (and sum dtype) for all of its tensors' sums, added in double.
  for (const auto& [device, sums] : device_sums)
    for (double s : cat(sums).to_double_vector()) total += s;
  return std::sqrt(total);
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  SCANLINE_CHECK(std::isfinite(max_norm) && max_norm > 0.0, "clip_grad_norm: max_norm must be positive, found ",
                 max_norm);
  const double norm = global_grad_norm(params);
  if (!std::isfinite(norm)) return norm;
  const double coefficient = max_norm / (norm + 1e-6);
  if (coefficient >= 1.0) return norm;
  NoGradGuard no_grad;
  std::set<const TensorImpl*> scaled;  // a gradient shared by two entries is scaled once
  for (const Tensor& p : params) {
    const Tensor g = p.grad();
    if (!g.defined() || !scaled.insert(g.impl()).second) continue;
    // Narrow gradients are scaled in f32 so the coefficient is not rounded to their precision.
    const bool wide = g.dtype() == DType::f64 || g.dtype() == DType::f32;
    copy_into(g, mul(wide ? g : to_dtype(g, DType::f32), coefficient));
  }
  return norm;
}

}  // namespace scanline
