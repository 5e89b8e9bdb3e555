#pragma once
// What the subcommands share about their command lines: a usage problem is an exception that
// main's handlers never see (the command prints it and returns 2), integer flags are parsed
// strictly, and --help / -h anywhere prints the usage text.
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace scanline::cli {

struct UsageError {
  std::string message;
};

[[noreturn]] inline void usage_problem(const std::string& message) { throw UsageError{message}; }

// The whole of `text` as a base-10 integer, else a UsageError naming the flag.
inline int64_t parse_int(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno) usage_problem(flag + " expects an integer, found '" + text + "'");
  return v;
}

// `scanline <command> ...`: the usage text on --help / -h (exit 0), else run(argc, argv); a
// UsageError becomes "scanline <command>: error: ... (see scanline <command> --help)", exit 2.
template <class Run>
int run_command(const char* command, const char* usage, int argc, char** argv, const Run& run) {
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      std::printf("%s", usage);
      return 0;
    }
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "scanline %s: error: %s (see scanline %s --help)\n", command, e.message.c_str(), command);
    return 2;
  }
}

}  // namespace scanline::cli
