/*
 * tests/tool_calib.c — the calibration rows and the held-out end of a text, for
 * tests/test_quantize.py: that `bitplan quantize` checks its result on text that
 * no calibration row read.
 *
 *   tool_calib MODEL ROWS CTX MAX_BYTES HELDOUT_OUT FILE...
 *
 * Prints the rows of calib_load (one line of token ids each) and writes the bytes
 * calib_heldout returns to HELDOUT_OUT. A test tool: the first error ends it with a
 * message on stderr.
 */
#include <stdio.h>
#include <stdlib.h>

#include "measure/measure.h"
#include "model/model.h"

static int die(const char *what, const char *err)
{
    fprintf(stderr, "tool_calib: %s: %s\n", what, err);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 7) return die("usage", "tool_calib MODEL ROWS CTX MAX_BYTES HELDOUT_OUT FILE...");
    char err[1024];
    mdl_model *m;
    if (mdl_open(argv[1], &m, err, sizeof err)) return die("model", err);
    tok_tokenizer *t = mdl_tokenizer(m, err, sizeof err);
    if (!t) return die("tokenizer", err);
    int rows = atoi(argv[2]), ctx = atoi(argv[3]);
    size_t max_bytes = (size_t)atoll(argv[4]);
    const char *const *paths = (const char *const *)argv + 6;
    calib_set c;
    if (calib_load(t, paths, argc - 6, rows, ctx, &c, err, sizeof err)) return die("calib_load", err);
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < ctx; i++) printf("%d%c", c.tokens[(size_t)r * ctx + i], i + 1 < ctx ? ' ' : '\n');
    calib_free(&c);
    char *text;
    size_t len;
    if (calib_heldout(t, paths, argc - 6, rows, ctx, max_bytes, &text, &len, err, sizeof err)) return die("calib_heldout", err);
    FILE *f = fopen(argv[5], "wb");
    if (!f || fwrite(text, 1, len, f) != len || fclose(f)) return die(argv[5], "cannot write");
    free(text);
    mdl_close(m);
    return 0;
}
