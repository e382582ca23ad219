/*
 * tests/tool_ggml.c — layout/ggml.c's quantizer and decoder on raw files, for the
 * pytest cross-checks (tests/test_ggml.py) against gguf-py.
 *
 *   tool_ggml quantize TYPE ROWS COLS X.f32 IMP.f32|- OUT.bin
 *       rows of X (float32 [ROWS][COLS]) quantized to TYPE ("Q4_K") with the
 *       importance IMP (float32 [COLS], one per column, or - for none); OUT gets
 *       ROWS x lay_ggml_row_bytes(TYPE, COLS) bytes
 *   tool_ggml decode TYPE ROWS COLS IN.bin OUT.f32
 *       the blocks of IN decoded to float32 [ROWS][COLS]
 *
 * Errors: one line on stderr, exit 1. It never writes anything but OUT.
 */
#include "layout/layout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The whole file at path, which must hold exactly n bytes; NULL (and a message) if not. */
static void *read_exact(const char *path, size_t n)
{
    FILE *f = fopen(path, "rb");
    void *p = malloc(n ? n : 1);
    int ok = f && p && fread(p, 1, n, f) == n && fgetc(f) == EOF;
    if (f) fclose(f);
    if (!ok) {
        fprintf(stderr, "tool_ggml: cannot read %zu bytes from %s\n", n, path);
        free(p);
        return NULL;
    }
    return p;
}

static int write_all(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(p, 1, n, f) == n;
    if (f && fclose(f)) ok = 0;
    if (!ok) fprintf(stderr, "tool_ggml: cannot write %s\n", path);
    return ok ? 0 : 1;
}

static int quantize(int type, int64_t rows, int64_t cols, char **argv)
{
    int64_t rb = lay_ggml_row_bytes(type, cols);
    float *x = read_exact(argv[0], (size_t)(rows * cols) * sizeof *x);
    float *imp = strcmp(argv[1], "-") ? read_exact(argv[1], (size_t)cols * sizeof *imp) : NULL;
    uint8_t *out = malloc((size_t)(rows * rb));
    int rc = 1;
    if (x && out && (imp || !strcmp(argv[1], "-"))) {
#pragma omp parallel for schedule(dynamic, 8)
        for (int64_t r = 0; r < rows; r++) lay_ggml_quantize_row(type, x + r * cols, imp, out + r * rb, cols);
        rc = write_all(argv[2], out, (size_t)(rows * rb));
    }
    free(x), free(imp), free(out);
    return rc;
}

static int decode(int type, int64_t rows, int64_t cols, char **argv)
{
    int64_t rb = lay_ggml_row_bytes(type, cols);
    uint8_t *in = read_exact(argv[0], (size_t)(rows * rb));
    float *y = malloc((size_t)(rows * cols) * sizeof *y);
    int rc = 1;
    if (in && y) {
        for (int64_t r = 0; r < rows; r++) lay_ggml_decode_row(type, in + r * rb, y + r * cols, cols);
        rc = write_all(argv[1], y, (size_t)(rows * cols) * sizeof *y);
    }
    free(in), free(y);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 7) {
        fprintf(stderr, "usage: tool_ggml quantize TYPE ROWS COLS X.f32 IMP.f32|- OUT.bin\n"
                        "       tool_ggml decode TYPE ROWS COLS IN.bin OUT.f32\n");
        return 2;
    }
    int type = lay_ggml_type_by_name(argv[2]);
    long long rows = atoll(argv[3]), cols = atoll(argv[4]);
    const lay_ggml_traits *t = lay_ggml_traits_of(type);
    if (!t || rows <= 0 || cols <= 0 || cols % t->block) {
        fprintf(stderr, "tool_ggml: bad type '%s' or shape %lld x %lld\n", argv[2], rows, cols);
        return 1;
    }
    if (!strcmp(argv[1], "quantize") && argc == 8) return quantize(type, rows, cols, argv + 5);
    if (!strcmp(argv[1], "decode") && argc == 7) return decode(type, rows, cols, argv + 5);
    fprintf(stderr, "tool_ggml: bad arguments\n");
    return 2;
}
