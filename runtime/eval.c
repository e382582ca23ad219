/*
 * runtime/eval.c — perplexity, and KL divergence against a reference model, the
 * way llama.cpp's llama-perplexity computes them.
 *
 * The procedure (llama-perplexity's default mode):
 *   1. the whole text is one token sequence (tokenized by the caller);
 *   2. it is cut into n_chunk = n_tokens / ctx non-overlapping chunks of ctx
 *      tokens (at most max_chunks); at least 2 * ctx tokens are required;
 *   3. each chunk runs from an empty KV cache in one batch, its first token
 *      replaced by BOS when p->bos >= 0 (llama.cpp does so when the model adds BOS);
 *   4. only the second half is scored: the logits at positions first = ctx/2 ..
 *      ctx-2 predict the tokens at first+1 .. ctx-1 (ctx - 1 - first per chunk);
 *   5. PPL = exp(mean NLL); its standard error is PPL * sqrt(var(NLL) / (N - 1)).
 * With a reference: KL(ref || model) = sum_v p_ref(v) (log p_ref(v) - log p(v)) at
 * every scored position, its mean and standard error, the share of positions whose
 * argmax agrees, and the reference's own perplexity. Sums are in double.
 *
 * The reference is either a second model run side by side, or its logits saved by
 * an earlier run (p->save_logits) and read back a chunk at a time (p->ref_logits),
 * as llama-perplexity's --kl-divergence-base does; the file format is described
 * below, above its writer.
 *
 * It must never change the tokens it is given, and never prints (progress goes to
 * the caller's callback).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "rt_int.h"
#include "util/util.h"

void rt_eval_params_init(rt_eval_params *p)
{
    memset(p, 0, sizeof *p);
    p->ctx = 512;
    p->max_chunks = 0;
    p->progress = 0;
    p->bos = -1;
}

/* ==== One model's runner and logits for one chunk ==== */

typedef struct {
    const rt_model *m;
    rt_runner *r;
    float *logits;  /* [n_score][vocab] logits at the scored positions */
} eval_run;

static int run_open(eval_run *r, const rt_model *m, rt_runner_open_fn open, int ctx, int n_score, char *err,
                    size_t err_len)
{
    r->m = m;
    if ((open ? open : rt_runner_open_cpu)(m, ctx, ctx, &r->r, err, err_len)) return -1;
    r->logits = malloc((size_t)n_score * m->cfg.vocab_size * sizeof(float));
    if (!r->logits) snprintf(err, err_len, "out of memory for a context of %d", ctx);
    return r->logits ? 0 : -1;
}

static void run_close(eval_run *r)
{
    rt_runner_free(r->r);
    free(r->logits);
}

/* Logits of positions first .. first + n_score - 1 of one chunk, from an empty cache. */
static int run_chunk(eval_run *r, const int32_t *tok, int ctx, int first, int n_score, char *err, size_t err_len)
{
    return r->r->forward(r->r, tok, ctx, 0, first, n_score, r->logits, err, err_len);
}

/* ==== Scoring ==== */

typedef struct {
    double nll, nll2, ref_nll, ref_nll2, kld, kld2;
    int64_t same_top, count;
} eval_sums;

/* KL(ref || model) of one position: sum p_ref (log p_ref - log p). */
static double kl_row(const float *ref, double ref_lse, const float *x, double lse, int vocab)
{
    double sum = 0;
    for (int v = 0; v < vocab; v++) {
        double lr = (double)ref[v] - ref_lse;
        sum += exp(lr) * (lr - ((double)x[v] - lse));
    }
    return sum;
}

/* Adds the n_score positions of one chunk; targets[j] is the token after position j. */
static void score_chunk(const eval_run *r, const eval_run *ref, const int32_t *targets, int n_score,
                        eval_sums *sum)
{
    int vocab = r->m->cfg.vocab_size;
    double nll = 0, nll2 = 0, rnll = 0, rnll2 = 0, kld = 0, kld2 = 0;
    int64_t same = 0;
#pragma omp parallel for schedule(static) reduction(+ : nll, nll2, rnll, rnll2, kld, kld2, same)
    for (int j = 0; j < n_score; j++) {
        const float *x = r->logits + (size_t)j * vocab;
        double lse = rt_log_sum_exp(x, vocab), v = lse - x[targets[j]];
        nll += v;
        nll2 += v * v;
        if (!ref) continue;
        const float *y = ref->logits + (size_t)j * vocab;
        double rlse = rt_log_sum_exp(y, vocab), rv = rlse - y[targets[j]];
        rnll += rv;
        rnll2 += rv * rv;
        double k = kl_row(y, rlse, x, lse, vocab);
        kld += k;
        kld2 += k * k;
        same += rt_argmax(x, vocab) == rt_argmax(y, vocab);
    }
    sum->nll += nll; sum->nll2 += nll2; sum->ref_nll += rnll; sum->ref_nll2 += rnll2;
    sum->kld += kld; sum->kld2 += kld2; sum->same_top += same; sum->count += n_score;
}

/* Mean and standard error of the mean from a sum and a sum of squares. */
static void mean_stderr(double s, double s2, int64_t n, double *mean, double *se)
{
    *mean = s / (double)n;
    double var = s2 / (double)n - *mean * *mean;
    *se = n > 1 && var > 0 ? sqrt(var / (double)(n - 1)) : 0;
}

static void finish(const eval_sums *s, int with_ref, rt_eval_result *out)
{
    double mean, se;
    out->tokens_scored = s->count;
    out->nll_sum = s->nll;
    mean_stderr(s->nll, s->nll2, s->count, &mean, &se);
    out->ppl = exp(mean);
    out->ppl_stderr = out->ppl * se;
    if (!with_ref) return;
    mean_stderr(s->ref_nll, s->ref_nll2, s->count, &mean, &se);
    out->ref_ppl = exp(mean);
    mean_stderr(s->kld, s->kld2, s->count, &out->kld_mean, &out->kld_stderr);
    out->top1_agree = (double)s->same_top / (double)s->count;
}

/* ==== Reference logits files ====
 *
 * A reference logits file holds the logits a model gave at every scored position
 * of one evaluation, so that later evaluations of other models against it need
 * not hold it. Written by rt_eval with p->save_logits, read with p->ref_logits.
 *
 * Layout, version 1. Every integer is little-endian (whatever the host), every
 * logit an IEEE-754 binary32, little-endian; offsets in bytes:
 *
 *     0    8  magic "BPLOGITS"
 *     8    4  u32 version, 1
 *    12    4  u32 H, the header's size: the data starts at offset H
 *    16    4  i32 V, vocabulary size (the width of a row of logits)
 *    20    4  i32 ctx, tokens per chunk
 *    24    4  i32 first scored position of a chunk, ctx / 2
 *    28    4  i32 S, scored positions per chunk, ctx - 1 - first
 *    32    4  i32 BOS token put first in every chunk, -1 for none
 *    36    4  u32 what ran the model: 0 the CPU, 1 another runner (e.g. CUDA)
 *    40    8  i64 N, chunks
 *    48    8  i64 tokens of the whole text
 *    56   32  SHA-256 of the whole text's token ids, each as an i32 little-endian
 *    88   64  the model's content hash as 64 lowercase hex digits (all 0 bytes: none)
 *   152    4  u32 Lm, bytes of the model's path
 *   156    4  u32 Lt, bytes of the text's path
 *   160   Lm  the model's path (no terminating NUL)
 *     .   Lt  the text's path
 *   H-4    4  u32 CRC-32 of bytes 0 .. H-5 (zlib's crc32: reflected 0xEDB88320,
 *             initial and final XOR 0xFFFFFFFF)
 *
 * so H = 164 + Lm + Lt. Then N chunks in order, each S * V logits as float32[S][V]
 * (row j: the logits at position first + j of the chunk, which predict its token
 * first + j + 1), followed by the u32 CRC-32 of those S * V * 4 bytes. The file is
 * exactly H + N * (4 * S * V + 4) bytes long. The logits are the model's own, not
 * rounded, so scores against the file equal scores against the model run on the
 * same runner bit for bit (the CPU runner gives the same logits run after run).
 *
 * It is written to PATH.tmp.PID beside PATH, space reserved up front (a full disk
 * fails at once), fsync()ed and renamed over PATH only when complete: a run that
 * fails or is killed never leaves a partial file under PATH.
 */

#define REF_MAGIC "BPLOGITS"
#define REF_VERSION 1u
#define REF_FIXED 160           /* bytes of the header before the paths */
#define REF_MAX_PATH 65536      /* longest path a reader accepts */

struct rt_ref_logits {
    int fd;
    char *path;
    int64_t data_offset, chunk_bytes;
    rt_ref_info info;
};

/* -- CRC-32 (slicing by 8) -- */

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (int t = 1; t < 8; t++)
        for (int i = 0; i < 256; i++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

static uint32_t crc32_of(const void *data, size_t n)
{
    pthread_once(&crc_once, crc_init);
    const uint8_t *p = data;
    uint32_t c = 0xFFFFFFFFu;
    for (; n >= 8; p += 8, n -= 8) {
        uint32_t a = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        uint32_t b = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        c = crc_table[7][a & 0xff] ^ crc_table[6][(a >> 8) & 0xff] ^ crc_table[5][(a >> 16) & 0xff] ^
            crc_table[4][a >> 24] ^ crc_table[3][b & 0xff] ^ crc_table[2][(b >> 8) & 0xff] ^
            crc_table[1][(b >> 16) & 0xff] ^ crc_table[0][b >> 24];
    }
    while (n--) c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

/* -- Little-endian fields -- */

static void put32(uint8_t *b, uint32_t v) { for (int i = 0; i < 4; i++) b[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *b, uint64_t v) { for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t get32(const uint8_t *b) { uint32_t v = 0; for (int i = 3; i >= 0; i--) v = v << 8 | b[i]; return v; }
static uint64_t get64(const uint8_t *b) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = v << 8 | b[i]; return v; }

/* Logits are stored little-endian: swaps 4-byte words on a big-endian host. */
static void logits_to_le(float *x, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    uint32_t *w = (uint32_t *)x;
    for (size_t i = 0; i < n; i++) w[i] = __builtin_bswap32(w[i]);
#else
    (void)x, (void)n;
#endif
}

static void tokens_sha256(const int32_t *tokens, int64_t n, uint8_t out[32])
{
    mdl_sha256 s;
    uint8_t buf[4096];
    mdl_sha256_init(&s);
    for (int64_t i = 0; i < n;) {
        int k = 0;
        for (; k < (int)sizeof buf / 4 && i < n; k++, i++) put32(buf + 4 * k, (uint32_t)tokens[i]);
        mdl_sha256_update(&s, buf, (size_t)k * 4);
    }
    mdl_sha256_final(&s, out);
}

/* Bytes of one chunk's record (logits and CRC), or -1 past 62 bits. */
static int64_t chunk_record_bytes(int64_t vocab, int64_t n_score)
{
    if (vocab <= 0 || n_score <= 0 || vocab > INT64_MAX / 8 / n_score) return -1;
    return 4 * vocab * n_score + 4;
}

/* Reads exactly n bytes at off; 0, -1 on an error (errno), 1 at the end of the file. */
static int read_at(int fd, void *p, size_t n, int64_t off)
{
    char *c = p;
    while (n) {
        ssize_t k = pread(fd, c, n > (1u << 30) ? (1u << 30) : n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return -1;
        if (k == 0) return 1;
        c += k, n -= (size_t)k, off += k;
    }
    return 0;
}

static const char *human_bytes(int64_t n, char *buf, size_t cap)
{
    const char *unit[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)n;
    int u = 0;
    while (v >= 1024 && u < 4) v /= 1024, u++;
    if (u == 0) snprintf(buf, cap, "%lld bytes", (long long)n);
    else snprintf(buf, cap, "%.1f %s", v, unit[u]);
    return buf;
}

/* -- Writing -- */

typedef struct {
    const char *path;
    util_out out;
    int64_t bytes;
} ref_writer;

/* Creates the temporary file, reserves the whole file and writes the header. */
static int writer_open(ref_writer *w, const rt_eval_params *p, const rt_model *m, const int32_t *tokens,
                       int64_t n_tokens, int64_t n_chunk, int n_score, char *err, size_t err_len)
{
    const char *mp = p->save_model_path ? p->save_model_path : "", *tp = p->save_text_path ? p->save_text_path : "";
    const char *mh = p->save_model_hash ? p->save_model_hash : "";
    size_t lm = strlen(mp), lt = strlen(tp), hlen = REF_FIXED + lm + lt + 4;
    w->path = p->save_logits;
    uint8_t *h = calloc(1, hlen);
    if (!h) {
        free(h);
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    if (lm > REF_MAX_PATH || lt > REF_MAX_PATH || (mh[0] && strlen(mh) != 64)) {
        free(h);
        snprintf(err, err_len, "%s: the model's path, text's path or content hash is too long", w->path);
        return -1;
    }
    int64_t rec = chunk_record_bytes(m->cfg.vocab_size, n_score);
    if (rec < 0 || n_chunk > (INT64_MAX - (int64_t)hlen) / rec) {
        free(h);
        snprintf(err, err_len, "%s: %lld chunks of %d x %d logits do not fit in a file", w->path, (long long)n_chunk,
                 n_score, m->cfg.vocab_size);
        return -1;
    }
    w->bytes = (int64_t)hlen + n_chunk * rec;
    memcpy(h, REF_MAGIC, 8);
    put32(h + 8, REF_VERSION);
    put32(h + 12, (uint32_t)hlen);
    put32(h + 16, (uint32_t)m->cfg.vocab_size);
    put32(h + 20, (uint32_t)p->ctx);
    put32(h + 24, (uint32_t)(p->ctx / 2));
    put32(h + 28, (uint32_t)n_score);
    put32(h + 32, (uint32_t)p->bos);
    put32(h + 36, p->open_runner && p->open_runner != rt_runner_open_cpu);
    put64(h + 40, (uint64_t)n_chunk);
    put64(h + 48, (uint64_t)n_tokens);
    tokens_sha256(tokens, n_tokens, h + 56);
    memcpy(h + 88, mh, strlen(mh));
    put32(h + 152, (uint32_t)lm);
    put32(h + 156, (uint32_t)lt);
    memcpy(h + REF_FIXED, mp, lm);
    memcpy(h + REF_FIXED + lm, tp, lt);
    put32(h + hlen - 4, crc32_of(h, hlen - 4));

    if (util_out_open(&w->out, w->path, err, err_len)) {
        free(h);
        return -1;
    }
    int rc = 0;
    if (fallocate(w->out.fd, 0, 0, (off_t)w->bytes) && errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL) {
        char size[32];
        snprintf(err, err_len, "%s: cannot reserve %s for %lld chunks: %s", w->path,
                 human_bytes(w->bytes, size, sizeof size), (long long)n_chunk, strerror(errno));
        rc = -1;
    } else
        rc = util_out_write(&w->out, h, hlen, err, err_len);
    free(h);
    return rc;
}

static int writer_chunk(ref_writer *w, float *logits, size_t n, char *err, size_t err_len)
{
    logits_to_le(logits, n);
    uint8_t crc[4];
    put32(crc, crc32_of(logits, n * sizeof *logits));
    int rc = util_out_write(&w->out, logits, n * sizeof *logits, err, err_len) || util_out_write(&w->out, crc, 4, err, err_len);
    logits_to_le(logits, n);
    return rc ? -1 : 0;
}

/* -- Reading -- */

static int open_fail(rt_ref_logits *f, char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int open_fail(rt_ref_logits *f, char *err, size_t err_len, const char *fmt, ...)
{
    int k = snprintf(err, err_len, "%s: ", f->path);
    va_list ap;
    va_start(ap, fmt);
    if (k >= 0 && (size_t)k < err_len) vsnprintf(err + k, err_len - (size_t)k, fmt, ap);
    va_end(ap);
    rt_ref_logits_close(f);
    return -1;
}

int rt_ref_logits_open(const char *path, rt_ref_logits **out, char *err, size_t err_len)
{
    *out = NULL;
    rt_ref_logits *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    rt_ref_info *in = &f->info;
    struct stat st;
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) return open_fail(f, err, err_len, "cannot open: %s", strerror(errno));
    if (fstat(f->fd, &st) || !S_ISREG(st.st_mode)) return open_fail(f, err, err_len, "not a regular file");
    in->file_bytes = (int64_t)st.st_size;
    uint8_t fixed[REF_FIXED];
    int r = read_at(f->fd, fixed, sizeof fixed, 0);
    if (r < 0) return open_fail(f, err, err_len, "read failed: %s", strerror(errno));
    if (in->file_bytes == 0) return open_fail(f, err, err_len, "empty file (0 bytes)");
    if (in->file_bytes < 8 || memcmp(fixed, REF_MAGIC, 8))
        return open_fail(f, err, err_len, "not a reference logits file (bitplan eval --save-logits writes them)");
    if (r) return open_fail(f, err, err_len, "truncated: %lld bytes, shorter than a header", (long long)in->file_bytes);
    uint32_t version = get32(fixed + 8), hlen = get32(fixed + 12), lm = get32(fixed + 152), lt = get32(fixed + 156);
    if (version != REF_VERSION)
        return open_fail(f, err, err_len, "format version %u, this bitplan reads version %u", version, REF_VERSION);
    if (lm > REF_MAX_PATH || lt > REF_MAX_PATH || hlen != REF_FIXED + lm + lt + 4)
        return open_fail(f, err, err_len, "corrupt header (its lengths disagree)");
    if ((int64_t)hlen > in->file_bytes)
        return open_fail(f, err, err_len, "truncated: %lld bytes, shorter than its %u-byte header",
                         (long long)in->file_bytes, hlen);
    uint8_t *h = malloc(hlen);
    in->model_path = calloc(1, lm + 1);
    in->text_path = calloc(1, lt + 1);
    if (!h || !in->model_path || !in->text_path) {
        free(h);
        return open_fail(f, err, err_len, "out of memory");
    }
    if ((r = read_at(f->fd, h, hlen, 0))) {
        free(h);
        return open_fail(f, err, err_len, "read failed: %s", r < 0 ? strerror(errno) : "the file shrank");
    }
    int crc_ok = get32(h + hlen - 4) == crc32_of(h, hlen - 4);
    in->vocab = (int32_t)get32(h + 16);
    in->ctx = (int32_t)get32(h + 20);
    in->first = (int32_t)get32(h + 24);
    in->n_score = (int32_t)get32(h + 28);
    in->bos = (int32_t)get32(h + 32);
    in->device = (int32_t)get32(h + 36);
    in->chunks = (int64_t)get64(h + 40);
    in->n_tokens = (int64_t)get64(h + 48);
    memcpy(in->tokens_sha256, h + 56, 32);
    int hash_ok = 1;  /* 64 lowercase hex digits, or 64 zero bytes */
    for (int i = 0; i < 64; i++) {
        uint8_t c = h[88 + i];
        hash_ok &= h[88] ? (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') : c == 0;
    }
    if (h[88]) memcpy(in->model_hash, h + 88, 64);
    memcpy(in->model_path, h + REF_FIXED, lm);
    memcpy(in->text_path, h + REF_FIXED + lm, lt);
    free(h);
    if (!crc_ok) return open_fail(f, err, err_len, "corrupt header (checksum mismatch)");
    if (!hash_ok || in->vocab < 1 || in->ctx < 4 || in->first != in->ctx / 2 ||
        in->n_score != in->ctx - 1 - in->first || in->bos < -1 || in->bos >= in->vocab || in->device < 0 ||
        in->device > 1 || in->chunks < 1 || in->n_tokens < 0 || in->n_tokens / in->ctx < in->chunks)
        return open_fail(f, err, err_len, "corrupt header (impossible values)");
    f->data_offset = hlen;
    f->chunk_bytes = chunk_record_bytes(in->vocab, in->n_score);
    if (f->chunk_bytes < 0 || in->chunks > (INT64_MAX - (int64_t)hlen) / f->chunk_bytes)
        return open_fail(f, err, err_len, "corrupt header (sizes past 63 bits)");
    int64_t want = (int64_t)hlen + in->chunks * f->chunk_bytes;
    if (in->file_bytes < want)
        return open_fail(f, err, err_len,
                         "truncated: %lld bytes, its header says %lld (%lld chunks of %d x %d logits); save it again",
                         (long long)in->file_bytes, (long long)want, (long long)in->chunks, in->n_score, in->vocab);
    if (in->file_bytes > want)
        return open_fail(f, err, err_len, "%lld bytes, %lld more than its header says", (long long)in->file_bytes,
                         (long long)(in->file_bytes - want));
    *out = f;
    return 0;
}

const rt_ref_info *rt_ref_logits_info(const rt_ref_logits *f) { return &f->info; }

void rt_ref_logits_close(rt_ref_logits *f)
{
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    free(f->info.model_path);
    free(f->info.text_path);
    free(f->path);
    free(f);
}

/* Chunk c's logits into x[n_score][vocab], checked against its CRC; asks the kernel
 * to read chunk c + 1 ahead while this one is evaluated. */
static int ref_read_chunk(rt_ref_logits *f, int64_t c, float *x, char *err, size_t err_len)
{
    int64_t off = f->data_offset + c * f->chunk_bytes;
    size_t n = (size_t)f->chunk_bytes - 4;
    uint8_t crc[4];
    if (c + 1 < f->info.chunks) posix_fadvise(f->fd, (off_t)(off + f->chunk_bytes), (off_t)f->chunk_bytes,
                                              POSIX_FADV_WILLNEED);
    int r = read_at(f->fd, x, n, off);
    if (!r) r = read_at(f->fd, crc, 4, off + (int64_t)n);
    if (r) {
        snprintf(err, err_len, "%s: chunk %lld: %s", f->path, (long long)c + 1,
                 r < 0 ? strerror(errno) : "truncated (the file shrank while read)");
        return -1;
    }
    if (get32(crc) != crc32_of(x, n)) {
        snprintf(err, err_len, "%s: chunk %lld of %lld is corrupt (checksum mismatch); save it again", f->path,
                 (long long)c + 1, (long long)f->info.chunks);
        return -1;
    }
    logits_to_le(x, n / 4);
    return 0;
}

/* -- Matching a file to an evaluation -- */

static int64_t chunks_of(int64_t n_tokens, const rt_eval_params *p)
{
    int64_t n = p->ctx > 0 ? n_tokens / p->ctx : 0;
    return p->max_chunks > 0 && p->max_chunks < n ? p->max_chunks : n;
}

static void bos_name(int32_t bos, char *buf, size_t cap)
{
    if (bos < 0) snprintf(buf, cap, "none");
    else snprintf(buf, cap, "%d", bos);
}

int rt_ref_logits_match(const rt_ref_logits *f, const rt_model *m, const int32_t *tokens, int64_t n_tokens,
                        const rt_eval_params *p, char *err, size_t err_len)
{
    const rt_ref_info *in = &f->info;
    char diff[1024] = "", *d = diff, a[16], b[16];
    size_t cap = sizeof diff;
#define ADD(...)                                                                              \
    do {                                                                                      \
        int k_ = snprintf(d, cap, "%s", d == diff ? "" : "; ");                                \
        if (k_ > 0 && (size_t)k_ < cap) d += k_, cap -= (size_t)k_;                           \
        k_ = snprintf(d, cap, __VA_ARGS__);                                                   \
        if (k_ > 0 && (size_t)k_ < cap) d += k_, cap -= (size_t)k_;                           \
    } while (0)
    uint8_t sha[32];
    tokens_sha256(tokens, n_tokens, sha);
    if (in->n_tokens != n_tokens || memcmp(sha, in->tokens_sha256, 32)) {
        char hx[65], hy[65];
        mdl_sha256_hex(in->tokens_sha256, hx);
        mdl_sha256_hex(sha, hy);
        ADD("another text or tokenizer (%lld tokens, SHA-256 %.12s there%s%s%s; %lld, %.12s here)",
            (long long)in->n_tokens, hx, in->text_path[0] ? ", from '" : "", in->text_path,
            in->text_path[0] ? "'" : "", (long long)n_tokens, hy);
    }
    if (in->vocab != m->cfg.vocab_size) ADD("vocabulary %d there, %d here", in->vocab, m->cfg.vocab_size);
    if (in->ctx != p->ctx) ADD("ctx %d there, %d here", in->ctx, p->ctx);
    if (in->chunks != chunks_of(n_tokens, p))
        ADD("%lld chunks there, %lld here", (long long)in->chunks, (long long)chunks_of(n_tokens, p));
    if (in->bos != p->bos) {
        bos_name(in->bos, a, sizeof a);
        bos_name(p->bos, b, sizeof b);
        ADD("BOS %s there, %s here", a, b);
    }
#undef ADD
    if (d == diff) return 0;
    snprintf(err, err_len, "%s was saved for another evaluation: %s", f->path, diff);
    return -1;
}

/* ==== The evaluation ==== */

static int check_inputs(const rt_model *m, const rt_model *ref, const int32_t *tokens, int64_t n_tokens,
                        const rt_eval_params *p, char *err, size_t err_len)
{
    if (p->ctx < 4) { snprintf(err, err_len, "context %d is too small (at least 4)", p->ctx); return -1; }
    if (n_tokens < 2 * (int64_t)p->ctx) {
        snprintf(err, err_len, "the text has %lld tokens; a context of %d needs at least %lld",
                 (long long)n_tokens, p->ctx, 2 * (long long)p->ctx);
        return -1;
    }
    if (ref && ref->cfg.vocab_size != m->cfg.vocab_size) {
        snprintf(err, err_len, "the reference's vocabulary has %d tokens, the model's %d", ref->cfg.vocab_size,
                 m->cfg.vocab_size);
        return -1;
    }
    if (p->bos >= m->cfg.vocab_size) { snprintf(err, err_len, "BOS token %d is out of range", p->bos); return -1; }
    for (int64_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size) {
            snprintf(err, err_len, "token %lld has id %d, outside the vocabulary of %d", (long long)i, tokens[i],
                     m->cfg.vocab_size);
            return -1;
        }
    return 0;
}

int rt_eval(const rt_model *m, const rt_model *ref, const int32_t *tokens, int64_t n_tokens,
            const rt_eval_params *p, rt_eval_result *out, char *err, size_t err_len)
{
    memset(out, 0, sizeof *out);
    if ((ref != NULL) + (p->ref_logits != NULL) + (p->save_logits != NULL) > 1) {
        snprintf(err, err_len, "a reference model, reference logits and saving logits exclude each other");
        return -1;
    }
    if (check_inputs(m, ref, tokens, n_tokens, p, err, err_len)) return -1;
    if (p->ref_logits && rt_ref_logits_match(p->ref_logits, m, tokens, n_tokens, p, err, err_len)) return -1;
    int ctx = p->ctx, first = ctx / 2, n_score = ctx - 1 - first, vocab = m->cfg.vocab_size;
    int64_t n_chunk = chunks_of(n_tokens, p);
    int with_ref = ref || p->ref_logits;
    int rc = -1;
    eval_run run = {0}, rrun = {0};
    eval_sums sums = {0};
    ref_writer w = {0};
    int32_t *chunk = malloc((size_t)ctx * sizeof *chunk);
    if (!chunk) { snprintf(err, err_len, "out of memory for a context of %d", ctx); goto done; }
    if (run_open(&run, m, p->open_runner, ctx, n_score, err, err_len) ||
        (ref && run_open(&rrun, ref, NULL, ctx, n_score, err, err_len)))
        goto done;
    if (p->ref_logits && !(rrun.logits = malloc((size_t)n_score * vocab * sizeof(float)))) {
        snprintf(err, err_len, "out of memory for a context of %d", ctx);
        goto done;
    }
    if (p->save_logits && writer_open(&w, p, m, tokens, n_tokens, n_chunk, n_score, err, err_len)) goto done;
    double t0 = util_now_s(), t_model = 0;
    for (int64_t c = 0; c < n_chunk; c++) {
        memcpy(chunk, tokens + c * ctx, (size_t)ctx * sizeof *chunk);
        if (p->bos >= 0) chunk[0] = p->bos;
        if (p->ref_logits && ref_read_chunk(p->ref_logits, c, rrun.logits, err, err_len)) goto done;
        double t1 = util_now_s();
        if (run_chunk(&run, chunk, ctx, first, n_score, err, err_len)) goto done;
        t_model += util_now_s() - t1;
        if (ref && run_chunk(&rrun, chunk, ctx, first, n_score, err, err_len)) goto done;
        if (p->save_logits && writer_chunk(&w, run.logits, (size_t)n_score * vocab, err, err_len)) goto done;
        score_chunk(&run, with_ref ? &rrun : NULL, chunk + first + 1, n_score, &sums);
        if (p->progress) {
            rt_eval_progress at = {c + 1, n_chunk, exp(sums.nll / (double)sums.count), (double)(c + 1) * ctx / t_model,
                                   (util_now_s() - t0) / (double)(c + 1) * (double)(n_chunk - c - 1)};
            p->progress(p->progress_ctx, &at);
        }
    }
    if (p->save_logits && util_out_commit(&w.out, err, err_len)) goto done;
    finish(&sums, with_ref, out);
    out->seconds = util_now_s() - t0;
    out->tokens_per_s = t_model > 0 ? (double)n_chunk * ctx / t_model : 0;
    out->logits_bytes = p->save_logits ? w.bytes : p->ref_logits ? p->ref_logits->info.file_bytes : 0;
    rc = 0;
done:
    free(chunk);
    if (p->save_logits) util_out_abort(&w.out); /* removes the temporary file unless committed */
    run_close(&run);
    run_close(&rrun);
    return rc;
}
