#!/usr/bin/env bash
# Install what cloudkernel needs on Debian: system packages, then .venv with the project.
#
# Idempotent and quick when nothing changed: apt runs only for missing packages, and pip
# only when pyproject.toml differs from the one the last install recorded in .venv.
# Environment: PYTHON (interpreter for a new venv, default: first python3.x >= 3.11 on PATH),
# VENV (default: .venv in the repo root).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
STAMP="$VENV/.cloudkernel-install.sha256"
# libvirt's test:/// driver lives in libvirt0, which libvirt-dev pulls in: no daemon, no qemu.
# postgresql provides initdb/postgres for the test fixtures; make runs the Makefile.
# slapd and ldap-utils give the ACL tests a throwaway OpenLDAP server (slapd, slapadd).
# The real-qemu test tier (tests/fixtures/qemu_host.py) starts its own libvirtd and virtlogd:
# the qemu driver, qemu itself (TCG), qemu-img, dnsmasq and iptables for libvirt's NAT networks.
# It puts the daemons in namespaces of their own (unshare, nsenter, ip: util-linux, iproute2).
# Its tiny guest (tests/support/guest_image.py) is a Debian cloud kernel and busybox-static, both
# fetched with apt-get download (not installed), on a vfat disk made bootable by syslinux
# (mtools, dosfstools).
APT_PACKAGES=(libvirt-dev pkg-config python3-venv python3-dev gcc postgresql make slapd ldap-utils chromium
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base
    iptables iproute2 util-linux syslinux syslinux-common mtools dosfstools novnc)

log() { printf 'install.sh: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        log "need root (or sudo) to run: $*"
        exit 1
    fi
}

install_system_packages() {
    if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
        log "not a Debian system: make sure these are installed: ${APT_PACKAGES[*]}"
        return
    fi
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        if [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" != "installed" ]; then
            missing+=("$pkg")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return
    log "installing Debian packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" </dev/null
}

python_ok() {  # usage: python_ok INTERPRETER -> true when it runs and is >= 3.11
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

find_python() {
    local candidate
    for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null && python_ok "$candidate"; then
            command -v "$candidate"
            return
        fi
    done
    log "no python3 >= 3.11 found (set PYTHON=/path/to/python3.11+)"
    exit 1
}

ensure_venv() {
    if [ -x "$VENV/bin/python" ] && python_ok "$VENV/bin/python"; then
        return
    fi
    if [ -e "$VENV" ]; then
        log "$VENV is broken or too old: recreating it"
        rm -rf "$VENV"
    fi
    local python
    python="$(find_python)"
    log "creating $VENV with $python ($("$python" -V 2>&1))"
    "$python" -m venv "$VENV"
}

install_project() {
    local want have=""
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    [ -f "$STAMP" ] && have="$(cat "$STAMP")"
    if [ "$want" = "$have" ]; then
        return
    fi
    log "installing the project into $VENV (pip install -e '.[dev]')"
    (cd "$ROOT" && "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[dev]')
    printf '%s\n' "$want" >"$STAMP"
}

install_system_packages
ensure_venv
install_project
log "ready: $VENV"
