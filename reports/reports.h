/*
 * reports/ — what a measurement and its plans mean, for people: one self-contained
 * HTML page with inline SVG charts (sensitivity heat map and error curves, the bits
 * of a plan along the depth of the model, the Pareto curve of a sweep with measured
 * KL divergence and perplexity, the VRAM budget of a plan), and the same content as
 * Markdown, CSV and JSON.
 *
 * Reads a db_report (db/); never speaks SQL, never touches the network, never loads
 * anything into the page from outside it (no scripts, fonts or images).
 *
 *     rep_params p; rep_params_init(&p); p.format = REP_HTML;
 *     rep_report *r; char err[256];
 *     if (rep_build(data, &p, &r, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
 *     sb_buf b = {0};
 *     if (!rep_write(&b, r, p.format)->oom) fwrite(b.s, 1, b.len, f);
 *     free(b.s); rep_report_free(r);
 *
 * CSV is one long table, one number (or string) per row:
 *     section,plan,eval,tensor,layer,class,option,quantity,value
 * section is summary | sensitivity | measurement | probe | allocation | plan | pareto |
 * vram | eval | command | note; plan and eval are ids, option is the option's name,
 * quantity names the number (rel_err, bits, bpw, predicted, objective, kld, ppl, a
 * memory term, ...); empty cells where a column does not apply.
 */
#ifndef BITPLAN_REPORTS_H
#define BITPLAN_REPORTS_H

#include <stddef.h>
#include <stdint.h>

#include "db/db.h"
#include "util/util.h"

/* ==== Text the writers share (the string builder is util's sb_buf) ==== */

sb_buf *rep_cat_html(sb_buf *b, const char *s);  /* escaped for text and attributes */
sb_buf *rep_cat_exact(sb_buf *b, double v);      /* shortest text that reads back as v; "nan" */

/* ==== Reports ==== */

typedef enum { REP_HTML = 0, REP_MD, REP_CSV, REP_JSON } rep_format;

typedef struct {
    rep_format format;
    int64_t plan_id;        /* plan to show (allocation, VRAM, sweep); 0: the newest */
    double bpw;             /* heat-map option: nearest mean bpw to this (default 4) */
    const char *source;     /* the database's path, shown in the summary (may be NULL) */
} rep_params;
void rep_params_init(rep_params *p);
/* "html", "md", "csv", "json" -> 0 and *f; -1 otherwise. */
int rep_format_parse(const char *s, rep_format *f);

typedef struct rep_report rep_report;

/* Works out the report's content from the data. Fails (-1, message in err) when
 * nothing can be reported (no measurement, plan or evaluation), or p->plan_id is not
 * one of data's plans. What is missing but not fatal becomes a note. */
int rep_build(const db_report *data, const rep_params *p, rep_report **out, char *err, size_t err_len);
void rep_report_free(rep_report *r);
int rep_n_notes(const rep_report *r);
const char *rep_note(const rep_report *r, int i);

/* Appends the whole document in format f to b; returns b. */
sb_buf *rep_write(sb_buf *b, const rep_report *r, rep_format f);

#endif
