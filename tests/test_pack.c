/*
 * tests/test_pack.c — the packed file's container and loader, below the model
 * level: pack_writer's safetensors round trip read back by model/ (dtypes,
 * shapes, bytes, alignment runs, header padding, metadata with characters that
 * need escaping), the checksums it records (XXH3-64, against values from an
 * independent implementation), its atomic write (no file and no temporary left
 * after a failure), and pack_load's refusals of files that are not packed files.
 * The end-to-end checks (real packing, logits, corrupt packed files, kill -9) are
 * in tests/test_pack.py and tests/test_verify.py.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/model.h"
#include "pack/pack.h"
#include "runtime/runtime.h"

static char dir[512];

static int setup(void **state)
{
    (void)state;
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/bitplan-test-pack-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char p[1024];
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    if (d) closedir(d);
    return rmdir(dir);
}

static void *copy_of(const void *src, size_t n)
{
    void *p = malloc(n);
    assert_non_null(p);
    memcpy(p, src, n);
    return p;
}

/* ==== Round trip ==== */

typedef struct {
    const char *name, *dtype;
    mdl_dtype type;
    int n_dims;
    int64_t shape[2];
    size_t elem;
} spec;

static const spec specs[] = {
    {"a.qvalues", "U8", MDL_U8, 2, {3, 5}, 1},      {"a.qscales", "F16", MDL_F16, 2, {3, 2}, 2},
    {"a.qperm", "U16", MDL_U16, 1, {7, 0}, 2},      {"norm", "F32", MDL_F32, 1, {5, 0}, 4},
    {"big.qperm", "U32", MDL_U32, 1, {3, 0}, 4},    {"b.qzeros", "U8", MDL_U8, 2, {1, 3}, 1},
};
#define N_SPECS (int)(sizeof specs / sizeof *specs)

/* Tensor i's bytes: i * 16 + k, so every byte says whose it is and where. */
static void fill(int i, uint8_t *buf, size_t n)
{
    for (size_t k = 0; k < n; k++) buf[k] = (uint8_t)(i * 16 + k);
}

static size_t bytes_of(const spec *s) { return (size_t)(s->shape[0] * (s->n_dims == 2 ? s->shape[1] : 1)) * s->elem; }

#define TINY_CONFIG "{\"arch\":\"llama\",\"n_layers\":1,\"dim\":4,\"hidden_dim\":8,\"n_heads\":1," \
                    "\"n_kv_heads\":1,\"head_dim\":4,\"vocab_size\":8,\"rope_dim\":4}"

/* packed: with the format tag and a config (model/ then reads the config from the
 * metadata and leaves the tensors to pack/). */
static void write_sample(const char *path, int packed)
{
    char err[256] = "";
    pack_writer *w = pack_writer_new(path, err, sizeof err);
    assert_non_null(w);
    for (int i = 0; i < N_SPECS; i++) {
        uint8_t buf[64];
        size_t n = bytes_of(&specs[i]);
        fill(i, buf, n);
        assert_int_equal(pack_writer_add(w, specs[i].name, specs[i].dtype, specs[i].n_dims, specs[i].shape, copy_of(buf, n), n), 0);
    }
    assert_int_equal(pack_writer_meta(w, "plain", "value"), 0);
    if (packed) {
        assert_int_equal(pack_writer_meta(w, "format", "bitplan-packed"), 0);
        assert_int_equal(pack_writer_meta(w, "config", TINY_CONFIG), 0);
    }
    assert_int_equal(pack_writer_meta(w, "tricky", "q\"uote\\ new\nline \x01 caf\xc3\xa9 {\"json\": [1]}"), 0);
    assert_int_equal(pack_writer_write(w, err, sizeof err), 0);
    pack_writer_free(w);
}

static void test_writer_round_trip(void **state)
{
    (void)state;
    char path[1024], err[256] = "";
    snprintf(path, sizeof path, "%s/round.safetensors", dir);
    write_sample(path, 1);

    FILE *f = fopen(path, "rb");
    uint64_t hlen = 0;
    assert_non_null(f);
    assert_int_equal(fread(&hlen, 8, 1, f), 1);
    fclose(f);
    assert_int_equal((8 + hlen) % 64, 0); /* data starts at a multiple of 64 */

    mdl_model *m;
    if (mdl_open(path, &m, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(mdl_tensor_count(m), N_SPECS);
    const uint8_t *data0 = NULL;
    for (int i = 0; i < N_SPECS; i++) {
        const mdl_tensor *t = mdl_find(m, specs[i].name);
        assert_non_null(t);
        assert_int_equal(t->type, specs[i].type);
        assert_int_equal(t->n_dims, specs[i].n_dims);
        for (int d = 0; d < t->n_dims; d++) assert_int_equal(t->shape[d], specs[i].shape[d]);
        assert_int_equal(t->n_bytes, bytes_of(&specs[i]));
        uint8_t want[64];
        fill(i, want, t->n_bytes);
        assert_memory_equal(t->data, want, t->n_bytes);
        assert_int_equal((uintptr_t)t->data % specs[i].elem, 0);
        if (!data0 || (const uint8_t *)t->data < data0) data0 = t->data;
    }
    /* alignment runs: the 4-byte tensors first (in order), then 2-byte, then 1-byte, no holes */
    static const char *order[] = {"norm", "big.qperm", "a.qscales", "a.qperm", "a.qvalues", "b.qzeros"};
    const uint8_t *at = data0;
    for (int i = 0; i < N_SPECS; i++) {
        const mdl_tensor *t = mdl_find(m, order[i]);
        assert_ptr_equal(t->data, at);
        at += t->n_bytes;
    }
    const char *v;
    assert_int_equal(mdl_meta_str(m, "meta.plain", &v), 0);
    assert_string_equal(v, "value");
    assert_int_equal(mdl_meta_str(m, "meta.tricky", &v), 0);
    assert_string_equal(v, "q\"uote\\ new\nline \x01 caf\xc3\xa9 {\"json\": [1]}");
    assert_int_equal(mdl_is_packed(m), 1);
    assert_int_equal(mdl_get_config(m)->dim, 4);
    assert_int_equal(mdl_get_config(m)->hidden_dim, 8);
    assert_int_equal(mdl_tensor_to_f32(m, mdl_find(m, "a.qvalues"), (float[15]){0}), -1); /* integers are no weights */
    mdl_close(m);
}

/* The checksums the writer records: every tensor verifies, and the hash is XXH3-64
 * (values from the xxhash Python package, an independent implementation). */
static void test_writer_checksums(void **state)
{
    (void)state;
    char path[1024], err[256] = "";
    uint8_t bytes[1280];
    for (int i = 0; i < 1280; i++) bytes[i] = (uint8_t)i;
    assert_true(mdl_packed_checksum("", 0) == UINT64_C(0x2d06800538d394c2));
    assert_true(mdl_packed_checksum(bytes, sizeof bytes) == UINT64_C(0x4844b009e164352e));
    snprintf(path, sizeof path, "%s/sums.safetensors", dir);
    write_sample(path, 1);
    mdl_model *m;
    if (mdl_open(path, &m, err, sizeof err)) fail_msg("%s", err);
    int64_t hashed = -1, want = 0;
    for (int i = 0; i < N_SPECS; i++) want += (int64_t)bytes_of(&specs[i]);
    assert_int_equal(mdl_packed_verify(m, NULL, NULL, &hashed), 0);
    assert_int_equal(hashed, want);
    mdl_close(m);
}

/* ==== Atomic writes ==== */

static int count_files(void)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += e->d_name[0] != '.';
    if (d) closedir(d);
    return n;
}

static void test_writer_failure_leaves_nothing(void **state)
{
    (void)state;
    char path[1024], err[256] = "";
    int before = count_files();
    snprintf(path, sizeof path, "%s/no-such-folder/out.bp", dir);
    pack_writer *w = pack_writer_new(path, err, sizeof err); /* its spool goes beside the file */
    int64_t shape[1] = {4};
    assert_null(w);
    assert_non_null(strstr(err, "no-such-folder"));
    assert_null(strchr(err, '\n'));
    assert_int_equal(count_files(), before);

    /* a directory in the way: refused before anything is written, nothing left */
    snprintf(path, sizeof path, "%s/taken", dir);
    assert_int_equal(mkdir(path, 0755), 0);
    w = pack_writer_new(path, err, sizeof err);
    assert_null(w);
    assert_non_null(strstr(err, "is a directory"));
    assert_int_equal(count_files(), before + 1);
    rmdir(path);

    /* a destination removed and replaced by a directory while writing: the rename
     * fails and the temporary file must be removed */
    snprintf(path, sizeof path, "%s/raced", dir);
    w = pack_writer_new(path, err, sizeof err);
    assert_non_null(w);
    assert_int_equal(mkdir(path, 0755), 0);
    assert_int_equal(pack_writer_add(w, "x", "F32", 1, shape, calloc(4, 4), 16), 0);
    assert_int_equal(pack_writer_write(w, err, sizeof err), -1);
    pack_writer_free(w);
    assert_int_equal(count_files(), before + 1);
    rmdir(path);
}

static void test_writer_refuses_bad_dtypes(void **state)
{
    (void)state;
    char path[1024], err[256] = "";
    snprintf(path, sizeof path, "%s/bad-dtypes.bp", dir);
    pack_writer *w = pack_writer_new(path, err, sizeof err);
    assert_non_null(w);
    int64_t shape[1] = {2};
    assert_int_equal(pack_writer_add(w, "x", "Q4_K", 1, shape, calloc(2, 1), 2), -1);
    assert_int_equal(pack_writer_add(w, "x", "U8", 0, shape, calloc(2, 1), 2), -1);
    pack_writer_free(w);
}

/* ==== The loader refuses what is not a packed file ==== */

static void test_load_refuses_plain_safetensors(void **state)
{
    (void)state;
    char path[1024], err[512] = "";
    snprintf(path, sizeof path, "%s/plain.safetensors", dir);
    write_sample(path, 0); /* no format tag: read as a Hugging Face file, which needs config.json */
    rt_model *m = NULL;
    assert_int_equal(pack_is_packed(path), 0);
    assert_int_equal(pack_load(path, 4, 0, &m, err, sizeof err), -1);
    assert_null(m);
    assert_non_null(strstr(err, dir));
    assert_null(strchr(err, '\n'));
}

static void test_load_refuses_wrong_version(void **state)
{
    (void)state;
    char path[1024], err[512] = "";
    snprintf(path, sizeof path, "%s/v9.bp", dir);
    pack_writer *w = pack_writer_new(path, err, sizeof err);
    int64_t shape[1] = {4};
    assert_int_equal(pack_writer_add(w, "output_norm.weight", "F32", 1, shape, calloc(4, 4), 16), 0);
    assert_int_equal(pack_writer_meta(w, "format", "bitplan-packed"), 0);
    assert_int_equal(pack_writer_meta(w, "format_version", "9"), 0);
    assert_int_equal(pack_writer_meta(w, "config", TINY_CONFIG), 0);
    assert_int_equal(pack_writer_write(w, err, sizeof err), 0);
    pack_writer_free(w);
    rt_model *m = NULL;
    assert_int_equal(pack_is_packed(path), 1);
    assert_int_equal(pack_load(path, 4, 0, &m, err, sizeof err), -1);
    assert_non_null(strstr(err, "format_version 9"));
    assert_null(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_writer_round_trip),
        cmocka_unit_test(test_writer_checksums),
        cmocka_unit_test(test_writer_failure_leaves_nothing),
        cmocka_unit_test(test_writer_refuses_bad_dtypes),
        cmocka_unit_test(test_load_refuses_plain_safetensors),
        cmocka_unit_test(test_load_refuses_wrong_version),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
