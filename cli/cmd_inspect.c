/* cli/cmd_inspect.c — `bitplan inspect`. (Being written: see the module's owner.) */
#include "cli.h"

int cmd_inspect(int argc, char **argv)
{
    (void)argc, (void)argv;
    return cli_fail("inspect", "not available in this build yet");
}
