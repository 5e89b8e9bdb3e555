#pragma once
// Evaluation during training: batches from a validation source through the model without a graph,
// scored on the targets that count (those not equal to kIgnoreIndex). For a synthetic task whose
// only scored targets are its answers the token accuracy is the task's per-answer accuracy. In
// selective copying the inputs at the answer positions are markers, never earlier answers, so one
// forward pass predicts exactly what greedy generation would.
#include <cstdint>

#include "core/device.h"
#include "core/dtype.h"
#include "data/batch_source.h"
#include "models/language_model.h"

namespace scanline {

struct EvalResult {
  double loss = 0;      // mean cross-entropy over the scored targets (nats)
  double accuracy = 0;  // fraction of scored targets whose argmax logit is the target
  int64_t targets = 0;  // scored targets seen
  int64_t batches = 0;
};

// Pulls `batches` batches from `source` (the caller decides where the source starts) and runs the
// model in `compute` dtype on `device`. The loss is taken on f32 logits.
EvalResult evaluate(const LanguageModel& model, BatchSource& source, int64_t batches, DType compute, Device device);

}  // namespace scanline
