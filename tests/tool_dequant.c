/*
 * tests/tool_dequant.c — what bitplan's model reader sees, for the pytest
 * cross-checks (tests/test_gguf.py) to compare with gguf-py and numpy.
 *
 *   tool_dequant MODEL NAME OUT.f32    tensor NAME as raw float32 (after the q/k
 *                                      RoPE row permutation, as the runtime sees it)
 *   tool_dequant MODEL --config        the mdl_config, one "key value" a line
 *   tool_dequant MODEL --tensors       "name dtype d0,d1,... permute" a line
 *   tool_dequant MODEL --meta KEY      a metadata value (int, else float, else string)
 *   tool_dequant MODEL --hash          the content hash
 *
 * Errors: one line on stderr, exit 1. It never writes anything but OUT.
 */
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_config(const mdl_config *c)
{
    printf("arch %s\nname %s\nn_layers %d\ndim %d\nhidden_dim %d\nn_heads %d\nn_kv_heads %d\nhead_dim %d\n", c->arch, c->name,
           c->n_layers, c->dim, c->hidden_dim, c->n_heads, c->n_kv_heads, c->head_dim);
    printf("vocab_size %d\nmax_ctx %d\nrope_theta %.9g\nrope_dim %d\nrope_scaling %d\nrope_scale %.9g\nnorm_eps %.9g\n",
           c->vocab_size, c->max_ctx, c->rope_theta, c->rope_dim, (int)c->rope_scaling, c->rope_scale, c->norm_eps);
    printf("tied_embeddings %d\nattn_bias %d\n", c->tied_embeddings, c->attn_bias);
}

static void print_tensors(const mdl_model *m)
{
    for (int i = 0; i < mdl_tensor_count(m); i++) {
        const mdl_tensor *t = mdl_tensor_at(m, i);
        printf("%s %s ", t->name, mdl_dtype_name(t->type));
        for (int d = 0; d < t->n_dims; d++) printf("%s%lld", d ? "," : "", (long long)t->shape[d]);
        printf(" %d\n", t->permute_rope_heads);
    }
}

static int print_meta(const mdl_model *m, const char *key)
{
    int64_t i;
    double f;
    const char *s;
    if (!mdl_meta_int(m, key, &i)) printf("%lld\n", (long long)i);
    else if (!mdl_meta_float(m, key, &f)) printf("%.17g\n", f);
    else if (!mdl_meta_str(m, key, &s)) printf("%s\n", s);
    else { fprintf(stderr, "tool_dequant: no metadata '%s'\n", key); return 1; }
    return 0;
}

static int dump(const mdl_model *m, const char *name, const char *out)
{
    const mdl_tensor *t = mdl_find(m, name);
    if (!t) { fprintf(stderr, "tool_dequant: no tensor '%s'\n", name); return 1; }
    float *w = malloc((size_t)t->n_elems * sizeof *w);
    FILE *f = w ? fopen(out, "wb") : NULL;
    int rc = !f || mdl_tensor_to_f32(m, t, w) || fwrite(w, sizeof *w, (size_t)t->n_elems, f) != (size_t)t->n_elems;
    if (f && fclose(f)) rc = 1;
    if (rc) fprintf(stderr, "tool_dequant: cannot write '%s' as float32 to %s\n", name, out);
    free(w);
    return rc;
}

int main(int argc, char **argv)
{
    mdl_model *m;
    char err[MDL_ERR_LEN];
    if (argc < 3) {
        fprintf(stderr, "usage: tool_dequant MODEL (NAME OUT.f32 | --config | --tensors | --meta KEY | --hash)\n");
        return 2;
    }
    if (mdl_open(argv[1], &m, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
    int rc = 0;
    if (!strcmp(argv[2], "--config")) print_config(mdl_get_config(m));
    else if (!strcmp(argv[2], "--tensors")) print_tensors(m);
    else if (!strcmp(argv[2], "--hash")) printf("%s\n", mdl_content_hash(m));
    else if (!strcmp(argv[2], "--meta") && argc > 3) rc = print_meta(m, argv[3]);
    else if (argc > 3) rc = dump(m, argv[2], argv[3]);
    else { fprintf(stderr, "tool_dequant: bad arguments\n"); rc = 2; }
    mdl_close(m);
    return rc;
}
