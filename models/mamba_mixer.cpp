#include "models/mamba_mixer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "autograd/grad_mode.h"
#include "ops/causal_conv1d.h"
#include "ops/causal_conv1d_step.h"
#include "ops/concat.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/selective_scan.h"
#include "ops/selective_scan_step.h"
#include "ops/views.h"

namespace scanline {

namespace {

// A, D and the delta bias are f32 for f32/bf16 activations and f64 for f64 ones (the scan's rule).
DType scan_param_dtype(DType input) { return input == DType::f64 ? DType::f64 : DType::f32; }

// Host values (row-major) as a tensor in options' dtype and device.
Tensor from_host(const std::vector<double>& values, const Shape& shape, const TensorOptions& options) {
  return contiguous_copy(from_vector(values, shape), options.dtype, options.device);
}

// The last `width` time steps of x (batch, T, E) as a fresh contiguous (batch, E, width) tensor,
// zero-padded on the left when T < width: the conv state after x. No autograd (a cache).
Tensor last_conv_inputs(const Tensor& x, int64_t width) {
  const int64_t batch = x.size(0), T = x.size(1), E = x.size(2);
  Tensor out = zeros({batch, E, width}, x.options());
  const int64_t n = std::min(T, width);
  const Shape& s = x.strides();
  Tensor src = as_strided(x, {batch, E, n}, {s[0], s[2], s[1]}, x.offset() + (T - n) * s[1]);
  Tensor dst = as_strided(out, {batch, E, n}, out.strides(), out.offset() + (width - n));
  copy_into(dst, src);
  return out;
}

// The config after validate(), so the constructor checks it before building any layer.
const MambaConfig& validated(const MambaConfig& config) {
  config.validate();
  return config;
}

}  // namespace

void MambaConfig::validate() const {
  SCANLINE_CHECK(d_model > 0, "MambaConfig: d_model must be positive, found ", d_model);
  SCANLINE_CHECK(d_state > 0, "MambaConfig: d_state must be positive, found ", d_state);
  SCANLINE_CHECK(d_conv >= 2 && d_conv <= kMaxCausalConvWidth, "MambaConfig: d_conv must be in [2, ",
                 kMaxCausalConvWidth, "], found ", d_conv);
  SCANLINE_CHECK(expand > 0, "MambaConfig: expand must be positive, found ", expand);
  SCANLINE_CHECK(dt_rank >= 0, "MambaConfig: dt_rank must be positive (or 0 for ceil(d_model / 16)), found ",
                 dt_rank);
  SCANLINE_CHECK(dt_min > 0.0 && dt_min <= dt_max, "MambaConfig: need 0 < dt_min <= dt_max, found dt_min ", dt_min,
                 " and dt_max ", dt_max);
  SCANLINE_CHECK(dt_init_floor >= 0.0, "MambaConfig: dt_init_floor must be >= 0, found ", dt_init_floor);
}

MambaMixer::MambaMixer(const MambaConfig& config, Generator& gen, TensorOptions options)
    : in_proj(validated(config).d_model, 2 * config.d_inner(), config.bias, gen, options),
      conv1d(config.d_inner(), config.d_conv, config.conv_bias, gen, options),
      out_proj(config.d_inner(), config.d_model, config.bias, gen, options),
      config_(config) {
  options.requires_grad = false;
  const int64_t E = config.d_inner(), N = config.d_state, R = config.resolved_dt_rank();

  // Δ at init: log-uniform in [dt_min, dt_max], clamped below; stored as its inverse softplus
  // (dt + log(-expm1(-dt))) so that softplus(bias) gives it back.
  auto dt_bias_init = [&] {
    std::vector<double> u = rand({E}, gen, {.dtype = DType::f64}).to_vector<double>();
    const double lo = std::log(config.dt_min), hi = std::log(config.dt_max);
    for (double& v : u) {
      const double dt = std::max(std::exp(lo + v * (hi - lo)), config.dt_init_floor);
      v = dt + std::log(-std::expm1(-dt));
    }
    return from_host(u, {E}, options);
  };

  register_module("in_proj", in_proj);
  register_module("conv1d", conv1d);
  if (config.selective) {
    x_proj = std::make_unique<Linear>(E, R + 2 * N, false, gen, options);
    dt_proj = std::make_unique<Linear>(R, E, true, gen, options);
    const double dt_std = 1.0 / std::sqrt(double(R));
    copy_into(dt_proj->weight, rand({E, R}, gen, options, -dt_std, dt_std));
    copy_into(dt_proj->bias, dt_bias_init());
    register_module("x_proj", *x_proj);
    register_module("dt_proj", *dt_proj);
  } else {
    register_parameter("dt_bias", dt_bias, dt_bias_init(), false);
    register_parameter("B", B, ones({E, N}, options), false);
    register_parameter("C", C, randn({E, N}, gen, options), true);
  }
  // S4D-Real: A[e, n] = -(n + 1), stored as its log.
  std::vector<double> a_log(size_t(E * N));
  for (int64_t e = 0; e < E; ++e)
    for (int64_t n = 0; n < N; ++n) a_log[size_t(e * N + n)] = std::log(double(n + 1));
  register_parameter("A_log", A_log, from_host(a_log, {E, N}, options), false);
  register_parameter("D", D, ones({E}, options), false);
  register_module("out_proj", out_proj);
}

MambaMixer::ScanParams MambaMixer::scan_params(DType input_dtype) const {
  const DType p = scan_param_dtype(input_dtype);
  const Tensor& bias = config_.selective ? dt_proj->bias : dt_bias;
  return {neg(exp(to_dtype(A_log, p))), to_dtype(D, p), to_dtype(bias, p)};
}

MambaState MambaMixer::initial_state(int64_t batch, DType dtype) const {
  const Device device = A_log.device();
  const int64_t E = config_.d_inner();
  return {zeros({batch, E, config_.d_conv - 1}, {.dtype = dtype, .device = device}),
          zeros({batch, E, config_.d_state}, {.dtype = scan_param_dtype(dtype), .device = device})};
}

void MambaMixer::check_state(const MambaState& state, int64_t batch, DType dtype, Device device,
                             const char* where) const {
  const int64_t E = config_.d_inner();
  auto check = [&](const Tensor& t, const char* name, const Shape& shape, DType want) {
    if (!t.defined()) return;
    SCANLINE_CHECK(t.shape() == shape && t.dtype() == want && t.device() == device && t.is_contiguous(), where,
                   ": expected ", name, " to be a contiguous ", want, shape, " on ", device, " but found ",
                   describe(t));
  };
  check(state.conv_state, "state.conv_state (batch, E, d_conv - 1)", {batch, E, config_.d_conv - 1}, dtype);
  check(state.ssm_state, "state.ssm_state (batch, E, N)", {batch, E, config_.d_state}, scan_param_dtype(dtype));
}

Tensor MambaMixer::forward(const Tensor& x, MambaState* state) const {
  const int64_t d = config_.d_model, E = config_.d_inner(), N = config_.d_state, k = config_.d_conv;
  SCANLINE_CHECK(x.defined() && x.dim() == 3 && x.size(2) == d, "MambaMixer: expected x of shape (batch, L, ",
                 d, ") but found ", x.defined() ? describe(x) : "an undefined tensor");
  const int64_t batch = x.size(0), L = x.size(1), BL = batch * L;
  if (state) check_state(*state, batch, x.dtype(), x.device(), "MambaMixer::forward");
  const DType dtype = x.dtype();

  // Channel-major, as mamba_ssm: every projection is one GEMM W·xᵀ whose result has a row per
  // channel, (channels, batch·L). Seen as (channels, batch, L) and permuted, that is a (batch,
  // channels, L) view with strides (L, batch·L, 1): rows contiguous in time, which the conv and
  // the scan read in place, and which they return (y, and du, dΔ, dz in the backward) in the same
  // layout, so going back to (channels, batch·L) for the next GEMM is a view again. No transpose
  // copy on the way to the scan or back (CUDA; the CPU scan returns contiguous tensors, which
  // the reshapes below then copy). The weights are cast to x's dtype as Linear::forward does.
  auto channel_major = [](const Tensor& rows) {  // (c, batch, L) -> (batch, c, L) view
    return permute(rows, {1, 0, 2});
  };
  Tensor xz = matmul(to_dtype(in_proj.weight, dtype), transpose(reshape(x, {BL, d}), 0, 1));  // (2E, BL)
  if (in_proj.bias.defined()) xz = add(xz, unsqueeze(to_dtype(in_proj.bias, dtype), 1));     // a bias per row
  std::vector<Tensor> xz_rows = split(view(xz, {2 * E, batch, L}), E, 0);
  const Tensor x_in = channel_major(xz_rows[0]), z = channel_major(xz_rows[1]);  // (batch, E, L)

  // A continued conv prepends the stored inputs: a contiguous (batch, E, k-1+L) copy, whose conv
  // output is then not channel-major (u's GEMM below packs it). Inference only, in practice.
  const bool continues = state && state->conv_state.defined();
  const Tensor conv_in = continues ? cat({state->conv_state, x_in}, 2) : x_in;
  Tensor u = conv1d.forward(conv_in, true);  // (batch, E, L), in x_in's layout
  if (continues) u = narrow(u, 2, k - 1, L);
  // u feeds both x_proj and the scan through this (E, batch, L) view: their gradients meet here,
  // where both are contiguous (on CUDA), so the engine sums them in place (had they met at u, as
  // (batch, E, L) views with strides (L, BL, 1), the sum would start with a contiguous copy).
  const Tensor u_rows = permute(u, {1, 0, 2});

  Tensor delta, B_in, C_in;
  if (config_.selective) {
    const int64_t R = config_.resolved_dt_rank();
    // A view unless the conv continued from a state (view() would throw on a copy).
    const Tensor u_mat = continues ? reshape(u_rows, {E, BL}) : view(u_rows, {E, BL});
    const Tensor x_dbl = matmul(to_dtype(x_proj->weight, dtype), u_mat);  // (R + 2N, BL)
    // Split as (rows, batch, L), so that the split's backward writes the (contiguous) dB, dC
    // straight through their permuted views; dt_proj's GEMM takes its rows back as (R, BL).
    std::vector<Tensor> dbc = split(view(x_dbl, {R + 2 * N, batch, L}), std::vector<int64_t>{R, N, N}, 0);
    // dt_proj without its bias: the scan adds the bias before the softplus.
    const Tensor dt_rows = matmul(to_dtype(dt_proj->weight, dtype), view(dbc[0], {R, BL}));  // (E, BL)
    delta = channel_major(view(dt_rows, {E, batch, L}));
    B_in = unsqueeze(channel_major(dbc[1]), 1);  // (batch, 1, N, L), strides (L, N·BL, BL, 1)
    C_in = unsqueeze(channel_major(dbc[2]), 1);
  } else {
    // LTI: Δ = softplus(0 + dt_bias), and one B/C row per channel as groups = E. The expands are
    // stride-0 views, but the scan materializes (batch, E, N, L) B and C (and their gradients):
    // fine for the small ablation models this mode is for.
    delta = expand(zeros({1, 1, 1}, x.options()), {batch, E, L});
    B_in = expand(reshape(to_dtype(B, dtype), {1, E, N, 1}), {batch, E, N, L});
    C_in = expand(reshape(to_dtype(C, dtype), {1, E, N, 1}), {batch, E, N, L});
  }
  const ScanParams p = scan_params(dtype);
  const Tensor h0 = state ? state->ssm_state : Tensor();
  SelectiveScanResult scan =
      selective_scan(channel_major(u_rows), delta, p.A, B_in, C_in, p.D, z, p.delta_bias, true, h0);
  if (state) {
    NoGradGuard no_grad;
    state->conv_state = last_conv_inputs(transpose(conv_in.detach(), 1, 2), k - 1);
    state->ssm_state = scan.final_state.detach();
  }
  // y (batch, E, L) as (E, BL) (a view of the CUDA scan's channel-major y), then out_proj as
  // yᵀ·Wᵀ: linear reads the column-major yᵀ in place and its backward hands back a contiguous
  // (E, BL) gradient, which is dy in the channel-major layout again.
  const Tensor y_mat = reshape(permute(scan.y, {1, 0, 2}), {E, BL});
  const Tensor out = linear(transpose(y_mat, 0, 1), to_dtype(out_proj.weight, dtype),
                            out_proj.bias.defined() ? to_dtype(out_proj.bias, dtype) : Tensor());  // (BL, d)
  return view(out, {batch, L, d});
}

Tensor MambaMixer::step(const Tensor& x, MambaState& state) const {
  NoGradGuard no_grad;
  const int64_t d = config_.d_model, E = config_.d_inner(), N = config_.d_state;
  SCANLINE_CHECK(x.defined() && x.dim() == 2 && x.size(1) == d, "MambaMixer::step: expected x of shape (batch, ",
                 d, ") but found ", x.defined() ? describe(x) : "an undefined tensor");
  const int64_t batch = x.size(0);
  check_state(state, batch, x.dtype(), x.device(), "MambaMixer::step");
  const MambaState zero = initial_state(batch, x.dtype());
  if (!state.conv_state.defined()) state.conv_state = zero.conv_state;
  if (!state.ssm_state.defined()) state.ssm_state = zero.ssm_state;

  std::vector<Tensor> xz = split(in_proj.forward(x), E, 1);
  const Tensor conv_bias = conv1d.bias.defined() ? to_dtype(conv1d.bias, x.dtype()) : Tensor();
  Tensor u = causal_conv1d_step(state.conv_state, xz[0], to_dtype(conv1d.weight, x.dtype()), conv_bias, true);

  Tensor delta, B_in, C_in;
  if (config_.selective) {
    std::vector<Tensor> dbc = split(x_proj->forward(u), std::vector<int64_t>{config_.resolved_dt_rank(), N, N}, 1);
    delta = linear(dbc[0], to_dtype(dt_proj->weight, x.dtype()));
    B_in = unsqueeze(dbc[1], 1);  // (batch, 1, N)
    C_in = unsqueeze(dbc[2], 1);
  } else {
    delta = expand(zeros({1, 1}, x.options()), {batch, E});
    B_in = expand(unsqueeze(to_dtype(B, x.dtype()), 0), {batch, E, N});
    C_in = expand(unsqueeze(to_dtype(C, x.dtype()), 0), {batch, E, N});
  }
  const ScanParams p = scan_params(x.dtype());
  Tensor y = selective_scan_step(state.ssm_state, u, delta, p.A, B_in, C_in, p.D, xz[1], p.delta_bias, true);
  return out_proj.forward(y);
}

}  // namespace scanline
