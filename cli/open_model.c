/*
 * cli/open_model.c — the one way subcommands that run a model (eval, generate)
 * open it: a model file is read by model/ and opened by runtime/ over its
 * mapping (weights stay in their stored type and are decoded per product, or,
 * for a model whose fp32 copy is small next to the free memory, decoded once,
 * unless BITPLAN_STREAM=1 is in the environment); a bitplan packed file is
 * loaded by pack/ with packed linear layers.
 * It must never parse a model file itself.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "pack/pack.h"
#include "runtime/runtime.h"

/* Scratch rows per packed layer; larger batches run in pieces (pack_load). */
#define CLI_PACKED_BATCH 512

/* MemAvailable of /proc/meminfo in bytes, 0 if unknown. */
static int64_t available_memory(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    long long kib = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lld kB", &kib) == 1) break;
    if (f) fclose(f);
    return (int64_t)kib * 1024;
}

/* Bytes of the model's matrices as fp32. */
static int64_t fp32_bytes(const mdl_model *file)
{
    int64_t n = 0;
    for (int i = 0; i < mdl_tensor_count(file); i++) {
        const mdl_tensor *t = mdl_tensor_at(file, i);
        if (t->n_dims == 2 && t->type < MDL_I32) n += t->n_elems * 4;
    }
    return n;
}

int cli_open_model(const char *path, int exact, rt_model **out, char *err, size_t err_len)
{
    mdl_model *file;
    *out = NULL;
    if (mdl_open(path, &file, err, err_len)) return -1;
    if (mdl_is_packed(file)) return pack_load_file(file, CLI_PACKED_BATCH, exact ? PACK_LOAD_EXACT : 0, out, err, err_len);
    const char *stream = getenv("BITPLAN_STREAM"); /* 1: never decode up front (tests, benchmarks) */
    int resident = !(stream && !strcmp(stream, "1")) && fp32_bytes(file) < available_memory() / 4;
    if (rt_model_open(file, 1, resident ? RT_OPEN_RESIDENT : 0, out, err, err_len)) {
        mdl_close(file);
        return -1;
    }
    return 0;
}
