#!/usr/bin/env bash
# Sourced by scripts/deps.sh and scripts/llama-tools.sh: sets GGML_FLAGS, the CMake
# flags both builds of the peer (llama.cpp) use, for the CPU this runs on. Never
# -march=native. AVX2/FMA/F16C always (every machine these scripts meet has them);
# the AVX-512 subsets that AMD Zen 4/5 and Intel Sapphire Rapids share only where
# /proc/cpuinfo lists every one of them, since some of the machines (AMD EPYC of
# earlier generations) have no AVX-512 at all and trap on it (SIGILL). AMX off: the
# Xeons advertise it, but its instructions trap in these VMs. The callers store the
# flags beside what they built and rebuild when a later machine wants others.
GGML_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)
ggml_avx512=ON
for f in avx512f avx512bw avx512vl avx512dq avx512vbmi avx512_vnni avx512_bf16; do  # /proc/cpuinfo spellings
    grep -qw "$f" /proc/cpuinfo 2>/dev/null || ggml_avx512=OFF
done
GGML_FLAGS+=(-DGGML_AVX512=$ggml_avx512 -DGGML_AVX512_VBMI=$ggml_avx512 -DGGML_AVX512_VNNI=$ggml_avx512
  -DGGML_AVX512_BF16=$ggml_avx512 -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_BLAS=OFF)
unset ggml_avx512 f
