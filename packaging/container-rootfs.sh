#!/usr/bin/env bash
# A minimal Debian 12 (bookworm) root file system in which systemd runs as PID 1, to try the
# package's unit under a real systemd on a machine where systemd is not PID 1 (a CI runner,
# a container, a build box):
#
#   packaging/container-rootfs.sh          prints the root's path, building it first if absent
#   packaging/container-rootfs.sh arm64    the same for another Debian architecture, run by emulation
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
#
# Another architecture than this machine's (arm64 on an x86_64 box: the ARM boxes' package)
# runs under qemu's user-mode emulation: the kernel hands the root's aarch64 programs to
# qemu-aarch64 through binfmt_misc. Its entry must have the F (fix-binary) flag, so the
# kernel opens qemu when the entry is registered and finds it inside the container too
# (Debian 12's qemu-user-static registers it so). Run as root, the script installs
# qemu-user-static and binfmt-support when they are missing and registers the entry; where
# that cannot be done (no binfmt_misc in the kernel, a container that may not mount it) it
# fails saying so, also when the root is already cached: without the entry nothing in it
# runs. That root is cached next to this machine's, its name keyed the same way plus -<arch>;
# building it runs debootstrap's second stage emulated (about five minutes, once). qemu
# cannot clone() into a new mount namespace (EINVAL), which systemd 252 does to hand a
# unit its credentials: the units that load credentials (sysusers, tmpfiles-setup, sysctl...)
# would fail at every boot, so in an emulated root they load none (a drop-in each,
# LoadCredential= emptied; nothing passes them any). amr-gateway's unit loads none.
set -euo pipefail

SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,python3,adduser
CACHE=${AMR_ROOTFS_CACHE:-/var/cache/amr-gateway-test}
MIRROR=${AMR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_ARCH=$(dpkg --print-architecture)
ARCH=${1:-$HOST_ARCH}
EMULATED=
[ "$ARCH" = "$HOST_ARCH" ] || EMULATED=" emulated: LoadCredential= emptied"   # changes the name too
NAME=$SUITE-$(printf '%s %s%s' "$SUITE" "$PACKAGES" "$EMULATED" | sha256sum | cut -c1-12)
[ "$ARCH" = amd64 ] || NAME=$NAME-$ARCH       # amd64's name predates the others': caches stay valid
ROOT=$CACHE/$NAME

die() { printf 'container-rootfs: %s\n' "$*" >&2; exit 1; }

# Installs Debian packages, one caller of this script at a time: the amd64 and the arm64 roots
# may be built at once (the test suite's parallel workers), and DPkg::Lock::Timeout is
# documented for dpkg's lock, not for the lock `apt-get update` takes on the package lists.
apt_install() {
    (
        flock 8
        apt-get -o DPkg::Lock::Timeout=120 update -qq || die "apt-get update failed; check the network and /etc/apt/sources.list"
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends \
            "$@" >/dev/null || die "apt-get install $* failed"
    ) 8>/run/lock/amr-gateway-test-apt.lock || exit 1
}

case "$ARCH" in
    amd64) QEMU=x86_64 ;;
    arm64) QEMU=aarch64 ;;
    *) die "unsupported architecture '$ARCH' (amd64 or arm64, as scripts/build-deb.sh)" ;;
esac

# Emulation of $ARCH: qemu-$QEMU registered in binfmt_misc with the F flag. Installs and
# registers what is missing (as root), else fails saying what to do.
emulation() {
    local entry=/proc/sys/fs/binfmt_misc/qemu-$QEMU
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        [ "$(id -u)" = 0 ] || die "running $ARCH programs needs binfmt_misc, which is not mounted: as root, 'mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc'"
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
            || die "running $ARCH programs needs binfmt_misc, and it cannot be mounted here (a kernel without CONFIG_BINFMT_MISC, or a container without the right to mount it): run on a machine or VM where 'mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc' works"
    fi
    if [ ! -e "$entry" ]; then
        [ "$(id -u)" = 0 ] || die "running $ARCH programs needs qemu-$QEMU in binfmt_misc: as root, 'apt-get install qemu-user-static binfmt-support'"
        if [ "$(dpkg-query -W -f='${Status}\n' qemu-user-static binfmt-support 2>/dev/null | grep -c 'install ok installed')" != 2 ]; then
            printf 'container-rootfs: installing qemu-user-static binfmt-support (to run %s programs)\n' "$ARCH" >&2
            apt_install qemu-user-static binfmt-support
        fi
        update-binfmts --enable "qemu-$QEMU" >/dev/null 2>&1 || true
        [ -e "$entry" ] || die "qemu-user-static and binfmt-support are installed but qemu-$QEMU is not registered in binfmt_misc: 'update-binfmts --enable qemu-$QEMU' (as root) says why"
    fi
    grep -qx 'enabled' "$entry" || die "qemu-$QEMU is registered in binfmt_misc but disabled: 'update-binfmts --enable qemu-$QEMU' (as root)"
    grep -q '^flags: .*F' "$entry" \
        || die "qemu-$QEMU is registered in binfmt_misc without the F (fix-binary) flag ($(grep '^flags' "$entry")), so a container cannot find qemu: register it with F, as Debian 12's qemu-user-static does ('update-binfmts --disable qemu-$QEMU', then '--enable' with that package's entry)"
}
[ -z "$EMULATED" ] || emulation

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
    apt_install "${missing[@]}"
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/$NAME.lock"
flock 9                          # one build at a time; a second caller waits and reuses it
if [ ! -x "$ROOT/lib/systemd/systemd" ]; then
    TMP=$CACHE/$NAME.partial
    rm -rf "$TMP"
    NICE=0
    if [ -z "$EMULATED" ]; then
        printf 'container-rootfs: debootstrap %s from %s into %s (about two minutes, once)\n' "$SUITE" "$MIRROR" "$ROOT" >&2
    else
        # The second stage runs the root's own programs, emulated: niced, it leaves the cores to others.
        NICE=19
        printf 'container-rootfs: debootstrap %s for %s (emulated) from %s into %s (about five minutes, once)\n' "$SUITE" "$ARCH" "$MIRROR" "$ROOT" >&2
    fi
    nice -n "$NICE" debootstrap --arch="$ARCH" --variant=minbase --include="$PACKAGES" "$SUITE" "$TMP" "$MIRROR" >"$CACHE/$NAME.log" 2>&1 \
        || die "debootstrap failed (its log: $CACHE/$NAME.log); the mirror $MIRROR must be reachable (AMR_DEBIAN_MIRROR names another)"
    # No console login, no timers or apt jobs during a test: only what a boot needs.
    rm -f "$TMP"/etc/systemd/system/getty.target.wants/* "$TMP"/etc/systemd/system/timers.target.wants/*
    echo amr-test >"$TMP/etc/hostname"
    if [ -n "$EMULATED" ]; then
        for unit in $(grep -l '^LoadCredential=' "$TMP"/lib/systemd/system/*.service); do
            mkdir -p "$TMP/etc/systemd/system/${unit##*/}.d"
            printf '[Service]\n# qemu user-mode emulation cannot set up credentials (container-rootfs.sh)\nLoadCredential=\n' \
                >"$TMP/etc/systemd/system/${unit##*/}.d/emulated.conf"
        done
    fi
    mv "$TMP" "$ROOT"
fi
echo "$ROOT"
