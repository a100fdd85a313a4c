#!/usr/bin/env bash
# Install the system Chromium that the WebShop GUI env drives through playwright.
# Idempotent: does nothing when /usr/bin/chromium already exists. Never runs
# `playwright install` (that downloads a browser build; the Debian package is used instead).
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium
/usr/bin/chromium --version
