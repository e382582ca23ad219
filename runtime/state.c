/*
 * runtime/state.c — the run state of one sequence: KV cache, scratch buffers and
 * RoPE tables, all sized once from max_ctx and max_batch.
 *
 * What it is for: rt_forward writes nothing but these buffers, so a forward pass
 * never allocates. It must never depend on which rt_linear implementation the
 * model uses.
 */
#include <assert.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>

#include "rt_int.h"

/* cos/sin of pos * theta^(-2i/rope_dim) / scale for every position and pair,
 * computed in double. Linear scaling divides the position by the factor. */
static void fill_rope_tables(rt_state *s, const mdl_config *c)
{
    int half = c->rope_dim / 2;
    double scale = c->rope_scaling == MDL_ROPE_LINEAR ? c->rope_scale : 1.0;
    for (int i = 0; i < half; i++) {
        double freq = pow((double)c->rope_theta, -2.0 * i / c->rope_dim);
        for (int p = 0; p < s->max_ctx; p++) {
            double a = p / scale * freq;
            s->rope_cos[(size_t)p * half + i] = (float)cos(a);
            s->rope_sin[(size_t)p * half + i] = (float)sin(a);
        }
    }
}

/* Whether two layers of one input group rotate their input alike somewhere in m,
 * so that the forward pass rotates it once (forward.c) and needs s->xr. */
static int shares_rotations(const rt_model *m)
{
    for (int l = 0; l < m->cfg.n_layers; l++) {
        rt_linear *const *lin = m->layers[l].lin;
        for (int a = 0; a < LAY_HEAD; a++)
            for (int b = a + 1; b < LAY_HEAD; b++)
                if (rt_class_input((lay_class)a) == rt_class_input((lay_class)b) && rt_same_rotation(lin[a], lin[b]))
                    return 1;
    }
    return 0;
}

static rt_state *state_new(const rt_model *m, int max_ctx, int max_batch, int cache_layers)
{
    const mdl_config *c = &m->cfg;
    assert(max_ctx > 0 && max_batch > 0);
    if (max_batch > max_ctx) max_batch = max_ctx;
    rt_state *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->max_ctx = max_ctx;
    s->max_batch = max_batch;
    s->q_dim = c->n_heads * c->head_dim;
    s->kv_dim = c->n_kv_heads * c->head_dim;
    s->rope_neox = rt_rope_is_neox(c);
    s->cache_layers = cache_layers;
    size_t T = (size_t)max_ctx, B = (size_t)max_batch, L = (size_t)cache_layers;
    size_t hidden = (size_t)c->hidden_dim, dim = (size_t)c->dim, half = (size_t)c->rope_dim / 2;
    s->key_cache = calloc(L * T * (size_t)s->kv_dim, sizeof(float));
    s->value_cache = calloc(L * T * (size_t)s->kv_dim, sizeof(float));
    s->x = calloc(B * dim, sizeof(float));
    s->xb = calloc(B * dim, sizeof(float));
    s->xo = calloc(B * dim, sizeof(float));
    s->q = calloc(B * (size_t)s->q_dim, sizeof(float));
    s->att = calloc(B * (size_t)s->q_dim, sizeof(float));
    s->att_threads = omp_get_max_threads();
    s->att_rows = max_batch < RT_ATT_ROWS ? max_batch : RT_ATT_ROWS;
    s->scores = calloc((size_t)s->att_threads * (size_t)s->att_rows * T, sizeof(float));
    s->gate = calloc(B * hidden, sizeof(float));
    s->up = calloc(B * hidden, sizeof(float));
    int shared_rotation = shares_rotations(m);
    s->xr = shared_rotation ? calloc(B * dim, sizeof(float)) : NULL;
    s->rope_cos = calloc(T * half, sizeof(float));
    s->rope_sin = calloc(T * half, sizeof(float));
    if (!s->key_cache || !s->value_cache || !s->x || !s->xb || !s->xo || !s->q || !s->att || !s->scores ||
        !s->gate || !s->up || !s->rope_cos || !s->rope_sin || (shared_rotation && !s->xr)) {
        rt_state_free(s);
        return NULL;
    }
    fill_rope_tables(s, c);
    return s;
}

rt_state *rt_state_new(const rt_model *m, int max_ctx, int max_batch)
{
    return state_new(m, max_ctx, max_batch, m->cfg.n_layers);
}

rt_state *rt_state_new_one_cache(const rt_model *m, int max_ctx, int max_batch)
{
    return state_new(m, max_ctx, max_batch, 1);
}

void rt_state_free(rt_state *s)
{
    if (!s) return;
    free(s->key_cache); free(s->value_cache);
    free(s->x); free(s->xb); free(s->xo);
    free(s->q); free(s->att); free(s->scores);
    free(s->gate); free(s->up); free(s->xr);
    free(s->rope_cos); free(s->rope_sin);
    free(s);
}

void rt_state_set_observer(rt_state *s, rt_observer fn, void *ctx)
{
    s->observer = fn;
    s->observer_ctx = ctx;
}
