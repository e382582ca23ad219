/*
 * tests/fuzz/fuzz_gguf.c — feeds any bytes, as a .gguf file, to mdl_open (model/:
 * gguf.c, then config.c's checks of the Llama configuration against the tensors),
 * and to the tokenizer the file's metadata describes (model_tok.c, tokenizer.c).
 *
 * Beyond "no crash" (the file is mapped, so a tensor placed past the end would
 * fault when its rows are read) it checks, for every file mdl_open accepts
 * (fuzz_util.h): each tensor's element and byte counts follow from its shape and
 * type and fit in the file, every name finds its tensor, the configuration has no
 * zero size, the first and last row of every weight decode; the metadata getters
 * agree with each other; and a tokenizer built from the file encodes into ids
 * inside the vocabulary, the same count with a short buffer as with a long one.
 */
#include "tests/fuzz/fuzz_util.h"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[128], err[MDL_ERR_LEN];
    mdl_model *m;
    fuzz_write("in.gguf", data, size, path, sizeof path);
    if (mdl_open(path, &m, err, sizeof err)) {
        fuzz_rejected(err);
        return 0;
    }
    FUZZ_CHECK(!strcmp(mdl_format(m), "gguf"), "format %s", mdl_format(m));
    fuzz_check_model(m);
    int64_t i;
    double f;
    if (!mdl_meta_int(m, "general.alignment", &i)) FUZZ_CHECK(!mdl_meta_float(m, "general.alignment", &f) && f == (double)i, "int vs float");
    fuzz_check_tokenizer(m);
    mdl_close(m);
    return 0;
}
