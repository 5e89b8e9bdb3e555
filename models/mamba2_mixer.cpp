#include "models/mamba2_mixer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "autograd/grad_mode.h"
#include "ops/causal_conv1d.h"
#include "ops/causal_conv1d_step.h"
#include "ops/concat.h"
#include "ops/elementwise.h"
#include "ops/rms_norm.h"
#include "ops/ssd.h"
#include "ops/ssd_step.h"
#include "ops/views.h"

namespace scanline {

namespace {

// A, D and dt_bias are f32 for f32/bf16 activations and f64 for f64 ones (the SSD's rule).
DType ssd_param_dtype(DType input) { return input == DType::f64 ? DType::f64 : DType::f32; }

// Host values (row-major) as a tensor in options' dtype and device.
Tensor from_host(const std::vector<double>& values, const Shape& shape, const TensorOptions& options) {
  return contiguous_copy(from_vector(values, shape), options.dtype, options.device);
}

// The last `width` time steps of x (batch, T, C) as a fresh contiguous (batch, C, width) tensor,
// zero-padded on the left when T < width: the conv state after x. No autograd (a cache).
Tensor last_conv_inputs(const Tensor& x, int64_t width) {
  const int64_t batch = x.size(0), T = x.size(1), C = x.size(2);
  Tensor out = zeros({batch, C, width}, x.options());
  const int64_t n = std::min(T, width);
  const Shape& s = x.strides();
  Tensor src = as_strided(x, {batch, C, n}, {s[0], s[2], s[1]}, x.offset() + (T - n) * s[1]);
  Tensor dst = as_strided(out, {batch, C, n}, out.strides(), out.offset() + (width - n));
  copy_into(dst, src);
  return out;
}

// The config after validate(), so the constructor checks it before building any layer.
const Mamba2Config& validated(const Mamba2Config& config) {
  config.validate();
  return config;
}

}  // namespace

void Mamba2Config::validate() const {
  SCANLINE_CHECK(d_model > 0, "Mamba2Config: d_model must be positive, found ", d_model);
  SCANLINE_CHECK(d_state > 0, "Mamba2Config: d_state must be positive, found ", d_state);
  SCANLINE_CHECK(d_conv >= 2 && d_conv <= kMaxCausalConvWidth, "Mamba2Config: d_conv must be in [2, ",
                 kMaxCausalConvWidth, "], found ", d_conv);
  SCANLINE_CHECK(expand > 0, "Mamba2Config: expand must be positive, found ", expand);
  SCANLINE_CHECK(headdim > 0 && d_inner() % headdim == 0, "Mamba2Config: headdim must be positive and divide d_inner = ",
                 "expand * d_model = ", d_inner(), ", found headdim ", headdim);
  SCANLINE_CHECK(ngroups >= 1 && nheads() % ngroups == 0, "Mamba2Config: ngroups must be positive and divide nheads = ",
                 "d_inner / headdim = ", nheads(), ", found ngroups ", ngroups);
  SCANLINE_CHECK(chunk_size >= 1, "Mamba2Config: chunk_size must be positive, found ", chunk_size);
  SCANLINE_CHECK(A_init_min > 0.0 && A_init_min <= A_init_max, "Mamba2Config: need 0 < A_init_min <= A_init_max, found ",
                 A_init_min, " and ", A_init_max);
  SCANLINE_CHECK(dt_min > 0.0 && dt_min <= dt_max, "Mamba2Config: need 0 < dt_min <= dt_max, found dt_min ", dt_min,
                 " and dt_max ", dt_max);
  SCANLINE_CHECK(dt_init_floor >= 0.0, "Mamba2Config: dt_init_floor must be >= 0, found ", dt_init_floor);
  SCANLINE_CHECK(norm_eps > 0.0, "Mamba2Config: norm_eps must be positive, found ", norm_eps);
}

Mamba2Mixer::Mamba2Mixer(const Mamba2Config& config, Generator& gen, TensorOptions options)
    : in_proj(validated(config).d_model, config.d_in_proj(), config.bias, gen, options),
      conv1d(config.conv_dim(), config.d_conv, config.conv_bias, gen, options),
      norm(config.d_inner(), config.norm_eps, options),
      out_proj(config.d_inner(), config.d_model, config.bias, gen, options),
      config_(config) {
  options.requires_grad = false;
  const int64_t H = config.nheads();

  // Δ at init: log-uniform in [dt_min, dt_max], clamped below; stored as its inverse softplus
  // (dt + log(-expm1(-dt))) so that softplus(dt_bias) gives it back.
  std::vector<double> dt = rand({H}, gen, {.dtype = DType::f64}).to_vector<double>();
  const double lo = std::log(config.dt_min), hi = std::log(config.dt_max);
  for (double& v : dt) {
    const double delta = std::max(std::exp(lo + v * (hi - lo)), config.dt_init_floor);
    v = delta + std::log(-std::expm1(-delta));
  }
  // -A ~ U[A_init_min, A_init_max] per head, stored as its log.
  std::vector<double> a_log =
      rand({H}, gen, {.dtype = DType::f64}, config.A_init_min, config.A_init_max).to_vector<double>();
  for (double& v : a_log) v = std::log(v);

  register_module("in_proj", in_proj);
  register_module("conv1d", conv1d);
  register_parameter("dt_bias", dt_bias, from_host(dt, {H}, options), false);
  register_parameter("A_log", A_log, from_host(a_log, {H}, options), false);
  register_parameter("D", D, ones({H}, options), false);
  register_module("norm", norm);
  register_module("out_proj", out_proj);
}

Mamba2Mixer::SsdParams Mamba2Mixer::ssd_params(DType input_dtype) const {
  const DType p = ssd_param_dtype(input_dtype);
  return {neg(exp(to_dtype(A_log, p))), to_dtype(D, p), to_dtype(dt_bias, p)};
}

Tensor Mamba2Mixer::gated_norm(const Tensor& y, const Tensor& z) const {
  // mamba_ssm's RMSNormGated(group_size = E / G): each group of channels has its own RMS; one
  // fused node (z may be a column slice of in_proj's output: the kernels read it in place).
  return rms_norm_gated(y, z, to_dtype(norm.weight, y.dtype()), norm.eps(), false, config_.d_inner() / config_.ngroups);
}

Mamba2State Mamba2Mixer::initial_state(int64_t batch, DType dtype) const {
  const Device device = A_log.device();
  const Mamba2Config& c = config_;
  return {zeros({batch, c.conv_dim(), c.d_conv - 1}, {.dtype = dtype, .device = device}),
          zeros({batch, c.nheads(), c.headdim, c.d_state}, {.dtype = ssd_param_dtype(dtype), .device = device})};
}

void Mamba2Mixer::check_state(const Mamba2State& state, int64_t batch, DType dtype, Device device,
                              const char* where) const {
  const Mamba2Config& c = config_;
  auto check = [&](const Tensor& t, const char* name, const Shape& shape, DType want) {
    if (!t.defined()) return;
    SCANLINE_CHECK(t.shape() == shape && t.dtype() == want && t.device() == device && t.is_contiguous(), where,
                   ": expected ", name, " to be a contiguous ", want, shape, " on ", device, " but found ",
                   describe(t));
  };
  check(state.conv_state, "state.conv_state (batch, conv_dim, d_conv - 1)", {batch, c.conv_dim(), c.d_conv - 1},
        dtype);
  check(state.ssm_state, "state.ssm_state (batch, nheads, headdim, d_state)",
        {batch, c.nheads(), c.headdim, c.d_state}, ssd_param_dtype(dtype));
}

Tensor Mamba2Mixer::forward(const Tensor& x, Mamba2State* state) const {
  const Mamba2Config& c = config_;
  const int64_t d = c.d_model, E = c.d_inner(), H = c.nheads(), P = c.headdim, G = c.ngroups, N = c.d_state;
  const int64_t k = c.d_conv;
  SCANLINE_CHECK(x.defined() && x.dim() == 3 && x.size(2) == d, "Mamba2Mixer: expected x of shape (batch, L, ",
                 d, ") but found ", x.defined() ? describe(x) : "an undefined tensor");
  const int64_t batch = x.size(0), L = x.size(1);
  if (state) check_state(*state, batch, x.dtype(), x.device(), "Mamba2Mixer::forward");

  // z, xBC, dt: column slices (views) of the one projection, channels last throughout.
  const std::vector<Tensor> zxbcdt = split(in_proj.forward(x), std::vector<int64_t>{E, c.conv_dim(), H}, 2);
  Tensor conv_in = zxbcdt[1];
  const bool continues = state && state->conv_state.defined();
  if (continues) conv_in = cat({transpose(state->conv_state, 1, 2), conv_in}, 1);  // (batch, k-1+L, conv_dim)
  Tensor xBC = conv1d.forward_channels_last(conv_in, true);
  if (continues) xBC = narrow(xBC, 1, k - 1, L);
  const std::vector<Tensor> xbc = split(xBC, std::vector<int64_t>{E, G * N, G * N}, 2);

  const SsdParams p = ssd_params(x.dtype());
  const Tensor h0 = state ? state->ssm_state : Tensor();
  const SsdResult r = ssd(reshape(xbc[0], {batch, L, H, P}), zxbcdt[2], p.A, reshape(xbc[1], {batch, L, G, N}),
                          reshape(xbc[2], {batch, L, G, N}), p.D, Tensor(), p.dt_bias, true, c.chunk_size, h0);
  if (state) {
    NoGradGuard no_grad;
    state->conv_state = last_conv_inputs(conv_in.detach(), k - 1);
    state->ssm_state = r.final_state.detach();
  }
  return out_proj.forward(gated_norm(reshape(r.y, {batch, L, E}), zxbcdt[0]));
}

Tensor Mamba2Mixer::step(const Tensor& x, Mamba2State& state) const {
  NoGradGuard no_grad;
  const Mamba2Config& c = config_;
  const int64_t d = c.d_model, E = c.d_inner(), H = c.nheads(), P = c.headdim, G = c.ngroups, N = c.d_state;
  SCANLINE_CHECK(x.defined() && x.dim() == 2 && x.size(1) == d, "Mamba2Mixer::step: expected x of shape (batch, ",
                 d, ") but found ", x.defined() ? describe(x) : "an undefined tensor");
  const int64_t batch = x.size(0);
  check_state(state, batch, x.dtype(), x.device(), "Mamba2Mixer::step");
  if (!state.conv_state.defined() || !state.ssm_state.defined()) {
    const Mamba2State zero = initial_state(batch, x.dtype());
    if (!state.conv_state.defined()) state.conv_state = zero.conv_state;
    if (!state.ssm_state.defined()) state.ssm_state = zero.ssm_state;
  }

  const std::vector<Tensor> zxbcdt = split(in_proj.forward(x), std::vector<int64_t>{E, c.conv_dim(), H}, 1);
  const Tensor conv_bias = conv1d.bias.defined() ? to_dtype(conv1d.bias, x.dtype()) : Tensor();
  const Tensor xBC =
      causal_conv1d_step(state.conv_state, zxbcdt[1], to_dtype(conv1d.weight, x.dtype()), conv_bias, true);
  const std::vector<Tensor> xbc = split(xBC, std::vector<int64_t>{E, G * N, G * N}, 1);
  const SsdParams p = ssd_params(x.dtype());
  const Tensor y = ssd_step(state.ssm_state, reshape(xbc[0], {batch, H, P}), zxbcdt[2], p.A,
                            reshape(xbc[1], {batch, G, N}), reshape(xbc[2], {batch, G, N}), p.D, Tensor(), p.dt_bias,
                            true);
  return out_proj.forward(gated_norm(reshape(y, {batch, E}), zxbcdt[0]));
}

}  // namespace scanline
