#include "models/mlp.h"

#include "autograd/grad_mode.h"
#include "ops/concat.h"
#include "ops/elementwise.h"

namespace scanline {

namespace {
const MlpConfig& validated(const MlpConfig& config) {
  config.validate();
  return config;
}
}  // namespace

void MlpConfig::validate() const {
  SCANLINE_CHECK(d_model > 0, "MlpConfig: d_model must be positive, found ", d_model);
  SCANLINE_CHECK(kind == "swiglu" || kind == "gelu" || kind == "relu2",
                 "MlpConfig: kind must be \"swiglu\", \"gelu\" or \"relu2\" but is \"", kind, "\"");
  SCANLINE_CHECK(hidden >= 0, "MlpConfig: hidden must be positive (or 0 for the default width), found ", hidden);
}

Mlp::Mlp(const MlpConfig& config, Generator& gen, TensorOptions options)
    : fc1(validated(config).d_model, (config.gated() ? 2 : 1) * config.resolved_hidden(), config.bias, gen, options),
      fc2(config.resolved_hidden(), config.d_model, config.bias, gen, options),
      config_(config) {
  register_module("fc1", fc1);
  register_module("fc2", fc2);
}

Tensor Mlp::forward(const Tensor& x) const {
  SCANLINE_CHECK(x.defined() && x.dim() >= 1 && x.size(x.dim() - 1) == config_.d_model,
                 "Mlp: expected x of shape (..., ", config_.d_model, ") but found ",
                 x.defined() ? describe(x) : "an undefined tensor");
  const Tensor h = fc1.forward(x);
  Tensor a;
  if (config_.gated()) {
    const std::vector<Tensor> parts = split(h, config_.resolved_hidden(), x.dim() - 1);
    a = mul(parts[0], silu(parts[1]));
  } else if (config_.kind == "gelu") {
    a = gelu(h);
  } else {
    a = square(relu(h));
  }
  return fc2.forward(a);
}

Tensor Mlp::step(const Tensor& x) const {
  NoGradGuard no_grad;
  return forward(x);
}

}  // namespace scanline
