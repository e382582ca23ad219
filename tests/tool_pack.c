/*
 * tests/tool_pack.c — what tests/test_pack.py needs from the C side of a packed
 * file, as raw float32 it can compare with its own NumPy decoder:
 *
 *   tool_pack logits MODEL OUT.f32 ID...   logits [n_ids][vocab] of one batch; MODEL is
 *                                          a packed file (packed kernels) or a model file
 *   tool_pack rows PACKED NAME OUT.f32     every row of linear layer NAME as the runtime
 *                                          decodes it (rt_linear get_row): [rows][cols]
 *   tool_pack matvec PACKED NAME X.f32 N OUT.f32
 *                                          y[N][rows] = x[N][cols] W^T through the packed
 *                                          kernels (rt_linear matmul)
 *   tool_pack halves PACKED NAME X.f32 N OUT.f32
 *                                          a rotated layer's y twice, [2][N][rows]: by
 *                                          matmul, then by rotate_input and matmul_rotated
 *                                          (N up to 256 for both: batches past the
 *                                          layer's 64 take it in pieces)
 *
 * What it must never do: hide an error (every failure prints one line and exits 1).
 */
#include "model/model.h"
#include "pack/pack.h"
#include "runtime/runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *msg)
{
    fprintf(stderr, "tool_pack: %s\n", msg);
    return 1;
}

static int open_any(const char *path, rt_model **m, char *err, size_t err_len)
{
    mdl_model *f;
    if (mdl_open(path, &f, err, err_len)) return -1;
    if (mdl_is_packed(f)) return pack_load_file(f, 64, PACK_LOAD_EXACT, m, err, err_len);
    if (rt_model_open(f, 1, 0, m, err, err_len)) { mdl_close(f); return -1; }
    return 0;
}

static int write_f32(const char *path, const float *v, size_t n)
{
    FILE *out = fopen(path, "wb");
    int ok = out && fwrite(v, sizeof *v, n, out) == n;
    if (out && fclose(out)) ok = 0;
    return ok ? 0 : -1;
}

static int logits(int argc, char **argv)
{
    char err[512];
    rt_model *m;
    if (argc < 5) return fail("usage: tool_pack logits MODEL OUT.f32 ID...");
    if (open_any(argv[2], &m, err, sizeof err)) return fail(err);
    int n = argc - 4, vocab = m->cfg.vocab_size;
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    float *out = malloc((size_t)n * (size_t)vocab * sizeof *out);
    rt_state *s = rt_state_new(m, n, n);
    int rc = ids && out && s ? 0 : fail("out of memory");
    for (int i = 0; !rc && i < n; i++) ids[i] = atoi(argv[4 + i]);
    if (!rc && rt_forward(m, s, ids, n, 0, out)) rc = fail("forward failed");
    if (!rc && write_f32(argv[3], out, (size_t)n * (size_t)vocab)) rc = fail("cannot write the output");
    rt_state_free(s), free(ids), free(out), rt_model_free(m);
    return rc;
}

static rt_linear *find_linear(const rt_model *m, const char *name)
{
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int k = 0; k < LAY_HEAD; k++) {
            char n[96];
            rt_tensor_name(&m->cfg, l, (lay_class)k, n, sizeof n);
            if (!strcmp(n, name)) return m->layers[l].lin[k];
        }
    if (!strcmp(name, "token_embd.weight")) return m->embed;
    if (!strcmp(name, "output.weight")) return m->head;
    return NULL;
}

static int rows(int argc, char **argv)
{
    char err[512];
    rt_model *m;
    if (argc != 5) return fail("usage: tool_pack rows PACKED NAME OUT.f32");
    if (open_any(argv[2], &m, err, sizeof err)) return fail(err);
    rt_linear *l = find_linear(m, argv[3]);
    float *w = l ? malloc((size_t)(l->rows * l->cols) * sizeof *w) : NULL;
    int rc = w ? 0 : fail(l ? "out of memory" : "no such linear layer");
    for (int64_t r = 0; !rc && r < l->rows; r++) l->get_row(l, r, w + r * l->cols);
    if (!rc && write_f32(argv[4], w, (size_t)(l->rows * l->cols))) rc = fail("cannot write the output");
    free(w), rt_model_free(m);
    return rc;
}

static float *read_f32(const char *path, size_t n)
{
    FILE *in = fopen(path, "rb");
    float *v = in ? malloc(n * sizeof *v) : NULL;
    int ok = v && fread(v, sizeof *v, n, in) == n;
    if (in) fclose(in);
    if (!ok) free(v);
    return ok ? v : NULL;
}

/* matvec: y = x W^T by matmul; halves: that y, then the same by rotate_input and
 * matmul_rotated. */
static int products(int argc, char **argv, int halves)
{
    char err[512];
    rt_model *m;
    if (argc != 7) return fail("usage: tool_pack matvec|halves PACKED NAME X.f32 N OUT.f32");
    int n = atoi(argv[5]), ways = halves ? 2 : 1;
    if (n < 1 || n > 256) return fail("N must be 1..256");
    if (open_any(argv[2], &m, err, sizeof err)) return fail(err);
    rt_linear *l = find_linear(m, argv[3]);
    float *x = l ? read_f32(argv[4], (size_t)(n * l->cols)) : NULL;
    float *xr = x ? malloc((size_t)(n * l->cols) * sizeof *xr) : NULL;
    float *y = xr ? malloc((size_t)(ways * n * l->rows) * sizeof *y) : NULL;
    int rc = y ? 0 : fail(!l ? "no such linear layer" : !x ? "cannot read X" : "out of memory");
    if (!rc && halves && !(l->rotate_input && l->matmul_rotated))
        rc = fail("the layer has no rotate_input and matmul_rotated");
    if (!rc) l->matmul(l, x, y, n);
    if (!rc && halves) {
        l->rotate_input(l, x, xr, n);
        l->matmul_rotated(l, xr, y + (int64_t)n * l->rows, n);
    }
    if (!rc && write_f32(argv[6], y, (size_t)(ways * n * l->rows))) rc = fail("cannot write the output");
    free(x), free(xr), free(y), rt_model_free(m);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "halves")) return products(argc, argv, 1);
    if (argc > 1 && !strcmp(argv[1], "logits")) return logits(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "rows")) return rows(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "matvec")) return products(argc, argv, 0);
    return fail("usage: tool_pack logits|rows|matvec|halves ...");
}
