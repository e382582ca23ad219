/*
 * model/unicode.h — the little of Unicode the tokenizers need: UTF-8 decoding
 * that never fails (a bad byte is one code point of its own), and the class of a
 * code point as the pre-tokenizer regular expressions see it (\p{L}, \p{N}, \s).
 * Internal to model/. Never allocates; the tables are constant.
 *
 *     uint32_t cp; size_t n = uni_next(s, len, &cp);   // n >= 1 while len > 0
 *     if (uni_class(cp) == UNI_LETTER) ...
 */
#ifndef BITPLAN_UNICODE_H
#define BITPLAN_UNICODE_H

#include <stddef.h>
#include <stdint.h>

typedef enum { UNI_OTHER = 0, UNI_LETTER, UNI_NUMBER, UNI_SPACE } uni_class_t;

/* A code point that stands for one byte of invalid UTF-8: classed UNI_OTHER. */
#define UNI_INVALID 0xFFFFFFFFu

/* Decodes the code point at s[0..len) (len > 0) into *cp; returns its length in
 * bytes (1..4). Overlong forms, surrogates, values past U+10FFFF and truncated
 * sequences give *cp = UNI_INVALID and length 1. */
size_t uni_next(const char *s, size_t len, uint32_t *cp);

/* The class of code point cp (UNI_INVALID is UNI_OTHER). */
uni_class_t uni_class(uint32_t cp);

/* Writes cp as UTF-8 into out[4]; returns 1..4 (cp must be a valid scalar). */
size_t uni_encode(uint32_t cp, char *out);

/* The Unicode version the class tables were generated from, e.g. "14.0.0". */
const char *uni_table_version(void);

#endif
