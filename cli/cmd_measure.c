/* cli/cmd_measure.c — `bitplan measure`. (Being written: see the module's owner.) */
#include "cli.h"

int cmd_measure(int argc, char **argv)
{
    (void)argc, (void)argv;
    return cli_fail("measure", "not available in this build yet");
}
