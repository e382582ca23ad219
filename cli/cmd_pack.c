/* cli/cmd_pack.c — `bitplan pack`. (Being written: see the module's owner.) */
#include "cli.h"

int cmd_pack(int argc, char **argv)
{
    (void)argc, (void)argv;
    return cli_fail("pack", "not available in this build yet");
}
