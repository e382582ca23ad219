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

static sb_buf *md_text(sb_buf *b, const char *s)
{
    for (const char *p = s; *p; p++) {
        if (*p == '|' || *p == '\\' || *p == '*' || *p == '_' || *p == '`') sb_putn(b, "\\", 1);
        sb_putn(b, *p == '\n' ? " " : p, 1);
    }
    return b;
}

static sb_buf *md_num(sb_buf *b, double v)
{
    char s[32];
    return sb_puts(b, isnan(v) ? "" : rep_sig(s, v, 4));
}

static void md_grid(sb_buf *b, const rep_report *r, int alloc)
{
    const db_report *d = r->d;
    sb_puts(b, "| layer |");
    for (int ci = 0; ci < r->n_cls; ci++) sb_printf(b, " %s |", lay_class_name(r->cls[ci]));
    sb_puts(b, "\n|---:|");
    for (int ci = 0; ci < r->n_cls; ci++) sb_puts(b, "---:|");
    sb_puts(b, "\n");
    for (int l = 0; l < r->n_layers + r->has_head; l++) {
        int layer = l < r->n_layers ? l : -1;
        if (layer >= 0) sb_printf(b, "| %d |", layer);
        else sb_puts(b, "| head |");
        for (int ci = 0; ci < r->n_cls; ci++) {
            int t = rep_tensor_at(r, layer, r->cls[ci]);
            double v = NAN;
            if (t >= 0 && alloc && r->alloc_choice[t] >= 0) v = rep_tensor_bpw(d, t, d->plans[r->alloc].choices[r->alloc_choice[t]].bits);
            if (t >= 0 && !alloc && r->sel_meas[t] >= 0) v = d->meas[r->sel_meas[t]].rel_err;
            md_num(sb_puts(b, " "), v);
            sb_puts(b, " |");
        }
        sb_puts(b, "\n");
    }
}

static void md_plans(sb_buf *b, const rep_report *r, const int *which, int n)
{
    sb_puts(b, "| plan | kind | target | metric | achieved bpw | file bpw | objective | gap | measured KLD | measured PPL | sweep |\n"
               "|---:|:---|---:|:---|---:|---:|---:|---:|---:|---:|:---|\n");
    for (int k = 0; k < n; k++) {
        int i = which ? which[k] : k, e = rep_plan_eval(r, i, 1), q = rep_plan_eval(r, i, 0);
        const db_rep_plan *p = &r->d->plans[i];
        sb_printf(b, "| %lld | %s | ", (long long)p->row.id, p->row.kind);
        md_num(b, p->row.target);
        sb_printf(b, " | %s | ", p->row.metric);
        md_num(sb_puts(md_num(sb_puts(md_num(sb_puts(md_num(b, p->row.achieved_bpw), " | "), p->row.file_bpw), " | "), p->row.objective), " | "), p->row.gap);
        md_num(sb_puts(md_num(sb_puts(b, " | "), e >= 0 ? r->d->evals[e].kld : NAN), " | "), q >= 0 ? r->d->evals[q].ppl : NAN);
        md_text(sb_puts(b, " | "), p->row.sweep);
        sb_puts(b, " |\n");
    }
}

static void md_summary(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    sb_puts(md_text(sb_puts(b, "# bitplan report: "), base_name(d->model_path)), "\n\n| | |\n|:---|:---|\n");
    sb_puts(md_text(sb_puts(b, "| model | "), d->model_path), " |\n");
    sb_printf(b, "| architecture | %s |\n| parameters | %lld |\n| linear tensors | %d in %d layers |\n", d->arch,
             (long long)d->n_params, d->n_tensors, r->n_layers);
    sb_printf(b, "| calibration | #%lld: %d × %d tokens, damp %g, %s |\n", (long long)d->calib_id, d->calib_rows, d->calib_ctx,
             d->damp, d->calib_status);
    sb_puts(md_text(sb_puts(b, "| calibration text | "), d->calib_sources), " |\n");
    sb_printf(b, "| measurements | %d (%d tensors × %d options) |\n| plans | %d |\n| evaluations | %d |\n\n", d->n_meas,
             r->n_measured, d->n_options, d->n_plans, d->n_evals);
    for (int i = 0; i < r->n_notes; i++) sb_puts(md_text(sb_puts(b, "> Note: "), r->notes[i]), "\n>\n");
    if (r->n_notes) sb_puts(b, "\n");
}

static void md_vram(sb_buf *b, const rep_report *r)
{
    const db_rep_plan *p = &r->d->plans[r->vram];
    char s[32];
    sb_printf(b, "## Memory of plan #%lld\n\n| term | bytes | size | of budget |\n|:---|---:|---:|---:|\n", (long long)p->row.id);
    for (int i = 0; i < p->n_terms; i++) {
        md_text(sb_puts(b, "| "), p->terms[i].name);
        sb_printf(b, " | %.0f | %s | ", p->terms[i].bytes, rep_bytes(s, p->terms[i].bytes));
        if (r->budget > 0) sb_printf(b, "%.1f%%", 100 * p->terms[i].bytes / r->budget);
        sb_puts(b, " |\n");
    }
    sb_printf(b, "| **sum of terms** | %.0f | %s | |\n\n", r->vtotal, rep_bytes(s, r->vtotal));
}

sb_buf *rep_write_md(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    md_summary(b, r);
    if (r->sel >= 0) {
        sb_printf(b, "## Sensitivity\n\nRelative output error of each tensor at **%s** (about %.2f bpw). "
                    "Breaks first:", d->options[r->sel].opt.name, r->opt_bpw[r->sel]);
        for (int i = 0; i < r->n_top; i++)
            md_num(sb_puts(md_text(sb_puts(b, i ? ", " : " "), d->tensors[r->top[i]].name), " "), d->meas[r->sel_meas[r->top[i]]].rel_err);
        sb_puts(b, ".\n\n");
        md_grid(b, r, 0);
        sb_puts(b, "\n");
    }
    if (r->alloc >= 0) {
        const db_rep_plan *p = &d->plans[r->alloc];
        sb_printf(b, "## Allocation of plan #%lld\n\nBits per weight per tensor; achieved %s bpw.\n\n", (long long)p->row.id, "");
        md_num(b, p->row.achieved_bpw);
        md_grid(sb_puts(b, "\n\n"), r, 1);
        sb_puts(b, "\n");
    }
    if (r->sweep) {
        md_text(sb_puts(b, "## Pareto curve of sweep "), r->sweep);
        sb_puts(b, "\n\n");
        md_plans(b, r, r->sweep_plans, r->n_sweep);
        if (r->base_eval >= 0) md_num(sb_puts(b, "\nUnquantized perplexity: "), d->evals[r->base_eval].ppl);
        sb_puts(b, "\n\n");
    }
    if (r->vram >= 0 && d->plans[r->vram].memory_ok) md_vram(b, r);
    if (d->n_plans) md_plans(sb_puts(b, "## Plans\n\n"), r, NULL, d->n_plans), sb_puts(b, "\n");
    if (d->n_evals) {
        sb_puts(b, "## Evaluations\n\n| eval | plan | subject | bpw | PPL | KLD | top-1 | tokens | ctx |\n|---:|---:|:---|---:|---:|---:|---:|---:|---:|\n");
        for (int i = 0; i < d->n_evals; i++) {
            const db_rep_eval *e = &d->evals[i];
            sb_printf(b, "| %lld | %s", (long long)e->id, e->plan_id ? "#" : "unquantized");
            if (e->plan_id) sb_printf(b, "%lld", (long long)e->plan_id);
            md_text(sb_puts(b, " | "), base_name(e->subject));
            md_num(sb_puts(md_num(sb_puts(md_num(sb_puts(md_num(sb_puts(b, " | "), e->bpw), " | "), e->ppl), " | "), e->kld), " | "), e->top1);
            sb_printf(b, " | %lld | %d |\n", (long long)e->tokens, e->ctx);
        }
        sb_puts(b, "\n");
    }
    sb_puts(b, "## Commands\n\n```\n");
    for (int i = 0; i < d->n_plans; i++) sb_printf(b, "# plan %lld\n%s\n", (long long)d->plans[i].row.id, d->plans[i].row.command);
    for (int i = 0; i < d->n_evals; i++) sb_printf(b, "# eval %lld\n%s\n", (long long)d->evals[i].id, d->evals[i].command);
    return sb_puts(b, "```\n\nCharts: `bitplan report --format html`.\n");
}

/* ==== CSV ==== */

static sb_buf *csv_field(sb_buf *b, const char *s)
{
    if (!strpbrk(s, ",\"\n\r")) return sb_puts(b, s);
    sb_puts(b, "\"");
    for (const char *p = s; *p; p++) sb_putn(b, p, 1), *p == '"' ? sb_puts(b, "\"") : b;
    return sb_puts(b, "\"");
}

/* One row; plan 0, eval 0, tensor -1, option -1 leave their cells empty; text, if not NULL,
 * is the value instead of v. */
static void csv_row(sb_buf *b, const rep_report *r, const char *section, int64_t plan, int64_t eval, int tensor,
                    int option, const char *quantity, double v, const char *text)
{
    const db_report *d = r->d;
    sb_printf(b, "%s,", section);
    if (plan) sb_printf(b, "%lld", (long long)plan);
    sb_puts(b, ",");
    if (eval) sb_printf(b, "%lld", (long long)eval);
    sb_puts(b, ",");
    if (tensor >= 0) {
        csv_field(b, d->tensors[tensor].name);
        sb_printf(b, ",%d,%s,", d->tensors[tensor].layer, d->tensors[tensor].cls);
    } else sb_puts(b, ",,,");
    if (option >= 0) csv_field(b, d->options[option].opt.name);
    csv_field(sb_puts(b, ","), quantity);
    sb_puts(b, ",");
    if (text) csv_field(b, text);
    else if (!isnan(v)) rep_cat_exact(b, v);
    sb_puts(b, "\n");
}

static void csv_plans(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    for (int i = 0; i < d->n_plans; i++) {
        const db_rep_plan *p = &d->plans[i];
        csv_row(b, r, "plan", p->row.id, 0, -1, -1, "kind", NAN, p->row.kind);
        csv_row(b, r, "plan", p->row.id, 0, -1, -1, "metric", NAN, p->row.metric);
        csv_row(b, r, "plan", p->row.id, 0, -1, -1, "target", p->row.target, NULL);
        csv_row(b, r, "plan", p->row.id, 0, -1, -1, "achieved_bpw", p->row.achieved_bpw, NULL);
        csv_row(b, r, "plan", p->row.id, 0, -1, -1, "file_bpw", p->row.file_bpw, NULL);
        csv_row(b, r, "plan", p->row.id, 0, -1, -1, "total_bits", (double)p->row.total_bits, NULL);
        csv_row(b, r, "plan", p->row.id, 0, -1, -1, "objective", p->row.objective, NULL);
        csv_row(b, r, "plan", p->row.id, 0, -1, -1, "gap", p->row.gap, NULL);
        csv_row(b, r, "plan", p->row.id, 0, -1, -1, "solve_seconds", p->row.solve_seconds, NULL);
        if (p->row.sweep[0]) csv_row(b, r, "plan", p->row.id, 0, -1, -1, "sweep", NAN, p->row.sweep);
        csv_row(b, r, "command", p->row.id, 0, -1, -1, "plan", NAN, p->row.command);
    }
}

static void csv_evals(sb_buf *b, const rep_report *r)
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

sb_buf *rep_write_csv(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    sb_puts(b, "section,plan,eval,tensor,layer,class,option,quantity,value\n");
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
        csv_row(b, r, "allocation", p->row.id, 0, t, c->option, "bits", (double)c->bits, NULL);
        csv_row(b, r, "allocation", p->row.id, 0, t, c->option, "bpw", rep_tensor_bpw(d, t, c->bits), NULL);
        csv_row(b, r, "allocation", p->row.id, 0, t, c->option, "predicted", c->predicted, NULL);
    }
    for (int k = 0; k < r->n_sweep; k++) {
        const db_rep_plan *p = &d->plans[r->sweep_plans[k]];
        csv_row(b, r, "pareto", p->row.id, 0, -1, -1, "achieved_bpw", p->row.achieved_bpw, NULL);
        csv_row(b, r, "pareto", p->row.id, 0, -1, -1, "objective", p->row.objective, NULL);
        if (r->sweep_kld_eval[k] >= 0) csv_row(b, r, "pareto", p->row.id, 0, -1, -1, "kld", d->evals[r->sweep_kld_eval[k]].kld, NULL);
        if (r->sweep_ppl_eval[k] >= 0) csv_row(b, r, "pareto", p->row.id, 0, -1, -1, "ppl", d->evals[r->sweep_ppl_eval[k]].ppl, NULL);
    }
    if (r->vram >= 0)
        for (int i = 0; i < d->plans[r->vram].n_terms; i++)
            csv_row(b, r, "vram", d->plans[r->vram].row.id, 0, -1, -1, d->plans[r->vram].terms[i].name, d->plans[r->vram].terms[i].bytes, NULL);
    csv_plans(b, r);
    csv_evals(b, r);
    for (int i = 0; i < r->n_notes; i++) csv_row(b, r, "note", 0, 0, -1, -1, "note", NAN, r->notes[i]);
    return b;
}

/* ==== JSON ==== */

static sb_buf *jnum(sb_buf *b, double v) { return isnan(v) || isinf(v) ? sb_puts(b, "null") : rep_cat_exact(b, v); }

/* "key": number, with a leading comma unless first. */
static sb_buf *kv_num(sb_buf *b, const char *k, double v) { return jnum(sb_printf(b, ",\"%s\":", k), v); }
static sb_buf *kv_str(sb_buf *b, const char *k, const char *v) { return sb_json_string(sb_printf(b, ",\"%s\":", k), v); }

static void json_tensor_ref(sb_buf *b, const rep_report *r, int t)
{
    const db_rep_tensor *tn = &r->d->tensors[t];
    sb_json_string(sb_puts(b, "\"tensor\":"), tn->name);
    sb_printf(b, ",\"layer\":%d,\"class\":\"%s\",\"rows\":%lld,\"cols\":%lld", tn->layer, tn->cls, (long long)tn->rows, (long long)tn->cols);
}

static void json_head(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    sb_puts(b, "{\"bitplan_report\":1");
    kv_str(b, "source", r->p.source ? r->p.source : "");
    kv_str(kv_str(kv_str(sb_printf(b, ",\"model\":{\"id\":%lld", (long long)d->model_id), "path", d->model_path), "sha256", d->model_hash), "arch", d->arch);
    kv_str(kv_num(b, "n_params", (double)d->n_params), "config_json", d->config_json);
    sb_printf(b, "},\"calibration\":{\"id\":%lld,\"rows\":%d,\"ctx\":%d", (long long)d->calib_id, d->calib_rows, d->calib_ctx);
    kv_str(kv_str(kv_str(kv_num(b, "damp", d->damp), "status", d->calib_status), "sources", d->calib_sources), "tokenizer", d->tokenizer);
    sb_puts(b, "},\"notes\":[");
    for (int i = 0; i < r->n_notes; i++) sb_json_string(sb_puts(b, i ? "," : ""), r->notes[i]);
    sb_puts(b, "],\"options\":[");
    for (int o = 0; o < d->n_options; o++) {
        const db_option *op = &d->options[o];
        sb_json_string(sb_printf(b, "%s{\"id\":%lld,\"name\":", o ? "," : "", (long long)op->id), op->opt.name);
        sb_printf(b, ",\"bits_lo\":%d,\"bits_hi\":%d", op->opt.bits_lo, op->opt.bits_hi);
        kv_num(b, "hi_share", op->opt.hi_share);
        sb_printf(b, ",\"group_size\":%d,\"scale_fmt\":%d,\"n_tensors\":%d", op->opt.group, op->opt.scale_fmt, r->opt_n[o]);
        sb_puts(kv_num(b, "mean_bpw", r->opt_bpw[o]), "}");
    }
    sb_puts(b, "]");
}

static void json_sensitivity(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    if (r->sel < 0) { sb_puts(b, ",\"sensitivity\":null"); return; }
    sb_printf(b, ",\"sensitivity\":{\"option\":%lld", (long long)d->options[r->sel].id);
    kv_str(b, "option_name", d->options[r->sel].opt.name);
    kv_num(b, "mean_bpw", r->opt_bpw[r->sel]);
    sb_printf(b, ",\"binned\":%s,\"tensors\":[", r->binned ? "true" : "false");
    int first = 1;
    for (int t = 0; t < d->n_tensors; t++) {
        int m = r->sel_meas[t];
        if (m < 0) continue;
        json_tensor_ref(sb_puts(b, first ? "{" : ",{"), r, t);
        sb_printf(b, ",\"bits\":%lld", (long long)d->meas[m].bits);
        kv_num(kv_num(kv_num(b, "bpw", rep_tensor_bpw(d, t, d->meas[m].bits)), "rel_err", d->meas[m].rel_err), "rtn_err", d->meas[m].rtn_err);
        sb_puts(b, "}");
        first = 0;
    }
    sb_puts(b, "],\"breaks_first\":[");
    for (int i = 0; i < r->n_top; i++) sb_json_string(sb_puts(b, i ? "," : ""), d->tensors[r->top[i]].name);
    sb_puts(b, "],\"curves\":[");
    for (int i = 0; i < r->n_curves; i++) {
        const rep_curve *c = &r->curves[i];
        sb_printf(b, "%s{\"class\":\"%s\",\"layer_lo\":%d,\"layer_hi\":%d,\"tensor\":", i ? "," : "", lay_class_name(c->cls), c->layer_lo, c->layer_hi);
        if (c->tensor >= 0) sb_json_string(b, d->tensors[c->tensor].name);
        else sb_puts(b, "null");
        sb_puts(b, ",\"points\":[");
        for (int k = 0; k < c->n; k++) sb_puts(jnum(sb_puts(jnum(sb_puts(b, k ? ",[" : "["), c->bpw[k]), ","), c->err[k]), "]");
        sb_puts(b, "]}");
    }
    sb_puts(b, "]}");
}

static void json_measurements(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    sb_puts(b, ",\"measurements\":[");
    for (int i = 0; i < d->n_meas; i++) {
        const db_rep_meas *m = &d->meas[i];
        json_tensor_ref(sb_puts(b, i ? ",{" : "{"), r, m->tensor);
        sb_printf(b, ",\"option\":%lld,\"bits\":%lld", (long long)d->options[m->option].id, (long long)m->bits);
        sb_puts(kv_num(kv_num(kv_num(b, "bpw", rep_tensor_bpw(d, m->tensor, m->bits)), "rel_err", m->rel_err), "rtn_err", m->rtn_err), "}");
    }
    sb_puts(b, "],\"probes\":[");
    for (int i = 0; i < d->n_probes; i++) {
        const db_rep_probe *p = &d->probes[i];
        json_tensor_ref(sb_puts(b, i ? ",{" : "{"), r, p->tensor);
        sb_printf(b, ",\"option\":%lld", (long long)d->options[p->option].id);
        sb_puts(kv_num(kv_num(b, "kld", p->kld), "rel_err", p->rel_err), "}");
    }
    sb_puts(b, "]");
}

static void json_allocation(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    if (r->alloc < 0) { sb_puts(b, ",\"allocation\":null"); return; }
    const db_rep_plan *p = &d->plans[r->alloc];
    sb_printf(b, ",\"allocation\":{\"plan\":%lld,\"choices\":[", (long long)p->row.id);
    int first = 1;
    for (int t = 0; t < d->n_tensors; t++) {
        if (r->alloc_choice[t] < 0) continue;
        const db_rep_choice *c = &p->choices[r->alloc_choice[t]];
        json_tensor_ref(sb_puts(b, first ? "{" : ",{"), r, t);
        sb_printf(b, ",\"option\":%lld,\"option_name\":", (long long)d->options[c->option].id);
        sb_json_string(b, d->options[c->option].opt.name);
        sb_printf(b, ",\"bits\":%lld,\"as_stored\":%s", (long long)c->bits, rep_as_stored(r, t) ? "true" : "false");
        sb_puts(kv_num(kv_num(b, "bpw", rep_tensor_bpw(d, t, c->bits)), "predicted", c->predicted), "}");
        first = 0;
    }
    sb_puts(b, "]}");
}

static void json_pareto_vram(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    if (!r->sweep) sb_puts(b, ",\"pareto\":null");
    else {
        sb_json_string(sb_puts(b, ",\"pareto\":{\"sweep\":"), r->sweep);
        kv_num(b, "unquantized_ppl", r->base_eval >= 0 ? d->evals[r->base_eval].ppl : NAN);
        sb_puts(b, ",\"points\":[");
        for (int k = 0; k < r->n_sweep; k++) {
            const db_rep_plan *p = &d->plans[r->sweep_plans[k]];
            int ek = r->sweep_kld_eval[k], ep = r->sweep_ppl_eval[k];
            sb_printf(b, "%s{\"plan\":%lld", k ? "," : "", (long long)p->row.id);
            kv_num(kv_num(b, "achieved_bpw", p->row.achieved_bpw), "objective", p->row.objective);
            kv_num(kv_num(b, "kld", ek >= 0 ? d->evals[ek].kld : NAN), "ppl", ep >= 0 ? d->evals[ep].ppl : NAN);
            sb_puts(b, "}");
        }
        sb_puts(b, "]}");
    }
    if (r->vram < 0) { sb_puts(b, ",\"vram\":null"); return; }
    const db_rep_plan *p = &d->plans[r->vram];
    sb_printf(b, ",\"vram\":{\"plan\":%lld", (long long)p->row.id);
    kv_num(kv_num(b, "budget", r->budget), "total", p->memory_ok ? r->vtotal : NAN);
    sb_puts(b, ",\"terms\":[");
    for (int i = 0; i < p->n_terms; i++) sb_puts(jnum(sb_puts(sb_json_string(sb_puts(b, i ? ",{\"name\":" : "{\"name\":"), p->terms[i].name), ",\"bytes\":"), p->terms[i].bytes), "}");
    sb_puts(b, "]}");
}

static void json_plans_evals(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    sb_puts(b, ",\"plans\":[");
    for (int i = 0; i < d->n_plans; i++) {
        const db_rep_plan *p = &d->plans[i];
        sb_printf(b, "%s{\"id\":%lld,\"kind\":\"%s\",\"metric\":\"%s\"", i ? "," : "", (long long)p->row.id, p->row.kind, p->row.metric);
        kv_num(kv_num(kv_num(kv_num(b, "target", p->row.target), "achieved_bpw", p->row.achieved_bpw), "file_bpw", p->row.file_bpw), "objective", p->row.objective);
        kv_num(kv_num(kv_num(b, "gap", p->row.gap), "solve_seconds", p->row.solve_seconds), "total_bits", (double)p->row.total_bits);
        sb_printf(b, ",\"n_choices\":%d", p->n_choices);
        sb_puts(kv_str(kv_str(kv_str(b, "sweep", p->row.sweep), "command", p->row.command), "created_at", p->row.created_at), "}");
    }
    sb_puts(b, "],\"evals\":[");
    for (int i = 0; i < d->n_evals; i++) {
        const db_rep_eval *e = &d->evals[i];
        sb_printf(b, "%s{\"id\":%lld,\"plan\":", i ? "," : "", (long long)e->id);
        if (e->plan_id) sb_printf(b, "%lld", (long long)e->plan_id);
        else sb_puts(b, "null");
        kv_str(kv_str(kv_str(b, "subject", e->subject), "subject_kind", e->subject_kind), "text_path", e->text_path);
        kv_num(kv_num(kv_num(b, "bpw", e->bpw), "ppl", e->ppl), "ppl_stderr", e->ppl_stderr);
        kv_num(kv_num(kv_num(b, "kld", e->kld), "kld_stderr", e->kld_stderr), "top1", e->top1);
        sb_printf(b, ",\"tokens\":%lld,\"ctx\":%d", (long long)e->tokens, e->ctx);
        sb_puts(kv_str(kv_str(b, "device", e->device), "command", e->command), "}");
    }
    sb_puts(b, "]");
}

sb_buf *rep_write_json(sb_buf *b, const rep_report *r)
{
    json_head(b, r);
    json_sensitivity(b, r);
    json_measurements(b, r);
    json_allocation(b, r);
    json_pareto_vram(b, r);
    json_plans_evals(b, r);
    return sb_puts(b, "}\n");
}
