#!/usr/bin/env bash
# Configures and builds scanline in BUILD_DIR (default: build). Extra arguments go to cmake's
# configure step; BUILD_TARGET names one target to build instead of all.
# Uses ccache when present so rebuilds (and CI) skip unchanged translation units.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build_dir="${BUILD_DIR:-$root/build}"
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" "${launcher[@]}" "$@" >/dev/null
target=()
[ -n "${BUILD_TARGET:-}" ] && target=(--target "$BUILD_TARGET")
cmake --build "$build_dir" -j "${JOBS:-$(nproc)}" "${target[@]}"
