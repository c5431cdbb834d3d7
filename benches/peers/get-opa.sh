#!/usr/bin/env bash
# Fetches OPA as a shared library: the Go c-shared `libopabridge.so` inside the PyPI wheel
# `opa-golib-python-bindings` (the wheel asks for Python >= 3.14, but only its .so is used
# here, loaded from Rust, so the wheel is downloaded for that Python version and unpacked).
# Unpacks to benches/peers/target/opa/; the benchmark finds it there (or at $OPA_BRIDGE_LIB).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="$here/target/opa"
version="${OPA_WHEEL_VERSION:-0.4.4}"
if [ -f "$dest/opa_bindings/libopabridge.so" ]; then
    echo "$dest/opa_bindings/libopabridge.so"
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.14 \
    -d "$tmp" "opa-golib-python-bindings==$version"
mkdir -p "$dest"
python3 -m zipfile -e "$tmp"/opa_golib_python_bindings-*.whl "$dest"
echo "$dest/opa_bindings/libopabridge.so"
