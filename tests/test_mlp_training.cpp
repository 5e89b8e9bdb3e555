#include <doctest/doctest.h>

#include "trainer/demo_mlp.h"

using namespace scanline;

TEST_CASE("a 2-layer MLP trained with SGD fits the synthetic regression") {
  MlpDemoOptions options;
  options.steps = 300;
  MlpDemoResult r = train_mlp_demo(options);
  MESSAGE("initial ", r.initial_loss, " final ", r.final_loss, " variance ", r.target_variance);
  // A constant predictor scores the target variance; chance cannot explain 90% of it.
  CHECK(r.final_loss < 0.1 * r.target_variance);
  CHECK(r.final_loss < 0.1 * r.initial_loss);
}

TEST_CASE("the MLP demo is reproducible from its seed") {
  MlpDemoOptions options;
  options.steps = 20;
  CHECK(train_mlp_demo(options).final_loss == train_mlp_demo(options).final_loss);
  options.seed = 1;
  MlpDemoResult other = train_mlp_demo(options);
  options.seed = 0;
  CHECK(other.final_loss != train_mlp_demo(options).final_loss);
}
