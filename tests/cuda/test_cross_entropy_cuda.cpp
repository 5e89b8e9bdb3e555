// Fused CUDA cross-entropy (cuda/cross_entropy.cu) against the CPU path on the same values:
// every reduction, ignore_index rows, all rows ignored, i32 targets, (B, L, C) logits,
// vocabulary-sized bf16 rows, unaligned rows and strided logits, forward and backward; and the
// out-of-range target error, raised from a device check with the CPU path's message; and a loss
// dtype other than the logits' (bf16/f16 logits with an f32 loss, the trainer's call).
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "ops/cross_entropy.h"
#include "ops/views.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// Targets in [0, classes) with every `ignore_every`-th row set to ignore_index (0: none).
Tensor make_targets(const Shape& shape, int64_t classes, uint64_t seed, int64_t ignore_every, int64_t ignore_index,
                    DType dtype = DType::i64) {
  Generator gen(seed);
  Tensor t = randint(0, classes, shape, gen, {.dtype = DType::i64});
  std::vector<int64_t> v = t.to_vector<int64_t>();
  if (ignore_every > 0)
    for (size_t i = 0; i < v.size(); i += size_t(ignore_every)) v[i] = ignore_index;
  return contiguous_copy(from_vector(v, shape), dtype, Device::cpu());
}

// An Error's message without the " [file:line]" suffix that names where it was thrown.
std::string without_location(const std::string& message) {
  const size_t at = message.rfind(" [");
  return at == std::string::npos ? message : message.substr(0, at);
}

const char* reduction_name(Reduction r) {
  return r == Reduction::none ? "none" : (r == Reduction::mean ? "mean" : "sum");
}

// cross_entropy on both devices (logits through `view`), backward with a random upstream
// gradient; losses compared element-wise, logits gradients relative to their largest value.
void check_cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, Reduction reduction,
                         const std::string& label, bool transpose_view = false) {
  const std::string what = label + " reduction " + reduction_name(reduction);
  CAPTURE(what);
  const double tol = tolerance_for(logits.dtype());
  Tensor lc = cpu_leaf(logits), lg = on_gpu(logits, true);
  auto view = [&](const Tensor& t) { return transpose_view ? transpose(t, 0, 1) : t; };
  Tensor tg = contiguous_copy(targets, targets.dtype(), gpu());
  Tensor yc = cross_entropy(view(lc), targets, ignore_index, reduction);
  Tensor yg = cross_entropy(view(lg), tg, ignore_index, reduction);
  REQUIRE(yg.device().is_cuda());
  REQUIRE(yg.shape() == yc.shape());
  REQUIRE(yg.dtype() == yc.dtype());
  check_relative(yg, yc, tol, 1.0, what + " forward");
  Tensor g = random_cpu(yc.shape(), 41, logits.dtype(), 0.5, 1.5);
  backward(yc, g);
  backward(yg, on_gpu(g));
  REQUIRE(lg.grad().defined());
  check_relative(lg.grad(), lc.grad(), tol, std::max(max_abs(lc.grad()), 1e-30), what + " backward");
}

void check_every_reduction(const Tensor& logits, const Tensor& targets, int64_t ignore_index, const std::string& label,
                           bool transpose_view = false) {
  for (Reduction r : {Reduction::none, Reduction::mean, Reduction::sum})
    check_cross_entropy(logits, targets, ignore_index, r, label, transpose_view);
}

// cross_entropy(..., loss_dtype) on both devices, every reduction: the loss in loss_dtype within
// f32 rounding of the CPU path and of the float64 loss of the same logit values; the logits'
// gradient in the logits' dtype, from an upstream gradient in loss_dtype whose values are not
// bf16 values, element-wise within the logits' dtype's tolerance of the CPU's. For bf16/f16
// logits nearly every element must equal the CPU's bit for bit: a kernel that rounded the f32
// upstream gradient to bf16 (0.4% here) would round about half of them the other way.
void check_loss_dtype(const Tensor& logits, const Tensor& targets, int64_t ignore_index, DType loss_dtype,
                      const std::string& label) {
  const Tensor tg = contiguous_copy(targets, targets.dtype(), gpu());
  const Tensor reference_logits = contiguous_copy(logits, DType::f64, Device::cpu());
  for (Reduction r : {Reduction::none, Reduction::mean, Reduction::sum}) {
    const std::string what = label + " loss " + dtype_name(loss_dtype) + " reduction " + reduction_name(r);
    CAPTURE(what);
    Tensor lc = cpu_leaf(logits), lg = on_gpu(logits, true);
    Tensor yc = cross_entropy(lc, targets, ignore_index, r, loss_dtype);
    Tensor yg = cross_entropy(lg, tg, ignore_index, r, loss_dtype);
    REQUIRE(yg.device().is_cuda());
    REQUIRE(yg.dtype() == loss_dtype);
    REQUIRE(yc.dtype() == loss_dtype);
    REQUIRE(yg.shape() == yc.shape());
    check_relative(yg, yc, 1e-5, 1.0, what + " forward against the CPU");
    check_relative(yg, cross_entropy(reference_logits, targets, ignore_index, r), 1e-5, 1.0,
                   what + " forward against float64");
    Tensor g = r == Reduction::none ? random_cpu(yc.shape(), 43, loss_dtype, 0.5, 1.5)
                                    : full({}, 1.0 + 0.99 / 256.0, {.dtype = loss_dtype});
    backward(yc, g);
    backward(yg, on_gpu(g));
    REQUIRE(lg.grad().defined());
    REQUIRE(lg.grad().dtype() == logits.dtype());
    check_relative(lg.grad(), lc.grad(), tolerance_for(logits.dtype()), 1e-30, what + " backward");
    if (logits.dtype() == DType::bf16 || logits.dtype() == DType::f16) {
      const std::vector<double> a = lg.grad().to_double_vector(), e = lc.grad().to_double_vector();
      size_t differ = 0;
      for (size_t i = 0; i < a.size(); ++i) differ += a[i] != e[i];
      INFO(what, ": ", differ, " of ", a.size(), " gradient elements differ from the CPU's");
      CHECK(differ <= 1 + a.size() / 50);
    }
  }
}

}  // namespace

TEST_CASE("cuda cross_entropy matches the CPU for every reduction, with ignored rows (f32, bf16)") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    check_every_reduction(random_cpu({6, 5}, 1, dtype, -3.0, 3.0), make_targets({6}, 5, 2, 3, -100), -100, "(6, 5)");
    check_every_reduction(random_cpu({37, 1000}, 3, dtype, -4.0, 4.0), make_targets({37}, 1000, 4, 5, -100), -100,
                          "(37, 1000)");
    check_every_reduction(random_cpu({9, 4096}, 5, dtype, -4.0, 4.0), make_targets({9}, 4096, 6, 4, -1), -1,
                          "(9, 4096) ignore -1");
    // ignore_index inside the class range (a padding token 0).
    check_every_reduction(random_cpu({11, 24}, 7, dtype, -3.0, 3.0), make_targets({11}, 24, 8, 2, 0), 0,
                          "ignore class 0");
    // One class, one row.
    check_every_reduction(random_cpu({1, 1}, 9, dtype), make_targets({1}, 1, 10, 0, -100), -100, "(1, 1)");
    check_every_reduction(random_cpu({7}, 11, dtype), make_targets({}, 7, 12, 0, -100), -100, "single row");
  }
}

TEST_CASE("cuda cross_entropy with every target ignored gives 0 and zero gradients") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    const Tensor logits = random_cpu({5, 33}, 13, dtype);
    const Tensor targets = make_targets({5}, 33, 14, 1, -100);
    check_every_reduction(logits, targets, -100, "all ignored");
    Tensor lg = on_gpu(logits, true);
    Tensor loss = cross_entropy(lg, on_gpu(targets));
    CHECK(loss.item<double>() == 0.0);
    backward(loss);
    CHECK(max_abs(lg.grad()) == 0.0);
  }
}

TEST_CASE("cuda cross_entropy takes i32 targets and (B, L, C) logits") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    check_every_reduction(random_cpu({3, 17}, 15, dtype, -3.0, 3.0), make_targets({3}, 17, 16, 2, -100, DType::i32),
                          -100, "i32 targets");
    check_every_reduction(random_cpu({2, 5, 40}, 17, dtype, -3.0, 3.0), make_targets({2, 5}, 40, 18, 3, -100), -100,
                          "(2, 5, 40)");
    check_every_reduction(random_cpu({2, 3, 41}, 19, dtype, -3.0, 3.0),
                          make_targets({2, 3}, 41, 20, 4, -100, DType::i32), -100, "(2, 3, 41) i32, unaligned rows");
  }
}

TEST_CASE("cuda cross_entropy on vocabulary-sized bf16 and f32 rows") {
  check_every_reduction(random_cpu({2, 3, 50304}, 21, DType::bf16, -6.0, 6.0), make_targets({2, 3}, 50304, 22, 4, -100),
                        -100, "(2, 3, 50304) bf16");
  check_every_reduction(random_cpu({4, 50304}, 23, DType::f32, -6.0, 6.0), make_targets({4}, 50304, 24, 3, -100), -100,
                        "(4, 50304) f32");
  check_every_reduction(random_cpu({3, 50257}, 25, DType::bf16, -6.0, 6.0), make_targets({3}, 50257, 26, 0, -100),
                        -100, "(3, 50257) bf16 unaligned");
}

TEST_CASE("cuda cross_entropy reads strided logits") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    // Logits (C, N) transposed to (N, C): rows are not contiguous.
    check_every_reduction(random_cpu({24, 10}, 27, dtype, -3.0, 3.0), make_targets({10}, 24, 28, 3, -100), -100,
                          "transposed", true);
  }
}

TEST_CASE("cuda cross_entropy reports an out-of-range target with the CPU message, without faulting") {
  const Tensor logits = random_cpu({2, 3, 5}, 29);
  std::vector<int64_t> t{1, 4, -100, 3, 7, -2};  // first bad: 7 at [1, 1]
  for (DType dtype : {DType::i64, DType::i32}) {
    CAPTURE(dtype);
    const Tensor targets = contiguous_copy(from_vector(t, {2, 3}), dtype, Device::cpu());
    std::string cpu_message, gpu_message;
    try {
      cross_entropy(logits, targets);
    } catch (const Error& e) {
      cpu_message = e.what();
    }
    try {
      cross_entropy(on_gpu(logits), on_gpu(targets));
    } catch (const Error& e) {
      gpu_message = e.what();
    }
    REQUIRE(!cpu_message.empty());
    CHECK(cpu_message.find("target 7 at position [1, 1]") != std::string::npos);
    CHECK(without_location(gpu_message) == without_location(cpu_message));
    // A negative target other than ignore_index is out of range too.
    std::vector<int64_t> neg{1, -2, 0, 0, 0, 0};
    const Tensor targets_neg = contiguous_copy(from_vector(neg, {2, 3}), dtype, Device::cpu());
    CHECK_THROWS_WITH_AS(cross_entropy(on_gpu(logits), on_gpu(targets_neg)),
                         doctest::Contains("target -2 at position [0, 1]"), Error);
  }
  // The device is healthy afterwards.
  check_cross_entropy(logits, make_targets({2, 3}, 5, 30, 0, -100), -100, Reduction::mean, "after the error");
}

TEST_CASE("cuda cross_entropy of bf16 and f16 logits with an f32 loss: f32 total, gradient in the logits' dtype") {
  for (DType dtype : {DType::bf16, DType::f16}) {
    CAPTURE(dtype);
    check_loss_dtype(random_cpu({6, 5}, 51, dtype, -3.0, 3.0), make_targets({6}, 5, 52, 3, -100), -100, DType::f32,
                     "(6, 5)");
    check_loss_dtype(random_cpu({37, 1000}, 53, dtype, -4.0, 4.0), make_targets({37}, 1000, 54, 5, -100), -100,
                     DType::f32, "(37, 1000)");
    check_loss_dtype(random_cpu({2, 3, 41}, 55, dtype, -3.0, 3.0), make_targets({2, 3}, 41, 56, 4, -100, DType::i32),
                     -100, DType::f32, "(2, 3, 41) i32, unaligned rows");
  }
  // Vocabulary-sized rows: 50277 (odd: one element a pack) and 50304 (16-byte packs).
  check_loss_dtype(random_cpu({2, 3, 50277}, 57, DType::bf16, -6.0, 6.0), make_targets({2, 3}, 50277, 58, 4, -100),
                   -100, DType::f32, "(2, 3, 50277) bf16");
  check_loss_dtype(random_cpu({4, 50304}, 59, DType::bf16, -6.0, 6.0), make_targets({4}, 50304, 60, 3, -1), -1,
                   DType::f32, "(4, 50304) bf16 ignore -1");
  // Every target ignored: 0 and zero bf16 gradients.
  check_loss_dtype(random_cpu({5, 33}, 61, DType::bf16), make_targets({5}, 33, 62, 1, -100), -100, DType::f32,
                   "all ignored");
  // Wider than the logits too: f32 logits, f64 loss (the f64 grad is read as f32).
  check_loss_dtype(random_cpu({9, 300}, 63, DType::f32, -4.0, 4.0), make_targets({9}, 300, 64, 4, -100), -100,
                   DType::f64, "(9, 300) f32");
}

TEST_CASE("cuda cross_entropy rejects a loss dtype that is not floating") {
  const Tensor logits = on_gpu(random_cpu({3, 5}, 65, DType::bf16));
  const Tensor targets = on_gpu(make_targets({3}, 5, 66, 0, -100));
  CHECK_THROWS_WITH_AS(cross_entropy(logits, targets, -100, Reduction::mean, DType::i64),
                       doctest::Contains("cross_entropy: expected loss_dtype to be floating (f64, f32, bf16 or f16) "
                                         "but found i64"),
                       Error);
}
