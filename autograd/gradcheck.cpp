#include "autograd/gradcheck.h"

#include <cmath>
#include <sstream>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "core/random.h"

namespace scanline::autograd {
namespace {

double dot(const Tensor& out, const std::vector<double>& v) {
  std::vector<double> values = out.to_double_vector();
  double s = 0.0;
  for (size_t i = 0; i < values.size(); ++i) s += values[i] * v[i];
  return s;
}

// Storage offsets of every element of t in row-major order (views perturb through strides).
std::vector<int64_t> element_offsets(const Tensor& t) {
  std::vector<int64_t> offsets;
  offsets.reserve(size_t(t.numel()));
  Shape index(size_t(t.dim()), 0);
  for (int64_t n = 0; n < t.numel(); ++n) {
    int64_t off = t.offset();
    for (int64_t d = 0; d < t.dim(); ++d) off += index[d] * t.strides()[d];
    offsets.push_back(off);
    for (int64_t d = t.dim() - 1; d >= 0; --d) {
      if (++index[d] < t.shape()[d]) break;
      index[d] = 0;
    }
  }
  return offsets;
}

}  // namespace

GradcheckResult gradcheck(const GradcheckFn& fn, const std::vector<Tensor>& inputs,
                          const GradcheckOptions& options) {
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad())
      SCANLINE_CHECK(t.dtype() == DType::f64 && t.device().is_cpu(),
                     "gradcheck: inputs that require grad must be f64 on cpu, found ", describe(t));
  GradcheckResult result;
  Generator gen(options.seed);
  for (int p = 0; p < options.projections; ++p) {
    Tensor out = fn(inputs);
    SCANLINE_CHECK(out.dtype() == DType::f64, "gradcheck: the function must return f64, found ",
                   describe(out));
    Tensor v = randn(out.shape(), gen, {.dtype = DType::f64});
    std::vector<double> vv = v.to_double_vector();
    for (const Tensor& t : inputs)
      if (t.defined() && t.requires_grad()) const_cast<Tensor&>(t).zero_grad();
    if (out.requires_grad()) backward(out, v);

    for (size_t k = 0; k < inputs.size(); ++k) {
      const Tensor& t = inputs[k];
      if (!t.defined() || !t.requires_grad()) continue;
      Tensor analytic = t.grad();
      std::vector<double> a = analytic.defined() ? analytic.to_double_vector()
                                                 : std::vector<double>(size_t(t.numel()), 0.0);
      double* base = static_cast<double*>(t.impl()->storage->data());
      std::vector<int64_t> offsets = element_offsets(t);
      for (size_t i = 0; i < offsets.size(); ++i) {
        double saved = base[offsets[i]];
        double plus, minus;
        {
          NoGradGuard no_grad;
          base[offsets[i]] = saved + options.eps;
          plus = dot(fn(inputs), vv);
          base[offsets[i]] = saved - options.eps;
          minus = dot(fn(inputs), vv);
          base[offsets[i]] = saved;
        }
        double numeric = (plus - minus) / (2.0 * options.eps);
        double err = std::abs(numeric - a[i]);
        result.max_abs_error = std::max(result.max_abs_error, err);
        if (result.ok && !(err <= options.atol + options.rtol * std::abs(numeric))) {
          std::ostringstream msg;
          msg << "gradcheck: input " << k << " (" << describe(t) << ") element " << i
              << ": analytic " << a[i] << " vs numeric " << numeric << " (projection " << p << ")";
          result.ok = false;
          result.message = msg.str();
        }
      }
    }
  }
  return result;
}

}  // namespace scanline::autograd
