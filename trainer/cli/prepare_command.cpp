// `scanline prepare --input FILES... --out X.h5 [--val-fraction F]`: text files -> a byte-level
// token dataset (data/token_dataset.h describes the file). Everything the command line gets wrong
// — unknown or missing options, a bad number, an input that is missing or unreadable, an output
// whose directory is missing or not writable — is reported before any work with exit code 2;
// a failure while writing (disk full, I/O error) throws and exits 1 through main.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/prepare_dataset.h"
#include "data/token_dataset.h"

namespace scanline::cli {

namespace {

namespace fs = std::filesystem;

constexpr const char* kUsage =
    "usage: scanline prepare --input FILE [FILE ...] --out OUT.h5 [--val-fraction F]\n"
    "\n"
    "Tokenizes the files' bytes (byte-level tokenizer, vocabulary 256), concatenated in the order\n"
    "given, into an HDF5 token dataset. --val-fraction (default 0.01) is recorded in the file; the\n"
    "last fraction of the tokens is the validation split (a run's data.val_fraction decides).\n";

int usage_error(const std::string& message) {
  std::fprintf(stderr, "scanline prepare: error: %s\n%s", message.c_str(), kUsage);
  return 2;
}

// Empty when the input can be read, else why not.
std::string input_problem(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return "input '" + path + "' does not exist";
  if (!fs::is_regular_file(path, ec)) return "input '" + path + "' is not a regular file";
  if (::access(path.c_str(), R_OK) != 0) return "input '" + path + "' is not readable";
  return "";
}

std::string output_problem(const std::string& path) {
  std::error_code ec;
  fs::path parent = fs::path(path).parent_path();
  std::string dir = parent.empty() ? "." : parent.string();
  if (fs::is_directory(path, ec)) return "output '" + path + "' is a directory";
  if (!fs::is_directory(dir, ec)) return "output directory '" + dir + "' does not exist";
  if (::access(dir.c_str(), W_OK) != 0) return "output directory '" + dir + "' is not writable";
  return "";
}

}  // namespace

int prepare(int argc, char** argv) {
  std::vector<std::string> inputs;
  std::string out;
  double val_fraction = 0.01;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::printf("%s", kUsage);
      return 0;
    } else if (flag == "--input") {
      // Every following argument up to the next option is an input file.
      int first = i + 1;
      while (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) inputs.emplace_back(argv[++i]);
      if (i + 1 == first) return usage_error("--input expects one or more files");
    } else if (flag == "--out") {
      if (i + 1 >= argc) return usage_error("--out expects a file name");
      if (!out.empty()) return usage_error("--out given twice");
      out = argv[++i];
    } else if (flag == "--val-fraction") {
      if (i + 1 >= argc) return usage_error("--val-fraction expects a number");
      const char* text = argv[++i];
      char* end = nullptr;
      val_fraction = std::strtod(text, &end);
      if (end == text || *end != '\0' || !std::isfinite(val_fraction) || val_fraction < 0.0 || val_fraction >= 1.0)
        return usage_error(std::string("--val-fraction expects a number in [0, 1), found '") + text + "'");
    } else {
      return usage_error("unknown option '" + flag + "'");
    }
  }
  if (inputs.empty()) return usage_error("no input files (--input FILE ...)");
  if (out.empty()) return usage_error("no output file (--out OUT.h5)");
  for (const std::string& input : inputs)
    if (std::string problem = input_problem(input); !problem.empty()) return usage_error(problem);
  if (std::string problem = output_problem(out); !problem.empty()) return usage_error(problem);

  std::printf("prepare: %zu input file%s -> %s (byte tokenizer, vocab 256)\n", inputs.size(),
              inputs.size() == 1 ? "" : "s", out.c_str());
  PrepareSummary summary = prepare_byte_dataset(inputs, out, val_fraction, [](const std::string& file, int64_t n) {
    std::printf("  %s: %lld tokens\n", file.c_str(), (long long)n);
    std::fflush(stdout);
  });
  TokenRange train = split_range(summary.num_tokens, Split::train, val_fraction);
  TokenRange val = split_range(summary.num_tokens, Split::val, val_fraction);
  std::error_code ec;
  double mib = double(fs::file_size(out, ec)) / (1024.0 * 1024.0);
  std::printf("wrote %s: %lld tokens (train %lld, val %lld at val_fraction %g), %.2f MiB on disk\n", out.c_str(),
              (long long)summary.num_tokens, (long long)train.size(), (long long)val.size(), val_fraction, ec ? 0.0 : mib);
  return 0;
}

}  // namespace scanline::cli
