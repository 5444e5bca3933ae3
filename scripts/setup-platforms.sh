#!/usr/bin/env bash
# Tools for `npm run test:platforms` (test/platforms/): cross-compilers and the
# emulator that run the other targets' builds on this linux-x64 machine.
# Debian packages, installed once; nothing is installed that is there already.
set -euo pipefail
need=()
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v x86_64-w64-mingw32-g++-posix >/dev/null || need+=(g++-mingw-w64-x86-64-posix)
command -v wine >/dev/null || need+=(wine64 wine)
command -v file >/dev/null || need+=(file)
if [ "${#need[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
echo "platform tools ready: $(aarch64-linux-gnu-g++ --version | head -1); $(qemu-aarch64-static --version | head -1); $(x86_64-w64-mingw32-g++-posix --version | head -1); $(wine --version)"
