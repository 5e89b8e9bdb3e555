#include "core/allocator.h"
#include "core/strided_loop.h"
#include "core/tensor.h"

#ifdef SCANLINE_HAVE_CUDA
#include "core/cuda/tensor_kernels.h"
#endif

namespace scanline {

void accumulate_into(const Tensor& dst, const Tensor& src) {
  SCANLINE_CHECK(dst.shape() == src.shape() && dst.dtype() == src.dtype() &&
                     dst.device() == src.device(),
                 "accumulate: cannot add ", describe(src), " into ", describe(dst));
  if (!dst.device().is_cpu()) {
#ifdef SCANLINE_HAVE_CUDA
    return cuda::accumulate_tensor(dst, src);
#else
    SCANLINE_FAIL("accumulate: ", describe(dst), " needs the CUDA backend, which this build lacks");
#endif
  }
  dispatch_floating(dst.dtype(), "accumulate", [&]<typename T>() {
    T* out = static_cast<T*>(dst.impl()->storage->data());
    const T* in = static_cast<const T*>(src.impl()->storage->data());
    strided_loop<2>(dst.shape(), {dst.strides().data(), src.strides().data()},
                    {dst.offset(), src.offset()},
                    [&](std::array<int64_t, 2> o, int64_t n, std::array<int64_t, 2> s) {
                      for (int64_t i = 0; i < n; ++i) {
                        T& d = out[o[0] + i * s[0]];
                        d = T(acc_t<T>(d) + acc_t<T>(in[o[1] + i * s[1]]));
                      }
                    });
  });
}

}  // namespace scanline
