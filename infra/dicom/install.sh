#!/usr/bin/env bash
# Make sure DCMTK's storescu is available: the real DICOM sender of the gateway's tests
# (tests/unit/gateway/test_dicom_sr.py, DESIGN §9 "real third-party clients").
#
# Usage: infra/dicom/install.sh [install|path]
#
#   install  (default) apt-get install Debian's `dcmtk` if no storescu is on PATH (needs
#            root, or sudo). Idempotent: exits 0 at once when one is present.
#   path     print the storescu binary that tests use, exit 1 when there is none.
#
# `make test` runs `install` first (Makefile target `dicom-tools`), so a
# fresh machine and CI need nothing else; in CI (CI=true) the storescu tests fail rather
# than skip when it is missing, outside CI they skip with this script's name.
set -euo pipefail

log() { printf '[dicom] %s\n' "$*" >&2; }
die() { printf '[dicom] ERROR: %s\n' "$*" >&2; exit 1; }

install() {
    if binary="$(command -v storescu)"; then
        log "present: $binary"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "no storescu on PATH and no apt-get to install dcmtk"
    local sudo=""
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "installing dcmtk needs root (or sudo)"
        sudo="sudo"
    fi
    log "installing Debian's dcmtk (apt-get, once)"
    export DEBIAN_FRONTEND=noninteractive
    # A stale (or never fetched) package index makes the install fail: refresh it once
    # and retry.
    if ! $sudo apt-get install -y -q --no-install-recommends dcmtk >/dev/null 2>&1; then
        $sudo apt-get update -qq
        $sudo apt-get install -y -q --no-install-recommends dcmtk >/dev/null
    fi
    binary="$(command -v storescu)" || die "apt-get finished but no storescu is on PATH"
    log "installed: $binary ($(storescu --version 2>/dev/null | head -n 1))"
}

case "${1:-install}" in
    install) install ;;
    path) command -v storescu || exit 1 ;;
    *) die "usage: $0 [install|path]" ;;
esac
