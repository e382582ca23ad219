/* cli/cmd_tokenize.c — `bitplan tokenize`. (Being written: see the module's owner.) */
#include "cli.h"

int cmd_tokenize(int argc, char **argv)
{
    (void)argc, (void)argv;
    return cli_fail("tokenize", "not available in this build yet");
}
