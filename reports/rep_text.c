/*
 * reports/rep_text.c — the report as Markdown (for a model card: tables, no charts),
 * CSV (one long table, one number or string per row; columns in reports.h) and JSON
 * (one object; exact numbers, null for missing ones). The same content as the HTML,
 * from the same rep_report. Never reads the database, never chooses what to show.
 */
#include "rep_int.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* ==== Markdown ==== */

static rep_buf *md_text(rep_buf *b, const char *s)
{
    for (const char *p = s; *p; p++) {
        if (*p == '|' || *p == '\\' || *p == '*' || *p == '_' || *p == '`') rep_catn(b, "\\", 1);
        rep_catn(b, *p == '\n' ? " " : p, 1);
    }
    return b;
}

static rep_buf *md_num(rep_buf *b, double v)
{
    char s[32];
    return rep_cat(b, isnan(v) ? "" : rep_sig(s, v, 4));
}

static void md_grid(rep_buf *b, const rep_report *r, int alloc)
{
    const db_report *d = r->d;
    rep_cat(b, "| layer |");
    for (int ci = 0; ci < r->n_cls; ci++) rep_catf(b, " %s |", rep_class_names[r->cls[ci]]);
    rep_cat(b, "\n|---:|");
    for (int ci = 0; ci < r->n_cls; ci++) rep_cat(b, "---:|");
    rep_cat(b, "\n");
    for (int l = 0; l < r->n_layers + r->has_head; l++) {
        int layer = l < r->n_layers ? l : -1;
        if (layer >= 0) rep_catf(b, "| %d |", layer);
        else rep_cat(b, "| head |");
        for (int ci = 0; ci < r->n_cls; ci++) {
            int t = rep_tensor_at(r, layer, r->cls[ci]);
            double v = NAN;
            if (t >= 0 && alloc && r->alloc_choice[t] >= 0) v = rep_tensor_bpw(d, t, d->plans[r->alloc].choices[r->alloc_choice[t]].bits);
            if (t >= 0 && !alloc && r->sel_meas[t] >= 0) v = d->meas[r->sel_meas[t]].rel_err;
            md_num(rep_cat(b, " "), v);
            rep_cat(b, " |");
        }
        rep_cat(b, "\n");
    }
}

static void md_plans(rep_buf *b, const rep_report *r, const int *which, int n)
{
    rep_cat(b, "| plan | kind | target | metric | achieved bpw | file bpw | objective | gap | measured KLD | measured PPL | sweep |\n"
               "|---:|:---|---:|:---|---:|---:|---:|---:|---:|---:|:---|\n");
    for (int k = 0; k < n; k++) {
        int i = which ? which[k] : k, e = rep_plan_eval(r, i, 1), q = rep_plan_eval(r, i, 0);
        const db_rep_plan *p = &r->d->plans[i];
        rep_catf(b, "| %lld | %s | ", (long long)p->id, p->kind);
        md_num(b, p->target);
        rep_catf(b, " | %s | ", p->metric);
        md_num(rep_cat(md_num(rep_cat(md_num(rep_cat(md_num(b, p->achieved_bpw), " | "), p->file_bpw), " | "), p->objective), " | "), p->gap);
        md_num(rep_cat(md_num(rep_cat(b, " | "), e >= 0 ? r->d->evals[e].kld : NAN), " | "), q >= 0 ? r->d->evals[q].ppl : NAN);
        md_text(rep_cat(b, " | "), p->sweep);
        rep_cat(b, " |\n");
    }
}

static void md_summary(rep_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    rep_cat(md_text(rep_cat(b, "# bitplan report: "), base_name(d->model_path)), "\n\n| | |\n|:---|:---|\n");
    rep_cat(md_text(rep_cat(b, "| model | "), d->model_path), " |\n");
    rep_catf(b, "| architecture | %s |\n| parameters | %lld |\n| linear tensors | %d in %d layers |\n", d->arch,
             (long long)d->n_params, d->n_tensors, r->n_layers);
    rep_catf(b, "| calibration | #%lld: %d × %d tokens, damp %g, %s |\n", (long long)d->calib_id, d->calib_rows, d->calib_ctx,
             d->damp, d->calib_status);
    rep_cat(md_text(rep_cat(b, "| calibration text | "), d->calib_sources), " |\n");
    rep_catf(b, "| measurements | %d (%d tensors × %d options) |\n| plans | %d |\n| evaluations | %d |\n\n", d->n_meas,
             r->n_measured, d->n_options, d->n_plans, d->n_evals);
    for (int i = 0; i < r->n_notes; i++) rep_cat(md_text(rep_cat(b, "> Note: "), r->notes[i]), "\n>\n");
    if (r->n_notes) rep_cat(b, "\n");
}

static void md_vram(rep_buf *b, const rep_report *r)
{
    const db_rep_plan *p = &r->d->plans[r->vram];
    char s[32];
    rep_catf(b, "## Memory of plan #%lld\n\n| term | bytes | size | of budget |\n|:---|---:|---:|---:|\n", (long long)p->id);
    for (int i = 0; i < p->n_terms; i++) {
        md_text(rep_cat(b, "| "), p->terms[i].name);
        rep_catf(b, " | %.0f | %s | ", p->terms[i].bytes, rep_bytes(s, p->terms[i].bytes));
        if (r->budget > 0) rep_catf(b, "%.1f%%", 100 * p->terms[i].bytes / r->budget);
        rep_cat(b, " |\n");
    }
    rep_catf(b, "| **sum of terms** | %.0f | %s | |\n\n", r->vtotal, rep_bytes(s, r->vtotal));
}

rep_buf *rep_write_md(rep_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    md_summary(b, r);
    if (r->sel >= 0) {
        rep_catf(b, "## Sensitivity\n\nRelative output error of each tensor at **%s** (about %.2f bpw). "
                    "Breaks first:", d->options[r->sel].name, r->opt_bpw[r->sel]);
        for (int i = 0; i < r->n_top; i++)
            md_num(rep_cat(md_text(rep_cat(b, i ? ", " : " "), d->tensors[r->top[i]].name), " "), d->meas[r->sel_meas[r->top[i]]].rel_err);
        rep_cat(b, ".\n\n");
        md_grid(b, r, 0);
        rep_cat(b, "\n");
    }
    if (r->alloc >= 0) {
        const db_rep_plan *p = &d->plans[r->alloc];
        rep_catf(b, "## Allocation of plan #%lld\n\nBits per weight per tensor; achieved %s bpw.\n\n", (long long)p->id, "");
        md_num(b, p->achieved_bpw);
        md_grid(rep_cat(b, "\n\n"), r, 1);
        rep_cat(b, "\n");
    }
    if (r->sweep) {
        md_text(rep_cat(b, "## Pareto curve of sweep "), r->sweep);
        rep_cat(b, "\n\n");
        md_plans(b, r, r->sweep_plans, r->n_sweep);
        if (r->base_eval >= 0) md_num(rep_cat(b, "\nUnquantized perplexity: "), d->evals[r->base_eval].ppl);
        rep_cat(b, "\n\n");
    }
    if (r->vram >= 0 && d->plans[r->vram].memory_ok) md_vram(b, r);
    if (d->n_plans) md_plans(rep_cat(b, "## Plans\n\n"), r, NULL, d->n_plans), rep_cat(b, "\n");
    if (d->n_evals) {
        rep_cat(b, "## Evaluations\n\n| eval | plan | subject | bpw | PPL | KLD | top-1 | tokens | ctx |\n|---:|---:|:---|---:|---:|---:|---:|---:|---:|\n");
        for (int i = 0; i < d->n_evals; i++) {
            const db_rep_eval *e = &d->evals[i];
            rep_catf(b, "| %lld | %s", (long long)e->id, e->plan_id ? "#" : "unquantized");
            if (e->plan_id) rep_catf(b, "%lld", (long long)e->plan_id);
            md_text(rep_cat(b, " | "), base_name(e->subject));
            md_num(rep_cat(md_num(rep_cat(md_num(rep_cat(md_num(rep_cat(b, " | "), e->bpw), " | "), e->ppl), " | "), e->kld), " | "), e->top1);
            rep_catf(b, " | %lld | %d |\n", (long long)e->tokens, e->ctx);
        }
        rep_cat(b, "\n");
    }
    rep_cat(b, "## Commands\n\n```\n");
    for (int i = 0; i < d->n_plans; i++) rep_catf(b, "# plan %lld\n%s\n", (long long)d->plans[i].id, d->plans[i].command);
    for (int i = 0; i < d->n_evals; i++) rep_catf(b, "# eval %lld\n%s\n", (long long)d->evals[i].id, d->evals[i].command);
    return rep_cat(b, "```\n\nCharts: `bitplan report --format html`.\n");
}

/* ==== CSV ==== */

static rep_buf *csv_field(rep_buf *b, const char *s)
{
    if (!strpbrk(s, ",\"\n\r")) return rep_cat(b, s);
    rep_cat(b, "\"");
    for (const char *p = s; *p; p++) rep_catn(b, p, 1), *p == '"' ? rep_cat(b, "\"") : b;
    return rep_cat(b, "\"");
}

/* One row; plan 0, eval 0, tensor -1, option -1 leave their cells empty; text, if not NULL,
 * is the value instead of v. */
static void csv_row(rep_buf *b, const rep_report *r, const char *section, int64_t plan, int64_t eval, int tensor,
                    int option, const char *quantity, double v, const char *text)
{
    const db_report *d = r->d;
    rep_catf(b, "%s,", section);
    if (plan) rep_catf(b, "%lld", (long long)plan);
    rep_cat(b, ",");
    if (eval) rep_catf(b, "%lld", (long long)eval);
    rep_cat(b, ",");
    if (tensor >= 0) {
        csv_field(b, d->tensors[tensor].name);
        rep_catf(b, ",%d,%s,", d->tensors[tensor].layer, d->tensors[tensor].cls);
    } else rep_cat(b, ",,,");
    if (option >= 0) csv_field(b, d->options[option].name);
    csv_field(rep_cat(b, ","), quantity);
    rep_cat(b, ",");
    if (text) csv_field(b, text);
    else if (!isnan(v)) rep_cat_exact(b, v);
    rep_cat(b, "\n");
}

static void csv_plans(rep_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    for (int i = 0; i < d->n_plans; i++) {
        const db_rep_plan *p = &d->plans[i];
        csv_row(b, r, "plan", p->id, 0, -1, -1, "kind", NAN, p->kind);
        csv_row(b, r, "plan", p->id, 0, -1, -1, "metric", NAN, p->metric);
        csv_row(b, r, "plan", p->id, 0, -1, -1, "target", p->target, NULL);
        csv_row(b, r, "plan", p->id, 0, -1, -1, "achieved_bpw", p->achieved_bpw, NULL);
        csv_row(b, r, "plan", p->id, 0, -1, -1, "file_bpw", p->file_bpw, NULL);
        csv_row(b, r, "plan", p->id, 0, -1, -1, "total_bits", (double)p->total_bits, NULL);
        csv_row(b, r, "plan", p->id, 0, -1, -1, "objective", p->objective, NULL);
        csv_row(b, r, "plan", p->id, 0, -1, -1, "gap", p->gap, NULL);
        csv_row(b, r, "plan", p->id, 0, -1, -1, "solve_seconds", p->solve_seconds, NULL);
        if (p->sweep[0]) csv_row(b, r, "plan", p->id, 0, -1, -1, "sweep", NAN, p->sweep);
        csv_row(b, r, "command", p->id, 0, -1, -1, "plan", NAN, p->command);
    }
}

static void csv_evals(rep_buf *b, const rep_report *r)
{
    static const char *const names[] = {"bpw", "ppl", "ppl_stderr", "kld", "kld_stderr", "top1"};
    const db_report *d = r->d;
    for (int i = 0; i < d->n_evals; i++) {
        const db_rep_eval *e = &d->evals[i];
        double v[] = {e->bpw, e->ppl, e->ppl_stderr, e->kld, e->kld_stderr, e->top1};
        for (int k = 0; k < 6; k++)
            if (!isnan(v[k])) csv_row(b, r, "eval", e->plan_id, e->id, -1, -1, names[k], v[k], NULL);
        csv_row(b, r, "command", e->plan_id, e->id, -1, -1, "eval", NAN, e->command);
    }
}

rep_buf *rep_write_csv(rep_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    rep_cat(b, "section,plan,eval,tensor,layer,class,option,quantity,value\n");
    csv_row(b, r, "summary", 0, 0, -1, -1, "model", NAN, d->model_path);
    csv_row(b, r, "summary", 0, 0, -1, -1, "n_params", (double)d->n_params, NULL);
    csv_row(b, r, "summary", 0, 0, -1, -1, "calibration", (double)d->calib_id, NULL);
    for (int t = 0; r->sel >= 0 && t < d->n_tensors; t++) {
        int m = r->sel_meas[t];
        if (m < 0) continue;
        csv_row(b, r, "sensitivity", 0, 0, t, r->sel, "rel_err", d->meas[m].rel_err, NULL);
        csv_row(b, r, "sensitivity", 0, 0, t, r->sel, "bpw", rep_tensor_bpw(d, t, d->meas[m].bits), NULL);
    }
    for (int i = 0; i < d->n_meas; i++) {
        const db_rep_meas *m = &d->meas[i];
        csv_row(b, r, "measurement", 0, 0, m->tensor, m->option, "bits", (double)m->bits, NULL);
        csv_row(b, r, "measurement", 0, 0, m->tensor, m->option, "rel_err", m->rel_err, NULL);
        if (!isnan(m->rtn_err)) csv_row(b, r, "measurement", 0, 0, m->tensor, m->option, "rtn_err", m->rtn_err, NULL);
    }
    for (int i = 0; i < d->n_probes; i++) csv_row(b, r, "probe", 0, 0, d->probes[i].tensor, d->probes[i].option, "kld", d->probes[i].kld, NULL);
    for (int t = 0; r->alloc >= 0 && t < d->n_tensors; t++) {
        if (r->alloc_choice[t] < 0) continue;
        const db_rep_plan *p = &d->plans[r->alloc];
        const db_rep_choice *c = &p->choices[r->alloc_choice[t]];
        csv_row(b, r, "allocation", p->id, 0, t, c->option, "bits", (double)c->bits, NULL);
        csv_row(b, r, "allocation", p->id, 0, t, c->option, "bpw", rep_tensor_bpw(d, t, c->bits), NULL);
        csv_row(b, r, "allocation", p->id, 0, t, c->option, "predicted", c->predicted, NULL);
    }
    for (int k = 0; k < r->n_sweep; k++) {
        const db_rep_plan *p = &d->plans[r->sweep_plans[k]];
        csv_row(b, r, "pareto", p->id, 0, -1, -1, "achieved_bpw", p->achieved_bpw, NULL);
        csv_row(b, r, "pareto", p->id, 0, -1, -1, "objective", p->objective, NULL);
        if (r->sweep_kld_eval[k] >= 0) csv_row(b, r, "pareto", p->id, 0, -1, -1, "kld", d->evals[r->sweep_kld_eval[k]].kld, NULL);
        if (r->sweep_ppl_eval[k] >= 0) csv_row(b, r, "pareto", p->id, 0, -1, -1, "ppl", d->evals[r->sweep_ppl_eval[k]].ppl, NULL);
    }
    if (r->vram >= 0)
        for (int i = 0; i < d->plans[r->vram].n_terms; i++)
            csv_row(b, r, "vram", d->plans[r->vram].id, 0, -1, -1, d->plans[r->vram].terms[i].name, d->plans[r->vram].terms[i].bytes, NULL);
    csv_plans(b, r);
    csv_evals(b, r);
    for (int i = 0; i < r->n_notes; i++) csv_row(b, r, "note", 0, 0, -1, -1, "note", NAN, r->notes[i]);
    return b;
}

/* ==== JSON ==== */

static rep_buf *js(rep_buf *b, const char *s)
{
    rep_cat(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') rep_catf(b, "\\%c", *p);
        else if (*p < 0x20) rep_catf(b, "\\u%04x", *p);
        else rep_catn(b, (const char *)p, 1);
    }
    return rep_cat(b, "\"");
}

static rep_buf *jnum(rep_buf *b, double v) { return isnan(v) || isinf(v) ? rep_cat(b, "null") : rep_cat_exact(b, v); }

/* "key": number, with a leading comma unless first. */
static rep_buf *kv_num(rep_buf *b, const char *k, double v) { return jnum(rep_catf(b, ",\"%s\":", k), v); }
static rep_buf *kv_str(rep_buf *b, const char *k, const char *v) { return js(rep_catf(b, ",\"%s\":", k), v); }

static void json_tensor_ref(rep_buf *b, const rep_report *r, int t)
{
    const db_rep_tensor *tn = &r->d->tensors[t];
    js(rep_cat(b, "\"tensor\":"), tn->name);
    rep_catf(b, ",\"layer\":%d,\"class\":\"%s\",\"rows\":%lld,\"cols\":%lld", tn->layer, tn->cls, (long long)tn->rows, (long long)tn->cols);
}

static void json_head(rep_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    rep_cat(b, "{\"bitplan_report\":1");
    kv_str(b, "source", r->p.source ? r->p.source : "");
    kv_str(kv_str(kv_str(rep_catf(b, ",\"model\":{\"id\":%lld", (long long)d->model_id), "path", d->model_path), "sha256", d->model_hash), "arch", d->arch);
    kv_str(kv_num(b, "n_params", (double)d->n_params), "config_json", d->config_json);
    rep_catf(b, "},\"calibration\":{\"id\":%lld,\"rows\":%d,\"ctx\":%d", (long long)d->calib_id, d->calib_rows, d->calib_ctx);
    kv_str(kv_str(kv_str(kv_num(b, "damp", d->damp), "status", d->calib_status), "sources", d->calib_sources), "tokenizer", d->tokenizer);
    rep_cat(b, "},\"notes\":[");
    for (int i = 0; i < r->n_notes; i++) js(rep_cat(b, i ? "," : ""), r->notes[i]);
    rep_cat(b, "],\"options\":[");
    for (int o = 0; o < d->n_options; o++) {
        const db_rep_option *op = &d->options[o];
        js(rep_catf(b, "%s{\"id\":%lld,\"name\":", o ? "," : "", (long long)op->id), op->name);
        rep_catf(b, ",\"bits_lo\":%d,\"bits_hi\":%d", op->bits_lo, op->bits_hi);
        kv_num(b, "hi_share", op->hi_share);
        rep_catf(b, ",\"group_size\":%d,\"scale_fmt\":%d,\"n_tensors\":%d", op->group_size, op->scale_fmt, r->opt_n[o]);
        rep_cat(kv_num(b, "mean_bpw", r->opt_bpw[o]), "}");
    }
    rep_cat(b, "]");
}

static void json_sensitivity(rep_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    if (r->sel < 0) { rep_cat(b, ",\"sensitivity\":null"); return; }
    rep_catf(b, ",\"sensitivity\":{\"option\":%lld", (long long)d->options[r->sel].id);
    kv_str(b, "option_name", d->options[r->sel].name);
    kv_num(b, "mean_bpw", r->opt_bpw[r->sel]);
    rep_catf(b, ",\"binned\":%s,\"tensors\":[", r->binned ? "true" : "false");
    int first = 1;
    for (int t = 0; t < d->n_tensors; t++) {
        int m = r->sel_meas[t];
        if (m < 0) continue;
        json_tensor_ref(rep_cat(b, first ? "{" : ",{"), r, t);
        rep_catf(b, ",\"bits\":%lld", (long long)d->meas[m].bits);
        kv_num(kv_num(kv_num(b, "bpw", rep_tensor_bpw(d, t, d->meas[m].bits)), "rel_err", d->meas[m].rel_err), "rtn_err", d->meas[m].rtn_err);
        rep_cat(b, "}");
        first = 0;
    }
    rep_cat(b, "],\"breaks_first\":[");
    for (int i = 0; i < r->n_top; i++) js(rep_cat(b, i ? "," : ""), d->tensors[r->top[i]].name);
    rep_cat(b, "],\"curves\":[");
    for (int i = 0; i < r->n_curves; i++) {
        const rep_curve *c = &r->curves[i];
        rep_catf(b, "%s{\"class\":\"%s\",\"layer_lo\":%d,\"layer_hi\":%d,\"tensor\":", i ? "," : "", rep_class_names[c->cls], c->layer_lo, c->layer_hi);
        if (c->tensor >= 0) js(b, d->tensors[c->tensor].name);
        else rep_cat(b, "null");
        rep_cat(b, ",\"points\":[");
        for (int k = 0; k < c->n; k++) rep_cat(jnum(rep_cat(jnum(rep_cat(b, k ? ",[" : "["), c->bpw[k]), ","), c->err[k]), "]");
        rep_cat(b, "]}");
    }
    rep_cat(b, "]}");
}

static void json_measurements(rep_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    rep_cat(b, ",\"measurements\":[");
    for (int i = 0; i < d->n_meas; i++) {
        const db_rep_meas *m = &d->meas[i];
        json_tensor_ref(rep_cat(b, i ? ",{" : "{"), r, m->tensor);
        rep_catf(b, ",\"option\":%lld,\"bits\":%lld", (long long)d->options[m->option].id, (long long)m->bits);
        rep_cat(kv_num(kv_num(kv_num(b, "bpw", rep_tensor_bpw(d, m->tensor, m->bits)), "rel_err", m->rel_err), "rtn_err", m->rtn_err), "}");
    }
    rep_cat(b, "],\"probes\":[");
    for (int i = 0; i < d->n_probes; i++) {
        const db_rep_probe *p = &d->probes[i];
        json_tensor_ref(rep_cat(b, i ? ",{" : "{"), r, p->tensor);
        rep_catf(b, ",\"option\":%lld", (long long)d->options[p->option].id);
        rep_cat(kv_num(kv_num(b, "kld", p->kld), "rel_err", p->rel_err), "}");
    }
    rep_cat(b, "]");
}

static void json_allocation(rep_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    if (r->alloc < 0) { rep_cat(b, ",\"allocation\":null"); return; }
    const db_rep_plan *p = &d->plans[r->alloc];
    rep_catf(b, ",\"allocation\":{\"plan\":%lld,\"choices\":[", (long long)p->id);
    int first = 1;
    for (int t = 0; t < d->n_tensors; t++) {
        if (r->alloc_choice[t] < 0) continue;
        const db_rep_choice *c = &p->choices[r->alloc_choice[t]];
        json_tensor_ref(rep_cat(b, first ? "{" : ",{"), r, t);
        rep_catf(b, ",\"option\":%lld,\"option_name\":", (long long)d->options[c->option].id);
        js(b, d->options[c->option].name);
        rep_catf(b, ",\"bits\":%lld", (long long)c->bits);
        rep_cat(kv_num(kv_num(b, "bpw", rep_tensor_bpw(d, t, c->bits)), "predicted", c->predicted), "}");
        first = 0;
    }
    rep_cat(b, "]}");
}

static void json_pareto_vram(rep_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    if (!r->sweep) rep_cat(b, ",\"pareto\":null");
    else {
        js(rep_cat(b, ",\"pareto\":{\"sweep\":"), r->sweep);
        kv_num(b, "unquantized_ppl", r->base_eval >= 0 ? d->evals[r->base_eval].ppl : NAN);
        rep_cat(b, ",\"points\":[");
        for (int k = 0; k < r->n_sweep; k++) {
            const db_rep_plan *p = &d->plans[r->sweep_plans[k]];
            int ek = r->sweep_kld_eval[k], ep = r->sweep_ppl_eval[k];
            rep_catf(b, "%s{\"plan\":%lld", k ? "," : "", (long long)p->id);
            kv_num(kv_num(b, "achieved_bpw", p->achieved_bpw), "objective", p->objective);
            kv_num(kv_num(b, "kld", ek >= 0 ? d->evals[ek].kld : NAN), "ppl", ep >= 0 ? d->evals[ep].ppl : NAN);
            rep_cat(b, "}");
        }
        rep_cat(b, "]}");
    }
    if (r->vram < 0) { rep_cat(b, ",\"vram\":null"); return; }
    const db_rep_plan *p = &d->plans[r->vram];
    rep_catf(b, ",\"vram\":{\"plan\":%lld", (long long)p->id);
    kv_num(kv_num(b, "budget", r->budget), "total", p->memory_ok ? r->vtotal : NAN);
    rep_cat(b, ",\"terms\":[");
    for (int i = 0; i < p->n_terms; i++) rep_cat(jnum(rep_cat(js(rep_cat(b, i ? ",{\"name\":" : "{\"name\":"), p->terms[i].name), ",\"bytes\":"), p->terms[i].bytes), "}");
    rep_cat(b, "]}");
}

static void json_plans_evals(rep_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    rep_cat(b, ",\"plans\":[");
    for (int i = 0; i < d->n_plans; i++) {
        const db_rep_plan *p = &d->plans[i];
        rep_catf(b, "%s{\"id\":%lld,\"kind\":\"%s\",\"metric\":\"%s\"", i ? "," : "", (long long)p->id, p->kind, p->metric);
        kv_num(kv_num(kv_num(kv_num(b, "target", p->target), "achieved_bpw", p->achieved_bpw), "file_bpw", p->file_bpw), "objective", p->objective);
        kv_num(kv_num(kv_num(b, "gap", p->gap), "solve_seconds", p->solve_seconds), "total_bits", (double)p->total_bits);
        rep_catf(b, ",\"n_choices\":%d", p->n_choices);
        rep_cat(kv_str(kv_str(kv_str(b, "sweep", p->sweep), "command", p->command), "created_at", p->created_at), "}");
    }
    rep_cat(b, "],\"evals\":[");
    for (int i = 0; i < d->n_evals; i++) {
        const db_rep_eval *e = &d->evals[i];
        rep_catf(b, "%s{\"id\":%lld,\"plan\":", i ? "," : "", (long long)e->id);
        if (e->plan_id) rep_catf(b, "%lld", (long long)e->plan_id);
        else rep_cat(b, "null");
        kv_str(kv_str(kv_str(b, "subject", e->subject), "subject_kind", e->subject_kind), "text_path", e->text_path);
        kv_num(kv_num(kv_num(b, "bpw", e->bpw), "ppl", e->ppl), "ppl_stderr", e->ppl_stderr);
        kv_num(kv_num(kv_num(b, "kld", e->kld), "kld_stderr", e->kld_stderr), "top1", e->top1);
        rep_catf(b, ",\"tokens\":%lld,\"ctx\":%d", (long long)e->tokens, e->ctx);
        rep_cat(kv_str(kv_str(b, "device", e->device), "command", e->command), "}");
    }
    rep_cat(b, "]");
}

rep_buf *rep_write_json(rep_buf *b, const rep_report *r)
{
    json_head(b, r);
    json_sensitivity(b, r);
    json_measurements(b, r);
    json_allocation(b, r);
    json_pareto_vram(b, r);
    json_plans_evals(b, r);
    return rep_cat(b, "}\n");
}
