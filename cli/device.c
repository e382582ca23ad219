/*
 * cli/device.c — `--device cpu|cuda` for the subcommands that run a model. The CUDA
 * runner exists in every build; without nvcc or without a GPU it fails, and this
 * turns that into one clear line before any work starts.
 */
#include "cli.h"

#include <string.h>

#include "runtime/cuda/rt_cuda.h"

int cli_parse_device(const char *cmd, const char *name, rt_runner_open_fn *open)
{
    char info[256], err[256];
    if (!strcmp(name, "cpu")) { *open = NULL; return 0; }
    if (strcmp(name, "cuda")) return cli_fail(cmd, "--device '%s' is not cpu or cuda", name);
    if (rt_cuda_device_info(info, sizeof info, err, sizeof err))
        return cli_fail(cmd, "--device cuda: %s", err);
    fprintf(stderr, "device          %s\n", info);
    *open = rt_cuda_runner_open;
    return 0;
}
