/*
 * par/par.h — the processes of one job: MPI when bitplan was built with it and
 * started by an MPI launcher (mpirun, srun), otherwise one process, rank 0 of 1.
 *
 * The measurement and the packer split their work across ranks (measure/walk.c,
 * measure/driver.c, pack/quantize.c); everything here is what they need of MPI and
 * no more. Every call but par_rank and
 * par_size is collective: each rank of the job makes the same calls in the same
 * order. With one process they cost nothing and never fail.
 *
 * Failures. A rank that cannot go on still reaches the next par_agree, which tells
 * every rank who failed and why, so that all of them stop together at the same
 * point and rank 0 can say "rank K: cause". A rank that dies (a kill, a crash)
 * never reaches it: the launcher then ends the job and names the rank.
 *
 * Includes nothing of the project; only this module includes mpi.h.
 */
#ifndef BITPLAN_PAR_H
#define BITPLAN_PAR_H

#include <stddef.h>
#include <stdint.h>

/* Joins the job if an MPI launcher started this process (and the build has MPI);
 * otherwise the process is a job of one. 0, or -1 with a message (started by a
 * launcher but built without MPI: the ranks would each do the whole work). */
int par_init(int *argc, char ***argv, char *err, size_t err_len);
/* Leaves the job (MPI_Finalize); call once, at exit, from every rank. */
void par_finish(void);
/* Ends every rank of the job at once with this status (a single process: exit). */
void par_abort(int status) __attribute__((noreturn));

int par_rank(void);
int par_size(void);

/* Every rank passes its status (0 or -1) and message; returns 0 on every rank if
 * all were 0, else -1 on every rank with err set to the first failing rank's
 * message, as "rank K: message" when the job has more than one rank. */
int par_agree(int rc, char *err, size_t err_len);
/* buf[0..bytes) of rank `root` is copied to every other rank. 0, or -1 (MPI error). */
int par_bcast(void *buf, size_t bytes, int root);
/* Rank `from`'s buf[0..bytes) is copied into rank 0's buf; ranks other than those
 * two return at once (not collective: only the two take part). 0, or -1 (MPI error). */
int par_to_root(void *buf, size_t bytes, int from);
/* Rank 0 receives every rank's mine[0..bytes), concatenated in rank order, in a
 * buffer it frees (*all; NULL on other ranks), *all_bytes the total. 0, or -1 (out
 * of memory or MPI error; then on every rank). */
int par_gather(const void *mine, size_t bytes, void **all, size_t *all_bytes);

/* Since par_init, on this rank: the payload bytes it sent (as the root of a
 * broadcast, or into a gather) and the seconds it spent inside the calls above,
 * which is mostly waiting for the slowest rank: the benchmarks' "bytes per layer"
 * and "share of time spent waiting". */
typedef struct {
    uint64_t bytes_sent;
    double seconds_in_calls;
} par_stats;
par_stats par_get_stats(void);
/* The whole job's: on rank 0 the bytes every rank sent (returned) and the mean share
 * of `seconds` (each rank's wall time) they spent inside the calls; other ranks get
 * their own. Collective. */
uint64_t par_job_stats(double seconds, double *wait_share);

/* Deals n jobs to the ranks, the same way on every rank without a message: the
 * costliest first (equal costs in index order), each to the rank with the least
 * cost so far (the lowest of equals). owner[i] is job i's rank. 0, or -1 (out of
 * memory). Not collective. */
int par_deal(const double *cost, int n, int *owner);

#endif
