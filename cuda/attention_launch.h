#pragma once
// Host-side pieces shared by the attention kernel files (included by .cu files only): input
// checks, the layouts the kernels read in place, the backward's parameter block and the entry
// points of the kernels that live in their own files.
#include <cstdint>
#include <initializer_list>

#include "core/cuda/launch.h"

namespace scanline::cuda::attn {

// Kernels exist for these head dims; fn.template operator()<kD>().
template <typename Fn>
void with_headdim(int64_t headdim, Fn&& fn) {
  switch (headdim) {
    case 64: return fn.template operator()<64>();
    case 128: return fn.template operator()<128>();
    default: SCANLINE_FAIL("attention: no CUDA kernel for headdim ", headdim, " (the kernels take 64 or 128)");
  }
}

// The checks every CUDA entry point makes beyond ops/ (shapes there are already validated).
inline void check_operands(const char* op, std::initializer_list<const Tensor*> tensors, int64_t headdim) {
  DType dtype = (*tensors.begin())->dtype();
  for (const Tensor* t : tensors) {
    check_cuda_tensor(op, *t, "an input");
    SCANLINE_CHECK(t->dtype() == DType::f32 || t->dtype() == DType::bf16, op,
                   ": the CUDA kernels take f32 or bf16 inputs but found ", describe(*t));
    SCANLINE_CHECK(t->dtype() == dtype, op, ": expected one dtype but found ", describe(*t));
  }
  SCANLINE_CHECK(headdim == 64 || headdim == 128, op, ": the CUDA kernels take headdim 64 or 128 but found ",
                 headdim, " (the CPU path takes any)");
}

// The backward's further checks: the output and its gradient in q's shape, lse (batch, heads, L) f32.
inline void check_backward_operands(const char* op, const Tensor& q, const Tensor& out, const Tensor& lse,
                                    const Tensor& grad_out) {
  check_cuda_tensor(op, lse, "lse");
  const int64_t batch = q.shape()[0], L = q.shape()[1], heads = q.shape()[2];
  SCANLINE_CHECK(grad_out.shape() == q.shape() && out.shape() == q.shape(), op,
                 ": expected the output and its gradient in q's shape ", describe(q), " but found ", describe(out),
                 " and ", describe(grad_out));
  SCANLINE_CHECK(lse.dtype() == DType::f32 && lse.shape() == Shape({batch, heads, L}), op, ": expected lse f32 [",
                 batch, ", ", heads, ", ", L, "] but found ", describe(lse));
}

// t itself when its last dim is contiguous, its data 16-byte aligned and every other stride a
// whole number of 16-byte vectors (rows are loaded as 16-byte vectors), else a dense copy.
inline Tensor rows_aligned(const Tensor& t) {
  if (!t.defined()) return t;
  const int64_t vec = 16 / int64_t(dtype_size(t.dtype()));
  bool ok = t.strides().back() == 1 && aligned16(t.raw_data());
  for (int64_t d = 0; d + 1 < t.dim(); ++d)
    ok = ok && (t.shape()[size_t(d)] == 1 || t.strides()[size_t(d)] % vec == 0);
  return ok ? t : contiguous_copy(t, t.dtype(), t.device());
}

// Grids are one-dimensional with the tile index folded in.
inline void check_grid(const char* op, int64_t blocks) {
  SCANLINE_CHECK(blocks <= int64_t(0x7fffffff), op, ": ", blocks, " blocks exceed the CUDA grid limit");
}

// Query and key tiles of the dK/dV kernel (the dQ kernel's are in cuda/attention_bwd.cu).
inline constexpr int kBwdTile = 64;

template <typename T>
struct BwdParams {
  const T* q;
  const T* k;
  const T* v;
  const T* dout;         // (batch, L, heads, headdim), strided rows
  const float* lse2;     // (batch, heads, L_pad), L_pad = L rounded up to 128: lse · log2(e); +inf past L
  const float* delta;    // (batch, heads, L_pad): rowsum(dO ∘ O); 0 past L
  T* dq;                 // contiguous, q's shape
  T* dk;                 // contiguous, k's shape
  T* dv;
  int64_t q_batch, q_row, q_head, k_batch, k_row, k_head, v_batch, v_row, v_head, o_batch, o_row, o_head;
  int64_t L, L_pad, batch;
  int heads, kv_heads, group;
  float scale, scale_log2;
};

// cuda/attention_bwd_dkdv.cu: dK and dV (the current stream; device set by the caller).
template <typename T>
void launch_bwd_dkdv(const BwdParams<T>& p, int64_t headdim, bool causal);

}  // namespace scanline::cuda::attn
