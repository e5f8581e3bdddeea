#!/usr/bin/env bash
# Build dist/amr-gateway_<version>_<arch>.deb with dpkg-deb (what `make deb` runs).
#
#   scripts/build-deb.sh [amd64|arm64]        (default: this machine's dpkg architecture)
#
# The package holds the project's wheel and the wheels of every dependency, downloaded here
# from the package index for the target (CPython 3.11, Debian 12's python3, manylinux
# glibc <= 2.36), and pip's own wheel, so installing it needs no network and no package
# beyond python3: postinst builds /opt/amr-gateway from them with --no-index. Everything else (unit, example configuration, maintainer
# scripts) comes from the repository: systemd/amr-gateway.service is the packaged unit.
set -euo pipefail
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
BUILD=${BUILD_DIR:-build/deb}/$ARCH     # BUILD_DIR and DIST_DIR: the tests build outside the checkout
DIST=${DIST_DIR:-dist}
ROOT=$BUILD/root
WHEELS=$ROOT/usr/lib/amr-gateway/wheels
OUT=$DIST/amr-gateway_${VERSION}_${ARCH}.deb

rm -rf "$BUILD"
mkdir -p "$WHEELS" "$ROOT/DEBIAN" "$DIST"

say() { printf 'build-deb: %s\n' "$*" >&2; }

say "the project's wheel"
# setuptools builds in ./build/lib and never removes what an earlier build left there (a
# module or profile since deleted would ship again): start from nothing.
rm -rf build/lib build/bdist.*
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$BUILD/project" .
PROJECT_WHEEL=$(ls "$BUILD"/project/amr_gateway-"$VERSION"-*.whl)
cp "$PROJECT_WHEEL" "$WHEELS/"

say "dependency wheels for CPython $PYVER on $MACHINE"
PLATFORMS=()
for tag in manylinux2014 manylinux_2_17 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35 manylinux_2_36; do
    PLATFORMS+=(--platform "${tag}_$MACHINE")
done
# This machine's pip configuration (index mirror, proxy, certificates) applies; only wheels
# for the target's platform and CPython are taken, never a source build.
"$PYTHON" -m pip download --quiet --only-binary=:all: "${PLATFORMS[@]}" \
    --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}" \
    --disable-pip-version-check --dest "$WHEELS" "$PROJECT_WHEEL"

say "pip, to install them (run from its wheel, as ensurepip does: no python3-venv needed)"
"$PYTHON" -m pip download --quiet --only-binary=:all: --no-deps --python-version "$PYVER" \
    --disable-pip-version-check --dest "$ROOT/usr/lib/amr-gateway/pip" pip

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
