/*
 * reports/rep_write.c — the writers' entry: a format's name, and rep_write's
 * dispatch to the writer of each format (rep_html.c, rep_text.c). Above both the
 * writers and rep_build.c, whose helpers the writers use.
 */
#include "rep_int.h"

#include <string.h>

int rep_format_parse(const char *s, rep_format *f)
{
    static const char *names[] = {"html", "md", "csv", "json"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) { *f = (rep_format)i; return 0; }
    return -1;
}

sb_buf *rep_write(sb_buf *b, const rep_report *r, rep_format f)
{
    switch (f) {
    case REP_MD: return rep_write_md(b, r);
    case REP_CSV: return rep_write_csv(b, r);
    case REP_JSON: return rep_write_json(b, r);
    default: return rep_write_html(b, r);
    }
}
