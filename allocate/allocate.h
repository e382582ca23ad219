/*
 * allocate/ — choosing one quantization option per tensor for a bit budget.
 *
 * The problem (a multiple-choice knapsack with side constraints):
 *
 *     minimize    sum_t sum_c  damage[t][c] * x[t][c]
 *     subject to  sum_c x[t][c] = 1                       for every tensor t
 *                 sum_t,c bits[t][c] * x[t][c] <= budget  over the tensors "in the budget"
 *                 x[a][c] = x[b][c]                       for tied tensors a, b and option c
 *                 x[t][c] = 0                             where c breaks a bits-per-weight bound
 *                 x binary
 *
 * GLPK solves it exactly (glp_intopt with its MIP presolver); the result records the
 * objective, a proven lower bound, the relative gap between them and the solve time.
 * Before the solve, options that another option of the same tensor (or tie group)
 * beats on both bits and damage are dropped: that never changes the optimum.
 *
 * Damage is whatever the caller puts in (alloc_damage_* below compute the documented
 * defaults from measured errors). Bits are exact stored bits (lay_tensor_bits), so a
 * plan's budget holds to the bit: alloc_solve checks it in integers.
 *
 * Also here: the budgets (bits per weight; the VRAM memory model), and baseline
 * allocators (uniform, greedy, simulated annealing) that the exact plan is compared
 * with, and the glue that turns a calibration read by db/ (db_alloc_load) into a
 * problem. Uses db/'s structs and, through the measurements, layout/layout.h's cost.
 * Never prints (except GLPK's own output when asked), never speaks SQL.
 *
 *     alloc_problem *p = alloc_problem_new();
 *     int t = alloc_add_tensor(p, LAY_Q, 0, 576 * 576, 1);
 *     alloc_add_option(p, t, option_id, bits, damage);  ... for every option
 *     alloc_params prm; alloc_params_init(&prm);
 *     alloc_result r;
 *     if (alloc_solve(p, budget_bits, &prm, &r, err, sizeof err)) ... err
 *     r.choice[t] is the index of t's chosen option (in the order added)
 *     alloc_result_free(&r); alloc_problem_free(p);
 */
#ifndef BITPLAN_ALLOCATE_H
#define BITPLAN_ALLOCATE_H

#include <stddef.h>
#include <stdint.h>

#include "db/db.h"
#include "layout/layout.h"

/* ==== Tensor classes ==== */

/* The classes are layout's lay_class (LAY_Q ... LAY_HEAD, lay_class_name). */
/* A set of classes as a bit mask (1 << class): "qkv", "gate_up", "attn" (q,k,v,o),
 * "mlp" (gate,up,down), or a comma list "q,k,v". 0 if not understood. */
unsigned alloc_class_set_parse(const char *s);

/* ==== The problem ==== */

typedef struct alloc_problem alloc_problem;

alloc_problem *alloc_problem_new(void);             /* NULL if out of memory */
void alloc_problem_free(alloc_problem *p);

/* Adds a tensor with n_weights = rows * cols weights. in_budget = 0 keeps its bits
 * out of the budget row (it still counts in total_bits). Returns its index (0, 1, ...
 * in order of addition), or -1 if out of memory. */
int alloc_add_tensor(alloc_problem *p, lay_class cls, int layer, int64_t n_weights, int in_budget);
/* Adds an option to tensor t: the caller's option id (tied tensors share options by
 * id), exact stored bits, predicted damage (finite, >= 0). Returns the option's index
 * within t, or -1 if out of memory. */
int alloc_add_option(alloc_problem *p, int t, int64_t option_id, int64_t bits, double damage);
/* The n tensors must all choose the same option id. Tensors may be in one tie only
 * (a second tie that shares a tensor merges the two). 0, or -1 if out of memory. */
int alloc_tie(alloc_problem *p, const int *tensors, int n);
/* Only options whose bits / n_weights lies in [min_bpw, max_bpw] remain allowed for
 * tensor t (bounds accumulate: the tightest wins). */
void alloc_limit_bpw(alloc_problem *p, int t, double min_bpw, double max_bpw);
/* Allows tensor t only option k (pins it). */
void alloc_fix_option(alloc_problem *p, int t, int k);

int alloc_n_tensors(const alloc_problem *p);
int alloc_n_options(const alloc_problem *p, int t);
int64_t alloc_option_bits(const alloc_problem *p, int t, int k);
double alloc_option_damage(const alloc_problem *p, int t, int k);
int64_t alloc_option_id(const alloc_problem *p, int t, int k);
lay_class alloc_tensor_class(const alloc_problem *p, int t);
int64_t alloc_tensor_weights(const alloc_problem *p, int t);
int alloc_tensor_in_budget(const alloc_problem *p, int t);

/* The budget bits of the cheapest and of the most expensive allowed plan (over the
 * tensors in the budget, respecting ties and bounds): a budget below *min_bits is
 * unreachable. 0, or -1 (a tensor or tie group has no allowed option) with a message. */
int alloc_range(alloc_problem *p, int64_t *min_bits, int64_t *max_bits, char *err, size_t err_len);

/* ==== Solving ==== */

typedef struct {
    double mip_gap;       /* stop once (objective - bound) / objective <= this (1e-6) */
    double time_limit;    /* seconds for the branch-and-bound (60); the best plan so far is kept */
    int warm_start;       /* 1: start GLPK from the closed-form LP optimum (its basis) and
                             the rounded plan (first incumbent): the root LP costs no
                             simplex iterations and the gap starts at one tensor's step.
                             GLPK's presolver would renumber the columns, so it is not
                             used then (own presolve: dominated options). (default 1) */
    int presolve;         /* 1: GLPK's MIP presolver, when warm_start is 0 (default 1) */
    int drop_dominated;   /* 1: drop dominated options first (default 1) */
    int hull;             /* 1: keep only options on each tensor's lower convex hull of
                             (bits, damage): a smaller MILP whose LP relaxation equals the
                             full one's, so its gap is still measured against the full
                             problem's LP bound (default 0) */
    int verbose;          /* 1: GLPK's own progress output on stdout (default 0) */
    const char *write_lp; /* write the MILP here in CPLEX LP format before solving (NULL) */
} alloc_params;

void alloc_params_init(alloc_params *prm);

typedef enum {
    ALLOC_OPTIMAL = 0,   /* proven within mip_gap */
    ALLOC_FEASIBLE,      /* a plan, but the time limit stopped the proof (see gap) */
    ALLOC_INFEASIBLE,    /* no plan within the budget */
    ALLOC_NO_PLAN,       /* the time limit came before any plan */
    ALLOC_FAILED,        /* the solver failed (see the message) */
} alloc_status;

const char *alloc_status_name(alloc_status s);

typedef struct {
    alloc_status status;
    int n_tensors;
    int *choice;           /* [n_tensors]: chosen option index within each tensor */
    int64_t budget_bits;   /* chosen bits of the tensors in the budget (<= budget) */
    int64_t total_bits;    /* chosen bits of all tensors */
    double objective;      /* summed damage of the choice */
    double bound;          /* proven lower bound on the optimum */
    double lp_bound;       /* the LP relaxation's optimum (a weaker bound) */
    double gap;            /* (objective - bound) / objective, 0 if both are 0 */
    double seconds;        /* wall time of the whole solve */
    int64_t n_dropped;     /* (tensor, option) pairs dropped as dominated */
    int64_t n_off_hull;    /* further pairs dropped by hull mode */
    int n_cols, n_rows;    /* size of the MILP given to GLPK */
    int glpk_rc;           /* glp_intopt's return code, for the record */
} alloc_result;

/* Solves for a budget in bits. Returns 0 with a plan (status ALLOC_OPTIMAL or
 * ALLOC_FEASIBLE), or -1 with a message (an unreachable budget names the cheapest and
 * the largest plan's bits; the status says which failure). res is filled either way
 * and must be alloc_result_free()d. */
int alloc_solve(alloc_problem *p, int64_t budget, const alloc_params *prm, alloc_result *res,
                char *err, size_t err_len);
void alloc_result_free(alloc_result *res);

/* Objective and budget bits of a given choice (choice[t] = option index); checks
 * nothing. For baselines and tests. */
double alloc_choice_damage(const alloc_problem *p, const int *choice);
int64_t alloc_choice_bits(const alloc_problem *p, const int *choice, int budget_only);
/* 1 if the choice respects ties, bounds and the budget. */
int alloc_choice_valid(alloc_problem *p, const int *choice, int64_t budget);

/* The LP relaxation solved in closed form (lower convex hulls, segments taken by
 * damage saved per bit): *bound is its optimum, choice (if not NULL, [n_tensors]) the
 * LP solution rounded down (the fractional tensor stays on its cheaper vertex; later
 * segments that still fit are taken), *loss_bound the most that rounding can lose
 * against the optimum: objective(choice) - optimum <= objective(choice) - bound.
 * 0, or -1 with a message for an unreachable budget. */
int alloc_lp_hull(alloc_problem *p, int64_t budget, double *bound, int *choice, char *err, size_t err_len);

/* ==== Baselines (for comparison; see bench/bench_alloc.c) ==== */

/* Best single option id for all tensors that fits (each tensor takes the option with
 * that id; tensors outside the budget take their least damaging allowed option).
 * 0 with choice filled, or -1 if no option id is common to all and fits. */
int alloc_uniform(alloc_problem *p, int64_t budget, int *choice);
/* Starts from the cheapest plan and repeatedly takes the upgrade (of one tensor or tie
 * group to any dearer option) that saves the most damage per extra bit and still fits. */
int alloc_greedy(alloc_problem *p, int64_t budget, int *choice);
/* Simulated annealing over random single-tensor option changes that keep the budget,
 * with geometric cooling, in the manner of ExLlamaV2's optimizer; keeps the best plan
 * seen. Deterministic for a seed. */
int alloc_anneal(alloc_problem *p, int64_t budget, uint64_t seed, int64_t moves, int *choice);

/* ==== Damage: what the objective counts for an option ==== */

/* Metric 'rel_err' (the default): rel_err * n_weights / mean_weights, mean_weights
 * being the mean size of the planned tensors. The objective is then the tensor count
 * times the weight-averaged relative output error (why: see budget.c). */
double alloc_damage_rel_err(double rel_err, int64_t n_weights, double mean_weights);
/* Metric 'kld' (when every tensor has a KL probe): the predicted KL divergence
 * probe_kld * rel_err / probe_rel_err (0 if the probe's error is 0). */
double alloc_damage_kld(double rel_err, double probe_kld, double probe_rel_err);

/* ==== Budgets: bits per weight and the VRAM memory model ==== */

/* What the memory model needs of the model (mdl_config's field names). */
typedef struct {
    int n_layers, dim, hidden_dim, n_heads, n_kv_heads, head_dim, vocab_size;
    int tied_embeddings, attn_bias;
} alloc_shape;

/* Reads the fields above from a models.config_json text ({"n_layers": 30, ...}).
 * head_dim defaults to dim / n_heads and n_kv_heads to n_heads. 0, or -1 naming the
 * first missing key. */
int alloc_shape_from_json(const char *json, alloc_shape *s, char *err, size_t err_len);

/* Parameters that the packer stores unquantized, split by how they are stored:
 * 1-D tensors (RMSNorm weights, biases) as F32, and the 2-D ones that no tensor of the
 * plan covers (an untied embedding, an unquantized head) as F16. n_params is the
 * model's whole parameter count, quantized_weights the weights of the planned tensors. */
typedef struct {
    int64_t n_1d;          /* parameters stored as F32 */
    int64_t n_2d;          /* parameters stored as F16 */
} alloc_unquantized;

alloc_unquantized alloc_unquantized_params(const alloc_shape *s, int64_t n_params, int64_t quantized_weights);
/* Bits of the whole file's tensors: planned bits + 32 * n_1d + 16 * n_2d. */
int64_t alloc_file_bits(int64_t plan_bits, alloc_unquantized u);

typedef struct {
    int64_t ctx;           /* tokens of context per sequence */
    int64_t batch;         /* sequences at once (1) */
    int kv_bits;           /* bits per cached K or V value (16) */
    int64_t reserve;       /* bytes kept free for the runtime's fixed costs beyond its own
                              allocations: cuBLAS's workspace, the kernels' code, the driver's
                              rounding (66-71 MiB measured on an H200), with room to spare
                              (256 MiB). The CUDA context is outside the budget. */
} alloc_vram_params;

void alloc_vram_params_init(alloc_vram_params *v);

/* Every term of the memory model, in bytes. */
typedef struct {
    int64_t weights;       /* packed quantized tensors: plan bits / 8 */
    int64_t unquantized;   /* 4 * n_1d + 2 * n_2d, less an untied token embedding (host memory) */
    int64_t kv_cache;      /* n_layers * 2 * n_kv_heads * head_dim * ctx * batch * kv_bits / 8 */
    int64_t scratch;       /* activations, see alloc_scratch_bytes */
    int64_t reserve;
    int64_t total;
} alloc_memory;

/* Activation scratch of one decoding step, float32, per sequence of the batch:
 * x, xb, xb2 (3 dim), q (n_heads * head_dim), k and v (2 n_kv_heads * head_dim),
 * hb, hb2 (2 hidden_dim), attention scores (n_heads * ctx), logits (vocab_size):
 *     4 * batch * (3 dim + (n_heads + 2 n_kv_heads) head_dim + 2 hidden_dim + n_heads ctx + vocab) */
int64_t alloc_scratch_bytes(const alloc_shape *s, const alloc_vram_params *v);
int64_t alloc_kv_bytes(const alloc_shape *s, const alloc_vram_params *v);
/* The memory model for a plan with plan_bits of packed tensors. */
alloc_memory alloc_memory_model(const alloc_shape *s, alloc_unquantized u, const alloc_vram_params *v,
                                int64_t plan_bits);
/* Writes plans.memory_json: the byte terms, "total", the "budget" (the card's bytes)
 * at the top level, and {"settings": {"ctx", "batch", "kv_bits"}} nested (a report
 * stacks every top-level number except "budget" and "total"). */
void alloc_memory_json(const alloc_memory *m, const alloc_vram_params *v, int64_t budget, char *buf, size_t len);

/* ==== From a calibration in the database ==== */

typedef enum { ALLOC_METRIC_AUTO = 0, ALLOC_METRIC_REL_ERR, ALLOC_METRIC_KLD } alloc_metric;

/* How a calibration's measurements become a problem. */
typedef struct {
    alloc_metric metric;       /* AUTO: kld if every tensor has a KL probe, else rel_err */
    int weight_by_size;        /* rel_err damage weighted by tensor size (1; see budget.c) */
    unsigned ties[8];          /* class sets tied within each layer (alloc_class_set_parse) */
    int n_ties;
    double min_bpw[LAY_N_CLASSES], max_bpw[LAY_N_CLASSES]; /* per class (0 and HUGE_VAL) */
    double head_bits;          /* the head's option must have bpw >= this; < 0: unset */
    int head_in_budget;        /* 0: a bpw target, the head is outside the budget and is
                                  pinned to its cheapest option with bpw >= head_bits
                                  (6 if unset; the dearest option if none reaches it);
                                  1: a VRAM target, the head is one more tensor in the
                                  budget, bounded below by head_bits if set */
} alloc_setup;

void alloc_setup_init(alloc_setup *s);

typedef struct {
    alloc_problem *p;
    alloc_metric metric;       /* the one used */
    int *in_tensor;            /* [n]: problem tensor -> index into db_alloc_input.tensors */
    int64_t *first_meas;       /* [n]: option k of tensor t is meas[first_meas[t] + k] */
    int n;
    int64_t block_weights;     /* weights of the planned tensors of the blocks (layer >= 0) */
    int64_t planned_weights;   /* weights of every planned tensor, the head included */
    int head;                  /* problem index of the head, or -1 */
    char note[256];            /* what the caller should tell the user ("" if nothing) */
} alloc_built;

/* Builds the problem from a calibration: every tensor of the model with its measured
 * options, the damage of the chosen metric, the ties, bounds and the head rule.
 * 0, or -1 with a message (a tensor without measurements, a kld metric without
 * probes, a tie or bound that leaves no option). */
int alloc_build_from_db(const db_alloc_input *in, const alloc_setup *s, alloc_built *out, char *err, size_t err_len);
void alloc_built_free(alloc_built *b);

#endif
