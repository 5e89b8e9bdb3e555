// Core data movement on a CUDA device: host<->device copies (direct and through the pinned
// staging buffers), dtype conversion, strided copies, fill, accumulate_into, the caching
// allocator's statistics and reuse, out-of-memory errors, and gradient accumulation on the GPU.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "core/allocator.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/stream.h"
#include "ops/ops.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

const std::vector<DType> kAllDTypes = {DType::f64, DType::f32, DType::bf16, DType::f16,
                                       DType::i64, DType::i32, DType::b8};

// A CPU tensor of any dtype with varied values (random floats, random integers, random bools).
Tensor varied_cpu(const Shape& shape, uint64_t seed, DType dtype) {
  Generator gen(seed);
  if (is_floating(dtype)) return rand(shape, gen, {.dtype = dtype}, -50.0, 50.0);
  if (dtype == DType::b8) return to_dtype(randint(0, 2, shape, gen), DType::b8);
  return randint(-1000000, 1000000, shape, gen, {.dtype = dtype});
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  REQUIRE(a.device().is_cpu());
  REQUIRE(b.device().is_cpu());
  REQUIRE(a.is_contiguous());
  REQUIRE(b.is_contiguous());
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// Values every dtype conversion handles the same way on both devices: in range for i32, and
// including zeros, halves, negatives (truncation toward zero) and two f64 values that a double
// rounding (f64 -> f32 -> bf16/f16) would round the wrong way: 1 + 2^-8 + 2^-40 is just above
// the midpoint between two bf16 values, 1 + 2^-11 + 2^-40 just above one between two f16 values.
std::vector<double> conversion_values() {
  std::vector<double> v = {0.0,   1.0,    -1.0,   0.5,     -0.5,   2.75, -2.75, 99.5, -100.0, 1e-3,
                           -1e-3, 65504.0, 3.0e4, -1234.5, 1e-6,   7.0,  -0.0,  1.5,  255.0,  256.5};
  v.push_back(1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40));
  v.push_back(-(1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40)));
  v.push_back(1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40));
  v.push_back(-(1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40)));
  Generator gen(5);
  for (double x : rand({41}, gen, {.dtype = DType::f64}, -300.0, 300.0).to_double_vector()) v.push_back(x);
  return v;
}

}  // namespace

TEST_CASE("cuda host-device round trips keep every byte, small and staged") {
  for (DType dtype : kAllDTypes) {
    CAPTURE(dtype);
    for (int64_t n : {int64_t(1), int64_t(37), int64_t(4099)}) {
      Tensor x = varied_cpu({n}, uint64_t(n), dtype);
      Tensor g = to_device(x, gpu());
      CHECK(g.device() == gpu());
      CHECK(same_bytes(to_device(g, Device::cpu()), x));
    }
  }
  // Above 1 MiB the copies go through the pinned double buffers: 50 MB, not a multiple of the
  // chunk size, in two dtypes (odd byte counts of whole elements).
  for (auto [dtype, n] : std::vector<std::pair<DType, int64_t>>{{DType::f32, 12500001}, {DType::bf16, 25000003}}) {
    CAPTURE(dtype);
    Tensor x = varied_cpu({n}, 11, dtype);
    Tensor g = to_device(x, gpu());
    Tensor g2 = clone(g);  // device to device
    CHECK(g2.raw_data() != g.raw_data());
    CHECK(same_bytes(to_device(g2, Device::cpu()), x));
    // Into a CPU view at an offset (staged copy to a non-base address).
    Tensor host = zeros({n + 3}, {.dtype = dtype});
    copy_into(narrow(host, 0, 3, n), g);
    CHECK(same_bytes(contiguous(narrow(host, 0, 3, n)), x));
  }
}

TEST_CASE("cuda dtype conversions match the CPU for every dtype pair") {
  const std::vector<double> values = conversion_values();
  const int64_t n = int64_t(values.size());
  Tensor source64 = from_vector(values, {n});
  for (DType from : kAllDTypes) {
    Tensor src = to_dtype(source64, from);  // CPU conversion from f64
    Tensor src_gpu = on_gpu(src);
    for (DType to : kAllDTypes) {
      CAPTURE(from);
      CAPTURE(to);
      Tensor got = to_dtype(src_gpu, to);
      CHECK(got.device() == gpu());
      CHECK(got.dtype() == to);
      check_relative(got, to_dtype(src, to), 0.0, 1.0, "conversion");
      // Strided source: the general copy kernel converts too.
      Tensor t_src = as_strided(src, {n / 2}, {2}, 1), t_gpu = as_strided(src_gpu, {n / 2}, {2}, 1);
      check_relative(to_dtype(t_gpu, to), to_dtype(t_src, to), 0.0, 1.0, "strided conversion");
    }
  }
  // f64 -> bf16/f16 rounds once: 1 + 2^-8 + 2^-40 becomes 1 + 2^-7 in bf16 (not 1.0, which a
  // detour through f32 gives), and 1 + 2^-11 + 2^-40 becomes 1 + 2^-10 in f16.
  Tensor tricky = on_gpu(from_vector(std::vector<double>{1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40),
                                                         1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40)},
                                     {2}));
  CHECK(to_dtype(tricky, DType::bf16).to_double_vector()[0] == 1.0 + std::ldexp(1.0, -7));
  CHECK(to_dtype(tricky, DType::f16).to_double_vector()[1] == 1.0 + std::ldexp(1.0, -10));
}

TEST_CASE("cuda integer to bf16/f16 conversion rounds once like the CPU") {
  // 2^40 + 2^32 + 1 is just above the midpoint of two bf16 values: rounded once it goes up (the
  // CPU rule); through f32 it first lands on the midpoint and then rounds to even, down. (Every
  // integer in f16's range is exact in f32, so f16 has no such case; these overflow it.)
  const int64_t tie_plus_one = (int64_t(1) << 40) + (int64_t(1) << 32) + 1;
  std::vector<int64_t> ints = {tie_plus_one, -tie_plus_one, 4099, -4099, 123456789, 0, 1, -1};
  Tensor src = from_vector(ints, {int64_t(ints.size())});
  for (DType to : {DType::bf16, DType::f32, DType::f64}) {
    CAPTURE(to);
    check_relative(to_dtype(on_gpu(src), to), to_dtype(src, to), 0.0, 1.0, "i64 conversion");
  }
}

TEST_CASE("cuda strided copies: transpose then contiguous, permute, copy into a view") {
  for (DType dtype : {DType::f32, DType::bf16, DType::i64, DType::b8}) {
    CAPTURE(dtype);
    Tensor x = varied_cpu({3, 5, 7}, 21, dtype);
    Tensor g = on_gpu(x);
    Tensor t_gpu = contiguous(transpose(g, 0, 2));
    CHECK(t_gpu.is_contiguous());
    CHECK(t_gpu.device() == gpu());
    CHECK(same_bytes(to_device(t_gpu, Device::cpu()), contiguous(transpose(x, 0, 2))));
    CHECK(same_bytes(to_device(contiguous(permute(g, {1, 2, 0})), Device::cpu()), contiguous(permute(x, {1, 2, 0}))));
    // A strided destination on the device: write x^T into the transposed view of a fresh tensor.
    Tensor dst = empty({7, 5, 3}, {.dtype = dtype, .device = gpu()});
    copy_into(transpose(dst, 0, 2), g);
    CHECK(same_bytes(to_device(dst, Device::cpu()), contiguous(transpose(x, 0, 2))));
    // Device-to-host of a strided view.
    CHECK(same_bytes(contiguous_copy(transpose(g, 1, 2), dtype, Device::cpu()), contiguous(transpose(x, 1, 2))));
  }
  // A large strided copy (more elements than one grid covers in a pass).
  Tensor big = varied_cpu({1000, 1003}, 22, DType::f32);
  Tensor big_t = contiguous(transpose(on_gpu(big), 0, 1));
  CHECK(same_bytes(to_device(big_t, Device::cpu()), contiguous(transpose(big, 0, 1))));
}

TEST_CASE("cuda transposed and row copies: batched, sliced, converting and ragged") {
  // The layouts of the mixers: (batch, L, E) read as (batch, E, L) and back, slices of a wider last
  // dim, B/C rows of 16, sizes that are not multiples of the 32 x 32 tile, and dtype conversions.
  for (DType from : {DType::f32, DType::bf16}) {
    for (DType to : {DType::f32, DType::bf16}) {
      CAPTURE(from);
      CAPTURE(to);
      Tensor x = varied_cpu({3, 37, 70}, 51, from);
      Tensor g = on_gpu(x);
      CHECK(same_bytes(to_device(contiguous_copy(transpose(g, 1, 2), to, gpu()), Device::cpu()),
                       contiguous_copy(transpose(x, 1, 2), to, Device::cpu())));
      Tensor slice = narrow(x, 2, 5, 16), slice_gpu = narrow(g, 2, 5, 16);
      CHECK(same_bytes(to_device(contiguous_copy(transpose(slice_gpu, 1, 2), to, gpu()), Device::cpu()),
                       contiguous_copy(transpose(slice, 1, 2), to, Device::cpu())));
      // Into a transposed destination: the tiles write along the destination's unit stride.
      Tensor dst = empty({3, 70, 37}, {.dtype = to, .device = gpu()});
      copy_into(transpose(dst, 1, 2), g);
      CHECK(same_bytes(to_device(dst, Device::cpu()), contiguous_copy(transpose(x, 1, 2), to, Device::cpu())));
    }
  }
  // Row copies: slices of a wider last dim, aligned (packs of 16 bytes) and not (odd offsets and
  // widths), converting, and more rows than one grid dimension holds.
  for (DType from : {DType::f32, DType::bf16}) {
    for (DType to : {DType::f32, DType::bf16}) {
      CAPTURE(from);
      CAPTURE(to);
      Tensor x = varied_cpu({5, 41, 200}, 54, from);
      Tensor g = on_gpu(x);
      for (auto [start, width] : {std::pair<int64_t, int64_t>{0, 64}, {64, 128}, {3, 97}, {1, 33}}) {
        CAPTURE(start);
        CAPTURE(width);
        CHECK(same_bytes(to_device(contiguous_copy(narrow(g, 2, start, width), to, gpu()), Device::cpu()),
                         contiguous_copy(narrow(x, 2, start, width), to, Device::cpu())));
      }
    }
  }
  Tensor tall = varied_cpu({70001, 48}, 55, DType::bf16);
  CHECK(same_bytes(to_device(contiguous(narrow(on_gpu(tall), 1, 8, 32)), Device::cpu()),
                   contiguous(narrow(tall, 1, 8, 32))));
  // The 64 x 64 tiles of 2-byte pairs (even sizes of at least 64): same dtype, bf16 -> f16, and
  // into a transposed destination.
  Tensor w = varied_cpu({2, 96, 130}, 56, DType::bf16);
  Tensor wg = on_gpu(w);
  for (DType to : {DType::bf16, DType::f16}) {
    CAPTURE(to);
    CHECK(same_bytes(to_device(contiguous_copy(transpose(wg, 1, 2), to, gpu()), Device::cpu()),
                     contiguous_copy(transpose(w, 1, 2), to, Device::cpu())));
  }
  Tensor wt = empty({2, 130, 96}, {.dtype = DType::bf16, .device = gpu()});
  copy_into(transpose(wt, 1, 2), wg);
  CHECK(same_bytes(to_device(wt, Device::cpu()), contiguous(transpose(w, 1, 2))));
  // A 4-d permutation with two batch dims, and a large one (more tiles than one grid pass).
  Tensor p = varied_cpu({2, 9, 33, 40}, 52, DType::f32);
  CHECK(same_bytes(to_device(contiguous(permute(on_gpu(p), {0, 3, 1, 2})), Device::cpu()),
                   contiguous(permute(p, {0, 3, 1, 2}))));
  Tensor big = varied_cpu({4, 2048, 1100}, 53, DType::bf16);
  CHECK(same_bytes(to_device(contiguous(transpose(on_gpu(big), 1, 2)), Device::cpu()),
                   contiguous(transpose(big, 1, 2))));
}

TEST_CASE("cuda fill on whole tensors and views") {
  for (DType dtype : kAllDTypes) {
    CAPTURE(dtype);
    Tensor x = varied_cpu({6, 9}, 31, dtype);
    Tensor g = on_gpu(x);
    fill_(g, 2.5);
    fill_(x, 2.5);
    CHECK(same_bytes(to_device(g, Device::cpu()), x));
    // Only the view's elements change.
    Tensor y = varied_cpu({6, 9}, 32, dtype);
    Tensor h = on_gpu(y);
    fill_(narrow(transpose(h, 0, 1), 0, 2, 3), -1.0);
    fill_(narrow(transpose(y, 0, 1), 0, 2, 3), -1.0);
    CHECK(same_bytes(to_device(h, Device::cpu()), y));
  }
  CHECK(full({1000003}, 0.1, {.dtype = DType::f32, .device = gpu()}).to_vector<float>()[1000002] == 0.1f);
  CHECK(zeros({}, {.dtype = DType::bf16, .device = gpu()}).item<float>() == 0.0f);
}

TEST_CASE("cuda accumulate_into adds any strides into a tensor") {
  for (DType dtype : {DType::f32, DType::bf16, DType::f64, DType::f16}) {
    CAPTURE(dtype);
    Tensor dst = random_cpu({5, 8}, 41, dtype), src = random_cpu({8, 5}, 42, dtype);
    Tensor dst_gpu = on_gpu(dst), src_gpu = on_gpu(src);
    accumulate_into(dst_gpu, transpose(src_gpu, 0, 1));
    accumulate_into(dst, transpose(src, 0, 1));
    check_relative(dst_gpu, dst, 0.0, 1.0, "accumulate transposed");
    // Into a view.
    accumulate_into(narrow(dst_gpu, 1, 2, 5), narrow(transpose(src_gpu, 0, 1), 1, 0, 5));
    accumulate_into(narrow(dst, 1, 2, 5), narrow(transpose(src, 0, 1), 1, 0, 5));
    check_relative(dst_gpu, dst, 0.0, 1.0, "accumulate into a view");
  }
  // Through the 32 x 32 tiles (sides of at least 8): a batch of transposed gradients, ragged edges.
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    // Odd sides (32 x 32 tiles) and even ones of at least 64 (bf16: the 64 x 64 pair tiles).
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{45, 70}, {130, 96}}) {
      Tensor dst = random_cpu({3, rows, cols}, 45, dtype), src = random_cpu({3, cols, rows}, 46, dtype);
      Tensor dst_gpu = on_gpu(dst);
      accumulate_into(dst_gpu, transpose(on_gpu(src), 1, 2));
      accumulate_into(dst, transpose(src, 1, 2));
      check_relative(dst_gpu, dst, 0.0, 1.0, "accumulate transposed through tiles");
    }
  }
  Tensor big = random_cpu({1000003}, 43, DType::f32), add_to = random_cpu({1000003}, 44, DType::f32);
  Tensor big_gpu = on_gpu(big);
  accumulate_into(big_gpu, on_gpu(add_to));
  accumulate_into(big, add_to);
  check_relative(big_gpu, big, 0.0, 1.0, "accumulate large");
}

TEST_CASE("cuda caching allocator: statistics, reuse and empty_cache") {
  namespace sc = scanline::cuda;
  sc::empty_cache();  // start from no wholly free segments
  const sc::AllocatorStats s0 = sc::allocator_stats(0);
  sc::reset_peak(0);
  CHECK(sc::allocator_stats(0).peak_allocated == s0.allocated);
  // Larger than everything reserved so far, so no cached free block (from earlier tests in the
  // same process) can hold it; a multiple of the 512-byte rounding.
  const size_t bytes = (s0.reserved + (size_t(96) << 20)) / 512 * 512 + 1536;
  const int64_t elements = int64_t(bytes / sizeof(float));
  void* first = nullptr;
  sc::AllocatorStats s1;
  {
    Tensor t = empty({elements}, {.dtype = DType::f32, .device = gpu()});
    first = t.raw_data();
    s1 = sc::allocator_stats(0);
    CHECK(s1.allocated == s0.allocated + bytes);
    CHECK(s1.peak_allocated == s1.allocated);
    CHECK(s1.allocations == s0.allocations + 1);
    CHECK(s1.segments == s0.segments + 1);  // nothing cached could hold it
    CHECK(s1.reserved >= s0.reserved + bytes);
    fill_(t, 1.0);
    CHECK(narrow(t, 0, elements - 1, 1).item<float>() == 1.0f);
  }
  const sc::AllocatorStats s2 = sc::allocator_stats(0);
  CHECK(s2.allocated == s0.allocated);
  CHECK(s2.reserved == s1.reserved);  // freed memory stays cached
  CHECK(s2.peak_allocated >= s1.allocated);
  {
    Tensor t = empty({elements}, {.dtype = DType::f32, .device = gpu()});
    CHECK(t.raw_data() == first);  // the cached block comes back
    const sc::AllocatorStats s3 = sc::allocator_stats(0);
    CHECK(s3.segments == s1.segments);  // without a new cudaMalloc
    CHECK(s3.reserved == s1.reserved);
    CHECK(s3.allocated == s1.allocated);
  }
  sc::synchronize();
  sc::empty_cache();
  const sc::AllocatorStats s4 = sc::allocator_stats(0);
  CHECK(s4.reserved + bytes <= s2.reserved);  // the new segment went back to the driver
  CHECK(s4.allocated == s0.allocated);
}

TEST_CASE("cuda out of memory is a scanline::Error naming it") {
  const int64_t ten_tb_floats = int64_t(10) * 1000 * 1000 * 1000 * 1000 / 4;
  bool thrown = false;
  try {
    Tensor t = empty({ten_tb_floats}, {.dtype = DType::f32, .device = gpu()});
  } catch (const Error& e) {
    thrown = true;
    INFO(e.what());
    CHECK(std::string(e.what()).find("out of memory") != std::string::npos);
  }
  CHECK(thrown);
  // The device still works afterwards.
  Tensor ok = full({1000}, 3.0, {.dtype = DType::f32, .device = gpu()});
  CHECK(ok.to_vector<float>()[999] == 3.0f);
}

TEST_CASE("cuda autograd accumulates the gradient of a leaf used twice") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    Tensor x_cpu = cpu_leaf(random_cpu({4, 6}, 51, dtype));
    Tensor x_gpu = on_gpu(x_cpu.detach(), true);
    Tensor a = random_cpu({4, 6}, 52, dtype), b = random_cpu({6}, 53, dtype);
    Tensor g = random_cpu({4, 6}, 54, dtype);
    Tensor a_gpu = on_gpu(a), b_gpu = on_gpu(b), g_gpu = on_gpu(g);
    auto f = [](const Tensor& x, const Tensor& p, const Tensor& q) { return add(mul(x, p), mul(q, x)); };
    backward(f(x_cpu, a, b), g);
    backward(f(x_gpu, a_gpu, b_gpu), g_gpu);
    REQUIRE(x_gpu.grad().defined());
    CHECK(x_gpu.grad().device() == gpu());
    check_relative(x_gpu.grad(), x_cpu.grad(), 0.0, 1.0, "one backward");
    // A second backward adds into the existing .grad.
    backward(f(x_cpu, a, b), g);
    backward(f(x_gpu, a_gpu, b_gpu), g_gpu);
    check_relative(x_gpu.grad(), x_cpu.grad(), 0.0, 1.0, "two backwards");
  }
}
