/*
 * cli/cmd_inspect.c — `bitplan inspect MODEL [--hash]`: what a model file holds.
 * Prints the architecture and config, a table of tensors (name, dtype, shape),
 * parameter counts per class (embeddings, attention, MLP, norms), and the file's
 * size and bits per weight. It only reads; it never writes anything.
 */
#include "cli.h"
#include "model/model.h"

#include <string.h>

enum { CLASS_EMBD, CLASS_ATTN, CLASS_MLP, CLASS_NORM, CLASS_OTHER, CLASS_COUNT };
static const char *class_names[CLASS_COUNT] = {"embeddings", "attention", "MLP", "norms", "other"};

static int tensor_class(const char *name)
{
    if (!strcmp(name, "token_embd.weight") || !strcmp(name, "output.weight")) return CLASS_EMBD;
    if (strstr(name, "norm")) return CLASS_NORM;
    if (strstr(name, ".attn_")) return CLASS_ATTN;
    if (strstr(name, ".ffn_")) return CLASS_MLP;
    return CLASS_OTHER;
}

static void print_config(const mdl_model *m)
{
    static const char *scaling[] = {"none", "linear", "yarn", "llama3"};
    const mdl_config *c = mdl_get_config(m);
    printf("model:   %s (%s)\n", mdl_path(m), mdl_format(m));
    if (c->name[0]) printf("name:    %s\n", c->name);
    printf("arch:    %s, %d layers, dim %d, ffn %d, heads %d (kv %d, head_dim %d), vocab %d, context %d\n", c->arch,
           c->n_layers, c->dim, c->hidden_dim, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab_size, c->max_ctx);
    printf("rope:    base %g, %d dims, scaling %s", c->rope_theta, c->rope_dim, scaling[c->rope_scaling]);
    if (c->rope_scaling) printf(" x%g", c->rope_scale);
    printf("\nnorm:    RMS, eps %g; embeddings %s; q/k/v bias %s\n\n", c->norm_eps, c->tied_embeddings ? "tied" : "separate",
           c->attn_bias ? "yes" : "no");
}

static void print_tensors(const mdl_model *m)
{
    printf("%-40s %-5s %s\n", "tensor", "dtype", "shape");
    for (int i = 0; i < mdl_tensor_count(m); i++) {
        const mdl_tensor *t = mdl_tensor_at(m, i);
        char shape[96];
        size_t k = (size_t)snprintf(shape, sizeof shape, "[");
        for (int d = 0; d < t->n_dims; d++) k += (size_t)snprintf(shape + k, sizeof shape - k, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
        snprintf(shape + k, sizeof shape - k, "]");
        printf("%-40s %-5s %s\n", t->name, mdl_dtype_name(t->type), shape);
    }
    printf("\n");
}

static void print_counts(const mdl_model *m)
{
    int64_t per[CLASS_COUNT] = {0}, total = 0, data_bytes = 0;
    for (int i = 0; i < mdl_tensor_count(m); i++) {
        const mdl_tensor *t = mdl_tensor_at(m, i);
        per[tensor_class(t->name)] += t->n_elems;
        total += t->n_elems;
        data_bytes += (int64_t)t->n_bytes;
    }
    printf("parameters: %lld (%d tensors)\n", (long long)total, mdl_tensor_count(m));
    for (int c = 0; c < CLASS_COUNT; c++)
        if (per[c] || c != CLASS_OTHER)
            printf("  %-11s %12lld  %5.1f%%\n", class_names[c], (long long)per[c], total ? 100.0 * (double)per[c] / (double)total : 0.0);
    int64_t file = mdl_file_bytes(m);
    printf("file:       %lld bytes (%.2f MiB), %.3f bits per weight (tensor data alone: %.3f)\n", (long long)file,
           (double)file / 1048576.0, total ? 8.0 * (double)file / (double)total : 0.0,
           total ? 8.0 * (double)data_bytes / (double)total : 0.0);
}

int cmd_inspect(int argc, char **argv)
{
    const char *path = NULL;
    int hash = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: bitplan inspect MODEL [--hash]\n"
                   "  MODEL   a .gguf, a .safetensors, a model.safetensors.index.json, or a folder\n"
                   "  --hash  also print the SHA-256 of the model's file(s)\n");
            return 0;
        }
        if (!strcmp(argv[i], "--hash")) hash = 1;
        else if (argv[i][0] == '-') return cli_fail("inspect", "unknown option '%s'", argv[i]);
        else if (path) return cli_fail("inspect", "one model at a time ('%s' and '%s')", path, argv[i]);
        else path = argv[i];
    }
    if (!path) return cli_fail("inspect", "missing MODEL (see bitplan inspect --help)");
    mdl_model *m;
    char err[MDL_ERR_LEN];
    if (mdl_open(path, &m, err, sizeof err)) return cli_fail("inspect", "%s", err);
    print_config(m);
    print_tensors(m);
    print_counts(m);
    if (hash) printf("sha256:     %s\n", mdl_content_hash(m));
    mdl_close(m);
    return 0;
}
