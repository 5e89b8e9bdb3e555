// Broadcasting comparisons (bool results) and where(cond, a, b), for every dtype.
#include "cuda/elementwise.h"
#include "cuda/elementwise_kernels.cuh"

namespace scanline::cuda {
namespace {

using namespace elementwise;

// Compares in the CPU reference's compute type (fp32, f64 or int64): NaN compares unequal.
template <CompareOp Op, typename T>
struct CompareFn {
  __device__ __forceinline__ bool operator()(T a, T b) const {
    const auto x = to_math(a), y = to_math(b);
    if constexpr (Op == CompareOp::eq) return x == y;
    else if constexpr (Op == CompareOp::ne) return x != y;
    else if constexpr (Op == CompareOp::lt) return x < y;
    else if constexpr (Op == CompareOp::le) return x <= y;
    else if constexpr (Op == CompareOp::gt) return x > y;
    else return x >= y;
  }
};

template <typename T>
struct WhereFn {
  __device__ __forceinline__ T operator()(bool c, T a, T b) const { return c ? a : b; }
};

template <typename Fn>
void with_compare_op(CompareOp op, Fn&& fn) {
  switch (op) {
    case CompareOp::eq: return fn.template operator()<CompareOp::eq>();
    case CompareOp::ne: return fn.template operator()<CompareOp::ne>();
    case CompareOp::lt: return fn.template operator()<CompareOp::lt>();
    case CompareOp::le: return fn.template operator()<CompareOp::le>();
    case CompareOp::gt: return fn.template operator()<CompareOp::gt>();
    case CompareOp::ge: return fn.template operator()<CompareOp::ge>();
  }
  SCANLINE_FAIL("compare: unknown op");
}

}  // namespace

Tensor compare(CompareOp op, const Tensor& a, const Tensor& b) {
  check_operands("compare", {{&a, "a"}, {&b, "b"}});
  SCANLINE_CHECK(a.dtype() == b.dtype(), "compare: expected one dtype but found ", describe(a), " and ",
                 describe(b));
  Shape shape = broadcast_shapes(a.shape(), b.shape(), "compare");
  Tensor out = empty(shape, a.options().with_dtype(DType::b8));
  dispatch_all(a.dtype(), "compare", [&]<typename S>() {
    using T = device_t<S>;
    with_compare_op(op, [&]<CompareOp Op>() { launch<bool, T, T, char, 2>("compare", out, CompareFn<Op, T>{}, a, b); });
  });
  return out;
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_operands("where", {{&cond, "cond"}, {&a, "a"}, {&b, "b"}});
  SCANLINE_CHECK(cond.dtype() == DType::b8, "where: expected cond to be bool but found ", describe(cond));
  SCANLINE_CHECK(a.dtype() == b.dtype(), "where: expected one dtype but found ", describe(a), " and ", describe(b));
  Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  Tensor out = empty(shape, a.options());
  dispatch_all(a.dtype(), "where", [&]<typename S>() {
    using T = device_t<S>;
    launch<T, bool, T, T, 3>("where", out, WhereFn<T>{}, cond, a, b);
  });
  return out;
}

}  // namespace scanline::cuda
