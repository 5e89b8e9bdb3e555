// `scanline launch`: parses the flags, then trainer/launch.h starts the ranks from this same
// executable (/proc/self/exe) and waits for them.
#include "trainer/cli/launch_command.h"

#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <string>

#include "core/error.h"
#include "trainer/cli/usage.h"
#include "trainer/launch.h"
#include "trainer/tcp_socket.h"

namespace scanline::cli {
namespace {

constexpr const char* kUsage =
    "usage: scanline launch --nproc N [--master-port P] [--grace SECONDS] [--] COMMAND [ARGS...]\n"
    "\n"
    "  --nproc N          ranks to start on this host, one a GPU (1..1024)\n"
    "  --master-port P    the rendezvous port on 127.0.0.1 (default: a free port)\n"
    "  --grace SECONDS    after a rank fails, how long the others get to stop after SIGTERM\n"
    "                     before SIGKILL (default 30)\n"
    "\n"
    "Runs `scanline COMMAND ARGS...` N times with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,\n"
    "MASTER_ADDR=127.0.0.1 and MASTER_PORT set, e.g. scanline launch --nproc 8 -- train configs/x.yaml\n"
    "Output is passed through as is (rank 0 logs). When a rank fails the others are stopped;\n"
    "SIGINT and SIGTERM are forwarded to every rank. Exit codes: 0 every rank exited 0, 2 invalid\n"
    "command line, otherwise the first failed rank's status (128 + N for a rank killed by signal N).\n";

// --help is looked for before `--` only (what follows belongs to the launched command), so launch
// does not use run_command; its usage problems are the shared UsageError.
struct HelpWanted {};

int parse_int(const std::string& flag, const char* text, int low, int high) {
  const std::string s = text ? text : "";
  int value = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size() || value < low || value > high)
    throw UsageError{flag + ": expected an integer in [" + std::to_string(low) + ", " + std::to_string(high) +
                     "] but found '" + s + "'"};
  return value;
}

std::string self_executable() {
  char path[4096];
  const ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
  SCANLINE_CHECK(n > 0, "launch: cannot find this executable through /proc/self/exe: ", std::strerror(errno));
  return std::string(path, size_t(n));
}

LaunchSpec parse(int argc, char** argv) {
  LaunchSpec spec;
  spec.nproc = 0;
  int i = 1;
  for (; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") {
      ++i;
      break;
    }
    if (arg == "--help" || arg == "-h") throw HelpWanted{};
    if (arg.rfind("--", 0) != 0) break;  // the command starts here
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    if (arg == "--nproc") {
      spec.nproc = parse_int(arg, value, 1, 1024);
    } else if (arg == "--master-port") {
      spec.master_port = parse_int(arg, value, 1, 65535);
    } else if (arg == "--grace") {
      spec.grace = std::chrono::seconds(parse_int(arg, value, 0, 24 * 3600));
    } else {
      throw UsageError{"unknown flag '" + arg + "'"};
    }
    ++i;
  }
  if (spec.nproc == 0) throw UsageError{"--nproc N is required"};
  if (i >= argc) throw UsageError{"no command to run: expected e.g. `-- train configs/x.yaml` after the flags"};
  if (std::string(argv[i]) == "launch") throw UsageError{"the command to run cannot be launch itself"};
  spec.args.assign(argv + i, argv + argc);
  return spec;
}

}  // namespace

int launch(int argc, char** argv) {
  LaunchSpec spec;
  try {
    spec = parse(argc, argv);
  } catch (const HelpWanted&) {
    std::printf("%s", kUsage);
    return 0;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "scanline launch: error: %s (see scanline launch --help)\n", e.message.c_str());
    return 2;
  }
  if (spec.master_port == 0) spec.master_port = tcp::pick_free_port();
  std::fprintf(stderr, "scanline launch: %d rank%s, MASTER_ADDR=%s MASTER_PORT=%d\n", spec.nproc,
               spec.nproc == 1 ? "" : "s", spec.master_addr.c_str(), spec.master_port);
  spec.program = self_executable();
  const LaunchOutcome outcome = launch_processes(spec);
  if (outcome.exit_code != 0) std::fprintf(stderr, "scanline launch: %s\n", outcome.message.c_str());
  return outcome.exit_code;
}

}  // namespace scanline::cli
