#include <cmath>

#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "core/parallel.h"
#include "ops/causal_conv1d.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// Naive float64 loop of the definition. x holds (batch, channels, length) or, channels-last,
// (batch, length, channels) values in row-major order; the result has x's layout.
std::vector<double> conv_reference(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                                   bool channels_last) {
  const int64_t B = x.shape()[0];
  const int64_t C = channels_last ? x.shape()[2] : x.shape()[1];
  const int64_t L = channels_last ? x.shape()[1] : x.shape()[2];
  const int64_t k = weight.shape()[1];
  std::vector<double> vx = x.to_double_vector(), vw = weight.to_double_vector();
  std::vector<double> vb = bias.defined() ? bias.to_double_vector() : std::vector<double>(size_t(C), 0.0);
  auto at = [&](int64_t b, int64_t c, int64_t t) {
    return channels_last ? (b * L + t) * C + c : (b * C + c) * L + t;
  };
  std::vector<double> out(vx.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t t = 0; t < L; ++t) {
        double z = vb[c];
        for (int64_t j = 0; j < k; ++j) {
          int64_t src = t - (k - 1) + j;
          if (src >= 0) z += vw[c * k + j] * vx[at(b, c, src)];
        }
        out[at(b, c, t)] = silu ? z / (1.0 + std::exp(-z)) : z;
      }
  return out;
}

Tensor run_conv(bool channels_last, const Tensor& x, const Tensor& w, const Tensor& b, bool silu) {
  return channels_last ? causal_conv1d_channels_last(x, w, b, silu) : causal_conv1d(x, w, b, silu);
}

Shape x_shape(bool channels_last, int64_t B, int64_t C, int64_t L) {
  return channels_last ? Shape{B, L, C} : Shape{B, C, L};
}

// mamba_ssm's channel-major activations: a (channels, batch, length) tensor seen as (batch,
// channels, length), strides (length, batch * length, 1), as the mixer views in_proj's product.
Tensor channel_major(const Tensor& cbl) { return transpose(cbl, 0, 1); }

Shape channel_major_strides(int64_t B, int64_t L) { return {L, B * L, 1}; }

// The gradients out's node hands its inputs for output gradient g: what the engine passes on,
// before any leaf copies it into .grad.
std::vector<Tensor> node_grads(const Tensor& out, const Tensor& g) {
  NoGradGuard no_grad;
  return out.grad_fn()->apply({g});
}

}  // namespace

TEST_CASE("causal_conv1d matches a float64 loop for every width, length, bias, silu and layout") {
  uint64_t seed = 100;
  for (bool channels_last : {false, true})
    for (int64_t k : {1, 2, 3, 4, 8})
      for (int64_t L : {1, 2, 3, 7})  // 1 and 2 are shorter than most widths
        for (bool with_bias : {false, true})
          for (bool silu : {false, true}) {
            CAPTURE(channels_last); CAPTURE(k); CAPTURE(L); CAPTURE(with_bias); CAPTURE(silu);
            Tensor x = random_tensor(x_shape(channels_last, 2, 3, L), ++seed, DType::f64, -2.0, 2.0);
            Tensor w = random_tensor({3, k}, ++seed);
            Tensor b = with_bias ? random_tensor({3}, ++seed) : Tensor();
            Tensor y = run_conv(channels_last, x, w, b, silu);
            CHECK(y.shape() == x.shape());
            check_close(y, conv_reference(x, w, b, silu, channels_last), 1e-12);
          }
}

TEST_CASE("causal_conv1d reads non-contiguous inputs through their strides") {
  for (bool channels_last : {false, true})
    for (bool silu : {false, true}) {
      CAPTURE(channels_last); CAPTURE(silu);
      Tensor x = transposed_leaf(x_shape(channels_last, 2, 4, 6), 201).detach();
      Tensor w = transposed_leaf({4, 3}, 202).detach();
      Tensor b = random_tensor({4}, 203);
      REQUIRE(!x.is_contiguous());
      check_close(run_conv(channels_last, x, w, b, silu), conv_reference(x, w, b, silu, channels_last), 1e-12);
    }
}

TEST_CASE("causal_conv1d layouts agree: channels-last equals transposed channels-first") {
  Tensor x = random_tensor({2, 9, 5}, 301);  // (batch, length, channels)
  Tensor w = random_tensor({5, 4}, 302);
  Tensor b = random_tensor({5}, 303);
  Tensor last = causal_conv1d_channels_last(x, w, b, true);
  Tensor first = transpose(causal_conv1d(contiguous(transpose(x, 1, 2)), w, b, true), 1, 2);
  check_close(last, first.to_double_vector(), 0.0);
}

TEST_CASE("causal_conv1d reads channel-major rows in place and returns out and grad_x channel-major") {
  const int64_t B = 3, C = 5;
  uint64_t seed = 350;
  for (int64_t L : {7, 16})
    for (bool with_bias : {false, true})
      for (bool silu : {false, true}) {
        CAPTURE(L); CAPTURE(with_bias); CAPTURE(silu);
        Tensor x_cbl = random_leaf({C, B, L}, ++seed, -2.0, 2.0);
        Tensor w = random_leaf({C, 4}, ++seed);
        Tensor b = with_bias ? random_leaf({C}, ++seed) : Tensor();
        Tensor xv = channel_major(x_cbl);
        REQUIRE(xv.strides() == channel_major_strides(B, L));
        Tensor xc = contiguous(xv.detach()).set_requires_grad(true);
        Tensor yv = causal_conv1d(xv, w, b, silu), yc = causal_conv1d(xc, w, b, silu);
        CHECK(yv.strides() == channel_major_strides(B, L));
        CHECK(yc.is_contiguous());
        CHECK(yv.to_double_vector() == yc.to_double_vector());  // the same sums in the same order
        // The output gradient in either layout; grad_x comes back in x's, with today's values.
        Tensor g = random_tensor({B, C, L}, ++seed);
        for (const Tensor& gv : {g, channel_major(contiguous(transpose(g, 0, 1)))}) {
          std::vector<Tensor> from_v = node_grads(yv, gv), from_c = node_grads(yc, g);
          CHECK(from_v[0].strides() == channel_major_strides(B, L));
          CHECK(from_c[0].is_contiguous());
          for (size_t i = 0; i < 3; ++i)
            if (from_c[i].defined()) CHECK(from_v[i].to_double_vector() == from_c[i].to_double_vector());
        }
        // Through the engine: the leaf under the transpose gets the permuted reference gradient.
        backward(yv, g);
        backward(yc, g);
        check_close(x_cbl.grad(), contiguous(transpose(xc.grad(), 0, 1)).to_double_vector(), 0.0);
      }
}

TEST_CASE("causal_conv1d gives contiguous outputs to layouts other than channel-major") {
  Tensor w = random_tensor({4, 3}, 380);
  Tensor x1 = channel_major(random_tensor({4, 1, 6}, 381));  // one batch row: the layouts coincide
  CHECK(causal_conv1d(x1, w).is_contiguous());
  Tensor xt = transpose(random_tensor({2, 6, 4}, 382), 1, 2);  // time stride 4: read through strides
  CHECK(causal_conv1d(xt, w).is_contiguous());
  Tensor xb = expand(random_tensor({1, 4, 6}, 383), {3, 4, 6});  // batch stride 0: no row order
  Tensor yb = causal_conv1d(xb, w);
  CHECK(yb.is_contiguous());
  check_close(yb, conv_reference(contiguous(xb), w, Tensor(), false, false), 1e-12);
}

TEST_CASE("causal_conv1d passes gradcheck for every width, length, bias, silu and layout") {
  uint64_t seed = 400;
  for (bool channels_last : {false, true})
    for (int64_t k : {1, 2, 3, 4})
      for (int64_t L : {2, 5})  // 2 is shorter than k = 3, 4
        for (bool with_bias : {false, true})
          for (bool silu : {false, true}) {
            CAPTURE(channels_last); CAPTURE(k); CAPTURE(L); CAPTURE(with_bias); CAPTURE(silu);
            Tensor x = random_leaf(x_shape(channels_last, 2, 3, L), ++seed, -2.0, 2.0);
            Tensor w = random_leaf({3, k}, ++seed);
            std::vector<Tensor> inputs{x, w};
            if (with_bias) inputs.push_back(random_leaf({3}, ++seed));
            check_gradients(
                [=](const std::vector<Tensor>& in) {
                  return run_conv(channels_last, in[0], in[1], in.size() > 2 ? in[2] : Tensor(), silu);
                },
                inputs);
          }
}

TEST_CASE("causal_conv1d gradcheck with non-contiguous inputs and partial requires_grad") {
  for (bool channels_last : {false, true}) {
    CAPTURE(channels_last);
    Tensor x = transposed_leaf(x_shape(channels_last, 2, 4, 6), 501);
    Tensor w = transposed_leaf({4, 4}, 502);
    Tensor b = random_leaf({4}, 503);
    auto fn = [=](const std::vector<Tensor>& in) { return run_conv(channels_last, in[0], in[1], in[2], true); };
    check_gradients(fn, {x, w, b});
    // Only the weight needs a gradient (x and bias constant), as for a frozen input.
    check_gradients(fn, {x.detach(), w, b.detach()});
    // The output gradient arrives non-contiguous (through a transpose, or broadcast with zero
    // strides by a sum's backward) into the backward kernel.
    check_gradients([=](const std::vector<Tensor>& in) {
      return transpose(run_conv(channels_last, in[0], in[1], in[2], false), 0, 2);
    }, {x, w, b});
    check_gradients([=](const std::vector<Tensor>& in) {
      return sum(run_conv(channels_last, in[0], in[1], in[2], true), {1});
    }, {x, w, b});
  }
}

TEST_CASE("causal_conv1d gradcheck through a channel-major view") {
  uint64_t seed = 550;
  for (int64_t k : {1, 4})
    for (bool silu : {false, true}) {
      CAPTURE(k); CAPTURE(silu);
      Tensor x = random_leaf({4, 3, 5}, ++seed, -2.0, 2.0);  // (channels, batch, length)
      Tensor w = random_leaf({4, k}, ++seed);
      Tensor b = random_leaf({4}, ++seed);
      auto fn = [=](const std::vector<Tensor>& in) { return causal_conv1d(channel_major(in[0]), in[1], in[2], silu); };
      check_gradients(fn, {x, w, b});  // a contiguous output gradient
      // The output gradient channel-major, as the transpose's backward hands it on.
      check_gradients([=](const std::vector<Tensor>& in) { return transpose(fn(in), 0, 1); }, {x, w, b});
    }
}

TEST_CASE("causal_conv1d in f32 agrees with f64, forward and backward") {
  for (bool channels_last : {false, true}) {
    CAPTURE(channels_last);
    Tensor x64 = random_leaf(x_shape(channels_last, 3, 8, 33), 601, -2.0, 2.0);
    Tensor w64 = random_leaf({8, 4}, 602);
    Tensor b64 = random_leaf({8}, 603);
    Tensor x32 = to_dtype(x64.detach(), DType::f32).set_requires_grad(true);
    Tensor w32 = to_dtype(w64.detach(), DType::f32).set_requires_grad(true);
    Tensor b32 = to_dtype(b64.detach(), DType::f32).set_requires_grad(true);
    Tensor y64 = run_conv(channels_last, x64, w64, b64, true);
    Tensor y32 = run_conv(channels_last, x32, w32, b32, true);
    CHECK(y32.dtype() == DType::f32);
    check_close(y32, y64.to_double_vector(), 1e-6);
    Tensor v = random_tensor(y64.shape(), 604);
    backward(sum(y64 * v));
    backward(sum(y32 * to_dtype(v, DType::f32)));
    check_close(x32.grad(), x64.grad().to_double_vector(), 1e-5);
    check_close(w32.grad(), w64.grad().to_double_vector(), 1e-5);
    check_close(b32.grad(), b64.grad().to_double_vector(), 1e-5);
  }
}

TEST_CASE("causal_conv1d weight and bias gradients do not depend on the thread count") {
  Tensor x = random_tensor({4, 64, 50}, 701, DType::f32);
  Tensor w = random_tensor({64, 4}, 702, DType::f32);
  Tensor b = random_tensor({64}, 703, DType::f32);
  auto grads = [&](int threads) {
    set_num_threads(threads);
    Tensor wl = w.detach().set_requires_grad(true), bl = b.detach().set_requires_grad(true);
    Tensor xl = x.detach().set_requires_grad(true);
    backward(sum(causal_conv1d(xl, wl, bl, true) * x));
    return std::vector<std::vector<float>>{xl.grad().to_vector<float>(), wl.grad().to_vector<float>(),
                                           bl.grad().to_vector<float>()};  // f32: exact
  };
  const int previous = num_threads();
  auto one = grads(1);
  auto many = grads(4);
  set_num_threads(previous);
  CHECK(one == many);
}

TEST_CASE("causal_conv1d handles empty batch and length") {
  Tensor w = random_tensor({3, 4}, 801);
  CHECK(causal_conv1d(random_tensor({0, 3, 5}, 802), w).shape() == Shape{0, 3, 5});
  CHECK(causal_conv1d_channels_last(random_tensor({2, 0, 3}, 803), w).shape() == Shape{2, 0, 3});
}

TEST_CASE("causal_conv1d rejects bad inputs with the op's name and the shapes") {
  Tensor x = zeros({2, 4, 7});
  Tensor w = zeros({4, 4});
  CHECK_THROWS_WITH_AS(causal_conv1d(x, zeros({5, 4})),
                       doctest::Contains("causal_conv1d: weight f32[5, 4] on cpu has 5 channels but x f32[2, 4, 7] on cpu (batch, channels, length) has 4"),
                       Error);
  CHECK_THROWS_WITH_AS(causal_conv1d_channels_last(x, w),
                       doctest::Contains("causal_conv1d_channels_last: weight f32[4, 4] on cpu has 4 channels but x f32[2, 4, 7] on cpu (batch, length, channels) has 7"),
                       Error);
  CHECK_THROWS_WITH_AS(causal_conv1d(x, zeros({4, 9})),
                       doctest::Contains("causal_conv1d: kernel width k = 9 of weight f32[4, 9] on cpu is outside [1, 8]"), Error);
  CHECK_THROWS_WITH_AS(causal_conv1d(x, zeros({4, 0})),
                       doctest::Contains("causal_conv1d: kernel width k = 0 of weight f32[4, 0] on cpu is outside [1, 8]"), Error);
  CHECK_THROWS_WITH_AS(causal_conv1d(zeros({4, 7}), w),
                       doctest::Contains("causal_conv1d: expected x of shape (batch, channels, length) but found f32[4, 7]"), Error);
  CHECK_THROWS_WITH_AS(causal_conv1d(x, zeros({4})),
                       doctest::Contains("causal_conv1d: expected weight of shape (channels, k) but found f32[4]"), Error);
  CHECK_THROWS_WITH_AS(causal_conv1d(x, w, zeros({5})),
                       doctest::Contains("causal_conv1d: expected bias of shape (channels) = [4] but found f32[5]"), Error);
  CHECK_THROWS_WITH_AS(causal_conv1d(x, zeros({4, 4}, {.dtype = DType::f64})),
                       doctest::Contains("causal_conv1d: expected one dtype but found f32[2, 4, 7] on cpu and f64[4, 4] on cpu"), Error);
  CHECK_THROWS_WITH_AS(causal_conv1d(zeros({2, 4, 7}, {.dtype = DType::i64}), w),
                       doctest::Contains("causal_conv1d: expected x to be floating but found i64[2, 4, 7]"), Error);
  CHECK_THROWS_WITH_AS(causal_conv1d(x, Tensor()), doctest::Contains("causal_conv1d: weight is an undefined tensor"), Error);
}
