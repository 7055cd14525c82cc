#!/usr/bin/env bash
# Install what the leaderboard page's browser check needs: Debian's chromium (headless) and the
# websocket-client package that speaks the Chrome DevTools protocol. Idempotent: does nothing when both exist.
# Usage: leaderboards/setup_browser.sh [path/to/venv]   (default .venv)
set -euo pipefail
VENV="${1:-.venv}"
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
fi
if ! "$VENV/bin/python" -c "import websocket" >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install -q -c constraints.txt "websocket-client>=1.6"
fi
echo "browser check ready: $(chromium --version 2>/dev/null)"
