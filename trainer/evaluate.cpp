#include "trainer/evaluate.h"

#include "autograd/grad_mode.h"
#include "ops/ops.h"

namespace scanline {

EvalResult evaluate(const LanguageModel& model, BatchSource& source, int64_t batches, DType compute, Device device) {
  NoGradGuard no_grad;
  EvalResult result;
  double loss_sum = 0;
  int64_t correct = 0;
  for (int64_t b = 0; b < batches; ++b) {
    Batch batch = source.next();
    Tensor logits = model.forward(to_device(batch.inputs, device), compute);
    const int64_t vocab = logits.size(-1);
    Tensor flat = reshape(logits, {-1, vocab});  // as they come: the loss is f32, argmax reads any dtype
    Tensor targets = reshape(to_device(batch.targets, device), {-1});
    loss_sum += cross_entropy(flat, targets, kIgnoreIndex, Reduction::sum, DType::f32).item<double>();
    const std::vector<int64_t> predicted = argmax(flat, -1).to_vector<int64_t>();
    const std::vector<int64_t> expected = batch.targets.to_vector<int64_t>();
    for (size_t i = 0; i < expected.size(); ++i) {
      if (expected[i] == kIgnoreIndex) continue;
      ++result.targets;
      correct += predicted[i] == expected[i];
    }
    ++result.batches;
  }
  if (result.targets > 0) {
    result.loss = loss_sum / double(result.targets);
    result.accuracy = double(correct) / double(result.targets);
  }
  return result;
}

}  // namespace scanline
