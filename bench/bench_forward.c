/*
 * bench/bench_forward.c — speed of the dense fp32 forward pass: prompt processing
 * (one 512-token batch, as generate runs a prompt: logits of the last token only)
 * and generation (128 tokens one at a time from an empty cache, greedy), with 1 and
 * 2 threads (OpenMP and OpenBLAS alike). Prints a small table; the effective
 * bandwidth column is fp32 weight bytes read per generated token times tokens/s.
 *
 *   bench_forward [MODEL]        default models/SmolLM2-135M-Instruct.Q4_1.gguf
 *
 * What it must never do: assert on time (it only reports).
 */
#include "model/model.h"
#include "runtime/runtime.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { PROMPT = 512, GEN = 128, REPEAT = 3 };

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void set_threads(int n)
{
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

/* Best of REPEAT runs of one 512-token prompt; tokens/s. */
static double bench_prompt(const rt_model *m, rt_state *s, const int32_t *tok, float *h, float *logits)
{
    double best = 1e30;
    for (int r = 0; r < REPEAT; r++) {
        double t0 = now_s();
        rt_embed(m, tok, PROMPT, h);
        rt_forward_layers(m, s, h, PROMPT, 0, 0, m->cfg.n_layers);
        rt_logits(m, s, h + (size_t)(PROMPT - 1) * m->cfg.dim, 1, logits);
        double t = now_s() - t0;
        best = t < best ? t : best;
    }
    return PROMPT / best;
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++) b = x[i] > x[b] ? i : b;
    return b;
}

/* 128 greedy tokens from an empty cache; tokens/s of the whole loop. */
static double bench_gen(const rt_model *m, rt_state *s, float *logits)
{
    double best = 1e30;
    for (int r = 0; r < REPEAT; r++) {
        int32_t tok = 1;
        double t0 = now_s();
        for (int pos = 0; pos < GEN; pos++) {
            rt_forward(m, s, &tok, 1, pos, logits);
            tok = argmax(logits, m->cfg.vocab_size);
        }
        double t = now_s() - t0;
        best = t < best ? t : best;
    }
    return GEN / best;
}

static double weight_bytes(const rt_model *m)
{
    const mdl_config *c = &m->cfg;
    double per_layer = 0;
    for (int k = 0; k < LAY_HEAD; k++) per_layer += (double)m->layers[0].lin[k]->rows * m->layers[0].lin[k]->cols;
    return 4.0 * (per_layer * c->n_layers + (double)c->vocab_size * c->dim);
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    char err[512];
    mdl_model *f;
    rt_model *m;
    if (mdl_open(path, &f, err, sizeof err) || rt_model_open(f, 1, RT_OPEN_RESIDENT, &m, err, sizeof err)) {
        fprintf(stderr, "bench_forward: %s\n", err);
        return 1;
    }
    int32_t tok[PROMPT];
    for (int i = 0; i < PROMPT; i++) tok[i] = (int32_t)((i * 7919u + 13) % (unsigned)m->cfg.vocab_size);
    rt_state *s = rt_state_new(m, PROMPT, PROMPT);
    float *h = malloc((size_t)PROMPT * m->cfg.dim * sizeof *h);
    float *logits = malloc((size_t)m->cfg.vocab_size * sizeof *logits);
    if (!s || !h || !logits) { fprintf(stderr, "bench_forward: out of memory\n"); return 1; }
    double bytes = weight_bytes(m);
    printf("bench_forward: %s, fp32 weights %.0f MB read per generated token\n", path, bytes / 1e6);
    printf("| threads | prompt %d (tokens/s) | generation %d (tokens/s) | weights read (GB/s) |\n", PROMPT, GEN);
    printf("|---|---|---|---|\n");
    for (int th = 1; th <= 2; th++) {
        set_threads(th);
        double pp = bench_prompt(m, s, tok, h, logits);
        double tg = bench_gen(m, s, logits);
        printf("| %d | %.1f | %.1f | %.1f |\n", th, pp, tg, tg * bytes / 1e9);
        fflush(stdout);
    }
    free(h); free(logits);
    rt_state_free(s);
    rt_model_free(m);
    return 0;
}
