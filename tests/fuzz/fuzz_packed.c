/*
 * tests/fuzz/fuzz_packed.c — feeds any bytes, as a bitplan packed file (a
 * safetensors file whose __metadata__ says "format": "bitplan-packed",
 * pack/FORMAT.md), to mdl_open (model/safetensors.c, model/packed_meta.c's config),
 * to the metadata readers mdl_packed_plan and mdl_packed_options
 * (model/packed_plan.c, model/packed_meta.c), to the tokenizer of its "tokenizer"
 * metadata, and to pack_load_file (pack/load.c), which builds the runnable model.
 *
 * Beyond "no crash" it checks: an opened file's tensors are consistent
 * (fuzz_util.h, as for any model file); the options come back sorted by tensor
 * name with no name twice, each with widths and group inside their ranges; the
 * tokenizer encodes into ids inside its vocabulary; and a model that loads has the
 * file's configuration, a layer for every block, and every linear layer with the
 * shape the configuration implies.
 */
#include "pack/pack.h"
#include "runtime/runtime.h"
#include "tests/fuzz/fuzz_util.h"

#include <stdint.h>

static void check_options(const mdl_model *m)
{
    mdl_packed_option *o;
    int n;
    char err[MDL_ERR_LEN];
    if (mdl_packed_options(m, &o, &n, err, sizeof err)) {
        fuzz_rejected(err);
        return;
    }
    for (int i = 0; i < n; i++) {
        FUZZ_CHECK(i == 0 || strcmp(o[i - 1].tensor, o[i].tensor) < 0, "options not sorted or twice: '%s'", o[i].tensor);
        FUZZ_CHECK(o[i].opt.group >= 0 && o[i].bits >= 0 && o[i].opt.hi_share == o[i].opt.hi_share,
                   "option '%s' out of range", o[i].tensor);
    }
    free(o);
}

/* The shapes pack/load.c promises: those of the configuration. */
static void check_loaded(const rt_model *r, const mdl_config *c)
{
    int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    const int64_t shape[LAY_HEAD][2] = {{q, c->dim}, {kv, c->dim}, {kv, c->dim}, {c->dim, q},
                                       {c->hidden_dim, c->dim}, {c->hidden_dim, c->dim}, {c->dim, c->hidden_dim}};
    FUZZ_CHECK(!memcmp(&r->cfg, c, sizeof *c), "the loaded model's config is not the file's");
    FUZZ_CHECK(r->embed->rows == c->vocab_size && r->embed->cols == c->dim, "embedding %lldx%lld", (long long)r->embed->rows,
               (long long)r->embed->cols);
    FUZZ_CHECK(r->head->rows == c->vocab_size && r->head->cols == c->dim, "head");
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < LAY_HEAD; k++)
            FUZZ_CHECK(r->layers[l].lin[k]->rows == shape[k][0] && r->layers[l].lin[k]->cols == shape[k][1],
                       "layer %d linear %d is %lldx%lld", l, k, (long long)r->layers[l].lin[k]->rows,
                       (long long)r->layers[l].lin[k]->cols);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[128], err[MDL_ERR_LEN];
    mdl_model *m;
    fuzz_write("in.bin", data, size, path, sizeof path);
    if (mdl_open(path, &m, err, sizeof err)) {
        fuzz_rejected(err);
        return 0;
    }
    mdl_packed_plan_info plan;
    if (mdl_packed_plan(m, &plan, err, sizeof err)) fuzz_rejected(err);
    if (!mdl_is_packed(m)) {
        mdl_close(m);
        return 0;
    }
    fuzz_check_model(m);
    check_options(m);
    fuzz_check_tokenizer(m);
    mdl_config c = *mdl_get_config(m);
    rt_model *r;
    if (pack_load_file(m, 4, 0, &r, err, sizeof err)) { /* closes m */
        fuzz_rejected(err);
        return 0;
    }
    check_loaded(r, &c);
    rt_model_free(r);
    return 0;
}
