#pragma once
// Rotary position embedding (RoFormer, Su et al. 2021) in the GPT-NeoX / Llama "rotate_half"
// convention: the head vector is cut into halves and pair (i, i + headdim/2) is rotated by the
// angle p · theta^(-2i / headdim), p the token's position:
//   out[i]           = x[i] cos(a_i) - x[i + half] sin(a_i)
//   out[i + half]    = x[i + half] cos(a_i) + x[i] sin(a_i)
// One differentiable node; its backward is the inverse rotation. Angles and their sines and
// cosines are computed in double on both devices (positions far past 2^12 keep full precision);
// the rotation itself runs in double on the CPU and in fp32 on the GPU.
#include <cstdint>

#include "core/tensor.h"

namespace scanline {

// x: (batch, L, heads, headdim) with headdim even, any floating dtype (CUDA: f32, bf16), any
// strides (CUDA reads views with a contiguous last dim in place and copies others). Token t of
// the sequence is at position position_offset + t (position_offset >= 0: the number of tokens
// before it, e.g. a KV cache's length). theta > 0. Returns a contiguous tensor of x's shape and
// dtype.
Tensor rope(const Tensor& x, int64_t position_offset = 0, double theta = 10000.0);

}  // namespace scanline
