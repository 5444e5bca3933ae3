#!/usr/bin/env bash
# Builds the on-device peer, llama.cpp's own llama-finetune (and llama-perplexity,
# the plain-inference floor), CPU only, from the llama.cpp source of the same
# release that node-llama-cpp ships (its git bundle, cloned offline). The build
# is cached in bench/.cache/peer (outside git). Prints the bin folder last.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="$PWD/bench/.cache/peer"
BUNDLE="$PWD/node_modules/node-llama-cpp/llama/gitRelease.bundle"
if [ -x "$CACHE/build/bin/llama-finetune" ] && [ -x "$CACHE/build/bin/llama-perplexity" ]; then
  echo "$CACHE/build/bin"; exit 0
fi
command -v cmake >/dev/null 2>&1 || { echo "error[PEER_BUILD]: cmake is missing: apt-get install -y cmake" >&2; exit 1; }
[ -f "$BUNDLE" ] || { echo "error[PEER_BUILD]: $BUNDLE is missing: run npm ci first" >&2; exit 1; }
mkdir -p "$CACHE"
[ -d "$CACHE/src/.git" ] || git -c advice.detachedHead=false clone -q "$BUNDLE" "$CACHE/src"
cmake -S "$CACHE/src" -B "$CACHE/build" -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >&2 \
  || { echo "error[PEER_BUILD]: cmake configuration of llama.cpp failed" >&2; exit 1; }
cmake --build "$CACHE/build" --target llama-finetune llama-perplexity -j"$(nproc)" >&2 \
  || { echo "error[PEER_BUILD]: building llama-finetune failed" >&2; exit 1; }
echo "$CACHE/build/bin"
