#!/bin/sh
# Build udpoverlay's wheel (with the compiled fast path, udpoverlay.dataplane._c)
# and a wheel of every run-time dependency into one directory, so a host or the
# image's runtime stage installs with no compiler, no Cython and no index:
#
#   contrib/build-wheels.sh [WHEELHOUSE]            (default: ./wheelhouse)
#   pip install --no-index --find-links WHEELHOUSE udpoverlay
#
# Needs python3 with pip, a C compiler and the Python headers (the Dockerfile's
# build stage; CI runs this same script in tests/integration/ops/test_wheel.py).
# The source is copied first (tracked files only, no build/ or in-place .so),
# so a checkout being built or tested at the same time is left alone. Prints
# the path of udpoverlay's wheel; the one udpoverlay wheel in WHEELHOUSE is it.
set -eu

out=$(mkdir -p "${1:-wheelhouse}" && cd "${1:-wheelhouse}" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

tar -C "$src" -cf - --exclude=./.git --exclude=./.venv --exclude=./build \
    --exclude='*.egg-info' --exclude='*.so' --exclude=./_fastpath/core.c --exclude=__pycache__ \
    --exclude=./wheelhouse . | tar -C "$work" -xf -

version=$("$python" -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$work/pyproject.toml")

# Our wheel, built into an empty directory so the one file there is it (build
# isolation brings Cython and setuptools from the index for the build only).
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$work"
set -- "$work/dist/udpoverlay-$version-"*.whl
if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then
    echo "build-wheels.sh: expected one udpoverlay-$version-*.whl, got: $*" >&2
    exit 1
fi
whl="$out/$(basename "$1")"
# A wheelhouse holds one udpoverlay: an older or newer one left from another
# build would be what `pip install udpoverlay` picks.
find "$out" -maxdepth 1 -name 'udpoverlay-*.whl' ! -name "$(basename "$1")" -exec rm -f {} +
mv -f "$1" "$whl"

# Every dependency's wheel (built here when its project ships only an sdist,
# e.g. python-pytun). Ours is named by its file, never by the project name: a
# `udpoverlay` on the index (the name is not ours there) is never looked at.
"$python" -m pip wheel --quiet --wheel-dir "$out" --find-links "$out" "$whl"
# The wheelhouse alone installs it: resolved again with no index at all.
"$python" -m pip wheel --quiet --no-index --find-links "$out" --wheel-dir "$work/check" \
    "udpoverlay==$version"

# The wheel must carry the compiled extension, or hosts would silently run the
# pure-Python reference.
"$python" - "$whl" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
if not any(n.startswith("udpoverlay/dataplane/_c.") and n.endswith(".so") for n in names):
    sys.exit(f"{sys.argv[1]}: no compiled fast path (udpoverlay/dataplane/_c*.so) inside")
if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
    sys.exit(f"{sys.argv[1]}: no LICENSE inside")
print(sys.argv[1])
PY
