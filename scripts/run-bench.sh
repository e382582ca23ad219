#!/usr/bin/env bash
# make bench: every benchmark under bench/, each reporting against a baseline
# measured in the same run. Results go to stdout (Markdown tables); BENCHMARKS.md
# records them with the machine. BENCH_ONLY=matvec|forward|alloc|gptq|verify|cuda runs
# one; BENCH_ONLY=scale runs bench/bench_scale.py (a 7B-shaped model), and only then;
# BENCH_ONLY=mpi runs bench/bench_mpi.py (2 MPI ranks against 1 process), and only then;
# BENCH_ONLY=gguf runs bench/bench_gguf.py (against llama.cpp), and only then;
# BENCH_ONLY=lut runs bench/bench_lut.py (generation speed against llama-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD:-build}
only=${BENCH_ONLY:-}
run() { [ -z "$only" ] || [ "$only" = "$1" ]; }

echo "# bitplan benchmarks — $(date -u +%Y-%m-%d), $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"

if run matvec; then
    echo; echo "## Packed matrix-vector product vs memory read bandwidth"
    "$B/bench/bench_matvec"
    echo; echo "## Packed products at prompt batches: int8 kernels vs the exact path vs sgemm"
    "$B/bench/bench_matvec" --batch 512
fi
if run forward; then
    echo; echo "## fp32 forward: prompt and generation tokens/s"
    "$B/bench/bench_forward" models/SmolLM2-135M-Instruct.Q4_1.gguf
fi
if run alloc; then
    echo; echo "## Allocation: GLPK vs baselines"
    db=${BENCH_DB:-out/SmolLM2-135M-Instruct.Q4_1.bitplan.db}   # make demo's measurement
    if [ -f "$db" ]; then "$B/bench/bench_alloc" --db "$db" --bpw 2.5,3,3.5,4,5,6 --sizes 1000,10000
    else "$B/bench/bench_alloc" --sizes 1000,10000; echo "(no measurement at $db: run make demo first for the real-model table)"; fi
fi
if run gptq; then
    echo; echo "## GPTQ units and the 7B measurement projection"
    "$B/bench/bench_gptq" --quick
fi
if run verify; then
    echo; echo "## Verifying a packed file's checksums vs memory read bandwidth"
    bp=${BENCH_PACKED:-out/smol-4.0.bp}   # make demo's packed SmolLM2
    if [ -f "$bp" ]; then "$B/bench/bench_verify" "$bp"
    else echo "(no packed file at $bp: run make demo first, or set BENCH_PACKED)"; fi
fi
# GGUF exports against llama.cpp's own quantizations at the same file size: needs
# llama.cpp's tools (built here by scripts/llama-tools.sh, ~5 min the first time)
# and ~25 minutes, so only when asked for (BENCH_ONLY=gguf).
if [ "$only" = gguf ]; then
    echo; echo "## GGUF exports against llama-quantize (imatrix) at the same file size"
    BITPLAN=$B/bitplan python3 bench/bench_gguf.py
fi
# Batch-1 generation and prompt speed against llama-bench on SmolLM2 (needs the
# peer's tools and packed files: BENCH_LUT_FILES, default make demo's), only when
# asked for (BENCH_ONLY=lut).
if [ "$only" = lut ]; then
    echo; echo "## Generation and prompt speed against llama.cpp (SmolLM2)"
    bash scripts/llama-tools.sh >/dev/null
    args=()
    for f in ${BENCH_LUT_FILES:-out/smol-4.0.bp}; do args+=(--bp "$f"); done
    BUILD=$B python3 bench/bench_lut.py "${args[@]}"
fi
# The 7B-shaped model's time and memory: 14 GB of disk and over an hour, so only
# when asked for (BENCH_ONLY=scale).
if [ "$only" = scale ]; then
    echo; echo "## Every command on a 7B-shaped model"
    BUILD=$B python3 bench/bench_scale.py
fi
# The measurement on 2 MPI ranks against one process (SmolLM2, and one 7B-shaped
# block): about 20 minutes, so only when asked for (BENCH_ONLY=mpi).
if [ "$only" = mpi ]; then
    echo; echo "## Measuring on several processes (MPI)"
    BUILD=$B python3 bench/bench_mpi.py
fi
if run cuda && [ -x "$B/bench/bench_cuda" ]; then
    echo; echo "## CUDA"
    "$B/bench/bench_cuda" || echo "(bench_cuda: no usable GPU here)"
fi
