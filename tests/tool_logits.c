/*
 * tests/tool_logits.c — writes the logits bitplan computes for given token ids,
 * for tests/test_forward.py (which checks them against an independent NumPy
 * forward pass).
 *
 *   tool_logits [--resident | --one-by-one | --int8] MODEL OUT.f32 ID...
 *
 * writes raw float32 logits [n_ids][vocab], one batch. By default the weights stay in
 * the file's type and are decoded per product (runtime/stored.c); --resident
 * decodes them all to fp32 first, so a test can compare the two. MODEL may be a
 * packed file (pack/), loaded as evaluation loads it (PACK_LOAD_EXACT); --one-by-one
 * then runs the ids as n batches of one token, as generation does (the lookup-table
 * kernels' path, runtime/qkernels.h), and --int8 loads it as generation does, so a
 * batch of 64 or more takes the int8 kernels where they are faster.
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
    fprintf(stderr, "tool_logits: %s\n", msg);
    return 1;
}

int main(int argc, char **argv)
{
    int resident = argc > 1 && !strcmp(argv[1], "--resident");
    int one_by_one = argc > 1 && !strcmp(argv[1], "--one-by-one");
    int int8 = argc > 1 && !strcmp(argv[1], "--int8");
    argc -= resident + one_by_one + int8, argv += resident + one_by_one + int8;
    if (argc < 4) return fail("usage: tool_logits [--resident | --one-by-one | --int8] MODEL OUT.f32 ID...");
    char err[512];
    mdl_model *f;
    rt_model *m;
    int n = argc - 3;
    if (pack_is_packed(argv[1])) {
        if (pack_load(argv[1], n, int8 ? 0 : PACK_LOAD_EXACT, &m, err, sizeof err)) return fail(err);
    } else {
        if (mdl_open(argv[1], &f, err, sizeof err)) return fail(err);
        if (rt_model_open(f, 1, resident ? RT_OPEN_RESIDENT : 0, &m, err, sizeof err)) { mdl_close(f); return fail(err); }
    }
    int vocab = m->cfg.vocab_size;
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    float *logits = malloc((size_t)n * vocab * sizeof *logits);
    rt_state *s = rt_state_new(m, n, n);
    if (!ids || !logits || !s) return fail("out of memory");
    for (int i = 0; i < n; i++) ids[i] = atoi(argv[3 + i]);
    for (int i = 0; i < (one_by_one ? n : 1); i++)
        if (one_by_one ? rt_forward(m, s, ids + i, 1, i, logits + (size_t)i * vocab) : rt_forward(m, s, ids, n, 0, logits))
            return fail("a token id is outside the vocabulary");
    FILE *out = fopen(argv[2], "wb");
    if (!out || fwrite(logits, sizeof *logits, (size_t)n * vocab, out) != (size_t)n * vocab || fclose(out))
        return fail("cannot write the output file");
    rt_state_free(s);
    rt_model_free(m);
    free(ids);
    free(logits);
    return 0;
}
