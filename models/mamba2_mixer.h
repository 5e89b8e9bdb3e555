#pragma once
// Mamba2Mixer: the Mamba-2 mixer (Dao & Gu 2024, mamba_ssm's `Mamba2` module). With
// E = d_inner = expand·d, H = nheads = E / headdim, P = headdim, G = ngroups, N = d_state and
// conv_dim = E + 2·G·N, for x (batch, L, d):
//   (z, xBC, dt) = in_proj(x)                   d -> E + conv_dim + H, in mamba_ssm's order z, x, B, C, dt
//   xBC     = SiLU(causal depthwise conv1d(xBC)) k = d_conv taps per channel, with bias
//   (x, B, C) = xBC                              E, G·N, G·N channels
//   y       = ssd(x as (b, L, H, P), dt, A = -exp(A_log), B, C as (b, L, G, N), D (per head),
//                 dt_bias, softplus on Δ, chunk_size)          (ops/ssd.h; no z inside the scan)
//   y       = RMSNormGated(y, z): rms_norm(y·SiLU(z)) · norm.weight, normalized over each of the
//             G groups of E / G channels (norm_before_gate = false, group_size = E / G)
//   out     = out_proj(y)                        E -> d
// Parameter names follow mamba_ssm: in_proj.weight, conv1d.weight, conv1d.bias, dt_bias, A_log,
// D, norm.weight, out_proj.weight (conv1d.weight is (conv_dim, k) here), plus in_proj.bias and
// out_proj.bias with `bias`.
//
// Precision: parameters may stay f32 while x is bf16: the matrix-product, conv and norm weights
// are cast to x's dtype in the graph; A_log, D and dt_bias enter the SSD in f32 (f64 for f64).
#include "core/random.h"
#include "models/conv1d.h"
#include "models/linear.h"
#include "models/module.h"
#include "models/rms_norm.h"

namespace scanline {

struct Mamba2Config {
  int64_t d_model = 0;
  int64_t d_state = 128;   // N (mamba_ssm's default; small models use 64)
  int64_t d_conv = 4;      // conv taps, 2..8
  int64_t expand = 2;      // d_inner = expand · d_model
  int64_t headdim = 64;    // P; d_inner must be a multiple
  int64_t ngroups = 1;     // G groups of B and C (and of the gated norm); must divide nheads
  int64_t chunk_size = 256;
  double A_init_min = 1.0;  // A = -exp(A_log) with -A ~ U[A_init_min, A_init_max] per head at init
  double A_init_max = 16.0;
  double dt_min = 1e-3;     // Δ at init is log-uniform in [dt_min, dt_max], at least dt_init_floor
  double dt_max = 0.1;
  double dt_init_floor = 1e-4;
  bool bias = false;        // biases of in_proj and out_proj
  bool conv_bias = true;
  double norm_eps = 1e-5;   // the gated RMSNorm's epsilon

  int64_t d_inner() const { return expand * d_model; }
  int64_t nheads() const { return d_inner() / headdim; }
  int64_t conv_dim() const { return d_inner() + 2 * ngroups * d_state; }
  int64_t d_in_proj() const { return 2 * d_inner() + 2 * ngroups * d_state + nheads(); }
  // Throws an Error naming the first impossible value.
  void validate() const;
};

// The recurrent state of one mixer for `batch` sequences. Both tensors are contiguous and are
// updated in place by step(). Undefined tensors mean zeros (a fresh sequence).
struct Mamba2State {
  Tensor conv_state;  // (batch, conv_dim, d_conv - 1) in x's dtype: the last d_conv - 1 conv inputs, oldest first
  Tensor ssm_state;   // (batch, H, P, N) in f32 (f64 for f64 inputs): the state after the last token
};

class Mamba2Mixer : public Module {
 public:
  // Initialization as published (mamba_ssm): Linear layers and conv1d with PyTorch's defaults;
  // dt_bias = softplus^-1(Δ) with Δ = max(exp(U(log dt_min, log dt_max)), dt_init_floor) per
  // head; A_log = log(U[A_init_min, A_init_max]) per head; D = 1; norm.weight = 1. Draws come
  // from gen in the order in_proj, conv1d, out_proj, dt_bias, A_log. Parameters are made in
  // options' dtype and device.
  Mamba2Mixer(const Mamba2Config& config, Generator& gen, TensorOptions options = {});

  // x (batch, L, d_model) -> (batch, L, d_model) in x's dtype. Without a state the sequence
  // starts from zeros. With one, the conv continues from state->conv_state (prepended to the conv
  // input) and the SSD from state->ssm_state; afterwards the state holds the states after the
  // last token (detached: no gradient flows across calls). A prefill is a forward with a
  // default-constructed Mamba2State.
  Tensor forward(const Tensor& x, Mamba2State* state = nullptr) const;

  // Advances one token, x (batch, d_model) -> (batch, d_model), updating state in place (a
  // default-constructed state starts from zeros). Inference only: runs without recording a graph.
  Tensor step(const Tensor& x, Mamba2State& state) const;

  // Zero states for `batch` sequences of activations in `dtype`, on the parameters' device.
  Mamba2State initial_state(int64_t batch, DType dtype) const;

  const Mamba2Config& config() const { return config_; }

  Linear in_proj;       // d -> d_in_proj
  CausalConv1d conv1d;  // conv_dim channels, d_conv taps
  Tensor dt_bias;       // (H), no decay
  Tensor A_log;         // (H), no decay
  Tensor D;             // (H), no decay
  RMSNorm norm;         // the gated norm's weight (E), no decay
  Linear out_proj;      // E -> d

 private:
  // The SSD's inputs that do not depend on the token: A = -exp(A_log), D, dt_bias (f32/f64).
  struct SsdParams {
    Tensor A, D, dt_bias;
  };
  SsdParams ssd_params(DType input_dtype) const;
  // y·SiLU(z) normalized per group of E / G channels, times norm.weight; y, z (..., E).
  Tensor gated_norm(const Tensor& y, const Tensor& z) const;
  void check_state(const Mamba2State& state, int64_t batch, DType dtype, Device device, const char* where) const;

  Mamba2Config config_;
};

}  // namespace scanline
