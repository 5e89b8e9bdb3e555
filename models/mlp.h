#pragma once
// Mlp: the feed-forward block of a Transformer or hybrid (the `-` symbol of a layer pattern).
// For x (batch, L, d) or (batch, d), with F = hidden:
//   swiglu (default; Shazeer 2020, mamba_ssm's GatedMLP):
//     (y, gate) = fc1(x)          d -> 2F, y the first half, gate the second
//     out       = fc2(y · SiLU(gate))
//   gelu:   out = fc2(GELU(fc1(x)))     d -> F -> d, the exact (erf) GELU
//   relu2:  out = fc2(ReLU(fc1(x))²)    squared ReLU (So et al. 2021, Primer)
// Parameter names follow mamba_ssm: fc1.weight, fc2.weight (and biases).
//
// hidden = 0 picks the usual width: 8d/3 rounded up to a multiple of 64 for swiglu (the same
// parameter count as a 4d MLP, mamba_ssm's GatedMLP rule with Megatron's multiple of 64), 4d for
// gelu and relu2. The MLP is stateless: step() is forward() on one token.
#include <cstdint>
#include <string>

#include "core/random.h"
#include "models/linear.h"
#include "models/module.h"

namespace scanline {

struct MlpConfig {
  int64_t d_model = 0;
  int64_t hidden = 0;           // F; 0: see above
  std::string kind = "swiglu";  // "swiglu", "gelu" or "relu2"
  bool bias = false;            // biases of fc1 and fc2

  bool gated() const { return kind == "swiglu"; }
  int64_t resolved_hidden() const {
    if (hidden > 0) return hidden;
    return gated() ? (8 * d_model + 3 * 64 - 1) / (3 * 64) * 64 : 4 * d_model;
  }
  // Throws an Error naming the first impossible value.
  void validate() const;
};

class Mlp : public Module {
 public:
  // fc1 then fc2 with PyTorch's Linear init, drawn from gen in that order.
  Mlp(const MlpConfig& config, Generator& gen, TensorOptions options = {});

  // x (..., d_model) -> (..., d_model) in x's dtype.
  Tensor forward(const Tensor& x) const;
  // One token, x (batch, d_model): forward() without recording a graph (inference only).
  Tensor step(const Tensor& x) const;

  const MlpConfig& config() const { return config_; }

  Linear fc1;  // d -> 2F (swiglu) or F
  Linear fc2;  // F -> d

 private:
  MlpConfig config_;
};

}  // namespace scanline
