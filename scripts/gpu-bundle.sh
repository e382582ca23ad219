#!/usr/bin/env bash
# scripts/gpu-bundle.sh — run here, before a GPU run: the CUDA tests and benchmark
# built on this machine (nvcc, sm_80 and sm_90), stripped, with the shared libraries
# they need beyond glibc, libstdc++ and the CUDA toolkit (OpenBLAS, cmocka, gfortran,
# OpenMP), compressed, in out/gpu/bundle: about 10 MiB to carry. A CUDA image without
# this project's C libraries then runs them as they are:
#
#     bash scripts/gpu-bundle.sh
#     # on the GPU machine, out/gpu carried along:
#     PREBUILT=out/gpu/bundle bash scripts/gpu-check.sh [PACKED_FILE [PREDICTED_BYTES [CTX]]]
#
# env: BUILD (default build), JOBS (default nproc)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
JOBS=${JOBS:-$(nproc)}
OUT=out/gpu/bundle
die() { echo "gpu-bundle: $*" >&2; exit 1; }

make -j"$JOBS" BUILD="$BUILD" "$BUILD/tests/test_cuda" "$BUILD/bench/bench_cuda" >/dev/null
[ -f "$BUILD/runtime/cuda/model.o" ] || die "$BUILD has no CUDA objects: is nvcc on the PATH or in /usr/local/cuda/bin?"
rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/lib"
strip -o "$OUT/bin/test_cuda" "$BUILD/tests/test_cuda"
strip -o "$OUT/bin/bench_cuda" "$BUILD/bench/bench_cuda"
# every library the two resolve here, less glibc, the C++ runtime and CUDA's own
ldd "$OUT/bin/test_cuda" "$OUT/bin/bench_cuda" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u |
    grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*|libstdc\+\+|libgcc_s)\.so|/cuda' |
    while read -r lib; do cp -L "$lib" "$OUT/lib/"; done
tar -C "$OUT" -cJf "$OUT/lib.tar.xz" lib
rm -rf "$OUT/lib"
echo "gpu-bundle: $OUT ($(du -sm "$OUT" | cut -f1) MiB): bin/test_cuda bin/bench_cuda lib.tar.xz ($(tar -tJf "$OUT/lib.tar.xz" | grep -c '\.so') libraries)"
