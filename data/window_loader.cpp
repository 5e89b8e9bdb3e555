#include "data/window_loader.h"

#include <algorithm>

#include "core/error.h"

namespace scanline {

using namespace data_detail;

WindowLoader::WindowLoader(std::shared_ptr<const TokenDataset> dataset, const WindowLoaderOptions& options)
    : dataset_(std::move(dataset)), options_(options), generator_(options.seed), cursor_(options.rank, options.world) {
  SCANLINE_CHECK(dataset_ != nullptr, "WindowLoader: no dataset");
  SCANLINE_CHECK(options_.seq_len >= 1, "WindowLoader: seq_len must be at least 1 but is ", options_.seq_len);
  SCANLINE_CHECK(options_.batch >= 1, "WindowLoader: batch must be at least 1 but is ", options_.batch);
  check_rank("WindowLoader", options_.rank, options_.world);
  range_ = dataset_->split(options_.split, options_.val_fraction);
  SCANLINE_CHECK(range_.size() >= options_.seq_len + 1, "WindowLoader: the ", split_name(options_.split),
                 " split of '", dataset_->path(), "' has ", range_.size(), " tokens (val_fraction ",
                 options_.val_fraction, " of ", dataset_->size(), "), but a window needs seq_len + 1 = ",
                 options_.seq_len + 1);
}

int64_t WindowLoader::window_start(int64_t draw) const {
  auto words = generator_.words(uint64_t(draw));
  uint64_t starts = uint64_t(range_.size() - options_.seq_len);  // windows of seq_len + 1 that fit
  return range_.begin + int64_t(uniform_below(bits64(words[0], words[1]), starts));
}

Batch WindowLoader::next() {
  const int64_t L = options_.seq_len;
  Batch batch{empty({options_.batch, L}, {.dtype = DType::i64}), empty({options_.batch, L}, {.dtype = DType::i64})};
  int64_t* inputs = batch.inputs.data_ptr<int64_t>();
  int64_t* targets = batch.targets.data_ptr<int64_t>();
  std::vector<int64_t> window(size_t(L + 1));
  for (int64_t row = 0; row < options_.batch; ++row) {
    dataset_->read(window_start(cursor_.next()), L + 1, window.data());
    std::copy(window.begin(), window.end() - 1, inputs + row * L);
    std::copy(window.begin() + 1, window.end(), targets + row * L);
  }
  return batch;
}

std::vector<int64_t> WindowLoader::position() const {
  return make_position(kPositionTag, cursor_.position(), options_.seed, {range_.size(), options_.seq_len});
}

void WindowLoader::set_position(const std::vector<int64_t>& position) {
  cursor_.reset(parse_position(position, "WindowLoader", kPositionTag, options_.seed,
                               {{"split size", range_.size()}, {"seq_len", options_.seq_len}}));
}

}  // namespace scanline
