/*
 * cli/cmd_tokenize.c — `bitplan tokenize MODEL (--text FILE | --string S)`: the
 * token ids the model's own tokenizer gives a text, on one line separated by
 * spaces (or one per line with its piece, --pieces), and the count on stderr.
 * It only reads; it never parses the model file itself (model/ does).
 */
#include "cli.h"
#include "model/model.h"

#include <stdlib.h>
#include <string.h>

static int usage(void)
{
    printf("usage: bitplan tokenize MODEL (--text FILE | --string S) [--bos] [--special] [--pieces]\n"
           "  --text FILE    the text to tokenize (bytes as they are)\n"
           "  --string S     or the text itself\n"
           "  --bos          put the model's BOS token first\n"
           "  --special      recognise special tokens written in the text (e.g. <|im_start|>)\n"
           "  --pieces       one token per line: the id, a tab, the bytes it stands for (escaped)\n");
    return 0;
}

/* The piece with C-style escapes, so that every token is one visible line. */
static void print_piece(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\\') fputs("\\\\", stdout);
        else if (c == '\n') fputs("\\n", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c == '\r') fputs("\\r", stdout);
        else if (c < 0x20 || c == 0x7F) printf("\\x%02x", c);
        else putchar(c);
    }
}

static void print_ids(const tok_tokenizer *t, const int32_t *ids, int64_t n, int pieces)
{
    for (int64_t i = 0; i < n; i++) {
        if (!pieces) { printf(i ? " %d" : "%d", ids[i]); continue; }
        size_t len;
        const char *p = tok_piece(t, ids[i], &len);
        printf("%d\t", ids[i]);
        print_piece(p, len);
        putchar('\n');
    }
    if (!pieces) putchar('\n');
}

static int tokenize(const char *model, const char *text, size_t len, int bos, int special, int pieces)
{
    char err[MDL_ERR_LEN];
    mdl_model *m = NULL;
    int32_t *ids = NULL;
    int rc = 1;
    if (mdl_open(model, &m, err, sizeof err)) { cli_fail("tokenize", "%s", err); goto done; }
    const tok_tokenizer *t = mdl_tokenizer(m, err, sizeof err);
    if (!t) { cli_fail("tokenize", "%s", err); goto done; }
    int64_t n = tok_encode(t, text, len, bos, special, NULL, 0);
    if (n >= 0 && !(ids = malloc((size_t)(n ? n : 1) * sizeof *ids))) { cli_fail("tokenize", "out of memory for %lld tokens", (long long)n); goto done; }
    if (n < 0 || tok_encode(t, text, len, bos, special, ids, n) != n) { cli_fail("tokenize", "encoding failed (out of memory?)"); goto done; }
    print_ids(t, ids, n, pieces);
    if (fflush(stdout)) { cli_fail("tokenize", "cannot write the output"); goto done; }
    fprintf(stderr, "%lld tokens from %zu bytes\n", (long long)n, len);
    rc = 0;
done:
    free(ids);
    if (m) mdl_close(m);
    return rc;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL, *file = NULL, *string = NULL;
    int bos = 0, special = 0, pieces = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return usage();
        else if (!strcmp(a, "--bos")) bos = 1;
        else if (!strcmp(a, "--special")) special = 1;
        else if (!strcmp(a, "--pieces")) pieces = 1;
        else if (!strcmp(a, "--text") || !strcmp(a, "--string")) {
            if (i + 1 >= argc) return cli_fail("tokenize", "%s needs a value", a);
            *(a[2] == 't' ? &file : &string) = argv[++i];
        } else if (a[0] == '-' && a[1]) return cli_fail("tokenize", "unknown option '%s' (see --help)", a);
        else if (!model) model = a;
        else return cli_fail("tokenize", "unexpected argument '%s' (one MODEL only)", a);
    }
    if (!model) return cli_fail("tokenize", "no MODEL given (see --help)");
    if (!file == !string) return cli_fail("tokenize", "give exactly one of --text FILE or --string S");
    if (string) return tokenize(model, string, strlen(string), bos, special, pieces);
    char err[MDL_ERR_LEN];
    size_t len;
    char *text = util_read_file(file, UTIL_MAX_TEXT, &len, err, sizeof err);
    if (!text) return cli_fail("tokenize", "%s", err);
    int rc = tokenize(model, text, len, bos, special, pieces);
    free(text);
    return rc;
}
