#!/usr/bin/env bash
# One-time set-up on a fresh machine with npm and apt: the compiler and git the
# native addon build needs (it clones llama.cpp's headers from the bundle inside
# node-llama-cpp, offline), then `npm ci`, which also builds TypeScript and the
# addon. PostgreSQL and nginx come from apt for the team server's cluster
# tests (nothing is started or enabled here). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v git >/dev/null 2>&1 || need+=(git)
command -v make >/dev/null 2>&1 || need+=(make)
# sentencepiece: the quality benchmark's stand-in tokenizer (bench/lib/qualityCorpus.ts) and its test
command -v spm_train >/dev/null 2>&1 || need+=(sentencepiece)
# PostgreSQL and nginx: the team server's cluster tests and bench:cluster start them in temporary folders
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need[@]}"
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ] || [ ! -f out/native/mobillm.node ]; then
  # package.json's allowScripts denies onnxruntime-node's script (it fetches CUDA libraries from NuGet);
  # npm before 11.19 ignores allowScripts, and this variable stops that script on those.
  ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund
fi
