#!/usr/bin/env bash
# Installs the Debian packages scanline builds with, only those missing. The CUDA toolkit is not
# installed here: when nvcc exists the CUDA backend is compiled, otherwise the build is CPU-only.
# Nor is python3-matplotlib: it is only for tools/plot.py (optional; its test skips without it).
set -euo pipefail
packages=(cmake ninja-build g++ pkg-config ccache libhdf5-dev libspdlog-dev libyaml-cpp-dev doctest-dev libopenblas-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "install-deps: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
