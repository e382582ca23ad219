/*
 * par/par.c — the job's processes (par.h): MPI_COMM_WORLD with BITPLAN_MPI, a job
 * of one without.
 *
 * MPI is joined only when a launcher started the process (its environment says
 * so), so that a plain `bitplan` never initializes MPI: no network probing, no
 * launcher needed, nothing for the sanitizers to see. Messages larger than MPI's
 * int count go in pieces of PAR_PIECE bytes.
 */
#include "par.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef BITPLAN_MPI
#include <mpi.h>
#endif

#define PAR_MSG 512               /* bytes of a rank's message in par_agree */
#define PAR_PIECE ((size_t)1 << 30)

static int g_rank, g_size = 1, g_mpi;
static par_stats g_stats;

/* 1 if an MPI launcher (Open MPI, MPICH/Hydra, Slurm with PMI or PMIx) started us. */
static int started_by_launcher(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++)
        if (getenv(vars[i])) return 1;
    return 0;
}

int par_init(int *argc, char ***argv, char *err, size_t err_len)
{
    if (!started_by_launcher()) return 0;
#ifdef BITPLAN_MPI
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return snprintf(err, err_len, "MPI_Init failed"), -1;
    g_mpi = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    return 0;
#else
    (void)argc, (void)argv;
    const char *n = getenv("OMPI_COMM_WORLD_SIZE") ? getenv("OMPI_COMM_WORLD_SIZE") : getenv("PMI_SIZE");
    if (n && atoi(n) == 1) return 0; /* a launcher's job of one is still one process */
    snprintf(err, err_len, "started by an MPI launcher, but this bitplan was built without MPI "
             "(install libopenmpi-dev and rebuild; each rank would otherwise do the whole work)");
    return -1;
#endif
}

void par_finish(void)
{
#ifdef BITPLAN_MPI
    if (g_mpi) MPI_Finalize();
#endif
    g_mpi = 0;
}

void par_abort(int status)
{
#ifdef BITPLAN_MPI
    if (g_mpi && g_size > 1) MPI_Abort(MPI_COMM_WORLD, status);
#endif
    exit(status);
}

int par_rank(void) { return g_rank; }
int par_size(void) { return g_size; }
par_stats par_get_stats(void) { return g_stats; }

/* Indices ordered by cost, costliest first, equal costs by index. */
static int by_cost_desc(const void *a, const void *b, void *ctx)
{
    const double *cost = ctx;
    int i = *(const int *)a, j = *(const int *)b;
    if (cost[i] != cost[j]) return cost[i] > cost[j] ? -1 : 1;
    return (i > j) - (i < j);
}

int par_deal(const double *cost, int n, int *owner)
{
    int *order = malloc((size_t)(n > 0 ? n : 1) * sizeof *order);
    double *load = calloc((size_t)g_size, sizeof *load);
    if (!order || !load) return free(order), free(load), -1;
    for (int i = 0; i < n; i++) order[i] = i;
    qsort_r(order, (size_t)n, sizeof *order, by_cost_desc, (void *)cost);
    for (int i = 0; i < n; i++) {
        int to = 0;
        for (int k = 1; k < g_size; k++)
            if (load[k] < load[to]) to = k;
        load[to] += cost[order[i]];
        owner[order[i]] = to;
    }
    free(order), free(load);
    return 0;
}

uint64_t par_job_stats(double seconds, double *wait_share)
{
    double mine[2] = {(double)g_stats.bytes_sent, g_stats.seconds_in_calls / (seconds > 0 ? seconds : 1)}, *all = NULL;
    size_t bytes = 0;
    uint64_t sent = 0;
    *wait_share = mine[1];
    if (g_size == 1 || par_gather(mine, sizeof mine, (void **)&all, &bytes) || !all) return g_stats.bytes_sent;
    *wait_share = 0;
    for (int k = 0; k < g_size; k++) sent += (uint64_t)all[2 * k], *wait_share += all[2 * k + 1] / g_size;
    free(all);
    return sent;
}

/* par_gather for a job of one: a copy. */
static int gather_alone(const void *mine, size_t bytes, void **all, size_t *all_bytes)
{
    *all = malloc(bytes ? bytes : 1), *all_bytes = 0;
    if (!*all) return -1;
    memcpy(*all, mine, bytes);
    *all_bytes = bytes;
    return 0;
}

#ifndef BITPLAN_MPI

int par_agree(int rc, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    return rc ? -1 : 0;
}

int par_bcast(void *buf, size_t bytes, int root)
{
    (void)buf, (void)bytes, (void)root;
    return 0;
}

int par_gather(const void *mine, size_t bytes, void **all, size_t *all_bytes)
{
    return gather_alone(mine, bytes, all, all_bytes);
}

int par_to_root(void *buf, size_t bytes, int from)
{
    (void)buf, (void)bytes, (void)from;
    return 0;
}

#else

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int par_agree(int rc, char *err, size_t err_len)
{
    if (g_size == 1) return rc ? -1 : 0;
    double t0 = now_s();
    char mine[PAR_MSG];
    mine[0] = rc ? 1 : 0;
    snprintf(mine + 1, sizeof mine - 1, "%s", rc ? err : "");
    char *all = malloc((size_t)g_size * PAR_MSG);
    if (!all) par_abort(1); /* cannot tell the others; end them rather than hang */
    int ok = MPI_Allgather(mine, PAR_MSG, MPI_CHAR, all, PAR_MSG, MPI_CHAR, MPI_COMM_WORLD) == MPI_SUCCESS;
    int out = ok ? 0 : -1;
    if (!ok) snprintf(err, err_len, "rank %d: MPI_Allgather failed", g_rank);
    for (int k = 0; ok && k < g_size; k++)
        if (all[(size_t)k * PAR_MSG]) {
            char why[PAR_MSG];
            snprintf(why, sizeof why, "%s", all + (size_t)k * PAR_MSG + 1);
            snprintf(err, err_len, "rank %d: %s", k, why);
            out = -1;
            break;
        }
    free(all);
    g_stats.seconds_in_calls += now_s() - t0;
    return out;
}

int par_bcast(void *buf, size_t bytes, int root)
{
    if (g_size == 1) return 0;
    double t0 = now_s();
    int rc = 0;
    for (size_t off = 0; !rc && off < bytes; off += PAR_PIECE) {
        size_t n = bytes - off < PAR_PIECE ? bytes - off : PAR_PIECE;
        rc = MPI_Bcast((char *)buf + off, (int)n, MPI_BYTE, root, MPI_COMM_WORLD) == MPI_SUCCESS ? 0 : -1;
    }
    if (g_rank == root) g_stats.bytes_sent += bytes;
    g_stats.seconds_in_calls += now_s() - t0;
    return rc;
}

static int send_bytes(const void *buf, size_t bytes, int to)
{
    int rc = 0;
    for (size_t off = 0; !rc && off < bytes; off += PAR_PIECE) {
        int n = (int)(bytes - off < PAR_PIECE ? bytes - off : PAR_PIECE);
        rc = MPI_Send((const char *)buf + off, n, MPI_BYTE, to, 7, MPI_COMM_WORLD) == MPI_SUCCESS ? 0 : -1;
    }
    return rc;
}

/* Into buf, or, with buf NULL (no memory for it), into a scrap piece by piece, so
 * that the sender is never left blocked. */
static int recv_bytes(void *buf, size_t bytes, int from)
{
    static char scrap[1 << 16];
    int rc = 0;
    size_t piece = buf ? PAR_PIECE : sizeof scrap;
    for (size_t off = 0; !rc && off < bytes; off += piece) {
        int n = (int)(bytes - off < piece ? bytes - off : piece);
        void *to = buf ? (char *)buf + off : scrap;
        rc = MPI_Recv(to, n, MPI_BYTE, from, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE) == MPI_SUCCESS ? 0 : -1;
    }
    return rc;
}

int par_to_root(void *buf, size_t bytes, int from)
{
    if (from == 0 || (g_rank != 0 && g_rank != from)) return 0;
    double t0 = now_s();
    int rc = g_rank == 0 ? recv_bytes(buf, bytes, from) : send_bytes(buf, bytes, 0);
    if (g_rank == from) g_stats.bytes_sent += bytes;
    g_stats.seconds_in_calls += now_s() - t0;
    return rc;
}

/* Rank 0 receives each rank's bytes in turn (point to point: the sizes may differ
 * and exceed an int). */
int par_gather(const void *mine, size_t bytes, void **all, size_t *all_bytes)
{
    if (g_size == 1) return gather_alone(mine, bytes, all, all_bytes);
    *all = NULL, *all_bytes = 0;
    double t0 = now_s();
    uint64_t n = bytes, *sizes = g_rank == 0 ? calloc((size_t)g_size, sizeof *sizes) : NULL;
    if (g_rank == 0 && !sizes) par_abort(1); /* a few bytes: the others would wait forever */
    int rc = MPI_Gather(&n, 1, MPI_UINT64_T, sizes, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD) == MPI_SUCCESS ? 0 : -1;
    char *buf = NULL;
    if (g_rank == 0) {
        size_t total = 0;
        for (int k = 0; k < g_size; k++) total += sizes[k];
        if (!rc && (buf = malloc(total ? total : 1))) memcpy(buf, mine, bytes), *all_bytes = total;
        else rc = -1;
        for (int k = 1; k < g_size; k++) {
            size_t at = 0;
            for (int j = 0; j < k; j++) at += sizes[j];
            if (recv_bytes(buf ? buf + at : NULL, sizes[k], k)) rc = -1;
        }
    } else {
        if (send_bytes(mine, bytes, 0)) rc = -1;
        g_stats.bytes_sent += bytes;
    }
    free(sizes);
    g_stats.seconds_in_calls += now_s() - t0;
    char why[8] = "";
    if (par_agree(rc, why, sizeof why)) return free(buf), *all_bytes = 0, -1;
    *all = buf;
    return 0;
}

#endif
