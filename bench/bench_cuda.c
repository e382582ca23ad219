/*
 * bench/bench_cuda.c — the CUDA runtime's speed, as Markdown tables on stdout
 * (progress on stderr):
 *
 *   (a) the packed matrix-vector product (batch 1) on 4096x14336 and 8192x28672
 *       weights (rows x cols) at about 2.5, 3, 4, 5, 6 and 8 bpw and in the ggml
 *       types Q4_0, Q4_1 (mins) and Q8_0: GB/s of packed bytes (values, scales,
 *       zeros, mins) over the device-to-device copy bandwidth
 *       measured in the same run, (read + written bytes) / s; each figure rotates
 *       over enough copies of the tensor (>= 512 MiB) to leave the L2 cache;
 *   (b) token generation (batch 1, after 16 prompt and 8 warm-up tokens)
 *       for synthetic models of random packed weights built here in memory,
 *       Llama-2-7B's shapes at about 3.0, 4.0 and 5.0 bpw and SmolLM2-135M's at
 *       4.0 (no file needed on the GPU machine), and for a packed file
 *       (--packed FILE, e.g. SmolLM2 at 4.0 bpw from `bitplan pack`);
 *   (c) device memory of each model: "allocated", the sum of its allocations
 *       (rt_cuda_model_device_bytes), and "taken", the drop in free device memory
 *       from before its upload to after its first forward (allocation rounding and
 *       cuBLAS's workspace included), the latter next to the VRAM memory model's
 *       prediction for the same model and context at batch 1 without reserve
 *       (alloc_memory_model, what `bitplan allocate --vram` plans with); --predict
 *       BYTES shows another figure beside it (scripts/gpu-prep.sh passes its plan's).
 *
 *   bench_cuda [--quick | --smoke] [--packed FILE] [--predict BYTES] [--ctx N] [--tokens N]
 *              [--only matvec|llama|smol]
 *
 * --only runs one part (the packed file, if given, runs too): for a profiler, whose
 * kernel filters cannot tell the parts apart.
 *
 * --smoke runs every step on shapes small enough for the CPU emulation of
 * tests/cuda_emu/ (scripts/gpu-check.sh with EMU=1): it checks that the benchmark
 * itself works; its figures mean nothing.
 *
 * Without a GPU it prints why and exits with status 1. Random weights are never
 * all zeros (zeros can run faster than real data).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "allocate/allocate.h"
#include "layout/layout.h"
#include "pack/pack.h"
#include "runtime/cuda/rt_cuda.h"
#include "runtime/runtime.h"

#define MIB (1024.0 * 1024.0)

static int quick = 0, smoke = 0;
static const char *only = NULL; /* --only: matvec, llama or smol (NULL: all) */
static int part_runs(const char *part) { return !only || !strcmp(only, part); }

/* A transformer's shapes, for a synthetic model of random packed weights. */
typedef struct {
    const char *name;
    int dim, hidden, heads, kv_heads, head_dim, vocab, layers, tied;
    double bpw[3];                         /* targets (0: none) */
} model_shape;

/* The shapes measured, or tiny stand-ins for --smoke. */
typedef struct {
    int64_t mv[2][2];                      /* matrix-vector rows x cols */
    model_shape models[2];
} bench_shapes;

static const bench_shapes full_shapes = {
    { { 4096, 14336 }, { 8192, 28672 } },
    { { "Llama-2-7B shapes", 4096, 11008, 32, 32, 128, 32000, 32, 0, { 3.0, 4.0, 5.0 } },
      { "SmolLM2-135M shapes", 576, 1536, 9, 3, 64, 49152, 30, 1, { 4.0, 0, 0 } } } };
static const bench_shapes smoke_shapes = {
    { { 256, 1024 }, { 96, 4096 + 384 } },
    { { "smoke shapes", 256, 704, 4, 4, 64, 1000, 2, 0, { 3.0, 4.0, 5.0 } },
      { "smoke shapes, GQA, tied", 192, 512, 6, 2, 32, 700, 2, 1, { 4.0, 0, 0 } } } };
static const bench_shapes *shapes = &full_shapes;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ==== Random packed tensors, directly in memory ==== */

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint64_t rnd64(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}

typedef struct {
    lay_packed p;
    uint8_t *values, *zeros;
    uint16_t *scales, *mins;
    void *perm;
} rpacked;

/* Random codes, scales of about `mag` / 2^(b-1), zeros in range, a random
 * permutation; for a ggml type mins in (-mag, 0] and no permutation (layout.h).
 * Returns 0, or -1 if out of memory. */
static int rp_make(rpacked *t, int64_t rows, int64_t cols, const lay_option *o, float mag)
{
    lay_cost c = lay_tensor_cost(o, rows, cols);
    int64_t ng = lay_n_groups(o, cols);
    memset(t, 0, sizeof *t);
    t->values = malloc((size_t)c.values + 8);
    t->scales = malloc((size_t)c.scales);
    t->zeros = c.zeros ? malloc((size_t)c.zeros) : NULL;
    t->mins = c.mins ? malloc((size_t)c.mins) : NULL;
    t->perm = c.perm ? malloc((size_t)c.perm) : NULL;
    if (!t->values || !t->scales || (c.zeros && !t->zeros) || (c.mins && !t->mins) || (c.perm && !t->perm)) return -1;
    for (int64_t i = 0; i < c.values; i += 8) {
        uint64_t v = rnd64();
        memcpy(t->values + i, &v, 8);
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < ng; g++) {
            int bits = lay_group_bits(o, cols, g);
            uint64_t v = rnd64();
            float s = mag / (float)(1 << (bits - 1)) * (0.5f + (float)(v & 0xFFFF) / 65536.0f);
            t->scales[r * ng + g] = lay_f32_to_f16(s);
            if (t->zeros) t->zeros[r * ng + g] = (uint8_t)((v >> 16) % (1u << bits));
            if (t->mins) t->mins[r * ng + g] = lay_f32_to_f16(-mag * (float)((v >> 32) & 0xFFFF) / 65536.0f);
        }
    int pb = lay_perm_bytes(cols);
    for (int64_t j = 0; t->perm && j < cols; j++) {
        if (pb == 2) ((uint16_t *)t->perm)[j] = (uint16_t)j;
        else ((uint32_t *)t->perm)[j] = (uint32_t)j;
    }
    for (int64_t j = cols - 1; t->perm && j > 0; j--) {
        int64_t i = (int64_t)(rnd64() % (uint64_t)(j + 1));
        if (pb == 2) { uint16_t *p = t->perm, x = p[i]; p[i] = p[j]; p[j] = x; }
        else { uint32_t *p = t->perm, x = p[i]; p[i] = p[j]; p[j] = x; }
    }
    t->p = (lay_packed){ .rows = rows, .cols = cols, .opt = *o, .values = t->values, .scales = t->scales,
                         .zeros = t->zeros, .mins = t->mins, .perm = t->perm };
    return 0;
}

static void rp_free(rpacked *t) { free(t->values), free(t->scales), free(t->zeros), free(t->mins), free(t->perm); }

/* An option of about `bpw` bits per weight at group 128 (asymmetric): bits_lo =
 * floor, and the share of groups one bit wider that makes up the rest. */
static lay_option option_near(double bpw)
{
    double overhead = 24.0 / 128.0; /* fp16 scale + uint8 zero per 128 weights */
    int lo = (int)(bpw - overhead);
    if (lo < 2) lo = 2;
    if (lo > 8) lo = 8;
    double share = bpw - overhead - lo;
    if (share < 0) share = 0;
    int hi = share > 0.01 && lo < 8 ? lo + 1 : lo;
    lay_option o = { .bits_lo = (uint8_t)lo, .bits_hi = (uint8_t)hi, .hi_share = hi > lo ? (float)share : 0.0f,
                     .group = 128, .scale_fmt = LAY_SCALE_F16_Z8 };
    if (hi == lo) snprintf(o.name, sizeof o.name, "%db g128", lo);
    else snprintf(o.name, sizeof o.name, "%db/%db %d%% g128", lo, lo + 1, (int)(share * 100 + 0.5));
    return o;
}

static lay_option option_plain(int bits)
{
    lay_option o = { .bits_lo = (uint8_t)bits, .bits_hi = (uint8_t)bits, .hi_share = 0, .group = 128,
                     .scale_fmt = LAY_SCALE_F16_Z8 };
    snprintf(o.name, sizeof o.name, "%db g128", bits);
    return o;
}

/* A 32-wide ggml type (layout.h: values, fp16 scale and min per 32, no permutation). */
static lay_option option_ggml(int type)
{
    lay_option o;
    lay_ggml_option(type, &o);
    return o;
}

/* ==== (a) the matrix-vector product ==== */

static int bench_matvec(void)
{
    enum { N_OPTS = 9 };
    lay_option opts[N_OPTS] = { option_near(2.5), option_plain(3), option_plain(4), option_plain(5), option_plain(6),
                                option_plain(8), option_ggml(LAY_GGML_Q4_0), option_ggml(LAY_GGML_Q4_1),
                                option_ggml(LAY_GGML_Q8_0) };
    char err[512];
    int bad = 0;
    printf("\n### Packed matrix-vector product, batch 1\n\n");
    printf("| shape (rows x cols) | option | bpw | MiB | copies | us/product | GB/s | D2D copy GB/s | ratio |\n");
    printf("|---|---|---|---|---|---|---|---|---|\n");
    for (int s = 0; s < 2; s++)
        for (int k = 0; k < N_OPTS; k++) {
            if (quick && k % 2) continue;
            rpacked t;
            int64_t rows = shapes->mv[s][0], cols = shapes->mv[s][1];
            double bpw = (double)lay_tensor_bits(&opts[k], rows, cols) / (double)(rows * cols);
            fprintf(stderr, "matvec %lldx%lld %s ...\n", (long long)rows, (long long)cols, opts[k].name);
            if (rp_make(&t, rows, cols, &opts[k], 0.02f)) { fprintf(stderr, "out of host memory\n"); rp_free(&t); return 1; }
            lay_cost c = lay_tensor_cost(&opts[k], rows, cols);
            double bytes = (double)(c.values + c.scales + c.zeros + c.mins);
            int copies = smoke ? 2 : (int)(512.0 * MIB / bytes) + 1;
            rt_cuda_bench r;
            if (rt_cuda_bench_matvec(&t.p, 1, copies, quick || smoke ? 5 : 21, &r, err, sizeof err)) {
                printf("| %lldx%lld | %s | %.2f | | | | | | failed: %s |\n", (long long)rows, (long long)cols,
                       opts[k].name, bpw, err);
                bad = 1;
            } else {
                printf("| %lldx%lld | %s | %.2f | %.1f | %d | %.1f | %.0f | %.0f | %.2f |\n", (long long)rows,
                       (long long)cols, opts[k].name, bpw, bytes / MIB, r.copies, r.seconds * 1e6, r.gbps,
                       r.copy_gbps, r.gbps / r.copy_gbps);
            }
            fflush(stdout);
            rp_free(&t);
        }
    return bad;
}

/* ==== (b, c) token generation ==== */

/* A synthetic Llama-2-7B: random packed layers and head, dense random embedding. */
typedef struct {
    rt_model m;
    rpacked *pk;          /* [n_layers * 7 + 1] */
    rt_linear *lins;      /* the same count, bare: shape and `packed` */
    float *norm;          /* [dim], shared by every norm */
} synth;

static void synth_free(synth *s)
{
    int n = s->m.cfg.n_layers * LAY_HEAD + 1;
    rt_linear_free(s->m.embed);
    for (int i = 0; s->pk && i < n; i++) rp_free(&s->pk[i]);
    free(s->pk), free(s->lins), free(s->norm), free(s->m.layers);
}

static int synth_make(synth *s, const model_shape *b, const lay_option *o, int n_layers)
{
    int64_t D = b->dim, H = b->hidden, V = b->vocab, Q = (int64_t)b->heads * b->head_dim;
    int64_t KV = (int64_t)b->kv_heads * b->head_dim;
    memset(s, 0, sizeof *s);
    mdl_config *c = &s->m.cfg;
    snprintf(c->arch, sizeof c->arch, "llama");
    c->n_layers = n_layers, c->dim = (int)D, c->hidden_dim = (int)H, c->n_heads = b->heads;
    c->n_kv_heads = b->kv_heads, c->head_dim = b->head_dim, c->vocab_size = (int)V, c->max_ctx = 8192;
    c->rope_theta = 10000, c->rope_dim = b->head_dim, c->rope_scale = 1, c->norm_eps = 1e-5f;
    c->tied_embeddings = b->tied;
    const int64_t shape[LAY_HEAD][2] = {{Q, D}, {KV, D}, {KV, D}, {D, Q}, {H, D}, {H, D}, {D, H}};
    int n = n_layers * LAY_HEAD + 1;
    s->pk = calloc((size_t)n, sizeof *s->pk);
    s->lins = calloc((size_t)n, sizeof *s->lins);
    s->norm = malloc((size_t)D * sizeof *s->norm);
    s->m.layers = calloc((size_t)n_layers, sizeof *s->m.layers);
    if (!s->pk || !s->lins || !s->norm || !s->m.layers) return -1;
    for (int64_t i = 0; i < D; i++) s->norm[i] = 1.0f + (float)(rnd64() % 1000) / 10000.0f;
    for (int i = 0; i < n; i++) {
        int k = i % LAY_HEAD, head = i == n - 1;
        int64_t rows = head ? V : shape[k][0], cols = head ? D : shape[k][1];
        if (rp_make(&s->pk[i], rows, cols, o, 1.0f / 64.0f)) return -1;
        s->lins[i].rows = rows, s->lins[i].cols = cols, s->lins[i].packed = &s->pk[i].p;
        if (head) s->m.head = &s->lins[i];
        else s->m.layers[i / LAY_HEAD].lin[k] = &s->lins[i];
    }
    if (b->tied) { /* the embedding is the packed head, rows decoded on the host */
        char err[256];
        if (!(s->m.embed = rt_linear_packed(&s->pk[n - 1].p, 1, 0, NULL, err, sizeof err))) return -1;
    } else {
        float *emb = malloc((size_t)(V * D) * sizeof *emb);
        if (!emb) return -1;
        for (int64_t i = 0; i < V * D; i++) emb[i] = (float)((int64_t)(rnd64() % 2001) - 1000) / 50000.0f;
        if (!(s->m.embed = rt_linear_dense(emb, V, D))) return -1;
    }
    for (int l = 0; l < n_layers; l++) s->m.layers[l].attn_norm = s->m.layers[l].ffn_norm = s->norm;
    s->m.out_norm = s->norm;
    return 0;
}

typedef struct {
    double tps, ms;
    int64_t dev_bytes;    /* the model's own allocations (rt_cuda_model_device_bytes) */
    int64_t dev_taken;    /* free device memory before the model minus after its first forward */
    int ctx;              /* the context the model was made for */
} gen_figure;

/* Batch 1 throughout, as the memory model assumes: 16 prompt tokens, 8 warm-up
 * tokens, then n_tokens timed decode steps. */
static int time_generation(const rt_model *m, int ctx, int n_tokens, gen_figure *f, char *err, size_t err_len)
{
    rt_cuda_model *g;
    int vocab = m->cfg.vocab_size, rc = -1;
    float *logits = malloc((size_t)vocab * sizeof *logits);
    if (!logits) { snprintf(err, err_len, "out of host memory"); return -1; }
    if (ctx < 16 + 8 + n_tokens) ctx = 16 + 8 + n_tokens;
    f->ctx = ctx;
    size_t free0, free1, total;
    if (rt_cuda_mem_info(&free0, &total, err, err_len)) goto done;
    if (rt_cuda_model_new(m, ctx, 1, &g, err, err_len)) goto done;
    f->dev_bytes = rt_cuda_model_device_bytes(g);
    int32_t tok = 1;
    double t0 = 0;
    for (int i = 0; i < 16 + 8 + n_tokens; i++) {
        if (i == 16 + 8) t0 = now();
        tok = (int32_t)((uint32_t)(tok * 2654435761u + 1) % (uint32_t)vocab); /* any token: speed only */
        if (rt_cuda_forward(g, &tok, 1, i, 0, 1, logits, err, err_len)) goto free_g;
        if (i == 0 && rt_cuda_mem_info(&free1, &total, err, err_len)) goto free_g;
    }
    double t = now() - t0;
    f->dev_taken = (int64_t)free0 - (int64_t)free1;
    f->tps = n_tokens / t;
    f->ms = t / n_tokens * 1e3;
    rc = 0;
free_g:
    rt_cuda_model_free(g);
done:
    free(logits);
    return rc;
}

static double model_bpw(const rt_model *m)
{
    double bits = 0, weights = 0;
    for (int l = 0; l <= m->cfg.n_layers; l++)
        for (int k = 0; k < LAY_HEAD; k++) {
            const rt_linear *x = l < m->cfg.n_layers ? m->layers[l].lin[k] : m->head;
            if (x && x->packed) {
                bits += (double)lay_tensor_bits(&x->packed->opt, x->rows, x->cols);
                weights += (double)x->rows * (double)x->cols;
            }
            if (l == m->cfg.n_layers) break;
        }
    return weights > 0 ? bits / weights : 0;
}

/* The memory model's bytes for m at ctx tokens, batch 1, fp16 KV cache, no reserve. */
static double model_prediction(const rt_model *m, int ctx)
{
    const mdl_config *c = &m->cfg;
    alloc_shape sh = { .n_layers = c->n_layers, .dim = c->dim, .hidden_dim = c->hidden_dim, .n_heads = c->n_heads,
                       .n_kv_heads = c->n_kv_heads, .head_dim = c->head_dim, .vocab_size = c->vocab_size,
                       .tied_embeddings = c->tied_embeddings, .attn_bias = m->layers[0].bias_q != NULL };
    int64_t bits = 0, weights = 0;
    for (int l = 0; l <= c->n_layers; l++)
        for (int k = 0; k < LAY_HEAD; k++) {
            const rt_linear *x = l < c->n_layers ? m->layers[l].lin[k] : m->head;
            if (x && x->packed) bits += lay_tensor_bits(&x->packed->opt, x->rows, x->cols);
            if (x) weights += x->rows * x->cols;
            if (l == c->n_layers) break;
        }
    int64_t norms = (int64_t)c->n_layers * 2 * c->dim + c->dim, embedding = c->tied_embeddings ? 0 : (int64_t)c->vocab_size * c->dim;
    alloc_unquantized u = alloc_unquantized_params(&sh, weights + norms + embedding, weights);
    alloc_vram_params v;
    alloc_vram_params_init(&v);
    v.ctx = ctx, v.batch = 1, v.kv_bits = 16, v.reserve = 0;
    return (double)alloc_memory_model(&sh, u, &v, bits).total;
}

static void print_gen_header(void)
{
    printf("\n### Token generation, batch 1 (and device memory)\n\n");
    printf("| model | packed bpw | context | tokens/s | ms/token | allocated MiB | taken MiB | predicted MiB | "
           "taken/predicted |\n");
    printf("|---|---|---|---|---|---|---|---|---|\n");
}

/* One row: speed, the runtime's memory, and the memory model's figure for it. */
static void print_gen_row(const char *label, const rt_model *m, const gen_figure *f)
{
    double predicted = model_prediction(m, f->ctx);
    printf("| %s | %.2f | %d | %.1f | %.2f | %.1f | %.1f | %.1f | %.3f |\n", label, model_bpw(m), f->ctx, f->tps, f->ms,
           f->dev_bytes / MIB, f->dev_taken / MIB, predicted / MIB, (double)f->dev_taken / predicted);
    fflush(stdout);
}

static int bench_synthetic(const model_shape *b, int ctx, int n_tokens)
{
    char err[512], label[128];
    int bad = 0;
    for (int i = 0; i < 3 && b->bpw[i] > 0; i++) {
        if (quick && b->bpw[i] != 4.0) continue;
        lay_option o = option_near(b->bpw[i]);
        synth s;
        gen_figure f;
        int layers = quick && b->layers > 4 ? 4 : b->layers;
        snprintf(label, sizeof label, "%s%s (%s)", b->name, layers < b->layers ? ", 4 layers" : "", o.name);
        fprintf(stderr, "synthetic model, %s: building ...\n", label);
        double t = now();
        if (synth_make(&s, b, &o, layers)) {
            printf("| %s | | | | | | | | out of host memory |\n", label);
            synth_free(&s);
            return 1;
        }
        fprintf(stderr, "  built in %.1f s; running ...\n", now() - t);
        if (time_generation(&s.m, ctx, n_tokens, &f, err, sizeof err)) {
            printf("| %s | %.2f | %d | failed: %s | | | | | |\n", label, model_bpw(&s.m), ctx, err);
            bad = 1;
        } else {
            print_gen_row(label, &s.m, &f);
        }
        synth_free(&s);
    }
    return bad;
}

/* A packed file; `predicted` (> 0) is its plan's own figure from `bitplan allocate
 * --vram`, which must be the memory model's. */
static int bench_packed_file(const char *path, double predicted, int ctx, int n_tokens)
{
    char err[512];
    rt_model *m = NULL;
    gen_figure f;
    if (pack_load(path, 16, 0, &m, err, sizeof err)) {
        printf("| %s | | | failed to load: %s | | | | | |\n", path, err);
        return 1;
    }
    int rc = time_generation(m, ctx, n_tokens, &f, err, sizeof err);
    if (rc) printf("| %s | %.2f | %d | failed: %s | | | | | |\n", path, model_bpw(m), ctx, err);
    else print_gen_row(path, m, &f);
    double model = rc ? 0 : model_prediction(m, f.ctx);
    if (!rc && predicted > 0 && predicted != model) {
        fprintf(stderr, "bench_cuda: the plan predicted %.0f bytes, the memory model here %.0f\n", predicted, model);
        rc = 1;
    }
    rt_model_free(m);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    const char *packed = NULL;
    double predicted = 0;
    int ctx = 2048, n_tokens = 128, bad = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--smoke")) smoke = 1, shapes = &smoke_shapes;
        else if (!strcmp(argv[i], "--packed") && i + 1 < argc) packed = argv[++i];
        else if (!strcmp(argv[i], "--predict") && i + 1 < argc) predicted = atof(argv[++i]);
        else if (!strcmp(argv[i], "--ctx") && i + 1 < argc) ctx = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) n_tokens = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else {
            fprintf(stderr, "usage: bench_cuda [--quick | --smoke] [--packed FILE] [--predict BYTES] [--ctx N] [--tokens N]"
                            " [--only matvec|llama|smol]\n");
            return 2;
        }
    }
    if (only && strcmp(only, "matvec") && strcmp(only, "llama") && strcmp(only, "smol")) {
        fprintf(stderr, "bench_cuda: --only takes matvec, llama or smol, not '%s'\n", only);
        return 2;
    }
    char info[256], err[256];
    if (rt_cuda_device_info(info, sizeof info, err, sizeof err)) {
        fprintf(stderr, "bench_cuda: %s\n", err);
        return 1;
    }
    if (ctx < 64 || n_tokens < 1) { fprintf(stderr, "bench_cuda: --ctx must be >= 64 and --tokens >= 1\n"); return 2; }
    printf("## bitplan CUDA benchmark\n\ndevice: %s\n", info);
    if (part_runs("matvec")) bad |= bench_matvec();
    print_gen_header();
    if (packed) bad |= bench_packed_file(packed, predicted, ctx, n_tokens);
    static const char *const model_part[2] = { "llama", "smol" };
    for (int i = 0; i < 2; i++)
        if (part_runs(model_part[i])) bad |= bench_synthetic(&shapes->models[i], ctx, n_tokens);
    return bad;
}
