#!/usr/bin/env bash
# Build dist/amr-gateway_<version>_<arch>.deb with dpkg-deb (what `make deb` runs).
#
#   scripts/build-deb.sh [amd64|arm64]        (default: this machine's dpkg architecture)
#
# Environment:
#   AMR_DEB_VERSION=V        build version V instead of pyproject.toml's: the package and the
#                            gateway inside it (its wheel, `amr-gateway --version`) are V. The
#                            checkout is not changed: the wheel is built from a copy. V must be a
#                            version pip and dpkg read alike and order alike: digits and dots,
#                            optionally .postN and a +local part (0.2.0, 0.1.0.post1, 0.1.0+site1).
#   AMR_DEB_WHEELS_FROM=DEB  take the dependencies' wheels and pip's from an earlier package of
#                            the same architecture instead of the package index (quick, offline;
#                            the tests build a second, newer package this way).
#   BUILD_DIR, DIST_DIR      where to build and where to put the .deb (build/deb, dist).
#
# The package holds the project's wheel and the wheels of every dependency, downloaded here
# from the package index for the target (CPython 3.11, Debian 12's python3, manylinux
# glibc <= 2.36), and pip's own wheel, so installing it needs no network and no package
# beyond python3: postinst builds /opt/amr-gateway from them with --no-index. Everything else (unit, example configuration, maintainer
# scripts) comes from the repository: systemd/amr-gateway.service is the packaged unit.
set -euo pipefail
REUSE=${AMR_DEB_WHEELS_FROM:-}
if [ -n "$REUSE" ]; then
    [ -f "$REUSE" ] || { echo "build-deb: AMR_DEB_WHEELS_FROM='$REUSE' is not a file; name an earlier amr-gateway .deb" >&2; exit 2; }
    REUSE=$(realpath "$REUSE")      # before the cd below: relative to where the caller is
fi
cd "$(dirname "$0")/.."

ARCH=${1:-$(dpkg --print-architecture)}
PYTHON=${PYTHON:-python3}
PYVER=3.11           # Debian 12's python3; the control file pins python3 to 3.11.x
case "$ARCH" in
    amd64) MACHINE=x86_64 ;;
    arm64) MACHINE=aarch64 ;;
    *) echo "build-deb: unsupported architecture '$ARCH' (amd64 or arm64)" >&2; exit 2 ;;
esac

VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
if [ -n "${AMR_DEB_VERSION:-}" ]; then
    # Both orders agree on these forms; a pre-release (0.2.0rc1) would not: dpkg sorts it after 0.2.0.
    if ! [[ $AMR_DEB_VERSION =~ ^[0-9]+(\.[0-9]+)*(\.post[0-9]+)?(\+[a-z0-9]+(\.[a-z0-9]+)*)?$ ]]; then
        echo "build-deb: AMR_DEB_VERSION='$AMR_DEB_VERSION' is not a version pip and dpkg order alike; use digits and dots, optionally .postN and +local (e.g. 0.2.0, 0.1.0.post1, 0.1.0+site1)" >&2
        exit 2
    fi
    VERSION=$AMR_DEB_VERSION
fi
if [ -n "$REUSE" ]; then
    REUSE_ARCH=$(dpkg-deb -f "$REUSE" Architecture)
    if [ "$REUSE_ARCH" != "$ARCH" ]; then
        echo "build-deb: AMR_DEB_WHEELS_FROM='$REUSE' is an $REUSE_ARCH package; its wheels do not fit $ARCH: name an $ARCH one" >&2
        exit 2
    fi
fi
BUILD=${BUILD_DIR:-build/deb}/$ARCH     # BUILD_DIR and DIST_DIR: the tests build outside the checkout
DIST=${DIST_DIR:-dist}
ROOT=$BUILD/root
WHEELS=$ROOT/usr/lib/amr-gateway/wheels
OUT=$DIST/amr-gateway_${VERSION}_${ARCH}.deb

rm -rf "$BUILD"
mkdir -p "$WHEELS" "$ROOT/DEBIAN" "$DIST"

say() { printf 'build-deb: %s\n' "$*" >&2; }

say "the project's wheel, version $VERSION"
if [ -n "${AMR_DEB_VERSION:-}" ]; then
    # From a copy with the version written where pip and `amr-gateway --version` read it.
    SRC=$BUILD/src
    mkdir -p "$SRC"
    tar -c --exclude=__pycache__ --exclude='*.egg-info' pyproject.toml README.md gateway drivers | tar -x -C "$SRC"
    sed -i "0,/^version = \".*\"\$/s//version = \"$VERSION\"/" "$SRC/pyproject.toml"
    sed -i "s/^__version__ = \".*\"\$/__version__ = \"$VERSION\"/" "$SRC/gateway/__init__.py"
    grep -qx "version = \"$VERSION\"" "$SRC/pyproject.toml" && grep -qx "__version__ = \"$VERSION\"" "$SRC/gateway/__init__.py" \
        || { echo "build-deb: could not write version $VERSION into pyproject.toml and gateway/__init__.py" >&2; exit 1; }
else
    SRC=.
    # setuptools builds in ./build/lib and never removes what an earlier build left there (a
    # module or profile since deleted would ship again): start from nothing.
    rm -rf build/lib build/bdist.*
fi
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$BUILD/project" "$SRC"
PROJECT_WHEEL=$(ls "$BUILD"/project/amr_gateway-"$VERSION"-*.whl)
cp "$PROJECT_WHEEL" "$WHEELS/"

FROM=()
if [ -n "$REUSE" ]; then
    say "dependency wheels and pip's from $REUSE"
    dpkg-deb -x "$REUSE" "$BUILD/reuse"
    FROM=(--no-index --find-links "$BUILD/reuse/usr/lib/amr-gateway/wheels" --find-links "$BUILD/reuse/usr/lib/amr-gateway/pip")
else
    say "dependency wheels for CPython $PYVER on $MACHINE"
fi
PLATFORMS=()
for tag in manylinux2014 manylinux_2_17 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35 manylinux_2_36; do
    PLATFORMS+=(--platform "${tag}_$MACHINE")
done
# This machine's pip configuration (index mirror, proxy, certificates) applies; only wheels
# for the target's platform and CPython are taken, never a source build.
"$PYTHON" -m pip download --quiet --only-binary=:all: "${PLATFORMS[@]}" \
    --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}" \
    --disable-pip-version-check "${FROM[@]}" --dest "$WHEELS" "$PROJECT_WHEEL"

say "pip, to install them (run from its wheel, as ensurepip does: no python3-venv needed)"
"$PYTHON" -m pip download --quiet --only-binary=:all: --no-deps --python-version "$PYVER" \
    --disable-pip-version-check "${FROM[@]}" --dest "$ROOT/usr/lib/amr-gateway/pip" pip

say "file tree"
install -D -m 0644 systemd/amr-gateway.service "$ROOT/lib/systemd/system/amr-gateway.service"
install -D -m 0644 config/gateway.example.yaml "$ROOT/etc/amr-gateway/config.yaml"
install -D -m 0644 config/gateway.example.yaml "$ROOT/usr/share/doc/amr-gateway/examples/config.yaml"
install -D -m 0644 README.md "$ROOT/usr/share/doc/amr-gateway/README.md"
install -D -m 0644 packaging/deb/copyright "$ROOT/usr/share/doc/amr-gateway/copyright"
mkdir -p "$ROOT/usr/bin"
ln -s /opt/amr-gateway/bin/amr-gateway "$ROOT/usr/bin/amr-gateway"

for script in postinst prerm postrm; do
    sed "s/@VERSION@/$VERSION/g" "packaging/deb/$script" >"$ROOT/DEBIAN/$script"
    chmod 0755 "$ROOT/DEBIAN/$script"
done
echo /etc/amr-gateway/config.yaml >"$ROOT/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
sed -e "s/@VERSION@/$VERSION/g" -e "s/@ARCH@/$ARCH/g" -e "s/@SIZE@/$SIZE/g" \
    packaging/deb/control.in >"$ROOT/DEBIAN/control"

dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$OUT" >/dev/null
say "$OUT ($(ls "$WHEELS" | wc -l) wheels)"
echo "$OUT"
