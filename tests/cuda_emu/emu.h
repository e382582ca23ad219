/*
 * tests/cuda_emu/emu.h — a CPU emulation of the part of CUDA that runtime/cuda/
 * uses, so that the kernels and the GPU forward pass run, and are checked, on a
 * machine without a GPU (the sanitizer build of `make test`).
 *
 * How it is used: the .cu files of runtime/cuda/ are rewritten by tests/cuda_emu/rewrite.py
 * (launches `k<<<grid, block, smem, stream>>>(args)` become emu_launch calls,
 * `__shared__` declarations become per-block slots) and compiled by the host C++
 * compiler with this header forced in first (-include). tests/cuda_emu/emu.cpp
 * defines the CUDA runtime and cuBLAS functions the runtime calls, against the
 * real toolkit headers, so their signatures are the toolkit's.
 *
 * What is emulated, and checked on the way:
 *   - a launch runs its blocks one after another; the threads of a block are fibers
 *     on the calling thread, switched at __syncthreads and at warp shuffles, so the
 *     run is deterministic. Launch configurations are checked as a GPU would (block
 *     size, grid size, dynamic shared memory against the kernel's limit) and a bad
 *     one is reported by cudaGetLastError.
 *   - __syncthreads waits for every thread of the block that has not returned; a
 *     warp shuffle for all 32 lanes. A shuffle with lanes that have returned, or
 *     threads waiting at different barriers, stop the program with a message (the
 *     GPU would hang or give undefined results).
 *   - shared memory and device allocations start filled with 0xFF bytes (NaN as
 *     floats), so that reading what no thread wrote shows in the results; each is
 *     a separate heap block of exactly its size, so AddressSanitizer reports any
 *     access outside it. Vector loads (__ldg of float4) check their alignment.
 *   - copies to the device and memsets on the legacy default stream are held back
 *     until something orders them (emu.cpp), so a kernel on a non-blocking stream
 *     that reads an upload nobody waited for sees 0xFF bytes; non-blocking streams
 *     run in order, at once.
 *   - cuBLAS's Sgemm and GemmEx (fp16 or fp32 inputs, fp32 accumulation) by the
 *     host BLAS, with cuBLAS's argument checks.
 * What is not: timing, the memory model (a missing __threadfence or a race that
 * the barrier order hides), device-side math accuracy (expf, rsqrtf are the host's).
 *
 * What it must never do: be compiled into the real CUDA build (nvcc), or let a
 * kernel fault pass silently.
 */
#ifndef BITPLAN_TESTS_CUDA_EMU_H
#define BITPLAN_TESTS_CUDA_EMU_H

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <tuple>
#include <type_traits>
#include <utility>

#define __launch_bounds__(...)

/* cuda_runtime.h gives this C++ form to nvcc only. */
template <class T> static inline cudaError_t cudaFuncSetAttribute(T *func, cudaFuncAttribute attr, int value)
{
    return ::cudaFuncSetAttribute((const void *)func, attr, value);
}

/* ==== The running thread ==== */

struct emu_thread {
    uint3 thread_idx, block_idx;
    dim3 block_dim, grid_dim;
};
extern thread_local emu_thread *emu_cur;

#define threadIdx (emu_cur->thread_idx)
#define blockIdx (emu_cur->block_idx)
#define blockDim (emu_cur->block_dim)
#define gridDim (emu_cur->grid_dim)

/* ==== Synchronisation and shared memory ==== */

void emu_syncthreads(void);
/* All 32 lanes of the warp exchange `size` bytes: lane l's value at in, lane
 * src_lane's value returned at out. */
void emu_warp_exchange(unsigned mask, const void *in, void *out, size_t size, int src_lane_xor, int width);
/* The block's k-th static __shared__ declaration reached by this thread (rewrite.py). */
void *emu_shared_slot(size_t bytes);
/* The launch's dynamic shared memory (extern __shared__). */
void *emu_dynamic_smem(void);
/* Stops the program: a fault on the GPU. */
[[noreturn]] void emu_fault(const char *fmt, ...);

static inline void __syncthreads(void) { emu_syncthreads(); }

template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32)
{
    T out;
    emu_warp_exchange(mask, &v, &out, sizeof v, lane_mask, width);
    return out;
}

/* Each static __shared__ array is one slot per block, found by declaration order. */
#define EMU_SHARED(T, name, dims)        \
    typedef T emu_shared_##name##_t dims; \
    emu_shared_##name##_t &name = *(emu_shared_##name##_t *)emu_shared_slot(sizeof(emu_shared_##name##_t))

/* ==== Loads and math ==== */

template <typename T> static inline void emu_check_align(const T *p)
{
    if ((uintptr_t)p % alignof(T)) emu_fault("misaligned %zu-byte load at %p", sizeof(T), (const void *)p);
}
template <typename T> static inline T __ldg(const T *p) { emu_check_align(p); return *p; }
template <typename T> static inline T __ldcs(const T *p) { emu_check_align(p); return *p; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

/* ==== Launches ==== */

struct emu_launch_cfg {
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
};
static inline emu_launch_cfg emu_cfg(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t stream = 0)
{
    return emu_launch_cfg{grid, block, smem, stream};
}

/* Runs body(ctx) as every thread of every block; the kernel's address keys its
 * dynamic shared memory limit (cudaFuncSetAttribute). */
void emu_run(const char *name, const void *kernel, const emu_launch_cfg &cfg, void (*body)(void *), void *ctx);

template <typename... P, typename... A>
static void emu_launch(const char *name, void (*kernel)(P...), const emu_launch_cfg &cfg, A &&...args)
{
    struct call {
        void (*kernel)(P...);
        std::tuple<std::decay_t<P>...> args;
    } c{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    emu_run(name, (const void *)kernel, cfg, [](void *p) {
        call *cp = (call *)p;
        std::tuple<std::decay_t<P>...> a = cp->args; /* by value, as a kernel gets its parameters */
        std::apply(cp->kernel, a);
    }, &c);
}

#endif
