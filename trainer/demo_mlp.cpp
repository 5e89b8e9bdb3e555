#include "trainer/demo_mlp.h"

#include <cmath>

#include "autograd/engine.h"
#include "core/random.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/reduce.h"
#include "trainer/sgd.h"

namespace scanline {

MlpDemoResult train_mlp_demo(const MlpDemoOptions& o, const std::function<void(int64_t, double)>& on_progress) {
  SCANLINE_CHECK(o.steps > 0 && o.samples > 0 && o.in_features > 0 && o.hidden > 0,
                 "demo-mlp: steps, samples, in_features and hidden must be positive");
  Generator gen(o.seed);
  const double in_scale = 1.0 / std::sqrt(double(o.in_features));
  // Target: a smooth nonlinear function of two random projections, y = tanh(2 X u) + 0.5 (X v)^2.
  Tensor x = randn({o.samples, o.in_features}, gen);
  Tensor u = randn({o.in_features, 1}, gen, {}, 0.0, in_scale);
  Tensor v = randn({o.in_features, 1}, gen, {}, 0.0, in_scale);
  Tensor y = add(tanh(mul(matmul(x, u), 2.0)), mul(square(matmul(x, v)), 0.5));

  // Parameters: PyTorch's default Linear init, uniform in +-1/sqrt(fan_in).
  const double hidden_scale = 1.0 / std::sqrt(double(o.hidden));
  TensorOptions param{.requires_grad = true};
  Tensor w1 = rand({o.hidden, o.in_features}, gen, param, -in_scale, in_scale);
  Tensor b1 = rand({o.hidden}, gen, param, -in_scale, in_scale);
  Tensor w2 = rand({1, o.hidden}, gen, param, -hidden_scale, hidden_scale);
  Tensor b2 = rand({1}, gen, param, -hidden_scale, hidden_scale);
  SGD optimizer({w1, b1, w2, b2}, o.lr, o.momentum);

  MlpDemoResult result;
  result.target_variance = mean(square(sub(y, mean(y)))).item<double>();
  for (int64_t step = 1; step <= o.steps; ++step) {
    Tensor prediction = linear(relu(linear(x, w1, b1)), w2, b2);
    Tensor loss = mean(square(sub(prediction, y)));
    double value = loss.item<double>();
    SCANLINE_CHECK(std::isfinite(value), "demo-mlp: loss became ", value, " at step ", step);
    if (step == 1) result.initial_loss = value;
    result.final_loss = value;
    if (on_progress && (step % o.log_every == 0 || step == o.steps || step == 1)) on_progress(step, value);
    optimizer.zero_grad();
    backward(loss);
    optimizer.step();
  }
  return result;
}

}  // namespace scanline
