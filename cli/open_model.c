/*
 * cli/open_model.c — the one way subcommands that run a model (eval, generate)
 * open it: a model file is read by model/ and loaded by runtime/ as dense fp32;
 * a bitplan packed file is loaded by pack/ with packed linear layers.
 * It must never parse a model file itself.
 */
#include "cli.h"

#include "../model/model.h"
#include "../pack/pack.h"
#include "../runtime/runtime.h"

/* Scratch rows per packed layer; larger batches run in pieces (pack_load). */
#define CLI_PACKED_BATCH 512

int cli_open_model(const char *path, rt_model **out, char *err, size_t err_len)
{
    mdl_model *file;
    *out = NULL;
    if (mdl_open(path, &file, err, err_len)) return -1;
    if (mdl_is_packed(file)) return pack_load_file(file, CLI_PACKED_BATCH, out, err, err_len);
    if (rt_model_load_dense(file, 1, out, err, err_len)) {
        mdl_close(file);
        return -1;
    }
    return 0;
}
