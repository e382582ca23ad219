/*
 * util/clock.c — the one clock bitplan times its work with.
 */
#include "util.h"

#include <time.h>

double util_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
