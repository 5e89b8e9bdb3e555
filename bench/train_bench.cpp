#include "bench/train_bench.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bench/kernel_profile.h"
#include "bench/matrix_rate.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/stream.h"
#include "core/random.h"
#include "cuda/device_query.h"
#include "models/language_model.h"
#include "ops/views.h"
#include "trainer/config_loader.h"
#include "trainer/distributed_setup.h"
#include "trainer/fixed_batch_steps.h"
#include "trainer/grad_reducer.h"
#include "trainer/model_factory.h"

namespace scanline::bench {
namespace {

constexpr double kH100DenseBf16 = 989e12;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Options {
  std::string config_path;
  int64_t steps = 20, warmup = 5;
  int64_t profile_steps = 3;  // after the timed ones, under CUPTI: the top-kernels table
  int overlap = -1;  // --overlap 0|1; -1: the config's distributed.overlap
};

Options parse_options(int argc, char** argv) {
  Options o;
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    SCANLINE_CHECK(i + 1 < argc, "bench train: ", flag, " expects a value");
    const std::string value = argv[++i];
    if (flag == "--config") o.config_path = value;
    else if (flag == "--steps") o.steps = std::stoll(value);
    else if (flag == "--warmup") o.warmup = std::stoll(value);
    else if (flag == "--profile-steps") o.profile_steps = std::stoll(value);
    else if (flag == "--overlap" && (value == "0" || value == "1")) o.overlap = value == "1";
    else if (flag == "--overlap") SCANLINE_FAIL("bench train: --overlap expects 0 or 1, found '", value, "'");
    else SCANLINE_FAIL("bench train: unknown option '", flag, "' (expected --config, --steps, --warmup, --overlap, "
                      "--profile-steps)");
  }
  SCANLINE_CHECK(!o.config_path.empty(), "bench train: --config X.yaml is required");
  SCANLINE_CHECK(o.steps >= 1 && o.warmup >= 0 && o.profile_steps >= 0,
                 "bench train: expected --steps >= 1, --warmup >= 0 and --profile-steps >= 0");
  return o;
}

// One CUDA event a StepPoint, recorded on the compute stream as each step passes the point.
struct StepEvents {
  std::array<cudaEvent_t, 5> events{};
  StepEvents() {
    for (cudaEvent_t& e : events) CUDA_CHECK(cudaEventCreate(&e));
  }
  ~StepEvents() {
    for (cudaEvent_t e : events) cudaEventDestroy(e);
  }
  cudaEvent_t operator[](StepPoint p) const { return events[size_t(p)]; }
  double ms(StepPoint a, StepPoint b) const {
    float v = 0;
    CUDA_CHECK(cudaEventElapsedTime(&v, (*this)[a], (*this)[b]));
    return double(v);
  }
};

// Each timed step's phases, in ms.
struct PhaseTimes {
  std::vector<double> forward, backward, all_reduce, optimizer, step;
  void add(const StepEvents& ev) {
    forward.push_back(ev.ms(StepPoint::start, StepPoint::forward));
    backward.push_back(ev.ms(StepPoint::forward, StepPoint::backward));  // with the overlapped communication
    all_reduce.push_back(ev.ms(StepPoint::backward, StepPoint::reduced));  // the exposed communication
    optimizer.push_back(ev.ms(StepPoint::reduced, StepPoint::optimizer));
    step.push_back(ev.ms(StepPoint::start, StepPoint::optimizer));
  }
};

// Each step's loss averaged over the ranks (each rank's is its own batch's): the global batch's.
std::vector<double> mean_over_ranks(const std::vector<double>& losses, Communicator& comm, Device device) {
  Tensor t = from_vector(std::vector<float>(losses.begin(), losses.end()), {int64_t(losses.size())}, device);
  comm.all_reduce(t, ReduceOp::average);
  comm.wait_pending();
  return t.to_double_vector();
}

std::string cell(const char* spec, double v) {
  char text[64];
  std::snprintf(text, sizeof text, spec, v);
  return text;
}

// A Markdown table of one row: (column, value) pairs.
void print_table(const std::vector<std::pair<std::string, std::string>>& cells) {
  std::string head = "|", rule = "|", row = "|";
  for (const auto& [name, value] : cells) head += " " + name + " |", rule += " ---: |", row += " " + value + " |";
  std::printf("\n%s\n%s\n%s\n", head.c_str(), rule.c_str(), row.c_str());
}

// Fast must still be right: the same steps from the same initialisation in f32 (the timed model
// is freed first), loss by loss (trainer/fixed_batch_steps.h; bf16 tolerance 2e-2). 1 when they
// disagree.
int check_against_f32(const RunConfig& config, const LanguageModelConfig& lm_config, Device device,
                      const Tensor& inputs, const Tensor& targets, const std::vector<double>& losses) {
  const int64_t total_steps = int64_t(losses.size());
  std::vector<double> reference;
  {
    Generator gen(config.train.seed);
    LanguageModel model(lm_config, gen, {.device = device});
    reference = train_on_fixed_batch(model, config.optim, inputs, targets, DType::f32, total_steps);
  }
  // The gate is issue 10's: the loss after the last step within bf16 tolerance of f32's. The whole
  // curve is printed with its largest per-step difference, which is not a gate: where a memorised
  // batch's loss falls by most of a nat a step, a lead of a few hundredths of a step is already
  // over 2e-2 (Mamba-2, step 15 of 25 on the H100: 0.894 against 0.922, the steps around it within).
  constexpr double kRtol = 2e-2;
  const LossAgreement agreement = compare_loss_curves(losses, reference, kRtol);
  const LossAgreement final = compare_loss_curves({losses.back()}, {reference.back()}, kRtol);
  std::printf("\n### loss check: %s against f32, step by step\n\n| step | %s loss | f32 loss |\n| ---: | ---: | ---: |\n",
              to_string(config.train.precision), to_string(config.train.precision));
  for (int64_t s = 0; s < total_steps; ++s)
    if (s == 0 || (s + 1) % 5 == 0 || s + 1 == total_steps || s == agreement.worst_step)
      std::printf("| %lld | %.4f | %.4f |\n", (long long)(s + 1), losses[size_t(s)], reference[size_t(s)]);
  std::printf("\nloss check: %s (after step %lld: %.2f of the allowance %g x max(|f32 loss|, 1); largest on the way, "
              "at step %lld: %.2f)\n",
              final.ok ? "ok" : "FAILED", (long long)total_steps, final.worst_ratio, kRtol,
              (long long)(agreement.worst_step + 1), agreement.worst_ratio);
  return final.ok ? 0 : 1;
}

}  // namespace

int run_train_bench(int argc, char** argv) {
  const Options opt = parse_options(argc, argv);
  SCANLINE_CHECK(cuda::device_count() > 0, "bench train: no CUDA device found");
  const RunConfig config = load_run_config(opt.config_path);
  // Launched as one rank of several (scanline launch, torchrun-style variables): this rank's GPU
  // and communicator, as `scanline train` takes them; rank 0 alone prints.
  const std::unique_ptr<DistributedRun> dist = start_distributed(config);
  const int rank = dist ? dist->info.rank : 0, world = dist ? dist->info.world_size : 1;
  const bool lead = rank == 0, overlap = opt.overlap < 0 ? config.distributed.overlap : opt.overlap == 1;
  validate_for_world(config, world);  // train.batch_size is the global batch: each rank takes 1 / world of it
  const LanguageModelConfig lm_config = language_model_config(config);
  const Device device = dist ? dist->device : Device::cuda(0);
  check_device_support(config, lm_config, device);
  const DType compute = compute_dtype(config.train.precision);
  const int64_t batch = config.train.batch_size / world, L = config.data.seq_len;

  if (lead)
    std::printf("scanline bench train on %s: %s\n", cuda::device_name(device.index).c_str(), opt.config_path.c_str());
  if (lead && dist)
    std::printf("data parallel: %d ranks (%s), %lld of the %lld sequences each, gradients averaged in %g MiB %s "
                "buckets, overlap %s\n",
                world, dist->info.source.c_str(), (long long)batch, (long long)config.train.batch_size,
                config.distributed.bucket_mb, to_string(config.distributed.reduce_dtype), overlap ? "on" : "off");
  const MatrixRate matrix = measure_bf16_matrix_rate(8192);
  if (lead) std::printf("measured bf16 matrix rate: %.0f TFLOP/s (cuBLASLt 8192^3)\n", matrix.tflops);

  const int64_t total_steps = opt.warmup + opt.steps;
  Generator data(7 + uint64_t(rank));  // every rank its own tokens, so that the averaging is real
  const Tensor tokens = randint(0, lm_config.vocab_size, {batch, L + 1}, data, {.dtype = DType::i64, .device = device});
  const Tensor inputs = contiguous(narrow(tokens, 1, 0, L)), targets = contiguous(narrow(tokens, 1, 1, L));

  cudaStream_t stream = cuda::current_stream(device.index);
  StepEvents ev;
  PhaseTimes times;
  std::vector<double> losses;
  double n_params = 0;
  KernelProfile profile;
  {
    Generator gen(config.train.seed);
    LanguageModel model(lm_config, gen, {.device = device});
    const std::unique_ptr<GradReducer> reducer =
        dist ? replicate_and_reduce(model.parameters(), *dist->comm, config.distributed) : nullptr;
    n_params = double(model.parameter_count());
    if (lead)
      std::printf("model: %.1fM parameters, pattern \"%s\", batch %lld x %lld tokens, %s\n", n_params / 1e6,
                  lm_config.pattern.c_str(), (long long)batch, (long long)L, to_string(config.train.precision));
    cuda::synchronize(device.index);
    cuda::reset_peak(device.index);
    losses = train_on_fixed_batch(
        model, config.optim, inputs, targets, compute, total_steps,
        [&](int64_t s, StepPoint point) {
          CUDA_CHECK(cudaEventRecord(ev[point], stream));
          if (point != StepPoint::optimizer) return;
          CUDA_CHECK(cudaEventSynchronize(ev[point]));
          if (s >= opt.warmup) times.add(ev);
        },
        {.reducer = reducer.get(), .overlap = overlap});
    // A few more steps, untimed, with every kernel recorded (rank 0's GPU; the ranks step together).
    if (opt.profile_steps > 0) {
      if (lead) profile.start();
      train_on_fixed_batch(model, config.optim, inputs, targets, compute, opt.profile_steps, {},
                           {.reducer = reducer.get(), .overlap = overlap});
      if (lead) profile.stop();
    }
  }
  if (dist) losses = mean_over_ranks(losses, *dist->comm, device);
  const double step_ms = median(times.step), tokens_per_s = double(batch * L) / (step_ms * 1e-3);  // a GPU
  const double flops_per_s = 6.0 * n_params * tokens_per_s;
  const double peak_gib = double(cuda::allocator_stats(device.index).peak_allocated) / double(1ull << 30);
  if (lead) {
    // One GPU: the table bench/peers/lm_torch.py reads; data parallel adds the exposed
    // communication and the tokens of all ranks (MFU and the peak are rank 0's GPU's).
    std::vector<std::pair<std::string, std::string>> cells = {{"step ms", cell("%.1f", step_ms)},
                                                              {"forward ms", cell("%.1f", median(times.forward))},
                                                              {"backward ms", cell("%.1f", median(times.backward))}};
    if (dist) cells.emplace_back("all-reduce wait ms", cell("%.1f", median(times.all_reduce)));
    cells.emplace_back("optimizer ms", cell("%.1f", median(times.optimizer)));
    cells.emplace_back(dist ? "tokens/s a GPU" : "tokens/s", cell("%.0f", tokens_per_s));
    if (dist) cells.emplace_back("tokens/s, " + std::to_string(world) + " GPUs", cell("%.0f", world * tokens_per_s));
    cells.emplace_back(cell("MFU (measured %.0f)", matrix.tflops),
                       cell("%.1f%%", 100.0 * flops_per_s / (matrix.tflops * 1e12)));
    cells.emplace_back("MFU (989)", cell("%.1f%%", 100.0 * flops_per_s / kH100DenseBf16));
    cells.emplace_back("peak GiB", cell("%.2f", peak_gib));
    print_table(cells);
    std::printf("\nloss after %lld steps on the fixed random batch%s: %.4f (the medians are over %lld steps after %lld "
                "warm-up steps; the optimizer phase includes the gradient clipping)\n",
                (long long)total_steps, dist ? "es (mean over the ranks)" : "", losses.back(), (long long)opt.steps,
                (long long)opt.warmup);
    if (opt.profile_steps > 0) profile.print(opt.profile_steps, 30);
  }
  if (dist) {
    if (lead && compute != DType::f32)
      std::printf("\nloss check: skipped (the f32 re-check is a single-GPU check: run bench train without the "
                  "launcher)\n");
    dist->finish();
    return 0;
  }
  return compute == DType::f32 ? 0 : check_against_f32(config, lm_config, device, inputs, targets, losses);
}

}  // namespace scanline::bench
