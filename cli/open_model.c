/*
 * cli/open_model.c — the one way subcommands that run a model (eval, generate)
 * open it: the file is read by model/ and loaded by runtime/ as dense fp32.
 * It must never parse a model file itself.
 */
#include "cli.h"

#include "../model/model.h"
#include "../runtime/runtime.h"

int cli_open_model(const char *path, rt_model **out, char *err, size_t err_len)
{
    mdl_model *file;
    *out = NULL;
    if (mdl_open(path, &file, err, err_len)) return -1;
    if (rt_model_load_dense(file, 1, out, err, err_len)) {
        mdl_close(file);
        return -1;
    }
    return 0;
}
