/*
 * tests/fuzz/fuzz_safetensors.c — feeds a Hugging Face model folder to mdl_open
 * (model/: safetensors.c, the config.json reader and config.c's checks) and to the
 * tokenizer of its tokenizer.json (model_tok.c, tokenizer.c). One input is up to
 * three files, separated by the line FUZZ_SEP (fuzz_util.h):
 *
 *     config.json FUZZ_SEP model.safetensors [FUZZ_SEP tokenizer.json]
 *
 * (an input without the separator is model.safetensors alone, with no config.json).
 *
 * Beyond "no crash" it checks, for every folder mdl_open accepts (fuzz_util.h):
 * each tensor's element and byte counts follow from its shape and dtype and fit
 * in the file, every name finds its tensor, the configuration has no zero size,
 * the first and last row of every weight decode (q/k rows through the RoPE
 * permutation); and a tokenizer built from tokenizer.json encodes into ids inside
 * the vocabulary, the same count with a short buffer as with a long one.
 */
#include "tests/fuzz/fuzz_util.h"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *names[3] = {"config.json", "model.safetensors", "tokenizer.json"};
    size_t off[3], len[3];
    char path[128], err[MDL_ERR_LEN];
    int n = fuzz_split(data, size, 3, off, len);
    if (n == 1) off[1] = off[0], len[1] = len[0];
    for (int i = 0; i < 3; i++) {
        if ((n == 1 && i != 1) || i >= (n == 1 ? 2 : n)) fuzz_remove(names[i]);
        else fuzz_write(names[i], data + off[i], len[i], path, sizeof path);
    }
    mdl_model *m;
    if (mdl_open(fuzz_dir(), &m, err, sizeof err)) {
        fuzz_rejected(err);
        return 0;
    }
    fuzz_check_model(m);
    fuzz_check_tokenizer(m);
    mdl_close(m);
    return 0;
}
