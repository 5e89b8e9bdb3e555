#include "trainer/adamw.h"

#include <array>
#include <cmath>
#include <map>
#include <set>
#include <type_traits>

#include "autograd/grad_mode.h"
#include "core/strided_loop.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/adamw.h"
#endif

namespace scanline {
namespace {

// The moments' dtype: f32, except f64 for f64 parameters (float64 tests stay exact).
DType state_dtype(DType param_dtype) { return param_dtype == DType::f64 ? DType::f64 : DType::f32; }

void check_hyper(const AdamWHyper& h) {
  SCANLINE_CHECK(std::isfinite(h.lr) && h.lr >= 0.0, "AdamW: lr must be finite and >= 0, found ", h.lr);
  SCANLINE_CHECK(h.beta1 >= 0.0 && h.beta1 < 1.0, "AdamW: beta1 must be in [0, 1), found ", h.beta1);
  SCANLINE_CHECK(h.beta2 >= 0.0 && h.beta2 < 1.0, "AdamW: beta2 must be in [0, 1), found ", h.beta2);
  SCANLINE_CHECK(std::isfinite(h.eps) && h.eps >= 0.0, "AdamW: eps must be finite and >= 0, found ", h.eps);
  SCANLINE_CHECK(std::isfinite(h.weight_decay) && h.weight_decay >= 0.0,
                 "AdamW: weight_decay must be finite and >= 0, found ", h.weight_decay);
  SCANLINE_CHECK(h.step >= 1, "AdamW: the step count of an update must be >= 1, found ", h.step);
}

// Storage value <-> double: through float for the narrow types, whose conversions go via float.
template <typename T>
double to_double(T x) {
  if constexpr (std::is_same_v<T, double>) return x;
  else return double(float(x));
}
template <typename T>
T from_double(double x) {
  if constexpr (std::is_same_v<T, double> || std::is_same_v<T, float>) return T(x);
  else return T(float(x));
}

// Calls fn.template operator()<M>() for the moments' storage type (f32 or f64).
template <typename Fn>
void dispatch_state(DType dtype, Fn&& fn) {
  if (dtype == DType::f64) fn.template operator()<double>();
  else if (dtype == DType::f32) fn.template operator()<float>();
  else SCANLINE_FAIL("AdamW: moments must be f32 or f64, found ", dtype);
}

}  // namespace

void adamw_update_cpu(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                      const AdamWHyper& h) {
  check_hyper(h);
  for (const Tensor* t : {&param, &grad, &m, &v})
    SCANLINE_CHECK(t->defined() && t->device().is_cpu() && t->shape() == param.shape(),
                   "AdamW: expected param, grad, m and v on the CPU with one shape; param ", describe(param),
                   ", grad ", describe(grad), ", m ", describe(m), ", v ", describe(v));
  SCANLINE_CHECK(m.dtype() == v.dtype(), "AdamW: m and v must share a dtype, found ", describe(m), " and ",
                 describe(v));
  // Scalars of the update, in double: torch.optim.AdamW's step_size and bias_correction2_sqrt.
  const double decay = 1.0 - h.lr * h.weight_decay;
  const double step_size = h.lr / (1.0 - std::pow(h.beta1, double(h.step)));
  const double bias2_sqrt = std::sqrt(1.0 - std::pow(h.beta2, double(h.step)));
  const double b1 = h.beta1, b2 = h.beta2, eps = h.eps;
  dispatch_floating(param.dtype(), "AdamW param", [&]<typename P>() {
    dispatch_floating(grad.dtype(), "AdamW grad", [&]<typename G>() {
      dispatch_state(m.dtype(), [&]<typename M>() {
        P* pp = static_cast<P*>(param.impl()->storage->data());
        const G* pg = static_cast<const G*>(grad.impl()->storage->data());
        M* pm = static_cast<M*>(m.impl()->storage->data());
        M* pv = static_cast<M*>(v.impl()->storage->data());
        // Each element is read and written by one thread: the result is thread-count independent.
        strided_loop<4>(param.shape(),
                        {param.strides().data(), grad.strides().data(), m.strides().data(), v.strides().data()},
                        {param.offset(), grad.offset(), m.offset(), v.offset()},
                        [&](std::array<int64_t, 4> off, int64_t n, std::array<int64_t, 4> s) {
                          for (int64_t i = 0; i < n; ++i) {
                            P& p_ref = pp[off[0] + i * s[0]];
                            M& m_ref = pm[off[2] + i * s[2]];
                            M& v_ref = pv[off[3] + i * s[3]];
                            const double g = to_double(pg[off[1] + i * s[1]]);
                            double p = to_double(p_ref) * decay;
                            const double mi = b1 * double(m_ref) + (1.0 - b1) * g;
                            const double vi = b2 * double(v_ref) + (1.0 - b2) * (g * g);
                            p -= step_size * (mi / (std::sqrt(vi) / bias2_sqrt + eps));
                            p_ref = from_double<P>(p);
                            m_ref = M(mi);
                            v_ref = M(vi);
                          }
                        });
      });
    });
  });
}

AdamW::AdamW(std::vector<NamedParameter> params, AdamWOptions options)
    : params_(std::move(params)), options_(options) {
  check_hyper({options_.lr, options_.beta1, options_.beta2, options_.eps, options_.weight_decay, 1});
  SCANLINE_CHECK(options_.lr > 0.0, "AdamW: the base lr must be positive, found ", options_.lr);
  std::set<std::string> names;
  std::set<const TensorImpl*> tensors;
  for (const NamedParameter& np : params_) {
    SCANLINE_CHECK(!np.name.empty(), "AdamW: a parameter has an empty name");
    SCANLINE_CHECK(names.insert(np.name).second, "AdamW: parameter name '", np.name, "' appears twice");
    const Tensor& p = np.tensor;
    SCANLINE_CHECK(p.defined(), "AdamW: parameter '", np.name, "' is undefined");
    SCANLINE_CHECK(tensors.insert(p.impl()).second, "AdamW: parameter '", np.name,
                   "' is the same tensor as an earlier one (it would be updated twice)");
    SCANLINE_CHECK(is_floating(p.dtype()) && p.is_leaf() && p.requires_grad(), "AdamW: parameter '", np.name,
                   "' must be a floating leaf that requires grad, found ", describe(p),
                   p.is_leaf() ? "" : " (not a leaf)", p.requires_grad() ? "" : " (requires_grad false)");
    if (p.device().is_cuda())
      SCANLINE_CHECK(p.dtype() == DType::f32 && p.is_contiguous(), "AdamW: CUDA parameter '", np.name,
                     "' must be contiguous f32 (the fused kernel's layout), found ", describe(p));
    const TensorOptions state_options{.dtype = state_dtype(p.dtype()), .device = p.device()};
    m_.push_back(zeros(p.shape(), state_options));
    v_.push_back(zeros(p.shape(), state_options));
  }
}

void AdamW::step(double lr) {
  NoGradGuard no_grad;
  const AdamWHyper base{lr, options_.beta1, options_.beta2, options_.eps, options_.weight_decay, step_count_ + 1};
  check_hyper(base);
#ifdef SCANLINE_HAVE_CUDA
  std::vector<cuda::AdamWTensors> on_gpu;
#endif
  for (size_t i = 0; i < params_.size(); ++i) {
    const NamedParameter& np = params_[i];
    const Tensor grad = np.tensor.grad();
    if (!grad.defined()) continue;
    SCANLINE_CHECK(grad.shape() == np.tensor.shape() && grad.device() == np.tensor.device(), "AdamW: the gradient of '",
                   np.name, "' is ", describe(grad), " but the parameter is ", describe(np.tensor));
    AdamWHyper h = base;
    if (!np.weight_decay) h.weight_decay = 0.0;
    if (np.tensor.device().is_cpu()) {
      adamw_update_cpu(np.tensor, grad, m_[i], v_[i], h);
      continue;
    }
#ifdef SCANLINE_HAVE_CUDA
    on_gpu.push_back({np.tensor, grad, m_[i], v_[i], h.weight_decay});
#else
    SCANLINE_FAIL("AdamW: parameter '", np.name, "' is on ", np.tensor.device(), " but this build has no CUDA");
#endif
  }
#ifdef SCANLINE_HAVE_CUDA
  if (!on_gpu.empty())
    cuda::adamw_update(on_gpu, {.lr = lr, .beta1 = base.beta1, .beta2 = base.beta2, .eps = base.eps,
                                .step = base.step});
#endif
  ++step_count_;
}

void AdamW::zero_grad() {
  for (NamedParameter& np : params_) np.tensor.zero_grad();
}

std::vector<AdamWMoments> AdamW::named_state() const {
  std::vector<AdamWMoments> out;
  out.reserve(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) out.push_back({params_[i].name, m_[i], v_[i]});
  return out;
}

void AdamW::load_state(int64_t step_count, const std::vector<AdamWMoments>& state) {
  SCANLINE_CHECK(step_count >= 0, "AdamW: load_state: the step count must be >= 0, found ", step_count);
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < params_.size(); ++i) index[params_[i].name] = i;
  // Check everything before changing anything.
  std::vector<const AdamWMoments*> source(params_.size(), nullptr);
  for (const AdamWMoments& s : state) {
    auto it = index.find(s.name);
    SCANLINE_CHECK(it != index.end(), "AdamW: load_state: the state has moments for '", s.name,
                   "', which is not a parameter of this optimizer");
    SCANLINE_CHECK(source[it->second] == nullptr, "AdamW: load_state: moments for '", s.name, "' appear twice");
    const Tensor& p = params_[it->second].tensor;
    for (const auto& [t, what] : {std::pair{&s.m, "m"}, std::pair{&s.v, "v"}})
      SCANLINE_CHECK(t->defined() && is_floating(t->dtype()) && t->shape() == p.shape(), "AdamW: load_state: ",
                     what, " of '", s.name, "' is ", t->defined() ? describe(*t) : std::string("undefined"),
                     " but the parameter is ", describe(p), " (expected a floating tensor of shape ",
                     shape_str(p.shape()), ")");
    source[it->second] = &s;
  }
  for (size_t i = 0; i < params_.size(); ++i)
    SCANLINE_CHECK(source[i] != nullptr, "AdamW: load_state: the state has no moments for parameter '",
                   params_[i].name, "' (", state.size(), " entries given for ", params_.size(), " parameters)");
  for (size_t i = 0; i < params_.size(); ++i) {
    copy_into(m_[i], source[i]->m);
    copy_into(v_[i], source[i]->v);
  }
  step_count_ = step_count;
}

}  // namespace scanline
