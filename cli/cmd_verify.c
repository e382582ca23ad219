/*
 * cli/cmd_verify.c — `bitplan verify FILE`: is a model file sound? For a bitplan
 * packed file: its container (every tensor's bytes inside the data, sized by its
 * dtype and shape, the tensors tiling the data with no overlap and no hole), the
 * checksum of every tensor, and everything the loader checks (version, options,
 * parts, permutations). For a GGUF or safetensors model: what model/ checks when
 * it opens one (header, bounds, sizes, alignment, no overlap). One line per
 * problem on stdout, then a summary line; exit 0 when sound, 1 when not, 2 for a
 * wrong command line. It only reads.
 */
#include "cli.h"
#include "model/model.h"
#include "pack/pack.h"

#include <string.h>

static void print_problem(void *arg, const char *line)
{
    (void)arg;
    printf("%s\n", line);
}

static int verify_packed(const char *path, mdl_model *f)
{
    pack_verify_info info;
    int n = pack_verify_file(f, print_problem, NULL, &info);
    if (n) {
        printf("%s: %d problem%s\n", path, n, n == 1 ? "" : "s");
        return 1;
    }
    if (info.version < 2)
        printf("%s: sound structure, %d tensors; version 1: no checksums, the data itself is not verified\n", path,
               info.n_tensors);
    else
        printf("%s: sound: version %d, %d tensors, every checksum matches (%.1f MB)\n", path, info.version,
               info.n_tensors, (double)info.checked_bytes / 1e6);
    return 0;
}

int cmd_verify(int argc, char **argv)
{
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: bitplan verify FILE\n"
               "  FILE  a packed file (structure, data offsets, every tensor's checksum), or a\n"
               "        .gguf / .safetensors model (the structure model/ checks on opening)\n"
               "exit status: 0 sound, 1 a problem (one line each), 2 a wrong command line\n");
        return 0;
    }
    if (argc != 2 || argv[1][0] == '-') {
        cli_fail("verify", "one FILE (see bitplan verify --help)");
        return 2;
    }
    const char *path = argv[1];
    mdl_model *f;
    char err[1024];
    if (mdl_open(path, &f, err, sizeof err)) {
        printf("%s\n%s: 1 problem\n", err, path);
        return 1;
    }
    if (mdl_is_packed(f)) return verify_packed(path, f);
    printf("%s: sound structure: %s, %d tensors (a %s file has no checksums; its data is not verified)\n", path,
           mdl_format(f), mdl_tensor_count(f), mdl_format(f));
    mdl_close(f);
    return 0;
}
