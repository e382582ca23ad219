/* cli/cmd_generate.c — `bitplan generate`. (Being written: see the module's owner.) */
#include "cli.h"

int cmd_generate(int argc, char **argv)
{
    (void)argc, (void)argv;
    return cli_fail("generate", "not available in this build yet");
}
