#pragma once
// CPU reference of attention_decode (ops/attention_decode.h): double math, one (batch row, head)
// a task, the output rounded once to q's dtype. The caller has checked shapes, dtypes and that
// every length lies in [0, max_len].
#include "core/tensor.h"

namespace scanline::cpu {

// scale is the resolved one (> 0). Returns (batch, heads, headdim) in q's dtype.
Tensor attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& lengths,
                        double scale);

}  // namespace scanline::cpu
