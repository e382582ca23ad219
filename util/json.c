/*
 * util/json.c — the JSON parser of util.h: recursive descent over a
 * bounded buffer into a tree of malloc'd nodes.
 *
 * It must never read past text[len), recurse deeper than MAX_DEPTH, or accept
 * malformed input silently (bad escapes, control characters in strings, trailing
 * garbage). Errors name the byte offset.
 */
#include "util/util.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64

typedef struct {
    const char *s;
    size_t len, pos;
    char *err;
    size_t err_len;
    int failed;
} parser;

static int fail(parser *p, const char *what)
{
    if (!p->failed) snprintf(p->err, p->err_len, "offset %zu: %s", p->pos, what);
    p->failed = 1;
    return -1;
}

static void skip_ws(parser *p)
{
    while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

static int literal(parser *p, const char *word)
{
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n)) return fail(p, "invalid literal");
    p->pos += n;
    return 0;
}

/* ==== Strings ==== */

static int hex4(parser *p, unsigned *out)
{
    if (p->len - p->pos < 4) return fail(p, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->pos++];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return fail(p, "bad hex digit in \\u escape");
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static int unicode_escape(parser *p, char *o, size_t *n)
{
    unsigned cp, lo;
    if (hex4(p, &cp)) return -1;
    if (cp >= 0xD800 && cp < 0xDC00) {
        if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') return fail(p, "lone high surrogate");
        p->pos += 2;
        if (hex4(p, &lo)) return -1;
        if (lo < 0xDC00 || lo > 0xDFFF) return fail(p, "bad low surrogate");
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    } else if (cp >= 0xDC00 && cp < 0xE000) {
        return fail(p, "lone low surrogate");
    }
    *n += put_utf8(o + *n, cp);
    return 0;
}

static int escape(parser *p, char *o, size_t *n)
{
    if (p->pos >= p->len) return fail(p, "truncated escape");
    char c = p->s[p->pos++];
    const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
    const char *k = c ? strchr(from, c) : NULL;
    if (k) { o[(*n)++] = to[k - from]; return 0; }
    if (c == 'u') return unicode_escape(p, o, n);
    return fail(p, "bad escape");
}

/* Decoded strings are never longer than raw ones; the first guess of the length
 * (up to the next quote) grows when escaped quotes make it short. */
static int parse_string(parser *p, char **out, size_t *out_len)
{
    p->pos++; /* opening quote */
    const char *q = memchr(p->s + p->pos, '"', p->len - p->pos);
    size_t cap = (q ? (size_t)(q - p->s) - p->pos : p->len - p->pos) + 8; /* bytes allocated */
    char *o = malloc(cap);
    size_t n = 0;
    if (!o) return fail(p, "out of memory");
    for (;;) {
        if (p->pos >= p->len) { free(o); return fail(p, "unterminated string"); }
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c == '"') { p->pos++; break; }
        if (c < 0x20) { free(o); return fail(p, "control character in string"); }
        if (cap - n < 5) { /* room for one code point and the NUL */
            char *no = realloc(o, 2 * cap);
            if (!no) { free(o); return fail(p, "out of memory"); }
            o = no;
            cap *= 2;
        }
        if (c == '\\') {
            p->pos++;
            if (escape(p, o, &n)) { free(o); return -1; }
        } else {
            o[n++] = (char)c;
            p->pos++;
        }
    }
    o[n] = 0;
    *out = o;
    *out_len = n;
    return 0;
}

/* ==== Numbers ==== */

static int parse_number(parser *p, util_json *v)
{
    size_t start = p->pos;
    int is_int = 1;
    if (p->pos < p->len && p->s[p->pos] == '-') p->pos++;
    size_t digits = p->pos;
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    if (p->pos == digits) return fail(p, "bad number");
    if (p->pos < p->len && p->s[p->pos] == '.') {
        is_int = 0;
        size_t f = ++p->pos;
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
        if (p->pos == f) return fail(p, "bad fraction");
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        is_int = 0;
        p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
        size_t e = p->pos;
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
        if (p->pos == e) return fail(p, "bad exponent");
    }
    char buf[64];
    size_t n = p->pos - start;
    if (n >= sizeof buf) return fail(p, "number too long");
    memcpy(buf, p->s + start, n);
    buf[n] = 0;
    v->type = UTIL_JSON_NUM;
    v->num = strtod(buf, NULL);
    v->is_int = is_int;
    return 0;
}

/* ==== Arrays and objects ==== */

static int parse_value(parser *p, util_json *v, int depth);

static int push(parser *p, util_json *v, int *cap)
{
    if (v->n < *cap) return 0;
    int nc = *cap ? 2 * *cap : 4;
    util_json *ni = realloc(v->items, (size_t)nc * sizeof *ni);
    if (!ni) return fail(p, "out of memory");
    v->items = ni;
    if (v->type == UTIL_JSON_OBJ) {
        char **nk = realloc(v->keys, (size_t)nc * sizeof *nk);
        if (!nk) return fail(p, "out of memory");
        v->keys = nk;
    }
    *cap = nc;
    return 0;
}

static int parse_members(parser *p, util_json *v, int depth, char close)
{
    int cap = 0;
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) { p->pos++; return 0; }
    for (;;) {
        if (push(p, v, &cap)) return -1;
        util_json *item = &v->items[v->n];
        memset(item, 0, sizeof *item);
        if (v->type == UTIL_JSON_OBJ) {
            size_t klen;
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != '"') return fail(p, "expected a key");
            if (parse_string(p, &v->keys[v->n], &klen)) return -1;
            v->n++; /* key owned from here on, even if the value fails */
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') return fail(p, "expected ':'");
            p->pos++;
            if (parse_value(p, item, depth + 1)) return -1;
        } else {
            v->n++;
            if (parse_value(p, item, depth + 1)) return -1;
        }
        skip_ws(p);
        if (p->pos >= p->len) return fail(p, "unterminated array or object");
        char c = p->s[p->pos++];
        if (c == close) return 0;
        if (c != ',') { p->pos--; return fail(p, "expected ',' or a closing bracket"); }
    }
}

static int parse_value(parser *p, util_json *v, int depth)
{
    if (depth > MAX_DEPTH) return fail(p, "nesting too deep");
    skip_ws(p);
    if (p->pos >= p->len) return fail(p, "unexpected end");
    switch (p->s[p->pos]) {
    case '{': v->type = UTIL_JSON_OBJ; return parse_members(p, v, depth, '}');
    case '[': v->type = UTIL_JSON_ARR; return parse_members(p, v, depth, ']');
    case '"': v->type = UTIL_JSON_STR; return parse_string(p, &v->str, &v->len);
    case 't': v->type = UTIL_JSON_BOOL; v->boolean = 1; return literal(p, "true");
    case 'f': v->type = UTIL_JSON_BOOL; return literal(p, "false");
    case 'n': v->type = UTIL_JSON_NULL; return literal(p, "null");
    default: return parse_number(p, v);
    }
}

static void free_inside(util_json *v)
{
    for (int i = 0; i < v->n; i++) {
        free_inside(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->str);
}

util_json *util_json_parse(const char *text, size_t len, char *err, size_t err_len)
{
    parser p = {text, len, 0, err, err_len, 0};
    util_json *root = calloc(1, sizeof *root);
    if (!root) { snprintf(err, err_len, "out of memory"); return NULL; }
    if (parse_value(&p, root, 0) == 0) {
        skip_ws(&p);
        if (p.pos == p.len) return root;
        fail(&p, "trailing characters");
    }
    util_json_free(root);
    return NULL;
}

void util_json_free(util_json *v)
{
    if (!v) return;
    free_inside(v);
    free(v);
}

/* ==== Lookups ==== */

const util_json *util_json_get(const util_json *v, const char *key)
{
    if (!v || v->type != UTIL_JSON_OBJ) return NULL;
    for (int i = 0; i < v->n; i++)
        if (!strcmp(v->keys[i], key)) return &v->items[i];
    return NULL;
}

int util_json_int(const util_json *obj, const char *key, int def)
{
    const util_json *v = util_json_get(obj, key);
    if (!v || v->type != UTIL_JSON_NUM || v->num < -2147483648.0 || v->num > 2147483647.0) return def;
    return (int)v->num;
}

double util_json_num(const util_json *obj, const char *key, double def)
{
    const util_json *v = util_json_get(obj, key);
    return v && v->type == UTIL_JSON_NUM ? v->num : def;
}

const char *util_json_str(const util_json *obj, const char *key)
{
    const util_json *v = util_json_get(obj, key);
    return v && v->type == UTIL_JSON_STR ? v->str : NULL;
}
