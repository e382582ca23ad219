/*
 * tests/fuzz/fuzz_json.c — feeds any bytes to util/json.c (util_json_parse), the
 * parser behind safetensors headers, config.json, tokenizer.json and a packed
 * file's metadata.
 *
 * Beyond "no crash, no read past the buffer" (libFuzzer hands over a buffer of
 * exactly the input's size, so ASan sees any over-read) it checks, for every
 * input the parser accepts:
 *   - round trip: the tree written back as JSON (by the small writer below, which
 *     is not model/'s) parses again, into the same tree: the same types, numbers
 *     (bit for bit, integers staying integers), strings (embedded NULs included),
 *     keys in the same order;
 *   - the writer's output is a fixed point: writing the second tree gives the same
 *     bytes;
 *   - the lookups agree with the tree: util_json_get finds the first of duplicate
 *     keys, util_json_str / util_json_num / util_json_int return its value or the
 *     default as the types say.
 */
#include "util/util.h"
#include "tests/fuzz/fuzz_util.h"

#include <math.h>
#include <stdint.h>

/* ==== A writer, independent of the parser ==== */

typedef struct {
    char *s;
    size_t n, cap;
} out_buf;

static void put(out_buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = 2 * (b->n + n + 1);
        b->s = realloc(b->s, b->cap);
        FUZZ_CHECK(b->s != NULL, "out of memory");
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void put_str(out_buf *b, const char *s, size_t n)
{
    put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '"' || c == '\\') esc[0] = '\\', esc[1] = (char)c, put(b, esc, 2);
        else if (c < 0x20) put(b, esc, (size_t)snprintf(esc, sizeof esc, "\\u%04x", c));
        else put(b, (const char *)&s[i], 1);
    }
    put(b, "\"", 1);
}

/* Integers below 2^53 as integers (they stay is_int); other numbers with 17
 * significant digits, which give the same double back, and a fraction or an
 * exponent; infinities (from numbers like 1e999) as a number too large for a
 * double. */
static void put_num(out_buf *b, const util_json *v)
{
    char t[64];
    if (isinf(v->num)) snprintf(t, sizeof t, "%s1e999", v->num < 0 ? "-" : "");
    else if (v->is_int && fabs(v->num) < 9007199254740992.0) snprintf(t, sizeof t, "%.0f", v->num);
    else snprintf(t, sizeof t, "%.17g", v->num);
    if (!v->is_int && !strpbrk(t, ".eE")) strcat(t, ".0"); /* 10000.0 stays a float */
    put(b, t, strlen(t));
}

static void put_value(out_buf *b, const util_json *v)
{
    switch (v->type) {
    case UTIL_JSON_NULL: put(b, "null", 4); break;
    case UTIL_JSON_BOOL: v->boolean ? put(b, "true", 4) : put(b, "false", 5); break;
    case UTIL_JSON_NUM: put_num(b, v); break;
    case UTIL_JSON_STR: put_str(b, v->str, v->len); break;
    case UTIL_JSON_ARR:
    case UTIL_JSON_OBJ:
        put(b, v->type == UTIL_JSON_ARR ? "[" : "{", 1);
        for (int i = 0; i < v->n; i++) {
            if (i) put(b, ",", 1);
            if (v->type == UTIL_JSON_OBJ) put_str(b, v->keys[i], strlen(v->keys[i])), put(b, ":", 1);
            put_value(b, &v->items[i]);
        }
        put(b, v->type == UTIL_JSON_ARR ? "]" : "}", 1);
        break;
    }
}

/* ==== Comparing trees ==== */

static int same_num(const util_json *a, const util_json *b)
{
    if (a->num != b->num || signbit(a->num) != signbit(b->num)) return 0;
    /* an integer of 2^53 or more is written as a float: only its value must hold */
    return a->is_int == b->is_int || fabs(a->num) >= 9007199254740992.0;
}

static int same_tree(const util_json *a, const util_json *b)
{
    if (a->type != b->type) return 0;
    switch (a->type) {
    case UTIL_JSON_NULL: return 1;
    case UTIL_JSON_BOOL: return a->boolean == b->boolean;
    case UTIL_JSON_NUM: return same_num(a, b);
    case UTIL_JSON_STR: return a->len == b->len && !memcmp(a->str, b->str, a->len) && !a->str[a->len];
    default: break;
    }
    if (a->n != b->n) return 0;
    for (int i = 0; i < a->n; i++) {
        if (a->type == UTIL_JSON_OBJ && strcmp(a->keys[i], b->keys[i])) return 0;
        if (!same_tree(&a->items[i], &b->items[i])) return 0;
    }
    return 1;
}

/* The lookups against a walk of the object's members. */
static void check_lookups(const util_json *o)
{
    for (int i = 0; o->type == UTIL_JSON_OBJ && i < o->n; i++) {
        const util_json *first = util_json_get(o, o->keys[i]), *v = first;
        FUZZ_CHECK(first && first <= &o->items[i], "key '%s' found after its first place", o->keys[i]);
        const char *s = util_json_str(o, o->keys[i]);
        FUZZ_CHECK(v->type == UTIL_JSON_STR ? s == v->str : s == NULL, "util_json_str('%s')", o->keys[i]);
        double d = util_json_num(o, o->keys[i], 0.5);
        FUZZ_CHECK(v->type == UTIL_JSON_NUM ? d == v->num || (isnan(d) && isnan(v->num)) : d == 0.5, "util_json_num('%s')", o->keys[i]);
        int k = util_json_int(o, o->keys[i], -7);
        if (v->type != UTIL_JSON_NUM) FUZZ_CHECK(k == -7, "util_json_int('%s') of a non-number", o->keys[i]);
        else if (v->num >= -2147483648.0 && v->num <= 2147483647.0) FUZZ_CHECK(k == (int)v->num, "util_json_int('%s')", o->keys[i]);
    }
    FUZZ_CHECK(o->type == UTIL_JSON_OBJ || util_json_get(o, "") == NULL, "util_json_get on a non-object");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[128], err2[128];
    util_json *a = util_json_parse((const char *)data, size, err, sizeof err);
    if (!a) {
        FUZZ_CHECK(!strncmp(err, "offset ", 7), "error without an offset: %s", err);
        return 0;
    }
    check_lookups(a);
    out_buf w1 = {0}, w2 = {0};
    put_value(&w1, a);
    util_json *b = util_json_parse(w1.s, w1.n, err2, sizeof err2);
    FUZZ_CHECK(b != NULL, "the written tree does not parse: %s", err2);
    FUZZ_CHECK(same_tree(a, b), "the written tree parses into another tree");
    put_value(&w2, b);
    FUZZ_CHECK(w1.n == w2.n && !memcmp(w1.s, w2.s, w1.n), "writing is not a fixed point");
    util_json_free(a);
    util_json_free(b);
    free(w1.s);
    free(w2.s);
    return 0;
}
