/*
 * model/packed_plan.c — which plan a packed file was made from (its "plan"
 * metadata, pack/FORMAT.md), or a GGUF export (the same JSON under bitplan.plan),
 * so that an evaluation can be filed under that plan.
 */
#include <stdio.h>
#include <string.h>

#include "util/util.h"
#include "model_int.h"

int mdl_packed_plan(const mdl_model *m, mdl_packed_plan_info *out, char *err, size_t err_len)
{
    const char *text;
    memset(out, 0, sizeof *out);
    if (mdl_meta_str(m, mdl_is_packed(m) ? "meta.plan" : MDL_GGUF_PLAN_KEY, &text))
        return mdl_errf(err, err_len, "%s: not a packed file with a plan", m->path);
    util_json *j = util_json_parse(text, strlen(text), err, err_len);
    if (!j) return -1;
    int rc = 0;
    double id = util_json_num(j, "id", 0);
    if (j->type != UTIL_JSON_OBJ) rc = mdl_errf(err, err_len, "%s: plan: not a JSON object", m->path);
    else if (!(id >= 0 && id <= 9007199254740992.0)) /* a double holds every integer up to 2^53 */
        rc = mdl_errf(err, err_len, "%s: plan: id %g is not a plan id", m->path, id);
    else {
        out->plan_id = (int64_t)id;
        out->achieved_bpw = util_json_num(j, "achieved_bpw", 0);
        out->file_bpw = util_json_num(j, "file_bpw", 0);
        const char *h = util_json_str(j, "model_hash");
        snprintf(out->model_hash, sizeof out->model_hash, "%s", h ? h : "");
        const char *db = util_json_str(j, "db"), *hess = util_json_str(j, "hessians");
        snprintf(out->db_path, sizeof out->db_path, "%s", db ? db : "");
        snprintf(out->hessians, sizeof out->hessians, "%s", hess ? hess : "");
    }
    util_json_free(j);
    return rc;
}
