#include "ops/matmul_cpu.h"

#include <algorithm>
#include <climits>
#include <optional>
#include <type_traits>
#include <vector>

#include "core/parallel.h"

#ifdef SCANLINE_HAVE_BLAS
#include <cblas.h>
#endif

namespace scanline::cpu {
namespace {

// One GEMM over a batch: C[b] (m x n, contiguous) = A[b] @ B[b], or C[b] += A[b] @ B[b] when
// `accumulate` (C then holds e.g. a bias). Element (i, j) of A[b] sits at
// a_base[a_offsets[b] + i * a_rs + j * a_cs]; likewise for B.
template <typename T>
struct BatchedGemm {
  int64_t m = 0, n = 0, k = 0;
  const T* a_base = nullptr;
  int64_t a_rs = 0, a_cs = 0;
  std::vector<int64_t> a_offsets;
  const T* b_base = nullptr;
  int64_t b_rs = 0, b_cs = 0;
  std::vector<int64_t> b_offsets;
  T* c = nullptr;
  bool accumulate = false;
  int64_t batch() const { return int64_t(a_offsets.size()); }
};

// ---- Hand-written blocked GEMM -----------------------------------------------------------------
// The output is cut into tiles of kRowBlock x kColBlock; each tile is computed by one thread,
// walking k in ascending order (in blocks of kDepthBlock), so every element is the same sum in
// the same order whatever the thread count. Operand tiles are packed (and converted to the
// accumulation type) so the inner loop reads unit-stride memory.
constexpr int64_t kRowBlock = 64;
constexpr int64_t kColBlock = 256;
constexpr int64_t kDepthBlock = 256;

// acc[rows x nc] += apack[rows x kc] @ bpack[kc x nc]; four rows at a time share each B row load.
template <typename A>
void tile_kernel(A* acc, const A* apack, const A* bpack, int64_t rows, int64_t nc, int64_t kc) {
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) {
    A* __restrict c0 = acc + i * nc;
    A* __restrict c1 = c0 + nc;
    A* __restrict c2 = c1 + nc;
    A* __restrict c3 = c2 + nc;
    const A* a0 = apack + i * kc;
    for (int64_t p = 0; p < kc; ++p) {
      const A x0 = a0[p], x1 = a0[kc + p], x2 = a0[2 * kc + p], x3 = a0[3 * kc + p];
      const A* __restrict brow = bpack + p * nc;
      for (int64_t j = 0; j < nc; ++j) {
        const A bv = brow[j];
        c0[j] += x0 * bv;
        c1[j] += x1 * bv;
        c2[j] += x2 * bv;
        c3[j] += x3 * bv;
      }
    }
  }
  for (; i < rows; ++i) {
    A* __restrict c0 = acc + i * nc;
    const A* arow = apack + i * kc;
    for (int64_t p = 0; p < kc; ++p) {
      const A x0 = arow[p];
      const A* __restrict brow = bpack + p * nc;
      for (int64_t j = 0; j < nc; ++j) c0[j] += x0 * brow[j];
    }
  }
}

template <typename T>
void gemm_blocked(const BatchedGemm<T>& g) {
  using A = acc_t<T>;
  const int64_t row_blocks = (g.m + kRowBlock - 1) / kRowBlock;
  const int64_t col_blocks = (g.n + kColBlock - 1) / kColBlock;
  const int64_t tiles_per_matrix = row_blocks * col_blocks;
  // Enough tiles per chunk that a chunk is worth a thread wake-up (~256k multiply-adds).
  const int64_t tile_work = std::min(g.m, kRowBlock) * std::min(g.n, kColBlock) * g.k;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(tile_work, 1));
  parallel_for(g.batch() * tiles_per_matrix, grain, [&](int64_t begin, int64_t end) {
    std::vector<A> acc(size_t(kRowBlock * kColBlock));
    std::vector<A> apack(size_t(kRowBlock * kDepthBlock));
    std::vector<A> bpack(size_t(kDepthBlock * kColBlock));
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t b = tile / tiles_per_matrix;
      const int64_t i0 = (tile % tiles_per_matrix) / col_blocks * kRowBlock;
      const int64_t j0 = (tile % col_blocks) * kColBlock;
      const int64_t mc = std::min(kRowBlock, g.m - i0), nc = std::min(kColBlock, g.n - j0);
      const T* a = g.a_base + g.a_offsets[size_t(b)];
      const T* bm = g.b_base + g.b_offsets[size_t(b)];
      T* c = g.c + b * g.m * g.n;
      for (int64_t i = 0; i < mc; ++i)
        for (int64_t j = 0; j < nc; ++j)
          acc[size_t(i * nc + j)] = g.accumulate ? A(c[(i0 + i) * g.n + j0 + j]) : A(0);
      for (int64_t p0 = 0; p0 < g.k; p0 += kDepthBlock) {
        const int64_t kc = std::min(kDepthBlock, g.k - p0);
        for (int64_t i = 0; i < mc; ++i)
          for (int64_t p = 0; p < kc; ++p)
            apack[size_t(i * kc + p)] = A(a[(i0 + i) * g.a_rs + (p0 + p) * g.a_cs]);
        for (int64_t p = 0; p < kc; ++p)
          for (int64_t j = 0; j < nc; ++j)
            bpack[size_t(p * nc + j)] = A(bm[(p0 + p) * g.b_rs + (j0 + j) * g.b_cs]);
        tile_kernel(acc.data(), apack.data(), bpack.data(), mc, nc, kc);
      }
      for (int64_t i = 0; i < mc; ++i)
        for (int64_t j = 0; j < nc; ++j) c[(i0 + i) * g.n + j0 + j] = T(acc[size_t(i * nc + j)]);
    }
  });
}

// ---- OpenBLAS ----------------------------------------------------------------------------------
#ifdef SCANLINE_HAVE_BLAS
struct BlasLayout {
  bool transposed;
  int64_t ld;
};

// How cblas (row-major) can read a rows x cols matrix with these strides without a copy: as
// stored (unit column stride) or as the transpose of a row-major matrix (unit row stride).
// Strides of size-1 dimensions never matter.
std::optional<BlasLayout> blas_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  if ((cs == 1 || cols == 1) && (rows == 1 || rs >= std::max<int64_t>(cols, 1)))
    return BlasLayout{false, rows == 1 ? std::max<int64_t>(cols, 1) : rs};
  if ((rs == 1 || rows == 1) && (cols == 1 || cs >= std::max<int64_t>(rows, 1)))
    return BlasLayout{true, cols == 1 ? std::max<int64_t>(rows, 1) : cs};
  return std::nullopt;
}

// An operand as cblas reads it: in place, or packed into `copy` when its strides don't allow it.
template <typename T>
struct BlasOperand {
  BlasLayout layout{false, 0};
  bool packed = false;
  std::vector<T> copy;

  BlasOperand(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
    auto l = blas_layout(rows, cols, rs, cs);
    packed = !l.has_value();
    layout = packed ? BlasLayout{false, std::max<int64_t>(cols, 1)} : *l;
    if (packed) copy.resize(size_t(rows * cols));
  }
  const T* pointer(const T* src, int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
    if (!packed) return src;
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) copy[size_t(i * cols + j)] = src[i * rs + j * cs];
    return copy.data();
  }
};

// Batches run one after another; OpenBLAS threads each product internally.
template <typename T>
void gemm_openblas(const BatchedGemm<T>& g) {
  SCANLINE_CHECK(g.m <= INT_MAX && g.n <= INT_MAX && g.k <= INT_MAX,
                 "matmul: dimensions (", g.m, ", ", g.n, ", ", g.k, ") exceed the BLAS int range");
  BlasOperand<T> a(g.m, g.k, g.a_rs, g.a_cs), b(g.k, g.n, g.b_rs, g.b_cs);
  const auto ta = a.layout.transposed ? CblasTrans : CblasNoTrans;
  const auto tb = b.layout.transposed ? CblasTrans : CblasNoTrans;
  const T beta = g.accumulate ? T(1) : T(0);
  for (int64_t batch = 0; batch < g.batch(); ++batch) {
    const T* pa = a.pointer(g.a_base + g.a_offsets[size_t(batch)], g.m, g.k, g.a_rs, g.a_cs);
    const T* pb = b.pointer(g.b_base + g.b_offsets[size_t(batch)], g.k, g.n, g.b_rs, g.b_cs);
    T* pc = g.c + batch * g.m * g.n;
    if constexpr (std::is_same_v<T, float>)
      cblas_sgemm(CblasRowMajor, ta, tb, int(g.m), int(g.n), int(g.k), 1.0f, pa, int(a.layout.ld), pb,
                  int(b.layout.ld), beta, pc, int(g.n));
    else
      cblas_dgemm(CblasRowMajor, ta, tb, int(g.m), int(g.n), int(g.k), 1.0, pa, int(a.layout.ld), pb,
                  int(b.layout.ld), beta, pc, int(g.n));
  }
}
#endif

// The one place that picks the GEMM path.
template <typename T>
void gemm(const BatchedGemm<T>& g) {
  if (g.m == 0 || g.n == 0 || g.batch() == 0) return;
  if (g.k == 0) {  // an empty sum: C = 0, or C unchanged when accumulating
    if (!g.accumulate) std::fill(g.c, g.c + g.batch() * g.m * g.n, T(0));
    return;
  }
#ifdef SCANLINE_HAVE_BLAS
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    gemm_openblas(g);
    return;
  }
#endif
  gemm_blocked(g);
}

template <typename T>
const T* base_ptr(const Tensor& t) { return static_cast<const T*>(t.impl()->storage->data()); }

// Storage offset of every matrix of t's leading (batch) dims, in row-major batch order.
std::vector<int64_t> batch_offsets(const Tensor& t) {
  const int64_t nbatch = t.dim() - 2;
  std::vector<int64_t> offsets{t.offset()};
  for (int64_t d = nbatch - 1; d >= 0; --d) {
    // Prepend dimension d: each existing offset fans out over its size.
    std::vector<int64_t> next;
    next.reserve(offsets.size() * size_t(t.shape()[d]));
    for (int64_t i = 0; i < t.shape()[d]; ++i)
      for (int64_t off : offsets) next.push_back(off + i * t.strides()[d]);
    offsets = std::move(next);
  }
  return offsets;
}

}  // namespace

const char* gemm_backend() {
#ifdef SCANLINE_HAVE_BLAS
  return "openblas";
#else
  return "blocked";
#endif
}

Tensor matmul(const Tensor& a, const Tensor& b) {
  const int64_t nd = a.dim();
  Shape out_shape(a.shape().begin(), a.shape().end() - 2);
  out_shape.push_back(a.shape()[nd - 2]);
  out_shape.push_back(b.shape()[nd - 1]);
  Tensor out = empty(out_shape, a.options());
  dispatch_floating(a.dtype(), "matmul", [&]<typename T>() {
    BatchedGemm<T> g;
    g.m = a.shape()[nd - 2];
    g.k = a.shape()[nd - 1];
    g.n = b.shape()[nd - 1];
    g.a_base = base_ptr<T>(a);
    g.a_rs = a.strides()[nd - 2];
    g.a_cs = a.strides()[nd - 1];
    g.a_offsets = batch_offsets(a);
    g.b_base = base_ptr<T>(b);
    g.b_rs = b.strides()[nd - 2];
    g.b_cs = b.strides()[nd - 1];
    g.b_offsets = batch_offsets(b);
    g.c = out.data_ptr<T>();
    gemm(g);
  });
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const int64_t rows = x.shape()[0], in = x.shape()[1], out_features = weight.shape()[0];
  Tensor out = empty({rows, out_features}, x.options());
  dispatch_floating(x.dtype(), "linear", [&]<typename T>() {
    T* o = out.data_ptr<T>();
    if (bias.defined()) {  // start every row from the bias, then accumulate x @ weight^T
      const T* pb = base_ptr<T>(bias) + bias.offset();
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < out_features; ++j) o[r * out_features + j] = pb[j * bias.strides()[0]];
    }
    BatchedGemm<T> g;
    g.m = rows;
    g.k = in;
    g.n = out_features;
    g.a_base = base_ptr<T>(x);
    g.a_rs = x.strides()[0];
    g.a_cs = x.strides()[1];
    g.a_offsets = {x.offset()};
    g.b_base = base_ptr<T>(weight);  // weight^T: (in, out) read through swapped strides
    g.b_rs = weight.strides()[1];
    g.b_cs = weight.strides()[0];
    g.b_offsets = {weight.offset()};
    g.c = o;
    g.accumulate = bias.defined();
    gemm(g);
  });
  return out;
}

}  // namespace scanline::cpu
