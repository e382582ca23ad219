/*
 * pack/meta.c — the __metadata__ JSON of a packed file (pack/FORMAT.md): the model
 * configuration (model/'s mdl_config_json), the option of every quantized tensor,
 * and the plan it came from.
 * The tokenizer JSON comes from model/ (mdl_tokenizer_json), which alone knows
 * vocabulary formats; reading all of it back is model/packed_meta.c's job.
 * It must never write a number that does not read back to the same value.
 */
#include "pack_int.h"

#include <stdio.h>
#include <string.h>

void pack_meta_options(sb_buf *b, const pack_meta_tensor *t, int n)
{
    sb_putc(b, '{');
    for (int i = 0; i < n; i++) {
        const lay_option *o = &t[i].opt;
        if (i) sb_putc(b, ',');
        sb_json_string(b, t[i].name);
        sb_puts(b, ":{\"name\":");
        sb_json_string(b, o->name);
        sb_printf(b, ",\"bits_lo\":%d,\"bits_hi\":%d,\"hi_share\":%.9g,\"group\":%d,\"scale_fmt\":%d,",
                  o->bits_lo, o->bits_hi, (double)o->hi_share, (int)o->group, (int)o->scale_fmt);
        if (o->rot) sb_printf(b, "\"rot\":%d,\"rot_seed\":%u,", o->rot, t[i].rot_seed); /* version 4 */
        if (o->awq) sb_puts(b, "\"awq\":1,");                                             /* version 5 */
        sb_printf(b, "\"bits\":%lld}", (long long)lay_tensor_bits(o, t[i].rows, t[i].cols));
    }
    sb_putc(b, '}');
}

void pack_meta_plan_json(sb_buf *b, const pack_meta_plan *p)
{
    sb_printf(b, "{\"id\":%lld,\"kind\":", (long long)p->plan_id);
    sb_json_string(b, p->kind);
    sb_printf(b, ",\"target\":%.17g,\"achieved_bpw\":%.17g,\"plan_file_bpw\":%.17g,\"objective\":%.17g,"
                 "\"file_bpw\":%.17g,\"db\":",
              p->target, p->achieved_bpw, p->plan_file_bpw, p->objective, p->file_bpw);
    sb_json_string(b, p->db_path);
    sb_puts(b, ",\"model_hash\":");
    sb_json_string(b, p->model_hash);
    sb_puts(b, ",\"hessians\":");
    sb_json_string(b, p->hessians);
    sb_putc(b, '}');
}
