/*
 * tests/tool_gptq.c — drives measure/'s GPTQ, RTN, Hessian and option code from raw
 * files, for tests/test_gptq.py (which checks it against an independent NumPy
 * GPTQ). Also times every default option on two shapes.
 *
 * What it must never do: hide an error (every failure prints one line and exits 1).
 *
 *   tool_gptq quant gptq|rtn|prep|fast|h64|h128|awq W.f32 H.f64|- ROWS COLS LO HI SHARE GROUP z8|sym DAMP OUTDIR
 *       writes OUTDIR/{q.u8,perm.i32,scale.u16,zero.u8,wq.f32,stats.txt}, and
 *       xscale.u16 for awq (prep: through gptq_prepare + gptq_quantize_prepared;
 *       fast: the same with fast_error; h64, h128: the option rotated, awq: with
 *       input scales, through gptq_prepare_slot (every slot it wants) +
 *       gptq_quantize_option, so q holds W R or W / m; wq: lay_qtensor_dequant,
 *       W's space)
 *   tool_gptq rot apply|unapply|hessian ROT SEED IN OUT N COLS
 *       lay_rot_apply / lay_rot_unapply on N rows of f32, or lay_rot_hessian on an
 *       f64 COLS x COLS matrix (N ignored)
 *   tool_gptq awqm H.f64 COLS OUTDIR
 *       prints the grid gptq_awq_alpha, one per line, and writes the multipliers of
 *       each (gptq_awq_multipliers) to OUTDIR/m<k>.u16
 *   tool_gptq rtnerr exact|fast W.f32 H.f64 ROWS COLS LO HI SHARE GROUP z8|sym
 *       prints RTN's rel_err from rtn_error_prepared (fast: a prep with fast_error)
 *   tool_gptq hess X.f32 N COLS CALL_ROWS OUT.f64   H = 2/N sum x x^T, in calls of CALL_ROWS
 *   tool_gptq relerr W.f32 WQ.f32 H.f64 ROWS COLS   prints rel_err
 *   tool_gptq options [FILE]                        the option table with bpw (then awq)
 *   tool_gptq time                                  ms per default option, 576x1536 and 1536x576
 */
#include "measure/measure.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void die(const char *msg)
{
    fprintf(stderr, "tool_gptq: %s\n", msg);
    exit(1);
}

static void *read_raw(const char *path, size_t bytes)
{
    FILE *f = fopen(path, "rb");
    if (!f) die(path);
    void *p = malloc(bytes ? bytes : 1);
    if (!p || fread(p, 1, bytes, f) != bytes) die("short read");
    fclose(f);
    return p;
}

static void write_raw(const char *dir, const char *name, const void *p, size_t bytes)
{
    char path[4096];
    snprintf(path, sizeof path, "%s%s%s", dir ? dir : "", dir ? "/" : "", name); /* dir NULL: name is the path */
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, bytes, f) != bytes || fclose(f)) die(path);
}

static lay_option parse_option(char **a)
{
    lay_option o = {0};
    o.bits_lo = (uint8_t)atoi(a[0]), o.bits_hi = (uint8_t)atoi(a[1]);
    o.hi_share = strtof(a[2], NULL), o.group = atoi(a[3]);
    o.scale_fmt = !strcmp(a[4], "sym") ? LAY_SCALE_F16 : LAY_SCALE_F16_Z8;
    snprintf(o.name, sizeof o.name, "%s/%s %s g%s %s", a[0], a[1], a[2], a[3], a[4]);
    return o;
}

static int cmd_quant(char **a)
{
    const char *method = a[0], *dir = a[11];
    int64_t rows = atoll(a[3]), cols = atoll(a[4]);
    lay_option o = parse_option(a + 5);
    float *w = read_raw(a[1], (size_t)(rows * cols) * sizeof *w);
    double *h = strcmp(a[2], "-") ? read_raw(a[2], (size_t)(cols * cols) * sizeof *h) : NULL;
    gptq_params p;
    gptq_params_init(&p);
    p.damp = atof(a[10]);
    lay_qtensor q;
    gptq_stats st = {0};
    char err[512];
    int rc;
    if (!strcmp(method, "rtn")) rc = rtn_quantize(w, rows, cols, h, &o, &q, err, sizeof err);
    else if (!strcmp(method, "gptq")) rc = gptq_quantize(w, rows, cols, h, &o, &p, &q, &st, err, sizeof err);
    else if (method[0] == 'h' || !strcmp(method, "awq")) {
        gptq_prep *prep[GPTQ_PREP_SLOTS] = {NULL};
        if (method[0] == 'h') o.rot = (uint16_t)atoi(method + 1);
        else o.awq = 1;
        rc = 0;
        for (int k = 0; !rc && k < GPTQ_PREP_SLOTS; k++)
            if (gptq_prep_wanted(&o, k)) rc = gptq_prepare_slot(h, cols, k, &p, &prep[k], err, sizeof err);
        if (!rc) rc = gptq_quantize_option(w, rows, prep, &o, -1.0, &q, &st, NULL, err, sizeof err);
        for (int k = 0; k < GPTQ_PREP_SLOTS; k++) gptq_prep_free(prep[k]);
    } else {
        gptq_prep *prep;
        p.fast_error = !strcmp(method, "fast");
        rc = gptq_prepare(h, cols, &p, &prep, err, sizeof err);
        if (!rc) rc = gptq_quantize_prepared(w, rows, prep, &o, -1.0, &q, &st, err, sizeof err);
        gptq_prep_free(prep);
    }
    if (rc) die(err);
    int64_t ng = lay_n_groups(&o, cols);
    float *wq = malloc((size_t)(rows * cols) * sizeof *wq);
    lay_qtensor_dequant(&q, wq);
    if (!strcmp(method, "rtn") && h) st.rel_err = gptq_relative_error(w, wq, rows, cols, h);
    write_raw(dir, "q.u8", q.q, (size_t)(rows * cols));
    write_raw(dir, "perm.i32", q.perm, (size_t)cols * 4);
    write_raw(dir, "scale.u16", q.scale, (size_t)(rows * ng) * 2);
    write_raw(dir, "zero.u8", q.zero, (size_t)(rows * ng));
    write_raw(dir, "wq.f32", wq, (size_t)(rows * cols) * 4);
    if (q.xscale) write_raw(dir, "xscale.u16", q.xscale, (size_t)cols * 2);
    char txt[512];
    int n = snprintf(txt, sizeof txt, "rel_err %.17g\ndamp %.17g\nretries %d\ndead %lld\nseconds %.6f\n", st.rel_err,
                     st.damp, st.damp_retries, (long long)st.dead_cols, st.seconds);
    write_raw(dir, "stats.txt", txt, (size_t)n);
    lay_qtensor_free(&q);
    free(w), free(h), free(wq);
    return 0;
}

static int cmd_hess(char **a)
{
    int64_t n = atoll(a[1]), cols = atoll(a[2]), step = atoll(a[3]);
    float *x = read_raw(a[0], (size_t)(n * cols) * sizeof *x);
    double *h = calloc((size_t)(cols * cols), sizeof *h);
    char err[512];
    for (int64_t r = 0; r < n; r += step)
        if (hess_accumulate(h, x + r * cols, (int)(n - r < step ? n - r : step), cols)) die("out of memory");
    if (hess_finalize(h, cols, n, err, sizeof err)) die(err);
    FILE *f = fopen(a[4], "wb");
    if (!f || fwrite(h, sizeof *h, (size_t)(cols * cols), f) != (size_t)(cols * cols) || fclose(f)) die(a[4]);
    free(x), free(h);
    return 0;
}

static int cmd_awqm(char **a)
{
    int64_t cols = atoll(a[1]);
    double *h = read_raw(a[0], (size_t)(cols * cols) * sizeof *h);
    uint16_t *m = malloc((size_t)cols * sizeof *m);
    if (!m) die("out of memory");
    for (int k = 0; k < GPTQ_AWQ_ALPHAS; k++) {
        char name[32];
        gptq_awq_multipliers(h, cols, gptq_awq_alpha[k], m);
        snprintf(name, sizeof name, "m%d.u16", k);
        write_raw(a[2], name, m, (size_t)cols * sizeof *m);
        printf("%.17g\n", gptq_awq_alpha[k]);
    }
    free(h), free(m);
    return 0;
}

static int cmd_rtnerr(char **a)
{
    int64_t rows = atoll(a[3]), cols = atoll(a[4]);
    lay_option o = parse_option(a + 5);
    float *w = read_raw(a[1], (size_t)(rows * cols) * sizeof *w);
    double *h = read_raw(a[2], (size_t)(cols * cols) * sizeof *h), rel;
    gptq_params p;
    gptq_params_init(&p);
    p.fast_error = !strcmp(a[0], "fast");
    gptq_prep *prep;
    char err[512];
    if (gptq_prepare(h, cols, &p, &prep, err, sizeof err) ||
        rtn_error_prepared(w, rows, prep, &o, -1.0, &rel, err, sizeof err)) die(err);
    printf("%.17g\n", rel);
    gptq_prep_free(prep);
    free(w), free(h);
    return 0;
}

static int cmd_relerr(char **a)
{
    int64_t rows = atoll(a[3]), cols = atoll(a[4]);
    float *w = read_raw(a[0], (size_t)(rows * cols) * 4), *wq = read_raw(a[1], (size_t)(rows * cols) * 4);
    double *h = read_raw(a[2], (size_t)(cols * cols) * 8);
    printf("%.17g\n", gptq_relative_error(w, wq, rows, cols, h));
    free(w), free(wq), free(h);
    return 0;
}

static int cmd_rot(char **a)
{
    int rot = atoi(a[1]);
    uint32_t seed = (uint32_t)strtoul(a[2], NULL, 10);
    int64_t n = atoll(a[5]), cols = atoll(a[6]);
    if (!strcmp(a[0], "hessian")) {
        double *h = read_raw(a[3], (size_t)(cols * cols) * sizeof *h);
        lay_rot_hessian(rot, seed, h, cols);
        write_raw(NULL, a[4], h, (size_t)(cols * cols) * sizeof *h);
        free(h);
        return 0;
    }
    float *v = read_raw(a[3], (size_t)(n * cols) * sizeof *v);
    for (int64_t r = 0; r < n; r++)
        (!strcmp(a[0], "apply") ? lay_rot_apply : lay_rot_unapply)(rot, seed, v + r * cols, cols);
    write_raw(NULL, a[4], v, (size_t)(n * cols) * sizeof *v);
    free(v);
    return 0;
}

static int cmd_options(int argc, char **a)
{
    opt_set s;
    char err[512];
    if (argc > 0) {
        if (opt_read_file(a[0], &s, err, sizeof err)) die(err);
    } else opt_default_set(&s);
    for (int i = 0; i < s.n; i++) {
        const lay_option *o = &s.v[i];
        printf("%s\t%d\t%d\t%.6g\t%d\t%d\t%d", o->name, o->bits_lo, o->bits_hi, (double)o->hi_share, (int)o->group,
               (int)o->scale_fmt, o->rot);
        static const int64_t shapes[3][2] = {{576, 1536}, {1536, 576}, {4096, 4096}};
        for (int k = 0; k < 3; k++)
            printf("\t%.3f", (double)lay_tensor_bits(o, shapes[k][0], shapes[k][1]) /
                                 (double)(shapes[k][0] * shapes[k][1]));
        printf("\t%d\n", o->awq);
    }
    opt_set_free(&s);
    return 0;
}

/* ==== Timing ==== */

static uint64_t rng = 88172645463325252ull;
static double urand(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}
static double nrand(void) { return sqrt(-2 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand()); }

/* A Hessian from correlated random inputs (x = z A, A random mixing) and a weight
 * with heavier columns, as a layer might have. */
static void synth(int64_t rows, int64_t cols, float *w, double *h)
{
    int64_t n = 2 * cols;
    float *x = malloc((size_t)(n * cols) * sizeof *x);
    for (int64_t i = 0; i < n * cols; i++) x[i] = (float)nrand();
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 1; j < cols; j++) x[i * cols + j] += 0.5f * x[i * cols + j - 1];
    for (int64_t j = 0; j < cols; j++) {
        float f = (float)(0.2 + 2 * urand());
        for (int64_t i = 0; i < n; i++) x[i * cols + j] *= f;
    }
    memset(h, 0, (size_t)(cols * cols) * sizeof *h);
    char err[256];
    if (hess_accumulate(h, x, (int)n, cols) || hess_finalize(h, cols, n, err, sizeof err)) die("hessian");
    for (int64_t i = 0; i < rows * cols; i++) w[i] = (float)(0.02 * nrand());
    free(x);
}

static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Wall time is what the stats report; CPU time of the process (all threads) is
 * printed beside it because a shared machine inflates wall time. */
static int cmd_time(void)
{
    static const int64_t shapes[2][2] = {{576, 1536}, {1536, 576}};
    opt_set s;
    opt_default_set(&s);
    gptq_params p;
    gptq_params_init(&p);
    char err[512];
    for (int k = 0; k < 2; k++) {
        int64_t rows = shapes[k][0], cols = shapes[k][1];
        float *w = malloc((size_t)(rows * cols) * sizeof *w);
        double *h = malloc((size_t)(cols * cols) * sizeof *h);
        synth(rows, cols, w, h);
        gptq_prep *prep[GPTQ_PREP_SLOTS] = {NULL};
        gptq_stats st;
        lay_qtensor q;
        double c0 = cpu_seconds();
        if (gptq_quantize(w, rows, cols, h, &s.v[0], &p, &q, &st, err, sizeof err)) die(err);
        lay_qtensor_free(&q);
        printf("%lldx%lld  gptq_quantize (prepare included): %.1f ms wall, %.1f ms cpu\n", (long long)rows,
               (long long)cols, 1e3 * st.seconds, 1e3 * (cpu_seconds() - c0));
        c0 = cpu_seconds();
        for (int k2 = 0; k2 < s.n; k2++) {
            for (int slot = 0; slot < GPTQ_PREP_SLOTS; slot++)
                if (!prep[slot] && gptq_prep_wanted(&s.v[k2], slot) &&
                    gptq_prepare_slot(h, cols, slot, &p, &prep[slot], err, sizeof err))
                    die(err);
        }
        double e = gptq_weight_energy(w, rows, cols, h);
        printf("  gptq_prepare_slot (every slot) + gptq_weight_energy: %.1f ms cpu\n", 1e3 * (cpu_seconds() - c0));
        double total = 0, total_cpu = 0;
        for (int i = 0; i < s.n; i++) {
            c0 = cpu_seconds();
            if (gptq_quantize_option(w, rows, prep, &s.v[i], e, &q, &st, NULL, err, sizeof err))
                die(err);
            double cpu = cpu_seconds() - c0;
            lay_qtensor_free(&q);
            total += st.seconds, total_cpu += cpu;
            printf("  %-16s %7.1f ms wall %7.1f ms cpu  rel_err %.4g\n", s.v[i].name, 1e3 * st.seconds, 1e3 * cpu,
                   st.rel_err);
        }
        printf("  all %d options: %.1f ms wall, %.1f ms cpu\n", s.n, 1e3 * total, 1e3 * total_cpu);
        for (int k2 = 0; k2 < GPTQ_PREP_SLOTS; k2++) gptq_prep_free(prep[k2]);
        free(w), free(h);
    }
    opt_set_free(&s);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 14 && !strcmp(argv[1], "quant")) return cmd_quant(argv + 2);
    if (argc == 7 && !strcmp(argv[1], "hess")) return cmd_hess(argv + 2);
    if (argc == 9 && !strcmp(argv[1], "rot")) return cmd_rot(argv + 2);
    if (argc == 5 && !strcmp(argv[1], "awqm")) return cmd_awqm(argv + 2);
    if (argc == 7 && !strcmp(argv[1], "relerr")) return cmd_relerr(argv + 2);
    if (argc == 12 && !strcmp(argv[1], "rtnerr")) return cmd_rtnerr(argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "options")) return cmd_options(argc - 2, argv + 2);
    if (argc == 2 && !strcmp(argv[1], "time")) return cmd_time();
    die("usage: see the comment at the top of tests/tool_gptq.c");
    return 1;
}
