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
# so a checkout being built or tested at the same time is left alone.
set -eu

out=$(mkdir -p "${1:-wheelhouse}" && cd "${1:-wheelhouse}" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

tar -C "$src" -cf - --exclude=./.git --exclude=./.venv --exclude=./build \
    --exclude='*.egg-info' --exclude='*.so' --exclude=./_fastpath/core.c --exclude=__pycache__ \
    --exclude=./wheelhouse . | tar -C "$work" -xf -

# Our wheel (build isolation brings Cython and setuptools for the build only),
# then every dependency's wheel (built here when its project ships only an
# sdist, e.g. python-pytun).
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$out" "$work"
"$python" -m pip wheel --quiet --wheel-dir "$out" --find-links "$out" udpoverlay

# The wheel must carry the compiled extension, or hosts would silently run the
# pure-Python reference.
whl=$(ls "$out"/udpoverlay-*.whl | tail -n 1)
"$python" - "$whl" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
if not any(n.startswith("udpoverlay/dataplane/_c.") and n.endswith(".so") for n in names):
    sys.exit(f"{sys.argv[1]}: no compiled fast path (udpoverlay/dataplane/_c*.so) inside")
print(sys.argv[1])
PY
