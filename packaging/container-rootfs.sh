#!/usr/bin/env bash
# A minimal Debian 12 (bookworm) root file system in which systemd runs as PID 1, to try the
# package's unit under a real systemd on a machine where systemd is not PID 1 (a CI runner,
# a container, a build box):
#
#   packaging/container-rootfs.sh          prints the root's path, building it first if absent
#
# Booted with `systemd-nspawn --boot` (Debian's systemd-container) on top of a throwaway
# overlay (--volatile=overlay), the root itself is never changed, so it is built once and
# cached outside the checkout: AMR_ROOTFS_CACHE (default /var/cache/amr-gateway-test). It
# holds debootstrap's minbase with systemd, dbus, python3 and adduser, nothing else: the
# package's own dependencies, so `apt install ./amr-gateway_*.deb` inside needs no network.
# Building it needs root, debootstrap and the Debian mirror AMR_DEBIAN_MIRROR (default
# http://deb.debian.org/debian) and takes about two minutes; the name of the cached root
# changes with this list of packages, so changing it here builds a new one. Run as root, the
# script installs debootstrap and systemd-container when they are missing (apt-get).
# tests/packaging/test_systemd_unit.py boots it; docs/install.md shows it by hand.
set -euo pipefail

SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,python3,adduser
CACHE=${AMR_ROOTFS_CACHE:-/var/cache/amr-gateway-test}
MIRROR=${AMR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
NAME=$SUITE-$(printf '%s %s' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-12)
ROOT=$CACHE/$NAME

die() { printf 'container-rootfs: %s\n' "$*" >&2; exit 1; }

# The cached root is complete once renamed into place (below).
if [ -x "$ROOT/lib/systemd/systemd" ]; then
    echo "$ROOT"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "building the root file system needs root (debootstrap); run as root or with sudo"
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
if [ ${#missing[@]} -gt 0 ]; then
    printf 'container-rootfs: installing %s\n' "${missing[*]}" >&2
    apt-get -o DPkg::Lock::Timeout=120 update -qq || die "apt-get update failed; check the network and /etc/apt/sources.list"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/$NAME.lock"
flock 9                          # one build at a time; a second caller waits and reuses it
if [ ! -x "$ROOT/lib/systemd/systemd" ]; then
    TMP=$CACHE/$NAME.partial
    rm -rf "$TMP"
    printf 'container-rootfs: debootstrap %s from %s into %s (about two minutes, once)\n' "$SUITE" "$MIRROR" "$ROOT" >&2
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$TMP" "$MIRROR" >"$CACHE/$NAME.log" 2>&1 \
        || die "debootstrap failed (its log: $CACHE/$NAME.log); the mirror $MIRROR must be reachable (AMR_DEBIAN_MIRROR names another)"
    # No console login, no timers or apt jobs during a test: only what a boot needs.
    rm -f "$TMP"/etc/systemd/system/getty.target.wants/* "$TMP"/etc/systemd/system/timers.target.wants/*
    echo amr-test >"$TMP/etc/hostname"
    mv "$TMP" "$ROOT"
fi
echo "$ROOT"
