/*
 * bench/readbw.h — the read-bandwidth baseline the benchmarks measure against in
 * the same run: a plain AVX2 sum of 64-bit lanes over a buffer, four independent
 * accumulators so that loads, not additions, are the limit. Header-only, for the
 * bench programs (each is one .c file); callers check AVX2 first.
 */
#ifndef BITPLAN_BENCH_READBW_H
#define BITPLAN_BENCH_READBW_H

#include <immintrin.h>
#include <omp.h>
#include <stddef.h>
#include <stdint.h>

__attribute__((target("avx2"))) static uint64_t sum_avx2(const uint8_t *p, size_t bytes)
{
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    size_t i = 0;
    for (; i + 128 <= bytes; i += 128) {
        a = _mm256_add_epi64(a, _mm256_loadu_si256((const __m256i *)(p + i)));
        b = _mm256_add_epi64(b, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
        c = _mm256_add_epi64(c, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
        d = _mm256_add_epi64(d, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
    }
    a = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
    uint64_t s[4];
    _mm256_storeu_si256((__m256i *)s, a);
    for (; i < bytes; i++) s[0] += p[i];
    return s[0] + s[1] + s[2] + s[3];
}

/* Sums one buffer with the current threads, each taking a contiguous share. */
static uint64_t sum_buffer(const uint8_t *p, size_t bytes)
{
    uint64_t total = 0;
#pragma omp parallel reduction(+ : total)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        size_t a = bytes / 64 * (size_t)t / (size_t)nt * 64, b = t == nt - 1 ? bytes : bytes / 64 * (size_t)(t + 1) / (size_t)nt * 64;
        total += sum_avx2(p + a, b - a);
    }
    return total;
}

#endif
