/*
 * reports/rep_svg.c — the charts, drawn as inline SVG by hand: scales, axes with
 * ticks and units, colour ramps, and the five charts of a report (sensitivity heat
 * map, error curves by class, allocation strips, Pareto panels, VRAM bar).
 *
 * Every mark carries its exact numbers in data-* attributes (data-value, data-bits,
 * data-bpw, data-points), written with rep_exact so that they read back bit for bit;
 * the drawn positions are only pictures of them. Charts are sized in a 1000-unit
 * wide viewBox and scale with the page. Deep models (more than REP_MAX_LAYER_LINES
 * layers) switch from a line per layer to a line per bin of layers; the heat map and
 * the strips stay one cell per tensor, down to a pixel or two each. Never reads the
 * database, never uses anything from outside the page.
 */
#include "rep_int.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define W 1000.0

/* ==== Colours ==== */

const char *const rep_class_colors[LAY_N_CLASSES] = {
    "#4e79a7", "#76b7b2", "#59a14f", "#edc948", "#e15759", "#b07aa1", "#9c755f", "#79706e"};

static const char *const heat_stops[] = {"#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c",
                                         "#fc4e2a", "#e31a1c", "#bd0026", "#800026"};
static const char *const depth_stops[] = {"#440154", "#482878", "#3e4989", "#31688e", "#26828e",
                                          "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"};

static void ramp(const char *const *stops, int n, double t, char out[8])
{
    t = isnan(t) ? 0 : t < 0 ? 0 : t > 1 ? 1 : t;
    double x = t * (n - 1);
    int i = (int)x < n - 1 ? (int)x : n - 2;
    double f = x - i;
    unsigned a[3], c[3];
    sscanf(stops[i] + 1, "%2x%2x%2x", &a[0], &a[1], &a[2]);
    sscanf(stops[i + 1] + 1, "%2x%2x%2x", &c[0], &c[1], &c[2]);
    snprintf(out, 8, "#%02x%02x%02x", (unsigned)lround(a[0] + f * ((double)c[0] - a[0])),
             (unsigned)lround(a[1] + f * ((double)c[1] - a[1])), (unsigned)lround(a[2] + f * ((double)c[2] - a[2])));
}

void rep_heat_color(double t, char out[8]) { ramp(heat_stops, 9, t, out); }
void rep_depth_color(double t, char out[8]) { ramp(depth_stops, 10, 0.9 * t, out); }

const char *rep_term_color(const char *name, int i)
{
    static const char *const other[] = {"#59a14f", "#b07aa1", "#ff9da7", "#9c755f", "#edc948"};
    if (strstr(name, "unquant") || strstr(name, "embed") || strstr(name, "norm")) return "#a0cbe8";
    if (strstr(name, "weight") || strstr(name, "packed")) return "#4e79a7";
    if (strstr(name, "kv")) return "#f28e2b";
    if (strstr(name, "scratch") || strstr(name, "activ")) return "#ffbe7d";
    if (strstr(name, "reserve") || strstr(name, "runtime") || strstr(name, "overhead")) return "#bab0ac";
    return other[i % 5];
}

/* ==== Scales and ticks ==== */

typedef struct { double d0, d1, r0, r1; int log; } scale;

static double at(const scale *s, double v)
{
    double t = s->log ? (log10(v) - log10(s->d0)) / (log10(s->d1) - log10(s->d0)) : (v - s->d0) / (s->d1 - s->d0);
    return s->r0 + t * (s->r1 - s->r0);
}

static double nice_step(double range, int want)
{
    double raw = range / (want > 0 ? want : 1), p = pow(10, floor(log10(raw))), m = raw / p;
    return p * (m <= 1 ? 1 : m <= 2 ? 2 : m <= 2.5 ? 2.5 : m <= 5 ? 5 : 10);
}

/* A linear domain around [lo, hi] with round ends; ticks into t (at most 16). */
static int linear_ticks(double *lo, double *hi, int want, double *t)
{
    if (!(*hi > *lo)) *lo -= 0.5, *hi += 0.5;
    double step = nice_step(*hi - *lo, want);
    *lo = floor(*lo / step + 1e-9) * step;
    *hi = ceil(*hi / step - 1e-9) * step;
    int n = 0;
    for (double v = *lo; v <= *hi + step * 1e-6 && n < 16; v += step) t[n++] = fabs(v) < step * 1e-9 ? 0 : v;
    return n;
}

/* A log domain around [lo, hi] snapped out to 1-2-5 values; decade ticks, and 2, 5
 * as well when the range is short. */
static int log_ticks(double *lo, double *hi, double *t, int *major)
{
    static const double m[] = {1, 2, 5};
    double a = pow(10, floor(log10(*lo))), b = pow(10, floor(log10(*hi)));
    double l = a, h = b * 10;
    for (int i = 2; i >= 0; i--) if (a * m[i] <= *lo * (1 + 1e-9)) { l = a * m[i]; break; }
    for (int i = 0; i < 3; i++) if (b * m[i] >= *hi * (1 - 1e-9)) { h = b * m[i]; break; }
    *lo = l, *hi = h;
    int decades = (int)lround(log10(h / l)), n = 0;
    for (double p = a; p <= h * 1.0001 && n < 30; p *= 10)
        for (int i = 0; i < 3 && n < 30; i++) {
            double v = p * m[i];
            if (v < l * 0.9999 || v > h * 1.0001 || (decades > 2 && i > 0)) continue;
            major[n] = i == 0;
            t[n++] = v;
        }
    return n;
}

static sb_buf *num_label(sb_buf *b, double v, int log)
{
    int k = v > 0 ? (int)floor(log10(v) + 1e-9) : 0;
    if (log && (k <= -4 || k >= 5)) {
        double mant = v / pow(10, k);
        if (fabs(mant - 1) > 1e-6) sb_printf(b, "%g×", mant);
        return sb_printf(b, "10<tspan dy=\"-5\" font-size=\"8\">%s%d</tspan>", k < 0 ? "−" : "", k < 0 ? -k : k);
    }
    char s[32];
    snprintf(s, sizeof s, "%.6g", v);
    return sb_puts(b, s);
}

/* Gridlines and tick labels of a y axis at x (labels to its left, or right). */
static void y_axis(sb_buf *b, const scale *s, double x0, double x1, int labels_right, const char *title)
{
    double t[32], lo = s->d0, hi = s->d1;
    int major[32], n;
    if (s->log) n = log_ticks(&lo, &hi, t, major);
    else { n = linear_ticks(&lo, &hi, s->r0 - s->r1 < 80 ? 2 : 4, t); for (int i = 0; i < n; i++) major[i] = 1; }
    for (int i = 0; i < n; i++) {
        if (t[i] < s->d0 * 0.9999 || t[i] > s->d1 * 1.0001 + 1e-12) continue;
        double y = at(s, t[i]);
        sb_printf(b, "<line class=\"grid%s\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", major[i] ? "" : " minor", x0, x1, y, y);
        sb_printf(b, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"%s\">", labels_right ? x1 + 4 : x0 - 5, y + 3.5,
                 labels_right ? "start" : "end");
        sb_puts(num_label(b, t[i], s->log), "</text>");
    }
    if (title) {
        double ym = (s->r0 + s->r1) / 2, xt = labels_right ? x1 + 40 : x0 - 40;
        sb_printf(b, "<text class=\"axis-title\" transform=\"translate(%.1f %.1f) rotate(-90)\" text-anchor=\"middle\">", xt, ym);
        sb_puts(rep_cat_html(b, title), "</text>");
    }
}

static void x_axis(sb_buf *b, const scale *s, double y0, double y1, const char *title)
{
    double t[32], lo = s->d0, hi = s->d1;
    int n = linear_ticks(&lo, &hi, (int)((s->r1 - s->r0) / 45), t);
    for (int i = 0; i < n; i++) {
        if (t[i] < s->d0 - 1e-9 || t[i] > s->d1 + 1e-9) continue;
        double x = at(s, t[i]);
        sb_printf(b, "<line class=\"grid\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", x, x, y0, y1);
        sb_printf(b, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>", x, y1 + 13, t[i]);
    }
    sb_printf(b, "<line class=\"axis\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", s->r0, s->r1, y1, y1);
    if (title) {
        sb_printf(b, "<text class=\"axis-title\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", (s->r0 + s->r1) / 2, y1 + 29);
        sb_puts(rep_cat_html(b, title), "</text>");
    }
}

static sb_buf *svg_open(sb_buf *b, const char *id, double h, const char *label)
{
    sb_printf(b, "<svg id=\"%s\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 %.0f %.0f\" role=\"img\" aria-label=\"", id, W, h);
    return sb_puts(rep_cat_html(b, label), "\">");
}

static sb_buf *attr_num(sb_buf *b, const char *name, double v)
{
    char s[32];
    return sb_printf(b, " %s=\"%s\"", name, rep_exact(s, v));
}

/* ==== Layer columns shared by the heat map and the allocation strips ==== */

typedef struct { double x0, x1, cw, head_x, head_w; int L, head; } columns;

/* Layers share the width; the head gets a column of its own, at least 14 wide. */
static columns make_columns(const rep_report *r, double x0, double x1)
{
    columns c = {x0, x1, 0, 0, 0, r->n_layers, r->has_head};
    double n = r->n_layers + (r->has_head ? 1.6 : 0), cw = (x1 - x0) / (n > 0 ? n : 1);
    c.head_w = !r->has_head ? 0 : cw >= 14 ? cw : 14;
    double gap = !r->has_head ? 0 : cw >= 14 ? 0.6 * cw : 8;
    c.cw = (x1 - x0 - c.head_w - gap) / (r->n_layers > 0 ? r->n_layers : 1);
    c.head_x = x1 - c.head_w;
    return c;
}

static double col_x(const columns *c, int layer) { return layer < 0 ? c->head_x : c->x0 + layer * c->cw; }
static double col_w(const columns *c, int layer) { return layer < 0 ? c->head_w : c->cw; }

static void layer_axis(sb_buf *b, const columns *c, double y)
{
    static const int steps[] = {1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000};
    int step = 1000;
    for (int i = 0; i < 11; i++) if (steps[i] * c->cw >= 26) { step = steps[i]; break; }
    for (int l = 0; l < c->L; l += step) {
        double x = col_x(c, l) + c->cw / 2;
        if (c->head && x > c->head_x - 16) break;
        sb_printf(b, "<line class=\"axis\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", x, x, y, y + 3);
        sb_printf(b, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>", x, y + 14, l);
    }
    if (c->head)
        sb_printf(b, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">head</text>", c->head_x + c->head_w / 2, y + 14);
    sb_printf(b, "<text class=\"axis-title\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">layer (input → output)</text>",
             (c->x0 + col_x(c, c->L - 1) + c->cw) / 2, y + 30);
}

static double cell_gap(const columns *c) { return c->cw >= 8 ? 1.5 : c->cw >= 4 ? 0.5 : 0; }

/* ==== Sensitivity heat map ==== */

static double heat_t(const rep_report *r, double e)
{
    if (!(e > 0)) return 0;
    return (log10(e) - log10(r->err_lo)) / (log10(r->err_hi) - log10(r->err_lo));
}

static void heat_legend(sb_buf *b, const rep_report *r, double x, double y, double w)
{
    sb_puts(b, "<defs><linearGradient id=\"heat-ramp\" x1=\"0\" x2=\"1\" y1=\"0\" y2=\"0\">");
    for (int i = 0; i <= 16; i++) {
        char col[8];
        rep_heat_color(i / 16.0, col);
        sb_printf(b, "<stop offset=\"%.4f\" stop-color=\"%s\"/>", i / 16.0, col);
    }
    sb_puts(b, "</linearGradient></defs>");
    sb_printf(b, "<g class=\"legend\" data-lo=\"%.6g\" data-hi=\"%.6g\">", r->err_lo, r->err_hi);
    sb_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"10\" fill=\"url(#heat-ramp)\" stroke=\"#bbb\" stroke-width=\"0.5\"/>", x, y, w);
    scale s = {r->err_lo, r->err_hi, x, x + w, 1};
    double t[32], lo = s.d0, hi = s.d1;
    int major[32], n = log_ticks(&lo, &hi, t, major), n_major = 0;
    for (int i = 0; i < n; i++) n_major += major[i] && t[i] >= s.d0 * 0.9999 && t[i] <= s.d1 * 1.0001;
    for (int i = 0; i < n; i++) {
        if (t[i] < s.d0 * 0.9999 || t[i] > s.d1 * 1.0001 || (!major[i] && n_major >= 2)) continue;
        double xt = at(&s, t[i]);
        sb_printf(b, "<line class=\"axis\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", xt, xt, y + 10, y + 14);
        sb_printf(b, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", xt, y + 25);
        sb_puts(num_label(b, t[i], 1), "</text>");
    }
    sb_printf(b, "<text class=\"legend-title\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">relative output error (log scale)</text>", x - 10, y + 9);
    sb_puts(b, "</g>");
}

static void heat_cell(sb_buf *b, const rep_report *r, const columns *c, int t, double y, double h)
{
    const db_report *d = r->d;
    const db_rep_tensor *tn = &d->tensors[t];
    double x = col_x(c, tn->layer), w = col_w(c, tn->layer), g = w >= 8 ? 1.5 : cell_gap(c);
    int mi = r->sel_meas[t];
    char col[8] = "#eeeeee", s1[32], s2[32];
    if (mi >= 0) rep_heat_color(heat_t(r, d->meas[mi].rel_err), col);
    sb_printf(b, "<rect class=\"cell\" x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" fill=\"%s\" data-tensor=\"", x + g / 2, y,
             w - g, h, col);
    sb_puts(rep_cat_html(b, tn->name), "\"");
    if (mi < 0) { sb_puts(b, " data-missing=\"1\"><title>"); sb_puts(rep_cat_html(b, tn->name), ": not measured</title></rect>"); return; }
    const db_rep_meas *m = &d->meas[mi];
    attr_num(attr_num(b, "data-value", m->rel_err), "data-bpw", rep_tensor_bpw(d, t, m->bits));
    sb_printf(b, " data-bits=\"%lld\" data-option=\"%lld\"><title>", (long long)m->bits, (long long)d->options[m->option].id);
    rep_cat_html(b, tn->name);
    sb_printf(b, "\nrelative error %s at %s (%s bpw)</title></rect>", rep_sig(s1, m->rel_err, 4),
             d->options[m->option].opt.name, rep_sig(s2, rep_tensor_bpw(d, t, m->bits), 4));
}

sb_buf *rep_svg_heatmap(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    double rh = r->n_cls > 6 ? 22 : 26, top = 6, x0 = 52;
    double h = top + r->n_cls * rh + 40 + 44;
    columns c = make_columns(r, x0, W - 12);
    char label[160];
    snprintf(label, sizeof label, "Heat map of relative error per layer and class at option %s", d->options[r->sel].opt.name);
    svg_open(b, "heatmap", h, label);
    sb_printf(b, "<g data-option=\"%lld\" data-layers=\"%d\">", (long long)d->options[r->sel].id, r->n_layers);
    for (int ci = 0; ci < r->n_cls; ci++) {
        double y = top + ci * rh;
        sb_printf(b, "<text class=\"row-label\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>", x0 - 8, y + rh / 2 + 4,
                 lay_class_name(r->cls[ci]));
        sb_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"4\" height=\"%.1f\" fill=\"%s\"/>", x0 - 5, y + 1, rh - 4,
                 rep_class_colors[r->cls[ci]]);
        for (int t = 0; t < d->n_tensors; t++)
            if (r->t_cls[t] == r->cls[ci]) heat_cell(b, r, &c, t, y + 1, rh - 3);
    }
    sb_puts(b, "</g>");
    layer_axis(b, &c, top + r->n_cls * rh);
    heat_legend(b, r, W - 12 - 300, h - 34, 300);
    return sb_puts(b, "</svg>");
}

/* ==== Error curves by class ==== */

static void depth_legend(sb_buf *b, const rep_report *r, double x, double y, double w)
{
    sb_puts(b, "<defs><linearGradient id=\"depth-ramp\" x1=\"0\" x2=\"1\" y1=\"0\" y2=\"0\">");
    for (int i = 0; i <= 8; i++) {
        char col[8];
        rep_depth_color(i / 8.0, col);
        sb_printf(b, "<stop offset=\"%.3f\" stop-color=\"%s\"/>", i / 8.0, col);
    }
    sb_puts(b, "</linearGradient></defs>");
    sb_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"8\" fill=\"url(#depth-ramp)\"/>", x, y, w);
    sb_printf(b, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">layer 0</text>", x - 5, y + 8);
    sb_printf(b, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\">%d</text>", x + w + 5, y + 8, r->n_layers - 1);
    sb_printf(b, "<text class=\"legend-title\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>", x - 60, y + 8,
             r->binned ? "one line per bin of layers (median), coloured by depth:" : "one line per layer, coloured by depth:");
}

static void curve_mark(sb_buf *b, const rep_report *r, const rep_curve *cv, const scale *sx, const scale *sy)
{
    char col[8];
    double mid = cv->layer_lo < 0 ? 1 : (cv->layer_lo + cv->layer_hi) / 2.0 / (r->n_layers > 1 ? r->n_layers - 1 : 1);
    rep_depth_color(mid, col);
    if (cv->layer_lo < 0) snprintf(col, sizeof col, "%s", rep_class_colors[LAY_HEAD]);
    sb_printf(b, "<%s class=\"curve\" stroke=\"%s\" data-layer-lo=\"%d\" data-layer-hi=\"%d\"", cv->n > 1 ? "polyline" : "circle", col,
             cv->layer_lo, cv->layer_hi);
    if (cv->tensor >= 0) sb_puts(rep_cat_html(sb_puts(b, " data-tensor=\""), r->d->tensors[cv->tensor].name), "\"");
    sb_puts(b, " data-points=\"");
    for (int i = 0; i < cv->n; i++) sb_puts(rep_cat_exact(sb_puts(rep_cat_exact(b, cv->bpw[i]), ","), cv->err[i]), i + 1 < cv->n ? ";" : "");
    if (cv->n > 1) {
        sb_puts(b, "\" points=\"");
        for (int i = 0; i < cv->n; i++) sb_printf(b, "%.1f,%.1f ", at(sx, cv->bpw[i]), at(sy, cv->err[i]));
        sb_puts(b, "\">");
    } else {
        sb_printf(b, "\" cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\">", at(sx, cv->bpw[0]), at(sy, cv->err[0]), col);
    }
    if (cv->layer_lo < 0) sb_puts(b, "<title>head</title>");
    else if (cv->layer_lo == cv->layer_hi) sb_printf(b, "<title>layer %d</title>", cv->layer_lo);
    else sb_printf(b, "<title>layers %d–%d (median)</title>", cv->layer_lo, cv->layer_hi);
    sb_puts(b, cv->n > 1 ? "</polyline>" : "</circle>");
}

sb_buf *rep_svg_curves(sb_buf *b, const rep_report *r)
{
    int cols = r->n_cls > 4 ? 4 : r->n_cls, rows = (r->n_cls + cols - 1) / cols;
    double pw = W / cols, ph = 190, top = 26, ml = 50, mr = 10, mt = 22, mb = 34;
    svg_open(b, "curves", top + rows * ph, "Relative error against bits per weight, one panel per class");
    sb_printf(b, "<g data-binned=\"%d\">", r->binned);
    depth_legend(b, r, W - 230, 4, 160);
    double xlo = r->curve_bpw_lo, xhi = r->curve_bpw_hi, ylo = r->curve_err_lo, yhi = r->curve_err_hi, t[32];
    int major[32];
    linear_ticks(&xlo, &xhi, 5, t);
    log_ticks(&ylo, &yhi, t, major);
    for (int ci = 0; ci < r->n_cls; ci++) {
        double px = (ci % cols) * pw, py = top + (ci / cols) * ph;
        scale sx = {xlo, xhi, px + ml, px + pw - mr, 0}, sy = {ylo, yhi, py + ph - mb, py + mt, 1};
        sb_printf(b, "<g class=\"panel\" data-class=\"%s\">", lay_class_name(r->cls[ci]));
        sb_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"10\" rx=\"2\" fill=\"%s\"/>", px + ml, py + 4,
                 rep_class_colors[r->cls[ci]]);
        sb_printf(b, "<text class=\"panel-title\" x=\"%.1f\" y=\"%.1f\">%s</text>", px + ml + 15, py + 13, lay_class_name(r->cls[ci]));
        y_axis(b, &sy, sx.r0, sx.r1, 0, ci % cols == 0 ? "relative error" : NULL);
        x_axis(b, &sx, sy.r1, sy.r0, "bits per weight");
        for (int i = 0; i < r->n_curves; i++)
            if (r->curves[i].cls == r->cls[ci]) curve_mark(b, r, &r->curves[i], &sx, &sy);
        sb_puts(b, "</g>");
    }
    return sb_puts(b, "</g></svg>");
}

/* ==== Allocation strips ==== */

static void alloc_bar(sb_buf *b, const rep_report *r, const columns *c, int t, const scale *sy)
{
    const db_report *d = r->d;
    const db_rep_plan *p = &d->plans[r->alloc];
    const db_rep_choice *ch = &p->choices[r->alloc_choice[t]];
    double w = col_w(c, d->tensors[t].layer), bpw = rep_tensor_bpw(d, t, ch->bits), g = w >= 6 ? w * 0.18 : 0, y = at(sy, bpw);
    char s1[32], s2[32];
    sb_printf(b, "<rect class=\"bar\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\" data-tensor=\"",
             col_x(c, d->tensors[t].layer) + g / 2, y, w - g, sy->r0 - y, rep_class_colors[r->t_cls[t]]);
    rep_cat_html(b, d->tensors[t].name);
    sb_printf(b, "\" data-bits=\"%lld\" data-option=\"%lld\"", (long long)ch->bits, (long long)d->options[ch->option].id);
    attr_num(attr_num(b, "data-bpw", bpw), "data-predicted", ch->predicted);
    int stored = rep_as_stored(r, t);
    if (stored) sb_puts(b, " data-as-stored=\"1\" stroke=\"#111\" stroke-width=\"1\" stroke-dasharray=\"2 1\"");
    sb_puts(rep_cat_html(sb_puts(b, "><title>"), d->tensors[t].name), "\n");
    sb_printf(b, "%s: %s bpw, predicted damage %s%s</title></rect>", d->options[ch->option].opt.name, rep_sig(s1, bpw, 4),
             rep_sig(s2, ch->predicted, 3), stored ? "\nas stored: the source's own blocks, zero measured error" : "");
}

sb_buf *rep_svg_allocation(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    const db_rep_plan *p = &d->plans[r->alloc];
    double sh = r->n_cls > 6 ? 40 : 52, gap = 8, top = 30, x0 = 52, ymin = INFINITY, ymax = -INFINITY;
    for (int i = 0; i < p->n_choices; i++) {
        double bpw = rep_tensor_bpw(d, p->choices[i].tensor, p->choices[i].bits);
        ymin = fmin(ymin, bpw), ymax = fmax(ymax, bpw);
    }
    ymin = fmax(0, floor(ymin) - 1), ymax = fmax(ceil(ymax), ymin + 2);
    columns c = make_columns(r, x0, W - 40);
    svg_open(b, "allocation", top + r->n_cls * (sh + gap) + 36, "Bits per weight of each tensor along the depth of the model");
    sb_printf(b, "<g data-plan=\"%lld\">", (long long)p->row.id);
    for (int ci = 0; ci < r->n_cls; ci++) {
        sb_printf(b, "<rect x=\"%.1f\" y=\"8\" width=\"10\" height=\"10\" rx=\"2\" fill=\"%s\"/>", x0 + ci * 70.0, rep_class_colors[r->cls[ci]]);
        sb_printf(b, "<text class=\"tick\" x=\"%.1f\" y=\"17\">%s</text>", x0 + ci * 70.0 + 14, lay_class_name(r->cls[ci]));
    }
    sb_printf(b, "<text class=\"legend-title\" x=\"%.1f\" y=\"17\" text-anchor=\"end\">- - plan mean %.3g bpw</text>", W - 40, p->row.achieved_bpw);
    for (int ci = 0; ci < r->n_cls; ci++) {
        double y = top + ci * (sh + gap);
        scale sy = {ymin, ymax, y + sh, y, 0};
        sb_printf(b, "<g class=\"strip\" data-class=\"%s\">", lay_class_name(r->cls[ci]));
        sb_printf(b, "<text class=\"row-label\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>", x0 - 8, y + sh / 2 + 4,
                 lay_class_name(r->cls[ci]));
        y_axis(b, &sy, x0, c.x1, 1, NULL);
        for (int t = 0; t < d->n_tensors; t++)
            if (r->t_cls[t] == r->cls[ci] && r->alloc_choice[t] >= 0) alloc_bar(b, r, &c, t, &sy);
        double ym = at(&sy, p->row.achieved_bpw);
        sb_printf(b, "<line class=\"mean\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", x0, W - 40, ym, ym);
        sb_puts(b, "</g>");
    }
    layer_axis(b, &c, top + r->n_cls * (sh + gap) - gap + 2);
    return sb_puts(b, "</g></svg>");
}

/* ==== Pareto panels ==== */

typedef struct { const char *title, *unit; int log; } panel_spec;

static double sweep_value(const rep_report *r, int k, int panel)
{
    const db_report *d = r->d;
    if (panel == 0) return d->plans[r->sweep_plans[k]].row.objective;
    int e = panel == 1 ? r->sweep_kld_eval[k] : r->sweep_ppl_eval[k];
    return e < 0 ? NAN : panel == 1 ? d->evals[e].kld : d->evals[e].ppl;
}

static void pareto_panel(sb_buf *b, const rep_report *r, int panel, double px, double pw, double ph, double xlo, double xhi)
{
    static const char *const colors[] = {"#3b5b92", "#c0392b", "#2e8b57"};
    const db_report *d = r->d;
    const char *metric = r->n_sweep ? d->plans[r->sweep_plans[0]].row.metric : "rel_err";
    const char *titles[] = {!strcmp(metric, "kld") ? "predicted KL divergence (objective)" : "predicted damage (Σ rel. error)",
                            "measured KL divergence", "measured perplexity"};
    double lo = INFINITY, hi = -INFINITY, ml = 56, mt = 34, mb = 40, mr = 14;
    int n = 0;
    for (int k = 0; k < r->n_sweep; k++) {
        double v = sweep_value(r, k, panel);
        if (isnan(v) || (panel < 2 && v <= 0)) continue;
        lo = fmin(lo, v), hi = fmax(hi, v), n++;
    }
    if (panel == 2 && r->base_eval >= 0) lo = fmin(lo, d->evals[r->base_eval].ppl), hi = fmax(hi, d->evals[r->base_eval].ppl);
    sb_printf(b, "<g class=\"panel\" data-panel=\"%s\">", panel == 0 ? "predicted" : panel == 1 ? "kld" : "ppl");
    sb_printf(b, "<text class=\"panel-title\" x=\"%.1f\" y=\"14\">%s", px + ml, titles[panel]);
    if (panel == 1 && !isnan(r->spearman)) /* how well the prediction ranks the plans */
        sb_printf(b, " (<tspan data-spearman=\"%.6f\">Spearman ρ %.2f</tspan>, %d plans)", r->spearman, r->spearman, r->n_ranked);
    sb_puts(b, "</text>");
    scale sx = {xlo, xhi, px + ml, px + pw - mr, 0};
    if (n == 0) {
        sb_printf(b, "<rect class=\"empty\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/>", sx.r0, mt, sx.r1 - sx.r0, ph - mt - mb);
        sb_printf(b, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">no evaluations yet (bitplan eval --db)</text></g>",
                 (sx.r0 + sx.r1) / 2, (ph - mb + mt) / 2);
        return;
    }
    int log = panel < 2 && hi > lo * 4;
    if (!log) { double pad = (hi - lo) * 0.08 + fabs(hi) * 1e-3; lo -= pad, hi += pad; double t[32]; linear_ticks(&lo, &hi, 4, t); }
    else { double t[32]; int m[32]; log_ticks(&lo, &hi, t, m); }
    scale sy = {lo, hi, ph - mb, mt, log};
    y_axis(b, &sy, sx.r0, sx.r1, 0, panel == 2 ? "perplexity" : panel == 1 ? "KL divergence (nats)" : "objective");
    x_axis(b, &sx, sy.r1, sy.r0, "achieved bits per weight");
    if (panel == 2 && r->base_eval >= 0) {
        double y = at(&sy, d->evals[r->base_eval].ppl);
        sb_printf(b, "<line class=\"baseline\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"", sx.r0, sx.r1, y, y);
        attr_num(b, "data-value", d->evals[r->base_eval].ppl);
        sb_printf(b, "/><text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">unquantized %.4g</text>", sx.r1 - 2, y + 13 > sy.r0 - 2 ? y - 5 : y + 13,
                 d->evals[r->base_eval].ppl);
    }
    sb_printf(b, "<polyline class=\"sweep-line\" stroke=\"%s\" points=\"", colors[panel]);
    for (int k = 0; k < r->n_sweep; k++) {
        double v = sweep_value(r, k, panel);
        if (!isnan(v) && (panel == 2 || v > 0)) sb_printf(b, "%.1f,%.1f ", at(&sx, d->plans[r->sweep_plans[k]].row.achieved_bpw), at(&sy, v));
    }
    sb_puts(b, "\"/>");
    for (int k = 0; k < r->n_sweep; k++) {
        const db_rep_plan *p = &d->plans[r->sweep_plans[k]];
        double v = sweep_value(r, k, panel), x = at(&sx, p->row.achieved_bpw);
        if (isnan(v) || (panel < 2 && v <= 0)) continue;
        int sel = r->alloc == r->sweep_plans[k];
        sb_printf(b, "<circle class=\"point%s\" cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\" fill=\"%s\" data-plan=\"%lld\"", sel ? " selected" : "",
                 x, at(&sy, v), sel ? 5.0 : 3.6, colors[panel], (long long)p->row.id);
        attr_num(attr_num(b, "data-bpw", p->row.achieved_bpw), "data-value", v);
        /* measured against predicted KL, where the objective is KL */
        double ratio = panel == 1 && !strcmp(p->row.metric, "kld") && p->row.objective > 0 ? v / p->row.objective : NAN;
        if (!isnan(ratio)) attr_num(b, "data-ratio", ratio);
        char s1[32], s2[32], s3[32];
        sb_printf(b, "><title>plan %lld: %s bpw, %s", (long long)p->row.id, rep_sig(s1, p->row.achieved_bpw, 4), rep_sig(s2, v, 4));
        if (!isnan(ratio)) sb_printf(b, ", %s × predicted", rep_sig(s3, ratio, 3));
        sb_puts(b, "</title></circle>");
        if (r->n_sweep <= 16)
            sb_printf(b, "<text class=\"point-label\" x=\"%.1f\" y=\"%.1f\">#%lld</text>", x + 5, at(&sy, v) - 6, (long long)p->row.id);
    }
    sb_puts(b, "</g>");
}

sb_buf *rep_svg_pareto(sb_buf *b, const rep_report *r)
{
    const db_report *d = r->d;
    double xlo = INFINITY, xhi = -INFINITY, ph = 250, pw = W / 3, t[32];
    for (int k = 0; k < r->n_sweep; k++)
        xlo = fmin(xlo, d->plans[r->sweep_plans[k]].row.achieved_bpw), xhi = fmax(xhi, d->plans[r->sweep_plans[k]].row.achieved_bpw);
    double pad = (xhi - xlo) * 0.06;
    xlo -= pad > 0 ? pad : 0.25, xhi += pad > 0 ? pad : 0.25;
    linear_ticks(&xlo, &xhi, 4, t);
    svg_open(b, "pareto", ph, "Predicted damage and measured KL divergence and perplexity against achieved bits per weight");
    sb_puts(rep_cat_html(sb_puts(b, "<g data-sweep=\""), r->sweep), "\">");
    for (int panel = 0; panel < 3; panel++) pareto_panel(b, r, panel, panel * pw, pw, ph, xlo, xhi);
    return sb_puts(b, "</g></svg>");
}

/* ==== VRAM bar ==== */

sb_buf *rep_svg_vram(sb_buf *b, const rep_report *r)
{
    const db_rep_plan *p = &r->d->plans[r->vram];
    double top = 34, bh = 40, x0 = 20, x1 = W - 30;
    double max = fmax(r->vtotal, isnan(r->budget) ? 0 : r->budget) * 1.06, unit = max >= 1073741824.0 ? 1073741824.0 : 1048576.0;
    const char *uname = unit > 1048576.0 ? "GiB" : "MiB";
    int legend_rows = (r->n_vterms + 3) / 4;
    svg_open(b, "vram", top + bh + 48 + legend_rows * 20, "Memory by term against the VRAM budget");
    sb_printf(b, "<g data-plan=\"%lld\"", (long long)p->row.id);
    attr_num(attr_num(b, "data-budget", r->budget), "data-total", r->vtotal);
    sb_puts(b, ">");
    double lo = 0, hi = max / unit, t[32];
    int n = linear_ticks(&lo, &hi, 8, t);
    scale s = {0, hi * unit, x0, x1, 0};
    for (int i = 0; i < n; i++) {
        double x = at(&s, t[i] * unit);
        sb_printf(b, "<line class=\"grid\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", x, x, top - 4, top + bh + 4);
        sb_printf(b, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g %s</text>", x, top + bh + 18, t[i], uname);
    }
    double x = x0;
    for (int i = 0; i < r->n_vterms; i++) {
        const db_rep_term *tm = &p->terms[r->vterms[i]];
        double w = at(&s, tm->bytes) - x0;
        char sz[32];
        sb_printf(b, "<rect class=\"term\" x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" fill=\"%s\" data-term=\"", x, top,
                 w > 0 ? w : 0, bh, rep_term_color(tm->name, i));
        rep_cat_html(b, tm->name);
        attr_num(sb_puts(b, "\""), "data-value", tm->bytes);
        sb_puts(rep_cat_html(sb_puts(b, "><title>"), tm->name), ": ");
        sb_printf(b, "%s</title></rect>", rep_bytes(sz, tm->bytes));
        if (w > 70) {
            sb_printf(b, "<text class=\"bar-label\" x=\"%.1f\" y=\"%.1f\">", x + 6, top + bh / 2 + 4);
            sb_puts(rep_cat_html(b, tm->name), "</text>");
        }
        x += w > 0 ? w : 0;
    }
    char tot[32];
    sb_printf(b, "<text class=\"legend-title\" x=\"%.1f\" y=\"%.1f\">%s%s", x + 6, top + bh / 2 + 4, x > x1 - 160 ? "" : "used ",
             rep_bytes(tot, r->vtotal));
    if (r->budget > 0 && x <= x1 - 160) sb_printf(b, " (%.1f%%)", 100 * r->vtotal / r->budget);
    sb_puts(b, "</text>");
    if (!isnan(r->budget)) {
        double xb = at(&s, r->budget);
        char sz[32];
        sb_printf(b, "<line class=\"budget\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", xb, xb, top - 12, top + bh + 6);
        sb_printf(b, "<text class=\"budget-label\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">budget %s</text>", xb - 4, top - 6,
                 rep_bytes(sz, r->budget));
    }
    for (int i = 0; i < r->n_vterms; i++) {
        const db_rep_term *tm = &p->terms[r->vterms[i]];
        double lx = x0 + (i % 4) * 240, ly = top + bh + 34 + (i / 4) * 20;
        char sz[32];
        sb_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"11\" height=\"11\" rx=\"2\" fill=\"%s\"/>", lx, ly, rep_term_color(tm->name, i));
        sb_printf(b, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\">", lx + 16, ly + 10);
        rep_cat_html(b, tm->name);
        sb_printf(b, " — %s", rep_bytes(sz, tm->bytes));
        if (r->budget > 0) sb_printf(b, " (%.1f%%)", 100 * tm->bytes / r->budget);
        sb_puts(b, "</text>");
    }
    return sb_puts(b, "</g></svg>");
}
