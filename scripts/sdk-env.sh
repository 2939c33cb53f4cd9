#!/usr/bin/env bash
# Installs the real Genesys SDKs that tests/gateway_sdks.rs drives through gcpool's gateway
# mode, into a test-only directory (default target/sdk-env, or $GCPOOL_SDK_ENV):
#   py/  a virtualenv with PureCloudPlatformClientV2 (PyPI)
#   js/  node_modules with purecloud-platform-client-v2 (npm)
# Pinned versions, so a run is repeatable; does nothing when they are already there.
#
#   bash scripts/sdk-env.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY_SDK="PureCloudPlatformClientV2==269.0.0"
JS_SDK="purecloud-platform-client-v2@262.0.0"
DIR="${GCPOOL_SDK_ENV:-target/sdk-env}"
mkdir -p "$DIR"

if [ "$(cat "$DIR/py/.installed" 2>/dev/null || true)" != "$PY_SDK" ]; then
  echo "== installing $PY_SDK into $DIR/py"
  command -v python3 >/dev/null || { echo "sdk-env: python3 not found" >&2; exit 1; }
  rm -rf "$DIR/py"
  python3 -m venv "$DIR/py"
  "$DIR/py/bin/pip" install --quiet --disable-pip-version-check "$PY_SDK"
  echo "$PY_SDK" > "$DIR/py/.installed"
fi

if [ "$(cat "$DIR/js/.installed" 2>/dev/null || true)" != "$JS_SDK" ]; then
  echo "== installing $JS_SDK into $DIR/js"
  command -v npm >/dev/null || { echo "sdk-env: npm not found" >&2; exit 1; }
  rm -rf "$DIR/js"
  mkdir -p "$DIR/js"
  echo '{"name":"gcpool-sdk-env","private":true}' > "$DIR/js/package.json"
  npm install --prefix "$DIR/js" --silent --no-audit --no-fund "$JS_SDK"
  echo "$JS_SDK" > "$DIR/js/.installed"
fi
echo "== SDKs ready in $DIR: $PY_SDK, $JS_SDK"
