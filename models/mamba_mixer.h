#pragma once
// MambaMixer: the Mamba-1 mixer (Gu & Dao 2023, mamba_ssm's `Mamba` module). With E = expand·d,
// N = d_state, R = dt_rank, for x (batch, L, d):
//   (x, z)  = in_proj(x)                        d -> 2E, split in two halves
//   x       = SiLU(causal depthwise conv1d(x))  k = d_conv taps per channel, with bias
//   (dt, B, C) = x_proj(x)                      E -> R + 2N
//   dt      = dt_proj.weight · dt               R -> E; its bias is added inside the scan
//   y       = selective_scan(x, dt, A = -exp(A_log), B, C, D, z, delta_bias = dt_proj.bias,
//                            softplus on Δ), which fuses Δ = softplus(dt + bias) and y·SiLU(z)
//   out     = out_proj(y)                       E -> d
// Parameter names follow mamba_ssm: in_proj.weight, conv1d.weight, conv1d.bias, x_proj.weight,
// dt_proj.weight, dt_proj.bias, A_log, D, out_proj.weight (conv1d.weight is (E, k) here).
//
// selective = false is the linear time-invariant ablation of the paper's selective-copying
// experiment: Δ, B and C no longer depend on the input. There is no x_proj/dt_proj; instead
//   dt_bias (E): Δ = softplus(dt_bias) per channel, constant over time (dt_proj.bias's init)
//   B, C (E, N): one row per channel (S4D-Real init, Gu et al. 2022: B = 1, C ~ N(0, 1))
// while in_proj, conv1d, A_log, D, the z gate and out_proj stay (and get the same initial values
// as the selective mixer built from the same seed).
//
// Precision: parameters may stay f32 while x is bf16: the matrix-product and conv weights are cast
// to x's dtype in the graph; A_log, D and the dt bias enter the scan in f32 (f64 for f64 inputs).
#include <memory>

#include "core/random.h"
#include "models/conv1d.h"
#include "models/linear.h"
#include "models/module.h"

namespace scanline {

struct MambaConfig {
  int64_t d_model = 0;
  int64_t d_state = 16;  // N
  int64_t d_conv = 4;    // conv taps, 2..8
  int64_t expand = 2;    // E = expand · d_model
  int64_t dt_rank = 0;   // R; 0 means ceil(d_model / 16)
  double dt_min = 1e-3;  // Δ at init is log-uniform in [dt_min, dt_max], at least dt_init_floor
  double dt_max = 0.1;
  double dt_init_floor = 1e-4;
  bool conv_bias = true;
  bool bias = false;        // biases of in_proj and out_proj
  bool selective = true;    // false: the LTI ablation (see above)

  int64_t d_inner() const { return expand * d_model; }
  int64_t resolved_dt_rank() const { return dt_rank > 0 ? dt_rank : (d_model + 15) / 16; }
  // Throws an Error naming the first impossible value.
  void validate() const;
};

// The recurrent state of one mixer for `batch` sequences. Both tensors are contiguous and are
// updated in place by step(). Undefined tensors mean zeros (a fresh sequence).
struct MambaState {
  Tensor conv_state;  // (batch, E, d_conv - 1) in x's dtype: the last d_conv - 1 conv inputs, oldest first
  Tensor ssm_state;   // (batch, E, N) in f32 (f64 for f64 inputs): h after the last token
};

class MambaMixer : public Module {
 public:
  // Initialization as published (mamba_ssm): Linear layers and conv1d with PyTorch's defaults;
  // dt_proj.weight U(-R^-1/2, R^-1/2); dt_proj.bias = softplus^-1(Δ) with Δ = max(exp(U(log dt_min,
  // log dt_max)), dt_init_floor); A_log[e, n] = log(n + 1); D = 1. Draws come from gen in the
  // order in_proj, conv1d, out_proj, then x_proj, dt_proj (or B, C of the LTI mixer), so both
  // variants share the first three. Parameters are made in options' dtype and device.
  MambaMixer(const MambaConfig& config, Generator& gen, TensorOptions options = {});

  // x (batch, L, d_model) -> (batch, L, d_model) in x's dtype. Without a state the sequence
  // starts from zeros. With one, the conv continues from state->conv_state (prepended to the conv
  // input, a copy of the x half) and the scan from state->ssm_state; afterwards the state holds
  // the states after the last token (detached: no gradient flows across calls). A prefill is a
  // forward with a default-constructed MambaState. Computed channel-major as mamba_ssm does
  // (one GEMM a projection, activations as (channels, batch·L) rows; see mamba_mixer.cpp).
  Tensor forward(const Tensor& x, MambaState* state = nullptr) const;

  // Advances one token, x (batch, d_model) -> (batch, d_model), updating state in place (a
  // default-constructed state starts from zeros). Inference only: runs without recording a graph.
  Tensor step(const Tensor& x, MambaState& state) const;

  // Zero states for `batch` sequences of activations in `dtype`, on the parameters' device.
  MambaState initial_state(int64_t batch, DType dtype) const;

  const MambaConfig& config() const { return config_; }

  Linear in_proj;        // d -> 2E
  CausalConv1d conv1d;   // E channels, d_conv taps
  Linear out_proj;       // E -> d
  std::unique_ptr<Linear> x_proj;   // E -> R + 2N, no bias (selective only)
  std::unique_ptr<Linear> dt_proj;  // R -> E with bias (selective only)
  Tensor A_log;    // (E, N), no decay
  Tensor D;        // (E), no decay
  Tensor dt_bias;  // (E), no decay (LTI only)
  Tensor B, C;     // (E, N); B no decay, C decays, as S4 registers them (LTI only)

 private:
  // The scan's inputs that do not depend on the token: A = -exp(A_log), D, delta bias (f32/f64).
  struct ScanParams {
    Tensor A, D, delta_bias;
  };
  ScanParams scan_params(DType input_dtype) const;
  void check_state(const MambaState& state, int64_t batch, DType dtype, Device device, const char* where) const;

  MambaConfig config_;
};

}  // namespace scanline
