/* cli/cmd_allocate.c — `bitplan allocate`. (Being written: see the module's owner.) */
#include "cli.h"

int cmd_allocate(int argc, char **argv)
{
    (void)argc, (void)argv;
    return cli_fail("allocate", "not available in this build yet");
}
