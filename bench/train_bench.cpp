#include "bench/train_bench.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/matrix_rate.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/stream.h"
#include "core/random.h"
#include "cuda/device_query.h"
#include "models/language_model.h"
#include "ops/views.h"
#include "trainer/config_loader.h"
#include "trainer/fixed_batch_steps.h"
#include "trainer/model_factory.h"

namespace scanline::bench {
namespace {

constexpr double kH100DenseBf16 = 989e12;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Phases {
  cudaEvent_t start, forward, backward, optimizer;
  Phases() {
    for (cudaEvent_t* e : {&start, &forward, &backward, &optimizer}) CUDA_CHECK(cudaEventCreate(e));
  }
  ~Phases() {
    for (cudaEvent_t e : {start, forward, backward, optimizer}) cudaEventDestroy(e);
  }
  static double ms(cudaEvent_t a, cudaEvent_t b) {
    float v = 0;
    CUDA_CHECK(cudaEventElapsedTime(&v, a, b));
    return double(v);
  }
};

}  // namespace

int run_train_bench(int argc, char** argv) {
  std::string config_path;
  int64_t steps = 20, warmup = 5;
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    SCANLINE_CHECK(i + 1 < argc, "bench train: ", flag, " expects a value");
    if (flag == "--config") config_path = argv[++i];
    else if (flag == "--steps") steps = std::stoll(argv[++i]);
    else if (flag == "--warmup") warmup = std::stoll(argv[++i]);
    else SCANLINE_FAIL("bench train: unknown option '", flag, "' (expected --config, --steps, --warmup)");
  }
  SCANLINE_CHECK(!config_path.empty(), "bench train: --config X.yaml is required");
  SCANLINE_CHECK(steps >= 1 && warmup >= 0, "bench train: expected --steps >= 1 and --warmup >= 0");
  SCANLINE_CHECK(cuda::device_count() > 0, "bench train: no CUDA device found");
  const RunConfig config = load_run_config(config_path);
  const LanguageModelConfig lm_config = language_model_config(config);
  const Device device = Device::cuda(0);
  check_device_support(config, lm_config, device);
  const DType compute = config.train.precision == Precision::bf16 ? DType::bf16 : DType::f32;
  const int64_t batch = config.train.batch_size, L = config.data.seq_len;

  std::printf("scanline bench train on %s: %s\n", cuda::device_name(0).c_str(), config_path.c_str());
  const MatrixRate matrix = measure_bf16_matrix_rate(8192);
  std::printf("measured bf16 matrix rate: %.0f TFLOP/s (cuBLASLt 8192^3)\n", matrix.tflops);

  const int64_t total_steps = warmup + steps;
  Generator data(7);
  const Tensor tokens = randint(0, lm_config.vocab_size, {batch, L + 1}, data, {.dtype = DType::i64, .device = device});
  const Tensor inputs = contiguous(narrow(tokens, 1, 0, L)), targets = contiguous(narrow(tokens, 1, 1, L));

  cudaStream_t stream = cuda::current_stream(0);
  Phases ev;
  std::vector<double> fwd, bwd, opt, total, losses;
  double n_params = 0;
  {
    Generator gen(config.train.seed);
    LanguageModel model(lm_config, gen, {.device = device});
    n_params = double(model.parameter_count());
    std::printf("model: %.1fM parameters, pattern \"%s\", batch %lld x %lld tokens, %s\n", n_params / 1e6,
                lm_config.pattern.c_str(), (long long)batch, (long long)L, to_string(config.train.precision));
    cuda::synchronize(0);
    cuda::reset_peak(0);
    losses = train_on_fixed_batch(model, config.optim, inputs, targets, compute, total_steps,
                                  [&](int64_t s, StepPoint point) {
                                    const cudaEvent_t e = point == StepPoint::start      ? ev.start
                                                          : point == StepPoint::forward  ? ev.forward
                                                          : point == StepPoint::backward ? ev.backward
                                                                                         : ev.optimizer;
                                    CUDA_CHECK(cudaEventRecord(e, stream));
                                    if (point != StepPoint::optimizer) return;
                                    CUDA_CHECK(cudaEventSynchronize(ev.optimizer));
                                    if (s < warmup) return;
                                    fwd.push_back(Phases::ms(ev.start, ev.forward));
                                    bwd.push_back(Phases::ms(ev.forward, ev.backward));
                                    opt.push_back(Phases::ms(ev.backward, ev.optimizer));
                                    total.push_back(Phases::ms(ev.start, ev.optimizer));
                                  });
  }
  const double step_ms = median(total), tokens_per_s = double(batch * L) / (step_ms * 1e-3);
  const double flops_per_s = 6.0 * n_params * tokens_per_s;
  const double peak_gib = double(cuda::allocator_stats(0).peak_allocated) / double(1ull << 30);
  std::printf("\n| step ms | forward ms | backward ms | optimizer ms | tokens/s | MFU (measured %.0f) | MFU (989) | peak GiB |\n",
              matrix.tflops);
  std::printf("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  std::printf("| %.1f | %.1f | %.1f | %.1f | %.0f | %.1f%% | %.1f%% | %.2f |\n", step_ms, median(fwd), median(bwd),
              median(opt), tokens_per_s, 100.0 * flops_per_s / (matrix.tflops * 1e12),
              100.0 * flops_per_s / kH100DenseBf16, peak_gib);
  std::printf("\nloss after %lld steps on the fixed random batch: %.4f (the medians are over %lld steps after %lld "
              "warm-up steps; the optimizer phase includes the gradient clipping)\n",
              (long long)total_steps, losses.back(), (long long)steps, (long long)warmup);
  if (compute == DType::f32) return 0;

  // Fast must still be right: the same steps from the same initialisation in f32 (the timed model
  // is freed first), loss by loss (trainer/fixed_batch_steps.h; bf16 tolerance 2e-2).
  std::vector<double> reference;
  {
    Generator gen(config.train.seed);
    LanguageModel model(lm_config, gen, {.device = device});
    reference = train_on_fixed_batch(model, config.optim, inputs, targets, DType::f32, total_steps);
  }
  constexpr double kRtol = 2e-2;
  const LossAgreement agreement = compare_loss_curves(losses, reference, kRtol);
  std::printf("\n### loss check: %s against f32, step by step\n\n| step | %s loss | f32 loss |\n| ---: | ---: | ---: |\n",
              to_string(config.train.precision), to_string(config.train.precision));
  for (int64_t s = 0; s < total_steps; ++s)
    if (s == 0 || (s + 1) % 5 == 0 || s + 1 == total_steps || s == agreement.worst_step)
      std::printf("| %lld | %.4f | %.4f |\n", (long long)(s + 1), losses[size_t(s)], reference[size_t(s)]);
  std::printf("\nloss check: %s (largest difference at step %lld: %.2f of the allowance %g x max(|f32 loss|, 1))\n",
              agreement.ok ? "ok" : "FAILED", (long long)(agreement.worst_step + 1), agreement.worst_ratio, kRtol);
  if (!agreement.ok) return 1;
  return 0;
}

}  // namespace scanline::bench
