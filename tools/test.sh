#!/usr/bin/env bash
# Installs missing dependencies, builds and runs every test with ctest. CUDA tests report
# "skipped" on machines without a GPU. `--sanitize` builds the CPU tests with ASan+UBSan instead.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/tools/install-deps.sh"
if [ "${1:-}" = "--sanitize" ]; then
  export BUILD_DIR="${BUILD_DIR:-$root/build-sanitize}" BUILD_TYPE=Debug
  BUILD_TARGET=scanline_tests "$root/tools/build.sh" -DSCANLINE_CUDA=OFF "-DSCANLINE_SANITIZE=address;undefined"
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  # The unit tests only: the command-line tests (cli_*) need the scanline binary of the normal build.
  exec ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)" -E '^cli_'
else
  export BUILD_DIR="${BUILD_DIR:-$root/build}"
  "$root/tools/build.sh"
fi
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)"
