#!/usr/bin/env bash
# Make sure a headless Chromium is available for the report rendering test.
#
# Usage: infra/chromium.sh [install|path]
#
#   install  (default) apt-get install Debian's `chromium` if no Chromium binary is on
#            PATH (needs root). Idempotent: exits 0 at once when one is present.
#   path     print the Chromium binary that tests use, exit 1 when there is none.
#
# The test (tests/integration/test_report_render.py) calls `install` itself, so
# `make test` needs nothing else; outside CI a failed install skips the test, in CI
# (CI=true) it fails it.
set -euo pipefail

log() { printf '[chromium] %s\n' "$*" >&2; }
die() { printf '[chromium] ERROR: %s\n' "$*" >&2; exit 1; }

find_chromium() {
    local candidate
    for candidate in chromium chromium-browser google-chrome-stable google-chrome; do
        if command -v "$candidate" >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

install() {
    if binary="$(find_chromium)"; then
        log "present: $binary"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "no chromium on PATH and no apt-get to install it"
    local sudo=""
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "installing chromium needs root (or sudo)"
        sudo="sudo"
    fi
    log "installing Debian's chromium (apt-get, once)"
    export DEBIAN_FRONTEND=noninteractive
    # A stale package index makes the install 404: refresh it once and retry.
    if ! $sudo apt-get install -y --no-install-recommends chromium >/dev/null; then
        $sudo apt-get update -qq
        $sudo apt-get install -y --no-install-recommends chromium >/dev/null
    fi
    binary="$(find_chromium)" || die "apt-get finished but no chromium binary is on PATH"
    log "installed: $binary"
}

case "${1:-install}" in
    install) install ;;
    path) find_chromium || exit 1 ;;
    *) die "usage: $0 [install|path]" ;;
esac
