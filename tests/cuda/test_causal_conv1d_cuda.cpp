// CUDA causal_conv1d (cuda/causal_conv1d.cu) against the CPU path, forward and backward (x,
// weight, bias), f32 and bf16: channels-first and channels-last layouts, k from 1 to 8, lengths
// shorter than the taps to several blocks and dweight parts, vector and scalar (odd) rows, with
// and without bias and SiLU, strided inputs, mamba_ssm's channel-major rows read in place.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "ops/causal_conv1d.h"
#include "ops/views.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

struct Case {
  int64_t batch, channels, length, k;
  bool channels_last, bias, silu;
  bool strided = false;  // x is a transposed view of the other layout
  // Channels-first x is mamba_ssm's channel-major view, a (channels, batch, length) leaf seen as
  // (batch, channels, length); grad_channel_major: the output gradient arrives in that layout too.
  bool channel_major = false, grad_channel_major = false;
};

std::string describe_case(const Case& c) {
  return "batch " + std::to_string(c.batch) + " channels " + std::to_string(c.channels) + " length " +
         std::to_string(c.length) + " k " + std::to_string(c.k) +
         (c.channels_last ? " channels-last" : " channels-first") + (c.bias ? " bias" : "") + (c.silu ? " silu" : "") +
         (c.strided ? " strided" : "") + (c.channel_major ? " channel-major" : "") +
         (c.grad_channel_major ? " channel-major grad" : "");
}

Tensor run_conv(const Case& c, const Tensor& x, const Tensor& w, const Tensor& b) {
  return c.channels_last ? causal_conv1d_channels_last(x, w, b, c.silu) : causal_conv1d(x, w, b, c.silu);
}

void check_conv(const Case& c, DType dtype, uint64_t seed) {
  const std::string what = describe_case(c);
  CAPTURE(what);
  CAPTURE(dtype);
  const Shape shape = c.channels_last ? Shape{c.batch, c.length, c.channels} : Shape{c.batch, c.channels, c.length};
  // strided: the leaf has the last two dims swapped and the op sees its transpose.
  const Shape leaf_shape = c.strided         ? Shape{shape[0], shape[2], shape[1]}
                           : c.channel_major ? Shape{shape[1], shape[0], shape[2]}
                                             : shape;
  Tensor x = random_cpu(leaf_shape, seed, dtype, -2.0, 2.0);
  Tensor w = random_cpu({c.channels, c.k}, seed + 1, dtype, -1.0, 1.0);
  Tensor b = random_cpu({c.channels}, seed + 2, dtype, -1.0, 1.0);
  Tensor xc = cpu_leaf(x), xg = on_gpu(x, true);
  Tensor wc = cpu_leaf(w), wg = on_gpu(w, true);
  Tensor bc = c.bias ? cpu_leaf(b) : Tensor(), bg = c.bias ? on_gpu(b, true) : Tensor();
  auto view = [&](const Tensor& t) {
    return c.strided ? transpose(t, 1, 2) : c.channel_major ? transpose(t, 0, 1) : t;
  };
  Tensor oc = run_conv(c, view(xc), wc, bc), og = run_conv(c, view(xg), wg, bg);
  REQUIRE(og.device().is_cuda());
  REQUIRE(og.shape() == oc.shape());
  if (c.channel_major && c.batch > 1 && c.channels > 1) {  // out in x's row order, on both devices
    CHECK(og.strides() == Shape{c.length, c.batch * c.length, 1});
    CHECK(oc.strides() == og.strides());
  }
  const double tol = tolerance_for(dtype);
  // An output is a sum of k products and a bias: judge it against the terms' scale.
  check_relative(og, oc, tol, std::max(0.1 * max_abs(oc), 1e-30), what + " out");
  if (c.grad_channel_major) {  // the transpose's backward hands the conv a channel-major gradient
    Tensor g = random_cpu({c.channels, c.batch, c.length}, seed + 3, dtype, -1.0, 1.0);
    backward(transpose(oc, 0, 1), g);
    backward(transpose(og, 0, 1), on_gpu(g));
  } else {
    Tensor g = random_cpu(shape, seed + 3, dtype, -1.0, 1.0);
    backward(oc, g);
    backward(og, on_gpu(g));
  }
  check_relative(xg.grad(), xc.grad(), tol, std::max(max_abs(xc.grad()), 1e-30), what + " dx");
  check_relative(wg.grad(), wc.grad(), tol, std::max(max_abs(wc.grad()), 1e-30), what + " dweight");
  if (c.bias) check_relative(bg.grad(), bc.grad(), tol, std::max(max_abs(bc.grad()), 1e-30), what + " dbias");
}

}  // namespace

TEST_CASE("cuda causal_conv1d matches the CPU for k 1..4, short and long rows, both layouts") {
  uint64_t seed = 1000;
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (bool channels_last : {false, true}) {
      for (int64_t k : {1, 2, 3, 4}) {
        for (int64_t length : {1, 3, 1000}) {
          for (bool bias : {false, true}) {
            for (bool silu : {false, true}) {
              check_conv({2, 8, length, k, channels_last, bias, silu}, dtype, seed);
              seed += 4;
            }
          }
        }
      }
    }
  }
}

TEST_CASE("cuda causal_conv1d matches the CPU for wide taps, odd sizes and many parts") {
  uint64_t seed = 2000;
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (bool channels_last : {false, true}) {
      for (int64_t k : {5, 8}) check_conv({2, 6, 300, k, channels_last, true, true}, dtype, seed += 4);
      check_conv({3, 7, 1001, 4, channels_last, true, true}, dtype, seed += 4);    // scalar rows / channels
      check_conv({2, 5, 9000, 4, channels_last, true, true}, dtype, seed += 4);    // several parts a row
      check_conv({1, 300, 700, 4, channels_last, true, true}, dtype, seed += 4);   // several channel blocks
      check_conv({9, 3, 20, 3, channels_last, false, true}, dtype, seed += 4);     // many batches, one part each
      check_conv({2, 8, 64, 4, channels_last, true, true, true}, dtype, seed += 4);   // strided x
      check_conv({2, 16, 1000, 4, channels_last, true, false, true}, dtype, seed += 4);
    }
  }
}

TEST_CASE("cuda causal_conv1d reads channel-major rows in place and returns them channel-major") {
  uint64_t seed = 2500;
  for (DType dtype : {DType::f32, DType::bf16}) {
    // Multiples of 8 (16-byte rows in both dtypes: vector loads) and not (scalar rows).
    for (int64_t length : {64, 1000, 13, 1001}) {
      for (bool bias : {false, true}) {
        for (bool silu : {false, true}) {
          Case c{3, 8, length, 4, false, bias, silu};
          c.channel_major = true;
          c.grad_channel_major = (length + int64_t(bias) + int64_t(silu)) % 2 == 0;  // both gradient layouts
          check_conv(c, dtype, seed += 4);
        }
      }
    }
    Case many_parts{2, 5, 9000, 4, false, true, true};  // dweight from several parts a row
    many_parts.channel_major = many_parts.grad_channel_major = true;
    check_conv(many_parts, dtype, seed += 4);
    Case wide{2, 6, 300, 8, false, true, true};
    wide.channel_major = true;
    check_conv(wide, dtype, seed += 4);
    Case one_batch{1, 8, 256, 4, false, true, true};  // both layouts are the same memory
    one_batch.channel_major = true;
    check_conv(one_batch, dtype, seed += 4);
  }
}

TEST_CASE("cuda causal_conv1d in f64 matches the CPU closely") {
  for (bool channels_last : {false, true}) {
    for (int64_t k : {3, 4, 7}) {
      Case c{2, 5, 333, k, channels_last, true, true};
      CAPTURE(describe_case(c));
      const Shape shape = channels_last ? Shape{2, 333, 5} : Shape{2, 5, 333};
      Tensor x = random_cpu(shape, 3000 + k, DType::f64, -2.0, 2.0);
      Tensor w = random_cpu({5, k}, 3100 + k, DType::f64);
      Tensor b = random_cpu({5}, 3200 + k, DType::f64);
      Tensor xc = cpu_leaf(x), xg = on_gpu(x, true), wc = cpu_leaf(w), wg = on_gpu(w, true);
      Tensor bc = cpu_leaf(b), bg = on_gpu(b, true);
      Tensor oc = run_conv(c, xc, wc, bc), og = run_conv(c, xg, wg, bg);
      check_relative(og, oc, 1e-12, max_abs(oc), "f64 out");
      Tensor g = random_cpu(shape, 3300 + k, DType::f64);
      backward(oc, g);
      backward(og, on_gpu(g));
      check_relative(xg.grad(), xc.grad(), 1e-12, max_abs(xc.grad()), "f64 dx");
      check_relative(wg.grad(), wc.grad(), 1e-12, max_abs(wc.grad()), "f64 dweight");
      check_relative(bg.grad(), bc.grad(), 1e-12, max_abs(bc.grad()), "f64 dbias");
    }
  }
}

TEST_CASE("cuda causal_conv1d backward to the weight alone or to x alone") {
  Tensor x = random_cpu({2, 6, 100}, 4000, DType::f32, -2.0, 2.0);
  Tensor w = random_cpu({6, 4}, 4001, DType::f32);
  Tensor g = random_cpu({2, 6, 100}, 4002, DType::f32);
  {
    Tensor wc = cpu_leaf(w), wg = on_gpu(w, true);
    backward(causal_conv1d(x, wc, Tensor(), true), g);
    backward(causal_conv1d(on_gpu(x), wg, Tensor(), true), on_gpu(g));
    check_relative(wg.grad(), wc.grad(), 1e-5, max_abs(wc.grad()), "dweight only");
  }
  {
    Tensor xc = cpu_leaf(x), xg = on_gpu(x, true);
    backward(causal_conv1d(xc, w, Tensor(), true), g);
    backward(causal_conv1d(xg, on_gpu(w), Tensor(), true), on_gpu(g));
    check_relative(xg.grad(), xc.grad(), 1e-5, max_abs(xc.grad()), "dx only");
  }
}
