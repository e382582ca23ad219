/* cli/cmd_eval.c — `bitplan eval`. (Being written: see the module's owner.) */
#include "cli.h"

int cmd_eval(int argc, char **argv)
{
    (void)argc, (void)argv;
    return cli_fail("eval", "not available in this build yet");
}
