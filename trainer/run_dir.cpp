#include "trainer/run_dir.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "core/error.h"
#include "trainer/checkpoint.h"

namespace scanline {

namespace fs = std::filesystem;

void prepare_run_dir(const std::string& run_dir, const std::string& config_yaml) {
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  SCANLINE_CHECK(!ec && fs::is_directory(run_dir), "cannot create the run folder '", run_dir, "': ",
                 ec ? ec.message() : std::string("not a directory"));
  write_file_atomically((fs::path(run_dir) / "config.yaml").string(), config_yaml);
}

void write_file_atomically(const std::string& path, const std::string& text) {
  const fs::path target(path);
  const fs::path temporary = target.string() + ".tmp." + std::to_string(getpid());
  {
    std::ofstream out(temporary, std::ios::trunc);
    out << text;
    out.flush();
    SCANLINE_CHECK(out.good(), "cannot write '", temporary.string(), "': ", std::strerror(errno));
  }
  std::error_code ec;
  fs::rename(temporary, target, ec);
  if (ec) fs::remove(temporary);
  SCANLINE_CHECK(!ec, "cannot write '", target.string(), "': ", ec.message());
}

std::optional<std::string> resume_checkpoint(const std::string& run_dir, const std::string& resume,
                                             std::vector<std::string>& warnings) {
  if (resume.empty()) {
    auto existing = list_checkpoints(run_dir);
    SCANLINE_CHECK(existing.empty(), "the run folder '", run_dir, "' already holds checkpoints (the newest: step ",
                   existing.empty() ? 0 : existing.back().first,
                   "); continue that run with --resume auto, or start a new one elsewhere "
                   "(--set train.run_dir=...) or after removing the folder");
    return std::nullopt;
  }
  if (resume == "auto") return latest_valid_checkpoint(run_dir, &warnings);
  return resume;
}

}  // namespace scanline
