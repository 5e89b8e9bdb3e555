#include "trainer/load_model.h"

#include <cstdio>
#include <filesystem>
#include <optional>
#include <vector>

#include "core/random.h"
#include "trainer/checkpoint.h"
#include "trainer/config_loader.h"
#include "trainer/device_select.h"
#include "trainer/model_factory.h"
#include "trainer/run_checkpoint.h"

namespace scanline {

LoadedModel load_model(const ModelRequest& request) {
  namespace fs = std::filesystem;
  LoadedModel loaded;
  loaded.path = request.checkpoint;
  if (fs::is_directory(loaded.path)) {
    std::vector<std::string> warnings;
    std::optional<std::string> latest = latest_valid_checkpoint(loaded.path, &warnings);
    for (const std::string& w : warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
    if (!latest) throw ModelRequestError("--checkpoint '" + loaded.path + "' is a folder without a valid checkpoint");
    loaded.path = *latest;
  }
  const Checkpoint checkpoint = load_checkpoint(loaded.path);  // CheckpointError: exit 1
  loaded.step = checkpoint.state.step;
  loaded.config = request.config.empty() ? parse_run_config(checkpoint.config_yaml, loaded.path + " /config")
                                         : load_run_config(request.config);
  RunConfig& config = loaded.config;
  config.train.device = request.device == "cpu"    ? DeviceChoice::cpu
                        : request.device == "cuda" ? DeviceChoice::cuda
                                                   : DeviceChoice::automatic;
  try {
    loaded.device = resolve_device(config);
  } catch (const ConfigError&) {
    throw ModelRequestError("--device cuda: no CUDA device is available to this build or machine; use auto or cpu");
  }
  loaded.compute = request.dtype == "bf16" ? DType::bf16
                   : request.dtype == "f32" ? DType::f32
                                            : compute_dtype(config.train.precision);
  Generator init(config.train.seed);  // every parameter is overwritten by the checkpoint's
  loaded.model = std::make_unique<LanguageModel>(language_model_config(config), init,
                                                 TensorOptions{}.with_device(loaded.device));
  load_parameters(loaded.model->named_parameters(), checkpoint, loaded.path);
  return loaded;
}

}  // namespace scanline
