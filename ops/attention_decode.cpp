#include "ops/attention_decode.h"

#include <cmath>

#include "autograd/grad_mode.h"
#include "ops/attention_decode_cpu.h"
#include "ops/dispatch.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/attention.h"
#endif

namespace scanline {
namespace {

constexpr const char* kOp = "attention_decode";

void check_inputs(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& lengths,
                  double scale) {
  ops_detail::check_floating(kOp, q, "q");
  SCANLINE_CHECK(q.dim() == 3 && q.size(2) >= 1, kOp,
                 ": expected q of shape (batch, heads, headdim) with headdim >= 1 but found ", describe(q));
  const int64_t batch = q.size(0), heads = q.size(1), headdim = q.size(2);
  ops_detail::check_floating(kOp, k_cache, "k_cache");
  SCANLINE_CHECK(k_cache.dim() == 4 && k_cache.size(0) == batch && k_cache.size(2) >= 1 &&
                     k_cache.size(3) == headdim,
                 kOp, ": expected k_cache of shape (batch, max_len, kv_heads, headdim) = [", batch,
                 ", max_len, kv_heads, ", headdim, "] (batch and headdim of q ", describe(q), ") but found ",
                 describe(k_cache));
  const int64_t kv_heads = k_cache.size(2);
  SCANLINE_CHECK(heads % kv_heads == 0, kOp, ": kv_heads = ", kv_heads, " of k_cache ", describe(k_cache),
                 " must divide heads = ", heads, " of q ", describe(q));
  ops_detail::check_shape(kOp, v_cache, "v_cache", "(batch, max_len, kv_heads, headdim)", k_cache.shape());
  ops_detail::check_same_dtype(kOp, {q, k_cache, v_cache});
  ops_detail::check_shape(kOp, lengths, "lengths", "(batch)", {batch});
  SCANLINE_CHECK(lengths.dtype() == DType::i32 || lengths.dtype() == DType::i64, kOp,
                 ": expected lengths to be i32 or i64 but found ", describe(lengths));
  ops_detail::check_same_device(kOp, {q, k_cache, v_cache, lengths});
  SCANLINE_CHECK(std::isfinite(scale) && scale >= 0.0, kOp,
                 ": expected a finite scale > 0 (or 0 for 1/sqrt(headdim)) but found ", scale);
  ops_detail::check_inference_only(
      kOp, {{q, "q"}, {k_cache, "k_cache"}, {v_cache, "v_cache"}, {lengths, "lengths"}});
}

}  // namespace

Tensor attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& lengths,
                        double scale) {
  check_inputs(q, k_cache, v_cache, lengths, scale);
  NoGradGuard no_grad;  // nothing below records a graph
  const double resolved = scale == 0.0 ? 1.0 / std::sqrt(double(q.size(2))) : scale;
#ifdef SCANLINE_HAVE_CUDA
  if (q.device().is_cuda()) return cuda::attention_decode(q, k_cache, v_cache, lengths, resolved);
#endif
  if (!q.device().is_cpu()) ops_detail::no_cuda_kernel(kOp, q);
  const int64_t max_len = k_cache.size(1);
  const std::vector<int64_t> len = lengths.to_vector<int64_t>();
  for (size_t b = 0; b < len.size(); ++b)
    SCANLINE_CHECK(len[b] >= 0 && len[b] <= max_len, kOp, ": expected every length in [0, max_len = ", max_len,
                   "] but lengths[", b, "] = ", len[b]);
  return cpu::attention_decode(q, k_cache, v_cache, lengths, resolved);
}

}  // namespace scanline
