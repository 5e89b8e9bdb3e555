#!/usr/bin/env bash
# Quick start: installs missing dependencies, builds, then runs `scanline <args>`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/tools/install-deps.sh"
"$root/tools/build.sh" >/dev/null
exec "${BUILD_DIR:-$root/build}/bin/scanline" "$@"
