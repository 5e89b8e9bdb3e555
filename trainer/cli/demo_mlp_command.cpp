// `scanline demo-mlp`: trains the demo MLP on CPU and prints its progress.
#include <cstdio>
#include <cstring>
#include <string>

#include "core/error.h"
#include "trainer/demo_mlp.h"

namespace scanline::cli {

namespace {
int64_t parse_int(const char* flag, const char* text) {
  char* end = nullptr;
  long long value = std::strtoll(text, &end, 10);
  SCANLINE_CHECK(end && *end == '\0' && end != text, "demo-mlp: ", flag, " expects an integer, found '", text, "'");
  return value;
}
}  // namespace

int demo_mlp(int argc, char** argv) {
  MlpDemoOptions options;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    SCANLINE_CHECK(i + 1 < argc || flag == "--help", "demo-mlp: ", flag, " expects a value");
    if (flag == "--steps") options.steps = parse_int("--steps", argv[++i]);
    else if (flag == "--seed") options.seed = uint64_t(parse_int("--seed", argv[++i]));
    else if (flag == "--help") {
      std::printf("usage: scanline demo-mlp [--steps N] [--seed S]\n");
      return 0;
    } else SCANLINE_FAIL("demo-mlp: unknown option '", flag, "' (expected --steps or --seed)");
  }
  std::printf("demo-mlp: 2-layer MLP (%lld -> %lld -> 1), SGD lr %.3g momentum %.2g, %lld samples, %lld steps\n",
              (long long)options.in_features, (long long)options.hidden, options.lr, options.momentum,
              (long long)options.samples, (long long)options.steps);
  MlpDemoResult r = train_mlp_demo(options, [](int64_t step, double loss) {
    std::printf("step %5lld  loss %.6f\n", (long long)step, loss);
    std::fflush(stdout);
  });
  std::printf("final loss %.6f (initial %.6f; a constant predictor scores %.6f): explained variance %.1f%%\n",
              r.final_loss, r.initial_loss, r.target_variance, 100.0 * (1.0 - r.final_loss / r.target_variance));
  return 0;
}

}  // namespace scanline::cli
