/*
 * reports/rep_html.c — the HTML report: one self-contained page (inline CSS, inline
 * SVG, the system font stack; no script, font, image or style from anywhere else),
 * a summary at the top, then sensitivity, allocation, Pareto, VRAM, plans,
 * evaluations and the command lines that made them. Table cells carry the exact
 * numbers in data-value (data-bits, data-bpw) next to the rounded text people read.
 * Never reads the database, never chooses what to show (rep_build did).
 */
#include "rep_int.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char css[] =
    ":root{--ink:#1d2430;--muted:#5b6577;--line:#e3e6eb;--bg:#fbfbfc;--accent:#3b5b92}"
    "*{box-sizing:border-box}"
    "body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,"
    "'Helvetica Neue','DejaVu Sans',Arial,sans-serif;font-variant-numeric:tabular-nums}"
    "main{max-width:1080px;margin:0 auto;padding:32px 28px 64px}"
    "header h1{font-size:28px;margin:0 0 2px;letter-spacing:-.01em}"
    "header .sub{color:var(--muted);font-size:14px;margin:0 0 22px;word-break:break-all}"
    "h2{font-size:20px;margin:44px 0 4px;padding-top:12px;border-top:1px solid var(--line)}"
    "h3{font-size:15px;margin:22px 0 6px;color:var(--muted);font-weight:600}"
    "p.lead{color:var(--muted);margin:2px 0 14px;max-width:860px}"
    ".cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:12px;margin:8px 0 18px}"
    ".card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:12px 14px}"
    ".card .k{font-size:12px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted)}"
    ".card .v{font-size:21px;font-weight:600;margin-top:2px;overflow-wrap:anywhere}"
    ".card .s{font-size:12.5px;color:var(--muted);overflow-wrap:anywhere}"
    ".notes{background:#fff8e6;border:1px solid #f3d98b;border-radius:10px;padding:10px 16px;margin:12px 0}"
    ".notes li{margin:2px 0}"
    ".worst{background:#fff;border:1px solid var(--line);border-radius:10px;padding:10px 16px;margin:12px 0}"
    ".worst ol{margin:4px 0 0;padding-left:22px}"
    ".figure{background:#fff;border:1px solid var(--line);border-radius:10px;padding:14px 14px 8px;margin:10px 0 6px}"
    "svg.chart{width:100%;height:auto;display:block;font-family:inherit}"
    "svg .tick{font-size:10.5px;fill:#5b6577}svg .axis-title,svg .legend-title{font-size:11.5px;fill:#3d4656}"
    "svg .row-label{font-size:12px;fill:#1d2430;font-weight:600}svg .panel-title{font-size:12.5px;font-weight:600;fill:#1d2430}"
    "svg .grid{stroke:#e8eaee;stroke-width:1}svg .grid.minor{stroke:#f3f4f6}svg .axis{stroke:#9aa3b2;stroke-width:1}"
    "svg .curve{fill:none;stroke-width:1.4;stroke-opacity:.85;stroke-linejoin:round}"
    "svg .mean{stroke:#1d2430;stroke-width:1;stroke-dasharray:4 3;opacity:.55}"
    "svg .sweep-line{fill:none;stroke-width:1.8;opacity:.6}svg .point{stroke:#fff;stroke-width:1.2}"
    "svg .point.selected{stroke:#1d2430;stroke-width:2}svg .point-label{font-size:10px;fill:#3d4656}"
    "svg .baseline{stroke:#2e8b57;stroke-dasharray:5 4;stroke-width:1.2}svg .empty{fill:#f7f8fa;stroke:#e3e6eb}"
    "svg .budget{stroke:#c0392b;stroke-width:2;stroke-dasharray:6 4}svg .budget-label{font-size:12px;font-weight:600;fill:#c0392b}"
    "svg .bar-label{font-size:12px;fill:#fff;font-weight:600}svg .term{stroke:#fff;stroke-width:1}"
    "table{border-collapse:collapse;font-size:13px;margin:8px 0 4px;background:#fff}"
    "th,td{border-bottom:1px solid var(--line);padding:4px 10px;text-align:right;white-space:nowrap}"
    "th{font-weight:600;color:var(--muted);background:#f5f6f8;position:sticky;top:0}"
    "td.l,th.l{text-align:left}.scroll{max-width:100%;overflow:auto;max-height:560px;border:1px solid var(--line);border-radius:8px}"
    "details{margin:8px 0}summary{cursor:pointer;color:var(--accent);font-weight:600;font-size:14px}"
    "pre{background:#f2f4f7;border-radius:8px;padding:10px 12px;font-size:12.5px;overflow:auto;white-space:pre-wrap;word-break:break-all}"
    ".sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;vertical-align:-1px}"
    "footer{margin-top:48px;color:var(--muted);font-size:12.5px}";

/* ==== Small pieces ==== */

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static sb_buf *card(sb_buf *b, const char *k, const char *v, const char *sub)
{
    sb_puts(rep_cat_html(sb_puts(b, "<div class=\"card\"><div class=\"k\">"), k), "</div><div class=\"v\">");
    sb_puts(rep_cat_html(b, v), "</div>");
    if (sub && *sub) sb_puts(rep_cat_html(sb_puts(b, "<div class=\"s\">"), sub), "</div>");
    return sb_puts(b, "</div>");
}

/* A numeric cell: rounded text, exact value in data-value. */
static sb_buf *num_td(sb_buf *b, double v, int digits, const char *style)
{
    char s[32], e[32];
    if (isnan(v)) return sb_puts(b, "<td>–</td>");
    return sb_printf(b, "<td data-value=\"%s\"%s%s%s>%s</td>", rep_exact(e, v), style ? " style=\"" : "", style ? style : "",
                    style ? "\"" : "", rep_sig(s, v, digits));
}

static sb_buf *text_td(sb_buf *b, const char *s)
{
    return sb_puts(rep_cat_html(sb_puts(b, "<td class=\"l\">"), s), "</td>");
}

static void params_text(char *out, size_t cap, double n)
{
    if (n >= 1e9) snprintf(out, cap, "%.2f B", n / 1e9);
    else if (n >= 1e6) snprintf(out, cap, "%.1f M", n / 1e6);
    else snprintf(out, cap, "%.0f", n);
}

/* ==== Summary ==== */

static void summary(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    char v[128], s[256], x[32], y[32];
    sb_puts(b, "<div class=\"cards\">");
    card(b, "Model", base_name(d->model_path), d->arch);
    params_text(v, sizeof v, (double)d->n_params);
    double lin = 0;
    for (int t = 0; t < d->n_tensors; t++) lin += (double)d->tensors[t].rows * (double)d->tensors[t].cols;
    params_text(x, sizeof x, lin);
    snprintf(s, sizeof s, "%s in %d linear tensors, %d layers", x, d->n_tensors, r->n_layers);
    card(b, "Parameters", v, s);
    snprintf(v, sizeof v, "#%lld", (long long)d->calib_id);
    snprintf(s, sizeof s, "%d × %d tokens, damp %g, %s; %s", d->calib_rows, d->calib_ctx, d->damp, d->calib_status, d->calib_sources);
    card(b, "Calibration", v, s);
    snprintf(v, sizeof v, "%d", d->n_meas);
    snprintf(s, sizeof s, "%d tensors × %d options%s", r->n_measured, d->n_options, d->n_probes ? ", with KL probes" : "");
    card(b, "Measurements", v, s);
    snprintf(v, sizeof v, "%d", d->n_plans);
    if (r->alloc >= 0) {
        const db_rep_plan *p = &d->plans[r->alloc];
        snprintf(s, sizeof s, "shown: #%lld, %s bpw achieved (%s)", (long long)p->row.id, rep_sig(x, p->row.achieved_bpw, 4), p->row.kind);
    } else s[0] = 0;
    card(b, "Plans", v, s);
    int e = r->alloc >= 0 ? rep_plan_eval(r, r->alloc, 0) : -1;
    if (e >= 0) {
        snprintf(v, sizeof v, "PPL %s", rep_sig(x, d->evals[e].ppl, 4));
        snprintf(s, sizeof s, "plan #%lld, KLD %s", (long long)d->plans[r->alloc].row.id, rep_sig(y, d->evals[e].kld, 3));
        card(b, "Measured", v, s);
    } else if (d->n_evals) {
        snprintf(v, sizeof v, "%d", d->n_evals);
        card(b, "Evaluations", v, "");
    }
    sb_puts(b, "</div>");
}

static void notes(sb_buf *b, const rep_report *r)
{
    if (!r->n_notes) return;
    sb_puts(b, "<div class=\"notes\" id=\"notes\"><strong>Partial report.</strong><ul>");
    for (int i = 0; i < r->n_notes; i++) sb_puts(rep_cat_html(sb_puts(b, "<li>"), r->notes[i]), "</li>");
    sb_puts(b, "</ul></div>");
}

static void worst(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    if (r->n_top == 0) return;
    char s[32];
    sb_printf(b, "<div class=\"worst\"><strong>Breaks first</strong> at %s (about %.2f bpw): <ol>", d->options[r->sel].opt.name,
             r->opt_bpw[r->sel]);
    for (int i = 0; i < r->n_top; i++) {
        int t = r->top[i];
        sb_printf(b, "<li><span class=\"sw\" style=\"background:%s\"></span><code>", rep_class_colors[r->t_cls[t]]);
        rep_cat_html(b, d->tensors[t].name);
        sb_printf(b, "</code> — relative error %s</li>", rep_sig(s, d->meas[r->sel_meas[t]].rel_err, 3));
    }
    sb_puts(b, "</ol></div>");
}

/* ==== Tables ==== */

/* Layer × class table; value(t) gives the number of tensor t (NAN: empty). */
static void grid_table(sb_buf *b, const rep_report *r, const char *id, double (*value)(const rep_report *, int, int64_t *),
                       int colour)
{
    sb_printf(b, "<div class=\"scroll\"><table id=\"%s\"><thead><tr><th>layer</th>", id);
    for (int ci = 0; ci < r->n_cls; ci++)
        sb_printf(b, "<th><span class=\"sw\" style=\"background:%s\"></span>%s</th>", rep_class_colors[r->cls[ci]], lay_class_name(r->cls[ci]));
    sb_puts(b, "</tr></thead><tbody>");
    for (int l = 0; l < r->n_layers + r->has_head; l++) {
        int layer = l < r->n_layers ? l : -1;
        if (layer >= 0) sb_printf(b, "<tr><td>%d</td>", layer);
        else sb_puts(b, "<tr><td>head</td>");
        for (int ci = 0; ci < r->n_cls; ci++) {
            int t = rep_tensor_at(r, layer, r->cls[ci]);
            int64_t bits = -1;
            double v = t >= 0 ? value(r, t, &bits) : NAN;
            if (isnan(v)) { sb_puts(b, "<td></td>"); continue; }
            char style[64] = "", col[8], e[32], s[32];
            if (colour) {
                double tt = (log10(v) - log10(r->err_lo)) / (log10(r->err_hi) - log10(r->err_lo));
                rep_heat_color(tt, col);
                snprintf(style, sizeof style, " style=\"background:%s%s\"", col, tt > 0.62 ? ";color:#fff" : "");
            }
            sb_puts(rep_cat_html(sb_puts(b, "<td data-tensor=\""), r->d->tensors[t].name), "\"");
            if (bits >= 0) sb_printf(b, " data-bits=\"%lld\"", (long long)bits);
            sb_printf(b, " data-value=\"%s\"%s>%s</td>", rep_exact(e, v), style, rep_sig(s, v, colour ? 3 : 4));
        }
        sb_puts(b, "</tr>");
    }
    sb_puts(b, "</tbody></table></div>");
}

static double sel_err(const rep_report *r, int t, int64_t *bits)
{
    int m = r->sel_meas[t];
    if (m < 0) return NAN;
    *bits = r->d->meas[m].bits;
    return r->d->meas[m].rel_err;
}

static double alloc_bpw(const rep_report *r, int t, int64_t *bits)
{
    int c = r->alloc_choice[t];
    if (c < 0) return NAN;
    *bits = r->d->plans[r->alloc].choices[c].bits;
    return rep_tensor_bpw(r->d, t, *bits);
}

static void measurement_table(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    sb_printf(b, "<details><summary>All %d measurements (relative error, tensor × option)</summary><div class=\"scroll\"><table id=\"measurements\"><thead><tr><th class=\"l\">tensor</th>", d->n_meas);
    for (int o = 0; o < d->n_options; o++) {
        if (!r->opt_n[o]) continue;
        sb_puts(rep_cat_html(sb_puts(b, "<th>"), d->options[o].opt.name), "");
        sb_printf(b, "<br>%.2f bpw</th>", r->opt_bpw[o]);
    }
    sb_puts(b, "</tr></thead><tbody>");
    for (int t = 0; t < d->n_tensors; t++) {
        sb_puts(b, "<tr>");
        text_td(b, d->tensors[t].name);
        for (int o = 0; o < d->n_options; o++) {
            if (!r->opt_n[o]) continue;
            int i = r->meas_at[(size_t)t * (size_t)d->n_options + (size_t)o];
            if (i < 0) { sb_puts(b, "<td></td>"); continue; }
            double v = d->meas[i].rel_err;
            char e[32], s[32];
            sb_puts(rep_cat_html(sb_puts(b, "<td data-tensor=\""), d->tensors[t].name), "\"");
            sb_printf(b, " data-option=\"%lld\" data-bits=\"%lld\" data-value=\"%s\">%s</td>", (long long)d->options[o].id,
                     (long long)d->meas[i].bits, rep_exact(e, v), rep_sig(s, v, 3));
        }
        sb_puts(b, "</tr>");
    }
    sb_puts(b, "</tbody></table></div></details>");
}

static void plan_row(sb_buf *b, const rep_report *r, int i)
{
    const db_rep_plan *p = &r->d->plans[i];
    char s[32];
    sb_printf(b, "<tr data-plan=\"%lld\"><td>#%lld</td>", (long long)p->row.id, (long long)p->row.id);
    text_td(b, p->row.kind);
    char ex[32];
    if (!strcmp(p->row.kind, "vram") || !strcmp(p->row.kind, "size"))
        sb_printf(b, "<td data-value=\"%s\">%s</td>", rep_exact(ex, p->row.target), rep_bytes(s, p->row.target));
    else num_td(b, p->row.target, 4, NULL);
    text_td(b, p->row.metric);
    num_td(num_td(num_td(num_td(b, p->row.achieved_bpw, 5, NULL), p->row.file_bpw, 5, NULL), p->row.objective, 4, NULL), p->row.gap, 2, NULL);
    num_td(b, p->row.solve_seconds, 3, NULL);
    int e = rep_plan_eval(r, i, 1), q = rep_plan_eval(r, i, 0);
    num_td(num_td(b, e >= 0 ? r->d->evals[e].kld : NAN, 4, NULL), q >= 0 ? r->d->evals[q].ppl : NAN, 5, NULL);
    text_td(b, p->row.sweep);
    sb_puts(b, "</tr>");
}

static void plans_table(sb_buf *b, const rep_report *r, const int *which, int n, const char *id)
{
    sb_printf(b, "<div class=\"scroll\"><table id=\"%s\"><thead><tr><th>plan</th><th class=\"l\">kind</th><th>target</th>"
             "<th class=\"l\">metric</th><th>achieved bpw</th><th>file bpw</th><th>objective</th><th>gap</th><th>solve s</th>"
             "<th>measured KLD</th><th>measured PPL</th><th class=\"l\">sweep</th></tr></thead><tbody>", id);
    for (int k = 0; k < n; k++) plan_row(b, r, which ? which[k] : k);
    sb_puts(b, "</tbody></table></div>");
}

static void vram_table(sb_buf *b, const rep_report *r)
{
    const db_rep_plan *p = &r->d->plans[r->vram];
    sb_puts(b, "<table id=\"vram-terms\"><thead><tr><th class=\"l\">term</th><th>bytes</th><th>size</th><th>of budget</th></tr></thead><tbody>");
    for (int i = 0; i < p->n_terms; i++) {
        const db_rep_term *t = &p->terms[i];
        char s[32], e[32];
        sb_puts(rep_cat_html(sb_puts(b, "<tr><td class=\"l\">"), t->name), "</td>");
        sb_puts(rep_cat_html(sb_puts(b, "<td data-term=\""), t->name), "\"");
        sb_printf(b, " data-value=\"%s\">%.0f</td><td>%s</td>", rep_exact(e, t->bytes), t->bytes, rep_bytes(s, t->bytes));
        if (r->budget > 0) sb_printf(b, "<td>%.1f%%</td></tr>", 100 * t->bytes / r->budget);
        else sb_puts(b, "<td></td></tr>");
    }
    char s[32];
    sb_printf(b, "<tr><td class=\"l\"><strong>sum of terms</strong></td><td data-value=\"%s\"><strong>%.0f</strong></td>",
             rep_exact(s, r->vtotal), r->vtotal);
    sb_printf(b, "<td><strong>%s</strong></td><td>%s</td></tr></tbody></table>", rep_bytes(s, r->vtotal), "");
}

static void evals_table(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    sb_puts(b, "<div class=\"scroll\"><table id=\"evals\"><thead><tr><th>eval</th><th>plan</th><th class=\"l\">subject</th><th>bpw</th>"
               "<th>PPL</th><th>± PPL</th><th>KLD</th><th>± KLD</th><th>top-1</th><th>tokens</th><th>ctx</th><th class=\"l\">device</th>"
               "<th class=\"l\">text</th></tr></thead><tbody>");
    for (int i = 0; i < d->n_evals; i++) {
        const db_rep_eval *e = &d->evals[i];
        sb_printf(b, "<tr data-eval=\"%lld\"><td>%lld</td>", (long long)e->id, (long long)e->id);
        if (e->plan_id) sb_printf(b, "<td>#%lld</td>", (long long)e->plan_id);
        else sb_puts(b, "<td>unquantized</td>");
        text_td(b, base_name(e->subject));
        num_td(num_td(num_td(num_td(num_td(b, e->bpw, 4, NULL), e->ppl, 5, NULL), e->ppl_stderr, 2, NULL), e->kld, 4, NULL), e->kld_stderr, 2, NULL);
        num_td(b, e->top1, 4, NULL);
        sb_printf(b, "<td>%lld</td><td>%d</td>", (long long)e->tokens, e->ctx);
        text_td(text_td(b, e->device), base_name(e->text_path));
        sb_puts(b, "</tr>");
    }
    sb_puts(b, "</tbody></table></div>");
}

static void commands(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    sb_puts(b, "<h2 id=\"commands\">Commands</h2><p class=\"lead\">The command lines that produced the plans and evaluations above.</p><pre>");
    for (int i = 0; i < d->n_plans; i++)
        sb_puts(rep_cat_html(sb_printf(b, "# plan %lld\n", (long long)d->plans[i].row.id), d->plans[i].row.command), "\n");
    for (int i = 0; i < d->n_evals; i++)
        sb_puts(rep_cat_html(sb_printf(b, "# eval %lld\n", (long long)d->evals[i].id), d->evals[i].command), "\n");
    if (!d->n_plans && !d->n_evals) sb_puts(b, "(none recorded)");
    sb_puts(b, "</pre>");
}

/* ==== Sections ==== */

static void sensitivity(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    sb_puts(b, "<h2 id=\"sensitivity\">Sensitivity</h2>");
    if (r->sel < 0) { sb_puts(b, "<p class=\"lead\">No measurements yet.</p>"); return; }
    sb_printf(b, "<p class=\"lead\">Relative output error tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) of every tensor at <strong>%s</strong> "
                "(about %.2f bpw), on a log colour scale: dark cells are the layers that break first.</p>",
             d->options[r->sel].opt.name, r->opt_bpw[r->sel]);
    rep_svg_heatmap(sb_puts(b, "<div class=\"figure\">"), r);
    sb_puts(b, "</div><h3>Error against bits, by class</h3><p class=\"lead\">For each tensor the best error reachable at each size "
               "(the lower envelope of its options); log scale.</p><div class=\"figure\">");
    rep_svg_curves(b, r);
    sb_printf(b, "</div><details%s><summary>Table: relative error at %s, layer × class</summary>", r->n_layers <= 40 ? " open" : "",
             d->options[r->sel].opt.name);
    grid_table(b, r, "sensitivity-table", sel_err, 1);
    sb_puts(b, "</details>");
    measurement_table(b, r);
}

static void allocation(sb_buf *b, const rep_report *r)
{
    if (r->alloc < 0) return;
    const db_rep_plan *p = &r->d->plans[r->alloc];
    char s[32];
    sb_printf(b, "<h2 id=\"allocation\">Allocation of plan #%lld</h2><p class=\"lead\">Bits per weight of each tensor (stored bits over "
                "weights, scales and permutation included) along the depth of the model, one strip per class. ",
             (long long)p->row.id);
    if (!strcmp(p->row.kind, "vram")) sb_printf(b, "Target: fit %s; ", rep_bytes(s, p->row.target));
    else if (!strcmp(p->row.kind, "size")) sb_printf(b, "Target: a file of %s; ", rep_bytes(s, p->row.target));
    else sb_printf(b, "Target %g bpw; ", p->row.target);
    sb_printf(b, "achieved %.4f bpw, objective %s (%s).</p>", p->row.achieved_bpw, rep_sig(s, p->row.objective, 4), p->row.metric);
    if (p->n_choices) sb_puts(rep_svg_allocation(sb_puts(b, "<div class=\"figure\">"), r), "</div>");
    sb_printf(b, "<details%s><summary>Table: bits per weight, layer × class</summary>", r->n_layers <= 40 ? "" : "");
    grid_table(b, r, "allocation-table", alloc_bpw, 0);
    sb_puts(b, "</details>");
}

static void pareto(sb_buf *b, const rep_report *r)
{
    if (!r->sweep) return;
    sb_puts(rep_cat_html(sb_puts(b, "<h2 id=\"pareto\">Pareto curve of sweep “"), r->sweep), "”</h2>");
    sb_puts(b, "<p class=\"lead\">What each size costs: the damage the optimizer predicted, and what evaluation measured on held-out "
               "text. Labels are plan ids; the ringed point is the plan shown above.</p><div class=\"figure\">");
    sb_puts(rep_svg_pareto(b, r), "</div>");
    plans_table(b, r, r->sweep_plans, r->n_sweep, "pareto-table");
}

static void vram(sb_buf *b, const rep_report *r)
{
    if (r->vram < 0) return;
    const db_rep_plan *p = &r->d->plans[r->vram];
    char s1[32], s2[32];
    sb_printf(b, "<h2 id=\"vram\">Memory of plan #%lld</h2><p class=\"lead\">", (long long)p->row.id);
    if (!isnan(r->budget))
        sb_printf(b, "%s of %s used (%.1f%%), by term of the memory model.", rep_bytes(s1, r->vtotal), rep_bytes(s2, r->budget),
                 r->budget > 0 ? 100 * r->vtotal / r->budget : 0);
    sb_puts(b, "</p>");
    if (p->memory_ok && r->n_vterms) {
        sb_puts(rep_svg_vram(sb_puts(b, "<div class=\"figure\">"), r), "</div>");
        vram_table(b, r);
    }
}

sb_buf *rep_write_html(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    sb_puts(b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
               "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>bitplan report — ");
    sb_puts(rep_cat_html(b, base_name(d->model_path)), "</title><style>");
    sb_puts(sb_puts(b, css), "</style></head><body><main><header><h1>");
    sb_puts(rep_cat_html(b, base_name(d->model_path)), "</h1><p class=\"sub\">bitplan sensitivity and allocation report");
    if (r->p.source) rep_cat_html(sb_puts(b, " · "), r->p.source);
    sb_printf(b, " · model sha256 %.12s…</p></header>", d->model_hash);
    summary(b, r);
    notes(b, r);
    worst(b, r);
    sensitivity(b, r);
    allocation(b, r);
    pareto(b, r);
    vram(b, r);
    if (d->n_plans) plans_table(sb_puts(b, "<h2 id=\"plans\">Plans</h2>"), r, NULL, d->n_plans, "plans");
    if (d->n_evals) evals_table(sb_puts(b, "<h2 id=\"evaluations\">Evaluations</h2>"), r);
    commands(b, r);
    sb_puts(b, "<footer>Made by <code>bitplan report</code>. Every number in the charts and tables carries its exact value in a "
               "data-value attribute.</footer></main></body></html>\n");
    return b;
}
