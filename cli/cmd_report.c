/* cli/cmd_report.c — `bitplan report`. (Being written: see the module's owner.) */
#include "cli.h"

int cmd_report(int argc, char **argv)
{
    (void)argc, (void)argv;
    return cli_fail("report", "not available in this build yet");
}
