#!/usr/bin/env bash
# Builds the peer's command-line tools (llama-quantize, llama-imatrix,
# llama-perplexity, llama-bench, llama-completion) from the llama.cpp that the
# PyPI sdist of llama-cpp-python vendors, the same version and CMake flags as the
# Python bindings that scripts/deps.sh installs, into out/llama.cpp/bin/ (static,
# CPU only), and prints that folder. Benchmarks need it; `make test` does not.
# Idempotent: does nothing when every binary is there and the stamp (version and
# flags) matches. About 10 minutes on 2 cores; JOBS=n sets the parallel jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Keep VERSION in step with scripts/deps.sh; both take their CMake flags (this CPU's:
# AVX-512 only where it has it) from scripts/ggml-flags.sh.
VERSION=0.3.36
# shellcheck source=scripts/ggml-flags.sh
. scripts/ggml-flags.sh
TOOLS="llama-quantize llama-imatrix llama-perplexity llama-bench llama-completion"

OUT=out/llama.cpp
BIN=$OUT/bin
STAMP="llama-cpp-python==$VERSION ${GGML_FLAGS[*]} tools: $TOOLS"

have_all() {
    [ -f "$BIN/.stamp" ] && [ "$(cat "$BIN/.stamp")" = "$STAMP" ] || return 1
    local t
    for t in $TOOLS; do [ -x "$BIN/$t" ] || return 1; done
}
if have_all; then echo "$PWD/$BIN"; exit 0; fi

for tool in cmake g++; do
    command -v "$tool" >/dev/null || { echo "llama-tools: $tool missing; run scripts/deps.sh" >&2; exit 1; }
done

# The sdist (76 MB), cached under out/llama.cpp/cache/. --no-binary names only this
# package, so pip's metadata step builds no build dependency from source.
CACHE=$OUT/cache
SDIST=$CACHE/llama_cpp_python-$VERSION.tar.gz
if [ ! -s "$SDIST" ]; then
    echo "llama-tools: downloading the llama-cpp-python==$VERSION sdist" >&2
    mkdir -p "$CACHE"
    $PY -m pip download -q --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -d "$CACHE" >&2
fi
SRC=$OUT/src/llama_cpp_python-$VERSION
if [ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]; then
    rm -rf "$SRC" && mkdir -p "$OUT/src"
    tar -xzf "$SDIST" -C "$OUT/src"
fi

GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
BUILD=$OUT/build
# A build folder configured with other flags or another generator starts over.
if [ -f "$BUILD/.stamp" ] && [ "$(cat "$BUILD/.stamp")" != "$STAMP ${GEN[*]}" ]; then rm -rf "$BUILD"; fi
mkdir -p "$BUILD"
echo "$STAMP ${GEN[*]}" >"$BUILD/.stamp"
start=$(date +%s)
echo "llama-tools: configuring llama.cpp in $BUILD" >&2
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF "${GGML_FLAGS[@]}" >"$BUILD/configure.log" 2>&1 ||
    { tail -30 "$BUILD/configure.log" >&2; echo "llama-tools: cmake configure failed" >&2; exit 1; }
echo "llama-tools: building $TOOLS (log: $BUILD/build.log)" >&2
# shellcheck disable=SC2086
cmake --build "$BUILD" --config Release -j "${JOBS:-$(nproc)}" --target $TOOLS >"$BUILD/build.log" 2>&1 ||
    { tail -30 "$BUILD/build.log" >&2; echo "llama-tools: build failed" >&2; exit 1; }

rm -rf "$BIN.part" && mkdir -p "$BIN.part"
for t in $TOOLS; do cp "$BUILD/bin/$t" "$BIN.part/"; done
echo "$STAMP" >"$BIN.part/.stamp"
rm -rf "$BIN" && mv "$BIN.part" "$BIN"
echo "llama-tools: built in $(( $(date +%s) - start )) s" >&2
echo "$PWD/$BIN"
