#!/usr/bin/env bash
# scripts/gpu-check.sh — on a machine with an NVIDIA GPU: build bitplan with CUDA,
# run the CUDA tests (tests/test_cuda.c), and measure (bench/bench_cuda.c):
#   (a) the packed matrix-vector product's GB/s over the device-to-device copy
#       bandwidth, 4096x14336 and 8192x28672, about 2.5/3/4/5/6/8 bpw;
#   (b) token generation for a packed file (optional) and for synthetic models of
#       Llama-2-7B's shapes at about 3.0, 4.0 and 5.0 bpw and SmolLM2-135M's at 4.0;
#   (c) device memory held by the packed file's model against a predicted figure.
# Results go to stdout as Markdown; stage names and logs to stderr. About 3-6 minutes
# on an H100 (most of it the build). Exit status: 0 only if the build, every test and
# every measurement succeeded.
#
#   scripts/gpu-check.sh [PACKED_FILE [PREDICTED_BYTES [CTX]]]
#     PACKED_FILE      a packed model, e.g. out/gpu/smol-vram.bp from scripts/gpu-prep.sh
#                      (skipped if absent)
#     PREDICTED_BYTES  the memory model's figure for that file at CTX (gpu-prep.sh)
#     CTX              context of the generation runs and the prediction (default 2048)
#   env: BUILD (default build-gpu), JOBS (default nproc), QUICK=1 (bench --quick),
#        PREBUILT=DIR (run the binaries of scripts/gpu-bundle.sh instead of building:
#        for an image without this project's C libraries),
#        EMU=1 (a dry run without a GPU: the CPU emulation of tests/cuda_emu/, build-emu,
#        bench --smoke; it checks this script and the benchmark, its figures mean nothing),
#        TEST_LIMIT / BENCH_LIMIT (seconds, default 240 / 360: a hung kernel ends its
#        stage, not the run; logs are line-buffered, so a killed stage's log says where)
set -euo pipefail
cd "$(dirname "$0")/.."

EMU=${EMU:-0}
if [ "$EMU" = 1 ]; then BUILD=${BUILD:-build-emu}; MAKEVARS=(CUDA_EMU=1 NO_CUDA=1); OBJ=emu/runtime/cuda/model.o
else BUILD=${BUILD:-build-gpu}; MAKEVARS=(); OBJ=runtime/cuda/model.o; fi
JOBS=${JOBS:-$(nproc)}
PACKED=${1:-}
PREDICT=${2:-0}
CTX=${3:-2048}
LOGDIR=${LOGDIR:-$BUILD/gpu-check}
TEST_LIMIT=${TEST_LIMIT:-240}
BENCH_LIMIT=${BENCH_LIMIT:-360}
status=0
# line-buffered stdout where coreutils' stdbuf is there
LINEBUF=(); command -v stdbuf >/dev/null && LINEBUF=(stdbuf -oL -eL)

stage() { echo "== gpu-check: $* ($(date +%H:%M:%S))" >&2; }
die() { echo "gpu-check: $*" >&2; exit 1; }

stage "device"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm \
    --format=csv >&2 || echo "(nvidia-smi not found)" >&2
NVCC=$(command -v nvcc || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; } || true)
[ -n "$NVCC" ] || [ -n "${PREBUILT:-}" ] || die "no nvcc found (PATH or /usr/local/cuda/bin): cannot build the CUDA runtime"

mkdir -p "$LOGDIR"
TEST_BIN=$BUILD/tests/test_cuda
BENCH_BIN=$BUILD/bench/bench_cuda
if [ -n "${PREBUILT:-}" ]; then
    stage "prebuilt binaries ($PREBUILT)"
    [ -x "$PREBUILT/bin/test_cuda" ] && [ -f "$PREBUILT/lib.tar.xz" ] || die "$PREBUILT is not a gpu-bundle.sh output"
    libdir=$(mktemp -d)
    tar -C "$libdir" -xJf "$PREBUILT/lib.tar.xz"
    cudalib=$([ -n "$NVCC" ] && echo "$(dirname "$(dirname "$NVCC")")/lib64" || echo /usr/local/cuda/lib64)
    export LD_LIBRARY_PATH="$libdir/lib:$cudalib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    TEST_BIN=$PREBUILT/bin/test_cuda
    BENCH_BIN=$PREBUILT/bin/bench_cuda
    if ldd "$TEST_BIN" "$BENCH_BIN" | grep -q 'not found'; then
        ldd "$TEST_BIN" "$BENCH_BIN" | grep 'not found' >&2
        die "the prebuilt binaries miss libraries here"
    fi
else
    stage "build ($BUILD, $JOBS jobs)"
    if ! make -j"$JOBS" BUILD="$BUILD" "${MAKEVARS[@]}" all "$TEST_BIN" "$BENCH_BIN" >"$LOGDIR/build.log" 2>&1; then
        tail -40 "$LOGDIR/build.log" >&2
        die "build failed (log: $LOGDIR/build.log)"
    fi
    [ -f "$BUILD/$OBJ" ] || die "the build did not compile runtime/cuda/*.cu (NO_CUDA set?)"
fi

stage "tests (tests/test_cuda)"
set +e
CMOCKA_MESSAGE_OUTPUT=TAP timeout -k 5 "$TEST_LIMIT" "${LINEBUF[@]}" "$TEST_BIN" >"$LOGDIR/test_cuda.tap" 2>&1
trc=$?
set -e
[ "$trc" -ne 124 ] || echo "gpu-check: tests/test_cuda stopped after $TEST_LIMIT s (TEST_LIMIT)" >&2
passed=$(grep -cE '^ok [0-9]+' "$LOGDIR/test_cuda.tap" || true)
skipped=$(grep -cE '^(not )?ok [0-9]+ .*# SKIP' "$LOGDIR/test_cuda.tap" || true)
failed=$(grep -E '^not ok [0-9]+' "$LOGDIR/test_cuda.tap" | grep -vc '# SKIP' || true)
echo "## bitplan gpu-check"
echo
echo "| stage | result |"
echo "|---|---|"
echo "| tests/test_cuda | $passed passed, $failed failed, $skipped skipped (exit $trc) |"
if [ "$trc" -ne 0 ] || [ "$failed" -ne 0 ] || [ "$skipped" -ne 0 ]; then
    status=1
    grep -vE '^ok ' "$LOGDIR/test_cuda.tap" | tail -40 >&2
fi

stage "benchmarks (bench/bench_cuda)"
args=(--ctx "$CTX")
[ "${QUICK:-0}" = 1 ] && args+=(--quick)
[ "$EMU" = 1 ] && args+=(--smoke --tokens 2)
if [ -n "$PACKED" ]; then
    if [ -f "$PACKED" ]; then args+=(--packed "$PACKED" --predict "$PREDICT")
    else echo "gpu-check: packed file $PACKED is absent: its figures are skipped" >&2; fi
fi
set +e
timeout -k 5 "$BENCH_LIMIT" "${LINEBUF[@]}" "$BENCH_BIN" "${args[@]}" 2> >(tee "$LOGDIR/bench.err" >&2)
brc=$?
set -e
[ "$brc" -eq 0 ] || { status=1; echo "gpu-check: bench_cuda exited $brc$([ "$brc" -ne 124 ] || echo ", stopped after $BENCH_LIMIT s (BENCH_LIMIT)")" >&2; }

stage "done (status $status)"
exit "$status"
