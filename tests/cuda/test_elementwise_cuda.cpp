// CUDA elementwise ops against the CPU reference: forward and backward of every binary, unary,
// compare and where op, f32 (1e-5) and bf16 (1e-2), on odd sizes, broadcasting, transposed and
// misaligned inputs, scalar operands, and offsets and sizes past 2^31.
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "ops/ops.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

const std::vector<BinaryOp> kBinaryOps = {BinaryOp::add,     BinaryOp::sub,     BinaryOp::mul, BinaryOp::div,
                                          BinaryOp::maximum, BinaryOp::minimum, BinaryOp::pow};
const std::vector<UnaryOp> kUnaryOps = {UnaryOp::neg,     UnaryOp::exp,      UnaryOp::log,  UnaryOp::sqrt,
                                        UnaryOp::rsqrt,   UnaryOp::square,   UnaryOp::sigmoid,
                                        UnaryOp::silu,    UnaryOp::softplus, UnaryOp::gelu, UnaryOp::gelu_tanh,
                                        UnaryOp::relu,    UnaryOp::tanh,     UnaryOp::abs};
const std::vector<CompareOp> kCompareOps = {CompareOp::eq, CompareOp::ne, CompareOp::lt,
                                            CompareOp::le, CompareOp::gt, CompareOp::ge};

// The same values on both devices: a CPU tensor and its GPU copy, both leaves.
struct Pair {
  Tensor cpu, gpu;
};

enum class Layout { contiguous, transposed, misaligned };

// Random values in [low, high) of `shape` in dtype. transposed: a view with the last two dims
// swapped in memory; misaligned: a view starting one element into its storage (no 16-byte
// alignment, so the kernels take their general path).
Pair make_pair(const Shape& shape, uint64_t seed, DType dtype, double low = -1.0, double high = 1.0,
               Layout layout = Layout::contiguous, bool requires_grad = true) {
  Shape stored = shape;
  if (layout == Layout::transposed) std::swap(stored[stored.size() - 1], stored[stored.size() - 2]);
  if (layout == Layout::misaligned) stored = {numel_of(shape) + 1};
  Tensor base = random_cpu(stored, seed, dtype, low, high);
  auto view = [&](const Tensor& t) {
    if (layout == Layout::transposed) {
      Shape strides = t.strides();
      std::swap(strides[strides.size() - 1], strides[strides.size() - 2]);
      return as_strided(t, shape, strides, 0);
    }
    if (layout == Layout::misaligned) return as_strided(t, shape, contiguous_strides(shape), 1);
    return t;
  };
  Pair p{view(base), view(on_gpu(base))};
  if (requires_grad) {
    p.cpu.set_requires_grad(true);
    p.gpu.set_requires_grad(true);
  }
  return p;
}

// Bit-for-bit results (as doubles): equal values, infinities included, or NaN on both sides.
void check_exact(const Tensor& actual, const Tensor& expected, const std::string& what) {
  REQUIRE(actual.shape() == expected.shape());
  std::vector<double> a = actual.to_double_vector(), e = expected.to_double_vector();
  int64_t bad = 0;
  std::string first;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] == e[i] || (std::isnan(a[i]) && std::isnan(e[i]))) continue;
    if (bad++ == 0)
      first = "; first at " + std::to_string(i) + ": " + std::to_string(a[i]) + " vs " + std::to_string(e[i]);
  }
  INFO(what, ": ", bad, " of ", a.size(), " elements differ", first);
  CHECK(bad == 0);
}

// Largest |x| (at least 1): the scale of a gradient that sums many terms.
double scale_of(const Tensor& t) {
  double m = 1.0;
  for (double v : t.to_double_vector()) m = std::max(m, std::abs(v));
  return m;
}

// How the tests start the backward: from sum(out * w) (the usual loss-like root), or from out
// itself with w as its gradient (the same gradients without a reduction kernel).
enum class Root { weighted_sum, explicit_grad };

// Runs backward on both devices with one random weight tensor w.
void backward_weighted(const Tensor& out_cpu, const Tensor& out_gpu, uint64_t seed, Root root = Root::weighted_sum) {
  Pair w = make_pair(out_cpu.shape(), seed, out_cpu.dtype(), -1.0, 1.0, Layout::contiguous, false);
  if (root == Root::explicit_grad) {
    backward(out_cpu, w.cpu);
    backward(out_gpu, w.gpu);
    return;
  }
  backward(sum(mul(out_cpu, w.cpu)));
  backward(sum(mul(out_gpu, w.gpu)));
}

void check_grad(const Pair& p, double tol, const std::string& what) {
  REQUIRE(p.cpu.grad().defined());
  REQUIRE(p.gpu.grad().defined());
  CHECK(p.gpu.grad().device() == gpu());
  check_relative(p.gpu.grad(), p.cpu.grad(), tol, scale_of(p.cpu.grad()), what);
}

// Operand ranges that keep every op finite and well conditioned (div, pow and log need b or x
// away from zero).
struct Range {
  double low, high;
};
Range range_a(BinaryOp op) { return op == BinaryOp::pow ? Range{0.5, 2.0} : Range{-1.0, 1.0}; }
Range range_b(BinaryOp op) {
  return op == BinaryOp::div || op == BinaryOp::pow ? Range{0.5, 2.0} : Range{-1.0, 1.0};
}
Range range_x(UnaryOp op) {
  return op == UnaryOp::log || op == UnaryOp::sqrt || op == UnaryOp::rsqrt ? Range{0.2, 3.0} : Range{-2.0, 2.0};
}

void check_binary(BinaryOp op, DType dtype, const Shape& sa, const Shape& sb, uint64_t seed,
                  Layout la = Layout::contiguous, Layout lb = Layout::contiguous, Root root = Root::weighted_sum) {
  CAPTURE(int(op));
  CAPTURE(dtype);
  Pair a = make_pair(sa, seed, dtype, range_a(op).low, range_a(op).high, la);
  Pair b = make_pair(sb, seed + 1, dtype, range_b(op).low, range_b(op).high, lb);
  Tensor out_cpu = binary(op, a.cpu, b.cpu), out_gpu = binary(op, a.gpu, b.gpu);
  REQUIRE(out_gpu.device() == gpu());
  const double tol = tolerance_for(dtype);
  check_relative(out_gpu, out_cpu, tol, 1.0, "forward");
  backward_weighted(out_cpu, out_gpu, seed + 2, root);
  check_grad(a, tol, "grad of a");
  check_grad(b, tol, "grad of b");
}

void check_unary(UnaryOp op, DType dtype, const Shape& shape, uint64_t seed, Layout layout = Layout::contiguous,
                 Root root = Root::weighted_sum) {
  CAPTURE(int(op));
  CAPTURE(dtype);
  Pair x = make_pair(shape, seed, dtype, range_x(op).low, range_x(op).high, layout);
  Tensor out_cpu = unary(op, x.cpu), out_gpu = unary(op, x.gpu);
  const double tol = tolerance_for(dtype);
  check_relative(out_gpu, out_cpu, tol, 1.0, "forward");
  backward_weighted(out_cpu, out_gpu, seed + 1, root);
  check_grad(x, tol, "grad of x");
}

// Ops whose CPU and GPU results are bit-identical in bf16 (IEEE operations only): on a million
// elements a one-ulp difference in a transcendental function would flip some bf16 roundings.
bool exact_in_bf16(UnaryOp op) {
  return op == UnaryOp::neg || op == UnaryOp::sqrt || op == UnaryOp::rsqrt || op == UnaryOp::square ||
         op == UnaryOp::relu || op == UnaryOp::abs;
}

}  // namespace

TEST_CASE("cuda binary ops match the CPU forward and backward") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (BinaryOp op : kBinaryOps) {
      check_binary(op, dtype, {1}, {1}, 10);
      check_binary(op, dtype, {7}, {7}, 11);
      check_binary(op, dtype, {3, 5, 7}, {3, 5, 7}, 12);
      check_binary(op, dtype, {3, 1, 7}, {5, 1}, 13);                               // both broadcast
      check_binary(op, dtype, {3, 5, 7}, {3, 5, 7}, 14, Layout::transposed);         // non-contiguous
      check_binary(op, dtype, {3, 5, 7}, {}, 15);                                    // 0-d scalar
      check_binary(op, dtype, {}, {3, 5, 7}, 16);
      check_binary(op, dtype, {4, 9}, {1}, 17);                                      // 1-element operand
      check_binary(op, dtype, {64, 48}, {48}, 18);                                   // row broadcast
      check_binary(op, dtype, {64, 48}, {64, 1}, 19);                                // column broadcast
      check_binary(op, dtype, {64, 46}, {46}, 20);                                   // row not a pack multiple
      check_binary(op, dtype, {1001}, {1001}, 21, Layout::misaligned, Layout::contiguous);
    }
  }
}

TEST_CASE("cuda binary ops on a million elements (vector path and tail)") {
  for (BinaryOp op : kBinaryOps) {
    check_binary(op, DType::f32, {1000003}, {1000003}, 30);
    check_binary(op, DType::f32, {1000003}, {}, 31);
    if (op != BinaryOp::pow) {  // powf differs from the CPU's pow by an ulp now and then
      check_binary(op, DType::bf16, {1000003}, {1000003}, 32);
      check_binary(op, DType::bf16, {1000003}, {}, 33);
    }
  }
}

TEST_CASE("cuda scalar overloads and operators") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    Pair a = make_pair({5, 13}, 40, dtype, 0.5, 2.0);
    auto f = [](const Tensor& x) { return pow((x * 3.0 - 1.0) / 2.0 + x, 2.0) - x; };
    Tensor out_cpu = f(a.cpu), out_gpu = f(a.gpu);
    check_relative(out_gpu, out_cpu, tolerance_for(dtype), 1.0, "forward");
    backward_weighted(out_cpu, out_gpu, 41);
    check_grad(a, tolerance_for(dtype), "grad");
  }
}

TEST_CASE("cuda maximum and minimum propagate NaN like the CPU") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> va = {1.0, nan, 2.0, nan, -inf, 3.0, 0.0, -0.0, 5.0};
  std::vector<double> vb = {nan, 1.0, 3.0, nan, 1.0, inf, -0.0, 0.0, 5.0};
  for (DType dtype : {DType::f32, DType::bf16, DType::f64}) {
    CAPTURE(dtype);
    Tensor a = to_dtype(from_vector(va, {9}), dtype), b = to_dtype(from_vector(vb, {9}), dtype);
    for (BinaryOp op : {BinaryOp::maximum, BinaryOp::minimum}) {
      Tensor ref = binary(op, a, b);
      check_exact(binary(op, on_gpu(a), on_gpu(b)), ref, "NaN propagation");
      // Scalar b: the fast path.
      Tensor s = to_dtype(from_vector(std::vector<double>{nan}, {}), dtype);
      check_exact(binary(op, on_gpu(a), on_gpu(s)), binary(op, a, s), "NaN scalar");
    }
  }
}

TEST_CASE("cuda unary ops match the CPU forward and backward") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (UnaryOp op : kUnaryOps) {
      check_unary(op, dtype, {1}, 50);
      check_unary(op, dtype, {7}, 51);
      check_unary(op, dtype, {3, 5, 7}, 52);
      check_unary(op, dtype, {3, 5, 7}, 53, Layout::transposed);
      check_unary(op, dtype, {}, 54);
      check_unary(op, dtype, {1001}, 55, Layout::misaligned);
      if (dtype == DType::f32 || exact_in_bf16(op)) check_unary(op, dtype, {1000003}, 56);
    }
  }
}

TEST_CASE("cuda softplus does not overflow") {
  std::vector<double> v = {-1000.0, -90.0, -20.0, -1.0, 0.5, 20.0, 90.0, 1000.0};
  for (DType dtype : {DType::f32, DType::bf16}) {
    Tensor x = to_dtype(from_vector(v, {8}), dtype);
    Tensor y = softplus(on_gpu(x));
    check_relative(y, softplus(x), tolerance_for(dtype), 1.0, "softplus");
    for (double e : y.to_double_vector()) CHECK(std::isfinite(e));
  }
}

TEST_CASE("cuda elementwise ops in f16 and f64") {
  // Same-shape operands and explicit root gradients: no reduction kernel is involved, so only the
  // elementwise kernels meet these dtypes.
  for (DType dtype : {DType::f16, DType::f64}) {
    CAPTURE(dtype);
    for (BinaryOp op : kBinaryOps) {
      check_binary(op, dtype, {3, 5, 7}, {3, 5, 7}, 60, Layout::transposed, Layout::contiguous, Root::explicit_grad);
      check_binary(op, dtype, {1001}, {1001}, 61, Layout::contiguous, Layout::contiguous, Root::explicit_grad);
      // Broadcasting, forward only.
      Tensor a = random_cpu({3, 1, 7}, 62, dtype, 0.5, 2.0), b = random_cpu({5, 1}, 63, dtype, 0.5, 2.0);
      check_relative(binary(op, on_gpu(a), on_gpu(b)), binary(op, a, b), tolerance_for(dtype), 1.0, "broadcast");
    }
    for (UnaryOp op : kUnaryOps) {
      check_unary(op, dtype, {5, 7}, 64, Layout::transposed, Root::explicit_grad);
      check_unary(op, dtype, {1001}, 65, Layout::contiguous, Root::explicit_grad);
    }
  }
}

TEST_CASE("cuda integer add, sub, mul, maximum, minimum") {
  for (DType dtype : {DType::i64, DType::i32}) {
    CAPTURE(dtype);
    Generator gen(70);
    for (auto [sa, sb] : std::vector<std::pair<Shape, Shape>>{{{1000003}, {1000003}}, {{3, 1, 7}, {5, 1}},
                                                              {{64, 48}, {48}}, {{6, 10}, {}}}) {
      Tensor a = randint(-100000, 100000, sa, gen, {.dtype = dtype});
      Tensor b = randint(-100000, 100000, sb, gen, {.dtype = dtype});
      for (BinaryOp op : {BinaryOp::add, BinaryOp::sub, BinaryOp::mul, BinaryOp::maximum, BinaryOp::minimum}) {
        CAPTURE(int(op));
        check_exact(binary(op, on_gpu(a), on_gpu(b)), binary(op, a, b), "integer op");
      }
    }
    Tensor a = randint(1, 10, {4}, gen, {.dtype = dtype});
    CHECK_THROWS_AS(div(on_gpu(a), on_gpu(a)), Error);  // integer div stays on the CPU (it checks for zero)
  }
}

TEST_CASE("cuda compare matches the CPU for every dtype, with ties and broadcasting") {
  Generator gen(80);
  for (DType dtype : {DType::f32, DType::bf16, DType::f16, DType::f64, DType::i64, DType::i32, DType::b8}) {
    CAPTURE(dtype);
    const int64_t high = dtype == DType::b8 ? 2 : 4;  // few distinct values: many ties
    for (auto [sa, sb] : std::vector<std::pair<Shape, Shape>>{
             {{1000003}, {1000003}}, {{3, 1, 7}, {5, 1}}, {{64, 48}, {64, 1}}, {{7}, {}}, {{1}, {1}}}) {
      Tensor a = to_dtype(randint(-high + 2, high, sa, gen), dtype);
      Tensor b = to_dtype(randint(-high + 2, high, sb, gen), dtype);
      for (CompareOp op : kCompareOps) {
        CAPTURE(int(op));
        Tensor got = compare(op, on_gpu(a), on_gpu(b));
        CHECK(got.dtype() == DType::b8);
        check_exact(got, compare(op, a, b), "compare");
      }
    }
    // Transposed operand.
    Tensor t = to_dtype(randint(-high + 2, high, {7, 5}, gen), dtype);
    Tensor u = to_dtype(randint(-high + 2, high, {5, 7}, gen), dtype);
    check_exact(compare(CompareOp::le, transpose(on_gpu(t), 0, 1), on_gpu(u)),
                compare(CompareOp::le, transpose(t, 0, 1), u), "compare transposed");
  }
}

TEST_CASE("cuda where matches the CPU forward and backward") {
  Generator gen(90);
  struct Shapes {
    Shape cond, a, b;
  };
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    for (const Shapes& s : std::vector<Shapes>{{{1000003}, {1000003}, {1000003}},
                                               {{3, 5, 7}, {3, 1, 7}, {5, 1}},
                                               {{5, 1}, {3, 5, 7}, {}},
                                               {{64, 48}, {48}, {64, 1}},
                                               {{7}, {7}, {7}},
                                               {{1}, {1}, {1}}}) {
      Tensor cond = gt(rand(s.cond, gen), scalar_tensor(0.5));
      Pair a = make_pair(s.a, 91, dtype), b = make_pair(s.b, 92, dtype);
      Tensor out_cpu = where(cond, a.cpu, b.cpu), out_gpu = where(on_gpu(cond), a.gpu, b.gpu);
      check_exact(out_gpu, out_cpu, "where forward");  // a selection: exact
      backward_weighted(out_cpu, out_gpu, 93);
      check_grad(a, tolerance_for(dtype), "grad of a");
      check_grad(b, tolerance_for(dtype), "grad of b");
    }
  }
  // Every dtype selects exactly, through a transposed condition.
  for (DType dtype : {DType::f64, DType::f16, DType::i64, DType::i32, DType::b8}) {
    CAPTURE(dtype);
    Tensor cond = transpose(gt(rand({7, 5}, gen), scalar_tensor(0.5)), 0, 1);
    Tensor a = to_dtype(randint(-5, 5, {5, 7}, gen), dtype), b = to_dtype(randint(-5, 5, {7}, gen), dtype);
    check_exact(where(on_gpu(cond), on_gpu(a), on_gpu(b)), where(cond, a, b), "where");
  }
}

// ---- offsets and sizes past 2^31 -------------------------------------------------------------------

namespace {

bool have_free_bytes(size_t bytes) {
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) return false;
  if (free_bytes < bytes) MESSAGE("skipped: needs ", bytes, " free bytes on the GPU, found ", free_bytes);
  return free_bytes >= bytes;
}

}  // namespace

TEST_CASE("cuda add and exp on a view at a byte offset past 2^31 (large)") {
  const int64_t n = (int64_t(1) << 29) + 4099;  // f32: ~2.1 GB
  if (!have_free_bytes(size_t(n) * 4 + (size_t(1) << 28))) return;
  Tensor big = empty({n}, {.dtype = DType::f32, .device = gpu()});
  fill_(big, 0.25);
  // Offset 2^29 + 3 elements (the window ends at the last element): byte offset past 2^31 and
  // not 16-byte aligned (general path); offset 2^29: byte offset 2^31, aligned (vector path).
  for (int64_t start : {(int64_t(1) << 29) + 3, int64_t(1) << 29}) {
    CAPTURE(start);
    const int64_t len = 4096;
    Tensor values = random_cpu({len}, uint64_t(start), DType::f32, -2.0, 2.0);
    Tensor window = narrow(big, 0, start, len);
    copy_into(window, values);
    REQUIRE(window.offset() == start);
    check_exact(window, values, "window round trip");
    Tensor other = random_cpu({len}, 7, DType::f32);
    check_relative(add(window, on_gpu(other)), add(values, other), 1e-5, 1.0, "add at a large offset");
    check_relative(exp(window), exp(values), 1e-5, 1.0, "exp at a large offset");
    check_relative(mul(window, 3.0), mul(values, 3.0), 1e-5, 1.0, "mul by a scalar at a large offset");
  }
  // Elements before the windows kept their fill.
  CHECK(narrow(big, 0, (int64_t(1) << 29) - 1, 1).item<float>() == 0.25f);
  CHECK(narrow(big, 0, 0, 1).item<float>() == 0.25f);
}

TEST_CASE("cuda mul by a scalar over more than 2^31 bf16 elements (large)") {
  // 4 GB; 1029 = 128 packs of 8 + a tail of 5, and room for a window across element 2^31.
  const int64_t n = (int64_t(1) << 31) + 1029;
  if (!have_free_bytes(size_t(n) * 2 * 2 + (size_t(1) << 28))) return;
  Tensor x = empty({n}, {.dtype = DType::bf16, .device = gpu()});
  fill_(x, 1.25);
  // Distinct values at the start, across element 2^31 (byte 2^32) and at the end.
  const int64_t len = 256;
  const std::vector<int64_t> starts = {0, (int64_t(1) << 31) - 100, (int64_t(1) << 30) + 17, n - len};
  std::vector<Tensor> values;
  for (size_t k = 0; k < starts.size(); ++k) {
    values.push_back(random_cpu({len}, 100 + k, DType::bf16, -4.0, 4.0));
    copy_into(narrow(x, 0, starts[k], len), values.back());
  }
  Tensor y = mul(x, 0.75);
  REQUIRE(y.numel() == n);
  for (size_t k = 0; k < starts.size(); ++k) {
    CAPTURE(starts[k]);
    check_exact(narrow(y, 0, starts[k], len), mul(values[k], 0.75), "window");
  }
  // 4099 evenly spaced samples over the whole output (a strided view), none of them in a window
  // except by chance: every one is 1.25 * 0.75 = 0.9375 (exact in bf16) or a window's value.
  const int64_t samples = 4099, stride = n / samples;
  std::vector<double> got = as_strided(y, {samples}, {stride}, 0).to_double_vector();
  std::vector<double> xs = as_strided(x, {samples}, {stride}, 0).to_double_vector();
  int64_t bad = 0;
  for (int64_t i = 0; i < samples; ++i) {
    const double expected = double(BFloat16(float(xs[size_t(i)] * 0.75)));
    if (got[size_t(i)] != expected) ++bad;
  }
  CHECK(bad == 0);
  CHECK(narrow(y, 0, n - 1, 1).item<float>() == float(BFloat16(float(values.back().to_double_vector().back() * 0.75))));
}

TEST_CASE("cuda row and column broadcasts over many grid-stride rounds match the CPU") {
  // 40000 x 1024 bf16 is ~5M packs of 8: more than one grid-stride round per thread, so the
  // incrementally tracked row/column positions wrap many times.
  Tensor x = random_cpu({40000, 1024}, 501, DType::bf16);
  Tensor row = random_cpu({1024}, 502, DType::bf16);
  Tensor col = random_cpu({40000, 1}, 503, DType::bf16);
  Tensor xg = on_gpu(x), rowg = on_gpu(row), colg = on_gpu(col);
  check_relative(add(xg, rowg), add(x, row), 1e-2, 1.0, "bf16 (40000, 1024) + (1024)");
  check_relative(mul(xg, colg), mul(x, col), 1e-2, 1.0, "bf16 (40000, 1024) * (40000, 1)");
  check_relative(sub(rowg, xg), sub(row, x), 1e-2, 1.0, "bf16 (1024) - (40000, 1024)");
}
