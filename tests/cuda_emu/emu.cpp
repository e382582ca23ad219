/*
 * tests/cuda_emu/emu.cpp — the CPU emulation's runtime (tests/cuda_emu/emu.h):
 * launches run as fibers, device memory is host memory that knows its extent,
 * and the CUDA runtime and cuBLAS functions that runtime/cuda/ calls are defined
 * here against the toolkit's own declarations.
 *
 * The emulated device: "bitplan CUDA emulator", compute capability 9.0, 64
 * multiprocessors (so that the matrix-vector kernel's 1, 2 and 4 rows per block
 * are all reached by test shapes), 227 KiB of opt-in shared memory per block, and
 * BITPLAN_EMU_DEVICE_MIB (default 4096) MiB of memory, beyond which cudaMalloc
 * fails as a full GPU does.
 *
 * Fibers switch with a few instructions of x86-64 assembly (ucontext elsewhere),
 * announced to AddressSanitizer so that it follows the stack changes.
 */
#include "tests/cuda_emu/emu.h"

#include <cblas.h>
#include <cublas_v2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <map>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

thread_local emu_thread *emu_cur;

void emu_fault(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("cuda emulator: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

/* ==== Context switches ==== */

#if defined(__x86_64__)
/* emu_switch(save, to): saves the callee-saved registers, MXCSR and the x87
 * control word on this stack, stores the stack pointer at *save, and resumes the
 * context whose stack pointer is `to`. */
extern "C" void emu_switch(void **save, void *to);
__asm__(".text\n"
        ".globl emu_switch\n"
        ".hidden emu_switch\n"
        ".type emu_switch,@function\n"
        "emu_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    subq $8, %rsp\n"
        "    stmxcsr (%rsp)\n"
        "    fnstcw 4(%rsp)\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    ldmxcsr (%rsp)\n"
        "    fldcw 4(%rsp)\n"
        "    addq $8, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size emu_switch, .-emu_switch\n");
#endif

/* ==== Fibers and launches ==== */

enum fiber_state { F_RUN, F_AT_BLOCK, F_AT_WARP, F_DONE };

struct fiber {
    emu_thread t;
    int linear;              /* thread index within the block */
    fiber_state state;
    int smem_next;           /* static shared slots taken so far */
    int phase;               /* which of the two shuffle buffers */
    char *stack;
    size_t stack_size;
#if defined(__x86_64__)
    void *sp;
#else
    ucontext_t uc;
#endif
    void *asan_fake;
};

enum { MAX_THREADS = 1024, STACK_BYTES = 256 << 10 };

struct launch {
    const char *name;
    void (*body)(void *);
    void *ctx;
    int n;                               /* threads per block */
    std::vector<fiber> fibers;
    fiber *cur;
#if defined(__x86_64__)
    void *sched_sp;
#else
    ucontext_t sched_uc;
#endif
    void *sched_fake;
    const void *sched_bottom;
    size_t sched_size;
    std::vector<void *> smem;            /* static __shared__ slots of this block */
    std::vector<size_t> smem_bytes;
    void *dyn;                           /* dynamic shared memory of this block */
    size_t dyn_bytes;
    unsigned char shfl[MAX_THREADS / 32][2][32][8];
};

static thread_local launch *L;
static std::vector<char *> stacks;       /* one per thread slot, kept across launches */

static char *stack_for(int i)
{
    while ((int)stacks.size() <= i) {
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        void *p = mmap(NULL, STACK_BYTES + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) emu_fault("cannot map a fiber stack");
        mprotect(p, page, PROT_NONE); /* overflow faults instead of corrupting */
        stacks.push_back((char *)p + page);
    }
    return stacks[(size_t)i];
}

static void asan_start(void **fake, const void *bottom, size_t size)
{
#if EMU_ASAN
    __sanitizer_start_switch_fiber(fake, bottom, size);
#else
    (void)fake, (void)bottom, (void)size;
#endif
}

static void asan_finish(void *fake, const void **bottom, size_t *size)
{
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, bottom, size);
#else
    (void)fake, (void)bottom, (void)size;
#endif
}

[[noreturn]] static void fiber_main(void)
{
    launch *l = L;
    asan_finish(NULL, &l->sched_bottom, &l->sched_size);
    fiber *f = l->cur;
    l->body(l->ctx);
    f->state = F_DONE;
    asan_start(NULL, l->sched_bottom, l->sched_size); /* this fiber's stack is finished with */
#if defined(__x86_64__)
    void *dead;
    emu_switch(&dead, l->sched_sp);
#else
    setcontext(&l->sched_uc);
#endif
    __builtin_unreachable();
}

static void fiber_init(fiber *f, int i)
{
    f->stack = stack_for(i);
    f->stack_size = STACK_BYTES;
#if EMU_ASAN
    ASAN_UNPOISON_MEMORY_REGION(f->stack, f->stack_size);
#endif
#if defined(__x86_64__)
    /* The frame emu_switch pops: control words, r15 r14 r13 r12 rbx rbp, then the
     * return address fiber_main, placed so that fiber_main starts as if called
     * (its stack pointer 8 below a 16-byte boundary). */
    uintptr_t top = ((uintptr_t)f->stack + f->stack_size) & ~(uintptr_t)15;
    uint64_t *ret = (uint64_t *)(top - 16);
    ret[0] = (uint64_t)(uintptr_t)fiber_main;
    ret[1] = 0;
    uint64_t *sp = ret - 7;
    uint32_t mxcsr;
    uint16_t fpucw;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(fpucw));
    sp[0] = mxcsr | (uint64_t)fpucw << 32; /* mxcsr at 0(%rsp), the control word at 4(%rsp) */
    for (int k = 1; k < 7; k++) sp[k] = 0;
    f->sp = sp;
#else
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = f->stack;
    f->uc.uc_stack.ss_size = f->stack_size;
    f->uc.uc_link = NULL;
    makecontext(&f->uc, (void (*)(void))fiber_main, 0);
#endif
    f->state = F_RUN;
    f->smem_next = 0;
    f->phase = 0;
    f->asan_fake = NULL;
}

/* The scheduler hands the block's CPU to fiber f until it waits or returns. */
static void resume(launch *l, fiber *f)
{
    l->cur = f;
    emu_cur = &f->t;
    asan_start(&l->sched_fake, f->stack, f->stack_size);
#if defined(__x86_64__)
    emu_switch(&l->sched_sp, f->sp);
#else
    swapcontext(&l->sched_uc, &f->uc);
#endif
    asan_finish(l->sched_fake, NULL, NULL);
    emu_cur = NULL;
}

/* Fiber f waits (its state says for what) and gives the CPU back. */
static void yield(launch *l, fiber *f)
{
    asan_start(&f->asan_fake, l->sched_bottom, l->sched_size);
#if defined(__x86_64__)
    emu_switch(&f->sp, l->sched_sp);
#else
    swapcontext(&f->uc, &l->sched_uc);
#endif
    asan_finish(f->asan_fake, &l->sched_bottom, &l->sched_size);
    emu_cur = &f->t;
}

static fiber *current(const char *what)
{
    if (!L || !L->cur) emu_fault("%s outside a kernel", what);
    return L->cur;
}

void emu_syncthreads(void)
{
    fiber *f = current("__syncthreads");
    f->state = F_AT_BLOCK;
    yield(L, f);
}

void emu_warp_exchange(unsigned mask, const void *in, void *out, size_t size, int lane_xor, int width)
{
    fiber *f = current("a warp shuffle");
    launch *l = L;
    int warp = f->linear / 32, lane = f->linear % 32, lanes = l->n - 32 * warp < 32 ? l->n - 32 * warp : 32;
    if (mask != 0xffffffffu || width != 32 || size > 8 || lane_xor < 0 || lane_xor > 31)
        emu_fault("%s: only full-warp shuffles of up to 8 bytes are emulated (mask %#x, width %d)", l->name, mask,
                  width);
    if (lanes < 32) emu_fault("%s: a full-warp shuffle in a warp of %d threads", l->name, lanes);
    memcpy(l->shfl[warp][f->phase][lane], in, size);
    f->state = F_AT_WARP;
    yield(l, f);
    memcpy(out, l->shfl[warp][f->phase][lane ^ lane_xor], size);
    f->phase ^= 1; /* the other buffer next time: a lane still reading this one is not overwritten */
}

static void *poisoned(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) emu_fault("out of host memory (%zu bytes)", bytes);
    memset(p, 0xFF, bytes);
    return p;
}

void *emu_shared_slot(size_t bytes)
{
    fiber *f = current("a __shared__ declaration");
    launch *l = L;
    size_t k = (size_t)f->smem_next++;
    if (k == l->smem.size()) {
        l->smem.push_back(poisoned(bytes));
        l->smem_bytes.push_back(bytes);
    } else if (k > l->smem.size() || l->smem_bytes[k] != bytes) {
        emu_fault("%s: the threads of a block reach different __shared__ declarations", l->name);
    }
    return l->smem[k];
}

void *emu_dynamic_smem(void)
{
    current("extern __shared__");
    return L->dyn;
}

/* A warp whose every lane waits in a shuffle goes on; lanes of one warp waiting
 * at different barriers, or in a shuffle after others returned, would hang or be
 * undefined on the GPU. Returns whether the warp was released. */
static int settle_warp(launch *l, int w)
{
    int lanes = l->n - 32 * w < 32 ? l->n - 32 * w : 32, at_warp = 0, done = 0;
    fiber *f = &l->fibers[(size_t)(32 * w)];
    for (int i = 0; i < lanes; i++) at_warp += f[i].state == F_AT_WARP, done += f[i].state == F_DONE;
    if (!at_warp) return 0;
    if (at_warp != lanes)
        emu_fault("%s: block (%u,%u,%u) warp %d: %d lanes wait in a shuffle while %d have returned and %d wait at "
                  "__syncthreads", l->name, f->t.block_idx.x, f->t.block_idx.y, f->t.block_idx.z, w, at_warp, done,
                  lanes - at_warp - done);
    for (int i = 0; i < lanes; i++) f[i].state = F_RUN;
    return 1;
}

/* Runs the lanes of warps w0..w1-1 (step +1 or -1) until each waits at
 * __syncthreads or has returned. */
static void run_warps(launch *l, int w0, int w1, int step)
{
    int released;
    do {
        for (int w = w0; w != w1; w += step) {
            int lo = 32 * w, hi = l->n - lo < 32 ? l->n : lo + 32;
            for (int k = 0; k < hi - lo; k++) {
                fiber *f = &l->fibers[(size_t)(step > 0 ? lo + k : hi - 1 - k)];
                if (f->state == F_RUN) resume(l, f);
            }
        }
        released = 0;
        for (int w = w0; w != w1; w += step) released |= settle_warp(l, w);
    } while (released);
}

/* Runs one block between barriers in one of two orders, alternating by launch:
 * all warps in step (forward), or each warp alone, last warp first, as far as its
 * next __syncthreads (lanes backward). A barrier that is missing shows in one of
 * them as a read of what another warp has not written yet (0xFF bytes) or has
 * already overwritten. */
static void run_block(launch *l, int serial)
{
    int n = l->n, nw = (n + 31) / 32;
    for (int i = 0; i < n; i++) fiber_init(&l->fibers[(size_t)i], i);
    l->dyn = poisoned(l->dyn_bytes);
    for (;;) {
        if (serial)
            for (int w = nw - 1; w >= 0; w--) run_warps(l, w, w - 1, -1);
        else
            run_warps(l, 0, nw, 1);
        int done = 0, at_block = 0;
        for (int i = 0; i < n; i++) done += l->fibers[(size_t)i].state == F_DONE, at_block += l->fibers[(size_t)i].state == F_AT_BLOCK;
        if (done == n) break;
        if (at_block != n - done) emu_fault("%s: the block hangs", l->name);
        for (int i = 0; i < n; i++)
            if (l->fibers[(size_t)i].state == F_AT_BLOCK) l->fibers[(size_t)i].state = F_RUN;
    }
    for (void *p : l->smem) free(p);
    l->smem.clear();
    l->smem_bytes.clear();
    free(l->dyn);
    l->dyn = NULL;
}

/* ==== Errors ==== */

static thread_local cudaError_t last_error = cudaSuccess;

static cudaError_t fail(cudaError_t e)
{
    last_error = e;
    return e;
}

/* ==== The device ==== */

static const int EMU_SMS = 64, EMU_SMEM_OPTIN = 232448, EMU_SMEM_DEFAULT = 48 << 10;

static size_t device_capacity(void)
{
    const char *s = getenv("BITPLAN_EMU_DEVICE_MIB");
    long mib = s ? atol(s) : 4096;
    return (size_t)(mib > 0 ? mib : 4096) << 20;
}

static std::map<uintptr_t, size_t> &device_allocs(void)
{
    static std::map<uintptr_t, size_t> m;
    return m;
}
static size_t device_used;
static std::map<const void *, int> &smem_limits(void)
{
    static std::map<const void *, int> m;
    return m;
}

/* Whether [p, p + n) lies inside one device allocation. */
static bool on_device(const void *p, size_t n)
{
    std::map<uintptr_t, size_t> &m = device_allocs();
    auto it = m.upper_bound((uintptr_t)p);
    if (it == m.begin()) return false;
    --it;
    return (uintptr_t)p >= it->first && (uintptr_t)p + n <= it->first + it->second;
}

/* ==== The legacy default stream, held back ====
 *
 * cudaMemcpy to the device and cudaMemset run on the legacy default stream and may
 * return before the data lands (a pageable copy returns once its source is staged).
 * A non-blocking stream does not wait for that stream. So both are queued here (the
 * source copied at once) and done only when something orders them: a device
 * synchronization, a synchronization of the legacy stream, a copy back to the host,
 * a launch or a cuBLAS call on the legacy stream, cudaFree. A kernel on a
 * non-blocking stream that reads an upload nobody waited for sees 0xFF bytes. */
struct legacy_op {
    void *dst;
    std::vector<unsigned char> data;   /* a copy's source; empty for a memset */
    int value;
    size_t n;
};

static std::vector<legacy_op> &legacy_queue(void)
{
    static std::vector<legacy_op> q;
    return q;
}

static void legacy_flush(void)
{
    for (legacy_op &op : legacy_queue()) {
        if (op.data.empty()) memset(op.dst, op.value, op.n);
        else memcpy(op.dst, op.data.data(), op.n);
    }
    legacy_queue().clear();
}

void emu_run(const char *name, const void *kernel, const emu_launch_cfg &cfg, void (*body)(void *), void *ctx)
{
    if (!cfg.stream) legacy_flush();
    uint64_t threads = (uint64_t)cfg.block.x * cfg.block.y * cfg.block.z;
    if (threads == 0 || threads > MAX_THREADS || cfg.block.z > 64 || cfg.grid.x == 0 || cfg.grid.y == 0 ||
        cfg.grid.z == 0 || cfg.grid.x > 0x7fffffffu || cfg.grid.y > 65535 || cfg.grid.z > 65535) {
        fail(cudaErrorInvalidConfiguration);
        return;
    }
    auto lim = smem_limits().find(kernel);
    if (cfg.smem > (size_t)(lim != smem_limits().end() ? lim->second : EMU_SMEM_DEFAULT)) {
        fail(cudaErrorInvalidValue);
        return;
    }
    if (L) emu_fault("a launch of %s from inside %s", name, L->name);
    static thread_local unsigned long launches;
    int serial = (int)(launches++ % 2);
    launch *l = new launch();
    l->name = name, l->body = body, l->ctx = ctx, l->n = (int)threads, l->dyn_bytes = cfg.smem;
    l->fibers.resize(threads);
    L = l;
    for (unsigned bz = 0; bz < cfg.grid.z; bz++)
        for (unsigned by = 0; by < cfg.grid.y; by++)
            for (unsigned bx = 0; bx < cfg.grid.x; bx++) {
                for (int i = 0; i < l->n; i++) {
                    fiber *f = &l->fibers[(size_t)i];
                    f->linear = i;
                    f->t.thread_idx = make_uint3(i % cfg.block.x, i / cfg.block.x % cfg.block.y,
                                                 i / (cfg.block.x * cfg.block.y));
                    f->t.block_idx = make_uint3(bx, by, bz);
                    f->t.block_dim = cfg.block, f->t.grid_dim = cfg.grid;
                }
                run_block(l, serial);
            }
    L = NULL;
    delete l;
}

extern "C" {

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return last_error; }

const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    default: return "cudaErrorUnknown";
    }
}

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    default: return "unknown error";
    }
}

cudaError_t cudaGetDeviceCount(int *n)
{
    *n = 1;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice); }

cudaError_t cudaGetDevice(int *d)
{
    *d = 0;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d)
{
    if (d != 0) return fail(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "bitplan CUDA emulator (CPU, for tests)");
    p->major = 9, p->minor = 0;
    p->multiProcessorCount = EMU_SMS;
    p->totalGlobalMem = device_capacity();
    p->l2CacheSize = 8 << 20;
    p->sharedMemPerBlock = EMU_SMEM_DEFAULT;
    p->sharedMemPerBlockOptin = EMU_SMEM_OPTIN;
    p->warpSize = 32;
    p->maxThreadsPerBlock = MAX_THREADS;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d)
{
    if (d != 0) return fail(cudaErrorInvalidDevice);
    switch (a) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = EMU_SMEM_OPTIN; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *v = EMU_SMS; return cudaSuccess;
    default: emu_fault("cudaDeviceGetAttribute(%d) is not emulated", (int)a);
    }
}

cudaError_t cudaDriverGetVersion(int *v)
{
    *v = CUDART_VERSION;
    return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *v)
{
    *v = CUDART_VERSION;
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *fr, size_t *tot)
{
    *tot = device_capacity();
    *fr = *tot - device_used;
    return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void *func, cudaFuncAttribute attr, int value)
{
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) emu_fault("cudaFuncSetAttribute(%d) is not emulated", (int)attr);
    if (value < 0 || value > EMU_SMEM_OPTIN) return fail(cudaErrorInvalidValue);
    smem_limits()[func] = value;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void)
{
    legacy_flush();
    return cudaSuccess;
}

/* ==== Memory ==== */

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    *p = NULL;
    if (bytes > device_capacity() - device_used) return fail(cudaErrorMemoryAllocation);
    *p = poisoned(bytes);
    device_allocs()[(uintptr_t)*p] = bytes;
    device_used += bytes;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
    if (!p) return cudaSuccess;
    legacy_flush(); /* cudaFree synchronizes the device */
    auto it = device_allocs().find((uintptr_t)p);
    if (it == device_allocs().end()) return fail(cudaErrorInvalidValue);
    device_used -= it->second;
    device_allocs().erase(it);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t bytes)
{
    *p = poisoned(bytes);
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void *p)
{
    legacy_flush(); /* as cudaFree, it synchronizes the device */
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind kind)
{
    if (!n) return cudaSuccess;
    bool ok = kind == cudaMemcpyHostToDevice     ? on_device(dst, n) && !on_device(src, n)
              : kind == cudaMemcpyDeviceToHost   ? on_device(src, n) && !on_device(dst, n)
              : kind == cudaMemcpyDeviceToDevice ? on_device(src, n) && on_device(dst, n)
                                                 : false;
    if (!ok) return fail(kind == cudaMemcpyDefault || kind == cudaMemcpyHostToHost ? cudaErrorInvalidMemcpyDirection
                                                                                   : cudaErrorInvalidValue);
    if (kind == cudaMemcpyHostToDevice) {
        const unsigned char *b = (const unsigned char *)src;
        legacy_queue().push_back(legacy_op{dst, std::vector<unsigned char>(b, b + n), 0, n});
        return cudaSuccess;
    }
    legacy_flush();
    memmove(dst, src, n);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind kind, cudaStream_t st)
{
    if (!st) return cudaMemcpy(dst, src, n, kind); /* the legacy stream: as cudaMemcpy */
    bool ok = kind == cudaMemcpyHostToDevice ? on_device(dst, n) : kind == cudaMemcpyDeviceToHost ? on_device(src, n)
              : kind == cudaMemcpyDeviceToDevice && on_device(src, n) && on_device(dst, n);
    if (n && !ok) return fail(cudaErrorInvalidValue);
    memmove(dst, src, n); /* a non-blocking stream runs in order, at once */
    return cudaSuccess;
}

cudaError_t cudaMemset(void *p, int v, size_t n)
{
    if (n && !on_device(p, n)) return fail(cudaErrorInvalidValue);
    legacy_queue().push_back(legacy_op{p, {}, v, n});
    return cudaSuccess;
}

/* ==== Streams and events ==== */

struct CUstream_st { int unused; };
struct CUevent_st { double t; };

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *st, unsigned flags)
{
    (void)flags;
    *st = new CUstream_st();
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t st)
{
    delete st;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t st)
{
    if (!st) legacy_flush();
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *e)
{
    *e = new CUevent_st();
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    delete e;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t st)
{
    (void)st;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    e->t = ts.tv_sec + ts.tv_nsec * 1e-9;
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t e)
{
    (void)e;
    legacy_flush();
    return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b)
{
    *ms = (float)((b->t - a->t) * 1e3);
    return cudaSuccess;
}

/* ==== cuBLAS ==== */

struct cublasContext { cudaStream_t st; };

cublasStatus_t cublasCreate_v2(cublasHandle_t *h)
{
    *h = new cublasContext();
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t h)
{
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t st)
{
    h->st = st;
    return CUBLAS_STATUS_SUCCESS;
}

/* cuBLAS's own checks of a column-major gemm's shape, and that the matrices are
 * device memory of the extent the leading dimensions imply. */
static bool gemm_args_ok(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *A, int lda,
                         size_t asz, const void *B, int ldb, size_t bsz, const void *C, int ldc, size_t csz)
{
    if (m < 0 || n < 0 || k < 0) return false;
    int arows = ta == CUBLAS_OP_N ? m : k, acols = ta == CUBLAS_OP_N ? k : m;
    int brows = tb == CUBLAS_OP_N ? k : n, bcols = tb == CUBLAS_OP_N ? n : k;
    if (lda < (arows > 1 ? arows : 1) || ldb < (brows > 1 ? brows : 1) || ldc < (m > 1 ? m : 1)) return false;
    if (!m || !n) return true;
    auto extent = [](int ld, int rows, int cols, size_t el) { return ((size_t)ld * (size_t)(cols - 1) + (size_t)rows) * el; };
    return (!k || (on_device(A, extent(lda, arows, acols, asz)) && on_device(B, extent(ldb, brows, bcols, bsz)))) &&
           on_device(C, extent(ldc, m, n, csz));
}

static CBLAS_TRANSPOSE cblas_op(cublasOperation_t t) { return t == CUBLAS_OP_N ? CblasNoTrans : CblasTrans; }

cublasStatus_t cublasSgemm_v2(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                              const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                              float *C, int ldc)
{
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T) ||
        !gemm_args_ok(ta, tb, m, n, k, A, lda, 4, B, ldb, 4, C, ldc, 4))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!h->st) legacy_flush();
    if (m && n) cblas_sgemm(CblasColMajor, cblas_op(ta), cblas_op(tb), m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc);
    return CUBLAS_STATUS_SUCCESS;
}

/* A column-major matrix of `cols` columns (leading dimension ld) as fp32. */
static float *to_f32(const void *M, cudaDataType t, int ld, int rows, int cols)
{
    size_t len = (size_t)ld * (size_t)(cols - 1) + (size_t)rows;
    float *out = (float *)malloc(len * sizeof *out);
    if (!out) emu_fault("out of host memory");
    for (size_t i = 0; i < len; i++) out[i] = t == CUDA_R_16F ? __half2float(((const __half *)M)[i]) : ((const float *)M)[i];
    return out;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType at, int lda, const void *B, cudaDataType bt,
                            int ldb, const void *beta, void *C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo)
{
    (void)algo;
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((at != CUDA_R_16F && at != CUDA_R_32F) || at != bt || ct != CUDA_R_32F ||
        (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_FAST_16F))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    size_t el = at == CUDA_R_16F ? 2 : 4;
    if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T) ||
        !gemm_args_ok(ta, tb, m, n, k, A, lda, el, B, ldb, el, C, ldc, 4))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!m || !n) return CUBLAS_STATUS_SUCCESS;
    if (!h->st) legacy_flush();
    if (!k) {
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) ((float *)C)[(size_t)j * ldc + i] *= *(const float *)beta;
        return CUBLAS_STATUS_SUCCESS;
    }
    float *a = to_f32(A, at, lda, ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m);
    float *b = to_f32(B, bt, ldb, tb == CUBLAS_OP_N ? k : n, tb == CUBLAS_OP_N ? n : k);
    cblas_sgemm(CblasColMajor, cblas_op(ta), cblas_op(tb), m, n, k, *(const float *)alpha, a, lda, b, ldb,
                *(const float *)beta, (float *)C, ldc);
    free(a);
    free(b);
    return CUBLAS_STATUS_SUCCESS;
}

} /* extern "C" */
