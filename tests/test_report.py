"""bitplan report: the HTML, Markdown, CSV and JSON reports carry the database's numbers.

A synthetic database (db/schema.sql executed with Python's sqlite3) with a Llama-like
model, an option set, measurements, a sweep of plans with choices, a VRAM plan and
evaluations is reported in every format; the exact values in the SVG marks and table
cells (data-* attributes), and the numbers of the other formats, are compared with the
database. The page is rendered in headless Chromium, which must log no console error.
A 2,000-tensor database checks that deep models switch to binned rendering, and bad
inputs (no measurement, a wrong plan id, an empty sweep) give the documented messages.
"""
import csv
import io
import json
import math
import os
import random
import re
import shutil
import sqlite3
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BITPLAN_BUILD", "build")
BITPLAN = os.path.join(ROOT, BUILD, "bitplan")
CLASSES = ["q", "k", "v", "o", "gate", "up", "down"]
GROUP = {"q": "attn", "k": "attn", "v": "attn", "o": "attn_out", "gate": "mlp", "up": "mlp", "down": "mlp_out"}
GIB = 1 << 30


# ==== A synthetic database ====

def shapes(hidden, kv, ff):
    return {"q": (hidden, hidden), "k": (kv, hidden), "v": (kv, hidden), "o": (hidden, hidden),
            "gate": (ff, hidden), "up": (ff, hidden), "down": (hidden, ff)}


def option_bits(rows, cols, lo, hi, share, group):
    """Stored bits of an option (weights, fp16 scale + u8 zero per group, permutation)."""
    n_groups = -(-cols // group)
    n_hi = int(math.floor(share * n_groups + 0.5))
    wbits = sum(min(group, cols - g * group) * (hi if g < n_hi else lo) for g in range(n_groups))
    return rows * wbits + rows * n_groups * 24 + cols * 32


OPTIONS = [(b, b, 0.0, g) for b in (2, 3, 4, 5, 6, 8) for g in (32, 128)] + [(2, 3, 0.25, 64), (3, 4, 0.25, 64), (4, 5, 0.1, 64)]


def make_db(path, n_layers=30, hidden=576, kv=192, ff=1536, vocab=49152, measure=True, plans=True, sweep=True,
            evals=True, seed=1):
    """Writes a bitplan database; returns a dict of what it put in."""
    if os.path.exists(path):
        os.remove(path)
    rnd = random.Random(seed)
    con = sqlite3.connect(path)
    con.executescript(open(os.path.join(ROOT, "db", "schema.sql")).read())
    con.execute("ALTER TABLE options ADD COLUMN rot INTEGER NOT NULL DEFAULT 0")  # version 3's column
    con.execute("ALTER TABLE options ADD COLUMN awq INTEGER NOT NULL DEFAULT 0")  # version 4's
    con.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '4')")
    con.execute("INSERT INTO models(id, content_hash, path, arch, config_json, n_params) VALUES (1, ?, ?, 'llama', ?, ?)",
                ("ab" * 32, "models/Synthetic-%dL.gguf" % n_layers, json.dumps({"n_layers": n_layers}), 134515008))
    shp = shapes(hidden, kv, ff)
    tensors = []
    tid = 0
    for layer in range(n_layers):
        for c in CLASSES:
            tid += 1
            kind = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output", "gate": "ffn_gate", "up": "ffn_up", "down": "ffn_down"}[c]
            tensors.append((tid, "blk.%d.%s.weight" % (layer, kind), layer, c, GROUP[c]) + shp[c])
    tid += 1
    tensors.append((tid, "output.weight", -1, "head", "head", vocab, hidden))
    con.executemany("INSERT INTO tensors(id, model_id, name, layer, class, input_group, rows, cols) VALUES (?,1,?,?,?,?,?,?)", tensors)
    con.execute("INSERT INTO calibrations(id, model_id, key, sources_json, rows, ctx, tokenizer, damp, status) VALUES "
                "(1, 1, 'k1', ?, 16, 512, 'bpe:abc', 0.01, 'done')", (json.dumps([{"path": "text/austen.txt", "sha256": "00"}]),))
    for i, (lo, hi, share, g) in enumerate(OPTIONS, 1):
        name = "%db g%d" % (lo, g) if lo == hi else "%db/%db %d%% g%d" % (lo, hi, round(share * 100), g)
        con.execute("INSERT INTO options(id, name, bits_lo, bits_hi, hi_share, group_size, scale_fmt) VALUES (?,?,?,?,?,?,0)",
                    (i, name, lo, hi, share, g))
        con.execute("INSERT INTO calibration_options VALUES (1, ?)", (i,))
    meas = {}
    if measure:
        for (t, name, layer, c, _, rows, cols) in tensors:
            depth = 1.0 if layer < 0 else (2.5 if layer == 0 else 1.0 + 0.8 * math.exp(-(n_layers - 1 - layer) / 3))
            base = {"q": 0.6, "k": 0.5, "v": 1.4, "o": 0.9, "gate": 0.8, "up": 0.7, "down": 1.6, "head": 0.5}[c] * depth
            base *= math.exp(rnd.gauss(0, 0.15))
            for i, (lo, hi, share, g) in enumerate(OPTIONS, 1):
                eff = lo + share * (hi - lo)
                err = base * 0.35 * 4.0 ** (-eff) * (1 + g / 512)
                bits = option_bits(rows, cols, lo, hi, share, g)
                meas[(t, i)] = (bits, err, err * 1.6)
                con.execute("INSERT INTO measurements VALUES (1, ?, ?, ?, ?, ?, 0.1)", (t, i, bits, err, err * 1.6))
    plan_ids, sweep_ids, vram_id, eval_rows = [], [], None, []
    if plans and measure:
        total_w = sum(r * c for (_, _, _, _, _, r, c) in tensors)
        targets = [2.5, 3.0, 3.5, 4.0, 5.0, 6.0]
        for k, target in enumerate(targets):
            pid = k + 1
            choices, tb, obj = [], 0, 0.0
            for (t, name, layer, c, _, rows, cols) in tensors:
                # a stand-in for the optimizer: more bits for the sensitive tensors
                want = target + (0.6 if c in ("v", "down") or layer == 0 else -0.25)
                best = min(range(1, len(OPTIONS) + 1), key=lambda i: abs(meas[(t, i)][0] / (rows * cols) - want))
                bits, err, _ = meas[(t, best)]
                choices.append((pid, t, best, bits, err))
                tb += bits
                obj += err
            con.execute("INSERT INTO plans(id, calib_id, kind, target, metric, achieved_bpw, file_bpw, total_bits, objective, gap,"
                        " solve_seconds, sweep, command) VALUES (?, 1, 'bpw', ?, 'rel_err', ?, ?, ?, ?, 0, 0.2, ?, ?)",
                        (pid, target, tb / total_w, tb / total_w + 0.31, tb, obj, "s1" if sweep else None,
                         "bitplan allocate --db x.db --sweep 2.5:6 --bpw %g" % target))
            con.executemany("INSERT INTO plan_choices VALUES (?,?,?,?,?)", choices)
            plan_ids.append(pid)
            if sweep:
                sweep_ids.append(pid)
        vram_id = len(targets) + 1
        mem = {"weights": 60 * 1024 * 1024 + 12345, "unquantized": 56623104, "kv_cache": 94371840, "scratch": 25165824,
               "reserve": 268435456, "budget": GIB}
        con.execute("INSERT INTO plans(id, calib_id, kind, target, metric, achieved_bpw, file_bpw, total_bits, objective, gap,"
                    " solve_seconds, memory_json, command) VALUES (?, 1, 'vram', ?, 'rel_err', 4.4, 4.9, 1, 0.5, 0, 0.3, ?,"
                    " 'bitplan allocate --db x.db --vram 1GiB --ctx 4096')", (vram_id, GIB, json.dumps(mem)))
        con.executemany("INSERT INTO plan_choices SELECT ?, tensor_id, option_id, bits, predicted FROM plan_choices WHERE plan_id = 4",
                        [(vram_id,)])
        plan_ids.append(vram_id)
        if evals:
            con.execute("INSERT INTO evals(model_id, plan_id, subject, subject_kind, bpw, text_path, text_hash, ctx, tokens, ppl,"
                        " ppl_stderr, device, command) VALUES (1, NULL, 'models/x.gguf', 'model', 16, 'text/py.txt', 'h', 512, 8192,"
                        " 12.25, 0.1, 'cpu', 'bitplan eval models/x.gguf --text text/py.txt')")
            for pid in sweep_ids[:-1]:
                kld = 0.9 * 2.0 ** (-(pid + 1))
                ppl = 12.25 * (1 + kld)
                con.execute("INSERT INTO evals(model_id, plan_id, subject, subject_kind, bpw, text_path, text_hash, ctx, tokens,"
                            " ppl, ppl_stderr, kld, kld_stderr, top1, ref_path, device, command) VALUES (1, ?, ?, 'packed', ?,"
                            " 'text/py.txt', 'h', 512, 8192, ?, 0.1, ?, 0.001, 0.93, 'models/x.gguf', 'cpu', ?)",
                            (pid, "out/p%d.bp" % pid, 3 + pid * 0.5, ppl, kld,
                             "bitplan eval out/p%d.bp --text text/py.txt --ref models/x.gguf --db x.db" % pid))
    con.commit()
    con.close()
    return {"tensors": tensors, "meas": meas, "plans": plan_ids, "sweep": sweep_ids, "vram": vram_id}


# ==== Running and parsing ====

def run_report(*args):
    assert os.path.exists(BITPLAN), "build bitplan first (make)"
    return subprocess.run([BITPLAN, "report"] + list(args), capture_output=True, text=True, timeout=120)


class Marks(HTMLParser):
    """Every element with data-* attributes, with its parent svg/table id and text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.marks, self.ids, self.title = [], [], [], ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("svg", "table"):
            self.ids.append(a.get("id", ""))
        if tag == "title" and not self.ids:
            self._in_title = True
        if any(k.startswith("data-") for k in a):
            self.marks.append({"tag": tag, "in": self.ids[-1] if self.ids else "", "a": a, "text": ""})
            self.stack.append(self.marks[-1])
        elif tag not in ("br", "meta", "line", "stop", "rect", "circle", "polyline", "path"):
            self.stack.append(None)

    def handle_startendtag(self, tag, attrs):
        a = dict(attrs)
        if any(k.startswith("data-") for k in a):
            self.marks.append({"tag": tag, "in": self.ids[-1] if self.ids else "", "a": a, "text": ""})

    def handle_endtag(self, tag):
        if tag in ("svg", "table") and self.ids:
            self.ids.pop()
        if tag == "title":
            self._in_title = False
        if tag not in ("br", "meta", "line", "stop") and self.stack and tag not in ("rect", "circle", "polyline", "path") or \
                (tag in ("rect", "circle", "polyline", "path") and self.stack and self.stack[-1] is not None and self.stack[-1]["tag"] == tag):
            self.stack.pop()

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self.stack and self.stack[-1] is not None:
            self.stack[-1]["text"] += data


def parse(html):
    p = Marks()
    p.feed(html)
    return p


def sel_option(db):
    """The heat-map option, worked out independently: mean bpw nearest to 4."""
    con = sqlite3.connect(db)
    rows = con.execute("SELECT m.option_id, sum(m.bits) * 1.0 / sum(t.rows * t.cols), count(*) FROM measurements m"
                       " JOIN tensors t ON t.id = m.tensor_id GROUP BY m.option_id ORDER BY m.option_id").fetchall()
    con.close()
    return min(rows, key=lambda r: (abs(r[1] - 4.0), -r[2]))[0]


def close(a, b, rel):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    db = str(d / "s.db")
    info = make_db(db)
    out = str(d / "r.html")
    r = run_report("--db", db, "-o", out)
    assert r.returncode == 0, r.stderr
    return {"dir": d, "db": db, "info": info, "html": open(out, encoding="utf-8").read(), "out": out}


# ==== (2) HTML numbers equal the database's ====

def test_heatmap_and_table_values_equal_database(synth):
    con = sqlite3.connect(synth["db"])
    opt = sel_option(synth["db"])
    want = {n: (e, b, r * c) for n, e, b, r, c in con.execute(
        "SELECT t.name, m.rel_err, m.bits, t.rows, t.cols FROM measurements m JOIN tensors t ON t.id = m.tensor_id"
        " WHERE m.option_id = ?", (opt,))}
    marks = parse(synth["html"]).marks
    cells = [m for m in marks if m["in"] == "heatmap" and m["tag"] == "rect" and "data-tensor" in m["a"]]
    assert len(cells) == len(want) == 211
    for m in cells:
        e, b, w = want[m["a"]["data-tensor"]]
        assert float(m["a"]["data-value"]) == e
        assert int(m["a"]["data-bits"]) == b and int(m["a"]["data-option"]) == opt
        assert float(m["a"]["data-bpw"]) == b / w
    tds = [m for m in marks if m["in"] == "sensitivity-table" and m["tag"] == "td" and "data-tensor" in m["a"]]
    assert len(tds) == len(want)
    for m in tds:
        e = want[m["a"]["data-tensor"]][0]
        assert float(m["a"]["data-value"]) == e
        assert close(float(m["text"]), e, 6e-3), (m["text"], e)   # the rounded text people read
    allm = [m for m in marks if m["in"] == "measurements" and m["tag"] == "td" and "data-value" in m["a"]]
    assert len(allm) == con.execute("SELECT count(*) FROM measurements").fetchone()[0]
    got = {(m["a"]["data-tensor"], int(m["a"]["data-option"])): float(m["a"]["data-value"]) for m in allm}
    for n, o, e in con.execute("SELECT t.name, m.option_id, m.rel_err FROM measurements m JOIN tensors t ON t.id = m.tensor_id"):
        assert got[(n, o)] == e


def test_curves_are_measured_points_on_an_envelope(synth):
    con = sqlite3.connect(synth["db"])
    pts = {}
    for n, b, e, r, c in con.execute("SELECT t.name, m.bits, m.rel_err, t.rows, t.cols FROM measurements m JOIN tensors t ON t.id = m.tensor_id"):
        pts.setdefault(n, set()).add((b / (r * c), e))
    curves = [m for m in parse(synth["html"]).marks if m["in"] == "curves" and "data-points" in m["a"]]
    assert len(curves) == 211
    for m in curves:
        p = [tuple(map(float, s.split(","))) for s in m["a"]["data-points"].split(";")]
        mine = pts[m["a"]["data-tensor"]]
        assert set(p) <= mine
        assert min(e for _, e in p) == min(e for _, e in mine)          # the best option is on it
        assert all(p[i][0] < p[i + 1][0] and p[i][1] > p[i + 1][1] for i in range(len(p) - 1))


def test_allocation_pareto_vram_values_equal_database(synth):
    con = sqlite3.connect(synth["db"])
    marks = parse(synth["html"]).marks
    newest_bpw = con.execute("SELECT max(id) FROM plans WHERE kind = 'bpw'").fetchone()[0]
    want = {n: (b, r * c, p) for n, b, r, c, p in con.execute(
        "SELECT t.name, pc.bits, t.rows, t.cols, pc.predicted FROM plan_choices pc JOIN tensors t ON t.id = pc.tensor_id"
        " WHERE pc.plan_id = ?", (newest_bpw,))}
    bars = [m for m in marks if m["in"] == "allocation" and m["tag"] == "rect" and "data-bits" in m["a"]]
    assert len(bars) == len(want) == 211
    for m in bars:
        b, w, p = want[m["a"]["data-tensor"]]
        assert int(m["a"]["data-bits"]) == b and float(m["a"]["data-bpw"]) == b / w and float(m["a"]["data-predicted"]) == p
    # Pareto: predicted objective, measured KLD and PPL per plan of the sweep
    objective = dict(con.execute("SELECT id, objective FROM plans WHERE sweep = 's1'"))
    kld = dict(con.execute("SELECT plan_id, kld FROM evals WHERE plan_id IS NOT NULL"))
    ppl = dict(con.execute("SELECT plan_id, ppl FROM evals WHERE plan_id IS NOT NULL"))
    pts = [m for m in marks if m["in"] == "pareto" and m["tag"] == "circle"]
    by_panel = {}
    for m in pts:
        by_panel.setdefault(len(by_panel) if False else None, None)
    got = [(int(m["a"]["data-plan"]), float(m["a"]["data-value"])) for m in pts]
    assert len(got) == len(objective) + len(kld) + len(ppl)
    assert sorted(got[:len(objective)]) == sorted(objective.items())
    assert sorted(got[len(objective):len(objective) + len(kld)]) == sorted(kld.items())
    assert sorted(got[len(objective) + len(kld):]) == sorted(ppl.items())
    base = [m for m in marks if m["in"] == "pareto" and m["tag"] == "line"]
    assert [float(m["a"]["data-value"]) for m in base] == [12.25]
    # VRAM: stacked terms and the budget
    mem = json.loads(con.execute("SELECT memory_json FROM plans WHERE kind = 'vram'").fetchone()[0])
    terms = {m["a"]["data-term"]: float(m["a"]["data-value"]) for m in marks if m["in"] == "vram" and m["tag"] == "rect" and "data-term" in m["a"]}
    assert terms == {k: v for k, v in mem.items() if k != "budget"}
    g = [m for m in marks if m["in"] == "vram" and "data-budget" in m["a"]][0]
    assert float(g["a"]["data-budget"]) == mem["budget"]
    assert float(g["a"]["data-total"]) == sum(v for k, v in mem.items() if k != "budget")
    table = {m["a"]["data-term"]: float(m["a"]["data-value"]) for m in marks if m["in"] == "vram-terms" and "data-term" in m["a"]}
    assert table == mem
    # plans and evals tables, and the command lines
    for pid, a in con.execute("SELECT id, achieved_bpw FROM plans"):
        row = [m for m in marks if m["in"] == "plans" and m["a"].get("data-plan") == str(pid)]
        assert row
    cells = [m for m in marks if m["in"] == "evals" and m["tag"] == "td" and "data-value" in m["a"]]
    for (p,) in con.execute("SELECT ppl FROM evals"):
        assert any(float(m["a"]["data-value"]) == p for m in cells)
    for (c,) in con.execute("SELECT command FROM plans UNION ALL SELECT command FROM evals"):
        assert c in synth["html"]


def test_html_is_self_contained_and_svg_well_formed(synth):
    html = synth["html"]
    assert not re.search(r"<script|<link|@import|url\(\s*['\"]?(https?:|//)|src=", html, re.I)
    svgs = re.findall(r"<svg.*?</svg>", html, re.S)
    assert [re.search(r'id="(\w+)"', s).group(1) for s in svgs] == ["heatmap", "curves", "allocation", "pareto", "vram"]
    for s in svgs:
        root = ET.fromstring(s)
        assert root.tag.endswith("svg")
        texts = "".join(root.itertext())
        assert texts.strip(), "chart without labels"


# ==== (1) Chromium renders it without a console error ====

def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def render(html_path, png, size="1200,3600"):
    """Screenshot and DOM of a page in headless Chromium; returns (dom, console error lines)."""
    exe = chromium()
    with tempfile.TemporaryDirectory() as profile:
        return _render(exe, profile, html_path, png, size)


def _render(exe, profile, html_path, png, size):
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-extensions", "--no-first-run",
            "--user-data-dir=" + profile, "--enable-logging=stderr", "--v=0",
            "--hide-scrollbars", "--window-size=" + size]
    uri = "file://" + os.path.abspath(html_path)
    shot = subprocess.run(base + ["--screenshot=" + png, uri], capture_output=True, text=True, timeout=120)
    dom = subprocess.run(base + ["--dump-dom", uri], capture_output=True, text=True, timeout=120)
    errs = [l for l in (shot.stderr + dom.stderr).splitlines()
            if ("CONSOLE" in l and ("rror" in l or "Uncaught" in l)) or "Uncaught" in l or re.search(r"Error: <\w+> attribute", l)]
    return dom.stdout, errs


def test_chromium_renders_without_console_errors(synth):
    if not chromium():
        pytest.skip("chromium is not installed (scripts/deps.sh installs it)")
    # A probe that a console error would be caught: a page with a bad SVG attribute.
    bad = synth["dir"] / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><svg><rect width="-3" height="x"/></svg>'
                   '<script>console.error("probe error")</script></body></html>')
    _, errs = render(str(bad), str(synth["dir"] / "bad.png"), "400,300")
    assert errs, "the console-error check does not see errors"
    dom, errs = render(synth["out"], str(synth["dir"] / "r.png"))
    assert errs == []
    assert 'id="heatmap"' in dom and 'id="vram"' in dom
    assert os.path.getsize(synth["dir"] / "r.png") > 20000


# ==== (3) Markdown, CSV and JSON carry the same numbers ====

def test_json_csv_md_carry_the_same_numbers(synth):
    db = synth["db"]
    con = sqlite3.connect(db)
    outs = {}
    for f in ("json", "csv", "md"):
        r = run_report("--db", db, "--format", f, "-o", str(synth["dir"] / ("r." + f)))
        assert r.returncode == 0, r.stderr
        outs[f] = open(synth["dir"] / ("r." + f), encoding="utf-8").read()
    j = json.loads(outs["json"])
    opt = sel_option(db)
    assert j["sensitivity"]["option"] == opt
    want = {n: e for n, e in con.execute("SELECT t.name, m.rel_err FROM measurements m JOIN tensors t ON t.id = m.tensor_id"
                                         " WHERE m.option_id = ?", (opt,))}
    assert {t["tensor"]: t["rel_err"] for t in j["sensitivity"]["tensors"]} == want
    allm = {(n, o): (b, e, r) for n, o, b, e, r in con.execute(
        "SELECT t.name, m.option_id, m.bits, m.rel_err, m.rtn_err FROM measurements m JOIN tensors t ON t.id = m.tensor_id")}
    assert {(m["tensor"], m["option"]): (m["bits"], m["rel_err"], m["rtn_err"]) for m in j["measurements"]} == allm
    plans = {p["id"]: p for p in j["plans"]}
    for pid, a, o, cmd in con.execute("SELECT id, achieved_bpw, objective, command FROM plans"):
        assert plans[pid]["achieved_bpw"] == a and plans[pid]["objective"] == o and plans[pid]["command"] == cmd
    mem = json.loads(con.execute("SELECT memory_json FROM plans WHERE kind = 'vram'").fetchone()[0])
    assert {t["name"]: t["bytes"] for t in j["vram"]["terms"]} == mem and j["vram"]["budget"] == mem["budget"]
    kld = dict(con.execute("SELECT plan_id, kld FROM evals WHERE plan_id IS NOT NULL"))
    assert {p["plan"]: p["kld"] for p in j["pareto"]["points"] if p["kld"] is not None} == kld
    assert j["pareto"]["unquantized_ppl"] == 12.25
    # CSV: one long table
    rows = list(csv.DictReader(io.StringIO(outs["csv"])))
    assert list(rows[0].keys()) == ["section", "plan", "eval", "tensor", "layer", "class", "option", "quantity", "value"]
    sens = {r["tensor"]: float(r["value"]) for r in rows if r["section"] == "sensitivity" and r["quantity"] == "rel_err"}
    assert sens == want
    alloc_plan = max(p for p, k in con.execute("SELECT id, kind FROM plans") if k == "bpw")
    bits = {n: b for n, b in con.execute("SELECT t.name, pc.bits FROM plan_choices pc JOIN tensors t ON t.id = pc.tensor_id"
                                         " WHERE pc.plan_id = ?", (alloc_plan,))}
    assert {r["tensor"]: int(r["value"]) for r in rows if r["section"] == "allocation" and r["quantity"] == "bits"} == bits
    assert {r["quantity"]: float(r["value"]) for r in rows if r["section"] == "vram"} == mem
    cmds = {r["value"] for r in rows if r["section"] == "command"}
    assert cmds == {c for (c,) in con.execute("SELECT command FROM plans UNION SELECT command FROM evals")}
    # Markdown: the layer × class table at 4 significant digits, the plans, the commands
    md = outs["md"]
    line0 = [l for l in md.splitlines() if l.startswith("| 0 |")][0]
    cells = [c.strip() for c in line0.strip("|").split("|")][1:]
    for c, cls in zip(cells, CLASSES):
        e = want["blk.0.%s.weight" % {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output", "gate": "ffn_gate",
                                       "up": "ffn_up", "down": "ffn_down"}[cls]]
        assert close(float(c), e, 6e-4), (c, e)
    for pid, a in con.execute("SELECT id, achieved_bpw FROM plans"):
        row = [l for l in md.splitlines() if re.match(r"\| %d \| (bpw|vram) \|" % pid, l)]
        assert row and any(close(float(x), a, 6e-4) for x in re.findall(r"\| ([0-9.]+) ", row[-1]))
    for (c,) in con.execute("SELECT command FROM plans"):
        assert c in md


# ==== A deep model: 2,000 tensors ====

def test_2000_tensors_bin_layers_and_stay_readable(tmp_path):
    db = str(tmp_path / "big.db")
    make_db(db, n_layers=285, hidden=256, kv=64, ff=512, vocab=4096)
    out = str(tmp_path / "big.html")
    r = run_report("--db", db, "-o", out)
    assert r.returncode == 0, r.stderr
    html = open(out, encoding="utf-8").read()
    marks = parse(html).marks
    cells = [m for m in marks if m["in"] == "heatmap" and m["tag"] == "rect" and "data-value" in m["a"]]
    assert len(cells) == 285 * 7 + 1
    assert 'data-binned="1"' in html
    curves = [m for m in marks if m["in"] == "curves" and "data-points" in m["a"]]
    assert 7 < len(curves) <= 7 * 12 + 1          # a line per bin, not per layer
    bars = [m for m in marks if m["in"] == "allocation" and "data-bits" in m["a"]]
    assert len(bars) == 285 * 7 + 1
    assert len(html) < 8 << 20
    if chromium():
        _, errs = render(out, str(tmp_path / "big.png"), "1200,2400")
        assert errs == []


# ==== (4) Bad inputs ====

def test_no_measurement_is_a_one_line_error(tmp_path):
    db = str(tmp_path / "empty.db")
    make_db(db, n_layers=2, measure=False)
    r = run_report("--db", db, "-o", str(tmp_path / "x.html"))
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("bitplan report: ") and "no measurements" in r.stderr
    assert not os.path.exists(tmp_path / "x.html")


def test_measurements_without_plans_report_what_there_is(tmp_path):
    db = str(tmp_path / "m.db")
    make_db(db, n_layers=3, plans=False)
    out = tmp_path / "m.html"
    r = run_report("--db", db, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "bitplan report: note: no plans" in r.stderr
    html = out.read_text()
    assert 'id="notes"' in html and "no plans" in html and 'id="heatmap"' in html and 'id="allocation"' not in html


def test_wrong_plan_or_calibration_id_is_an_error(synth):
    r = run_report("--db", synth["db"], "--plan", "999", "-o", str(synth["dir"] / "y.html"))
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "no plan 999" in r.stderr
    r = run_report("--db", synth["db"], "--calib", "7")
    assert r.returncode != 0 and "no calibration 7" in r.stderr
    r = run_report("--db", str(synth["dir"] / "missing.db"))
    assert r.returncode != 0 and r.stderr.startswith("bitplan report: ")
    r = run_report("--db", synth["db"], "--format", "pdf")
    assert r.returncode != 0 and "pdf" in r.stderr


def ref_spearman(x, y):
    """Pearson correlation of the ranks, ties at their mean rank."""
    def ranks(v):
        return [sum(w < a for w in v) + (sum(w == a for w in v) + 1) / 2 for a in v]
    rx, ry = ranks(x), ranks(y)
    m = (len(x) + 1) / 2
    sxy = sum((a - m) * (b - m) for a, b in zip(rx, ry))
    return sxy / math.sqrt(sum((a - m) ** 2 for a in rx) * sum((b - m) ** 2 for b in ry))


def test_prediction_quality_on_the_pareto_chart(tmp_path):
    """With a KL objective and evaluated plans, the chart gives Spearman's rho of
    predicted against measured KL and each point's measured / predicted, and a note
    says both; computed here from the database by hand."""
    db, out = str(tmp_path / "k.db"), str(tmp_path / "k.html")
    make_db(db, n_layers=3)
    con = sqlite3.connect(db)
    con.execute("UPDATE plans SET metric = 'kld', objective = 0.5 / id WHERE sweep = 's1'")
    measured = {1: 0.30, 2: 0.31, 3: 0.12, 4: 0.12, 5: 0.02}  # not in the objective's order: rho < 1
    for pid, k in measured.items():
        con.execute("UPDATE evals SET kld = ? WHERE plan_id = ?", (k, pid))
    con.commit()
    pred = dict(con.execute("SELECT id, objective FROM plans WHERE sweep = 's1'"))
    con.close()
    r = run_report("--db", db, "-o", out)
    assert r.returncode == 0, r.stderr
    html = open(out, encoding="utf-8").read()
    ids = sorted(measured)
    want = ref_spearman([pred[i] for i in ids], [measured[i] for i in ids])
    assert 0.5 < want < 1
    marks = parse(html).marks
    rho = [m for m in marks if m["in"] == "pareto" and "data-spearman" in m["a"]]
    assert len(rho) == 1 and float(rho[0]["a"]["data-spearman"]) == pytest.approx(want, abs=1e-6)
    ratios = {int(m["a"]["data-plan"]): float(m["a"]["data-ratio"]) for m in marks
              if m["in"] == "pareto" and "data-ratio" in m["a"]}
    assert ratios.keys() == measured.keys()
    assert all(ratios[i] == pytest.approx(measured[i] / pred[i], rel=1e-6) for i in ids)
    assert "Spearman rho %.3f over 5 plans" % want in html


def test_empty_sweep_is_a_note(tmp_path):
    db = str(tmp_path / "ns.db")
    make_db(db, n_layers=3, sweep=False)
    out = tmp_path / "ns.html"
    r = run_report("--db", db, "-o", str(out), "--plan", "2")
    assert r.returncode == 0, r.stderr
    assert "no sweep" in r.stderr
    html = out.read_text()
    assert 'id="pareto"' not in html and 'data-plan="2"' in html and "no sweep" in html


def screenshot_charts(html_path, outdir, prefix="report"):
    """One PNG per chart of a report (for docs/): each SVG alone on a page with the report's style."""
    html = open(html_path, encoding="utf-8").read()
    style = re.search(r"<style>.*?</style>", html, re.S).group(0)
    os.makedirs(outdir, exist_ok=True)
    shots = []
    for svg in re.findall(r"<svg.*?</svg>", html, re.S):
        name = re.search(r'id="(\w+)"', svg).group(1)
        vb = [float(x) for x in re.search(r'viewBox="([^"]+)"', svg).group(1).split()]
        tmp = tempfile.mkdtemp()
        page = os.path.join(tmp, "%s.html" % name)
        with open(page, "w", encoding="utf-8") as f:
            f.write("<!DOCTYPE html><html><head><meta charset='utf-8'>%s</head><body style='margin:0'>"
                    "<div class='figure' style='width:1040px;margin:10px'>%s</div></body></html>" % (style, svg))
        png = os.path.join(outdir, "%s-%s.png" % (prefix, name))
        render(page, png, "1060,%d" % int(1018 * vb[3] / vb[2] + 44))
        shutil.rmtree(tmp, ignore_errors=True)
        shots.append(png)
    return shots


if __name__ == "__main__":
    # python3 tests/test_report.py db OUT.db [layers]    a synthetic database to look at
    # python3 tests/test_report.py shots REPORT.html DIR [PREFIX]   one PNG per chart
    import sys
    if sys.argv[1] == "db":
        make_db(sys.argv[2], n_layers=int(sys.argv[3]) if len(sys.argv) > 3 else 30)
    else:
        print("\n".join(screenshot_charts(sys.argv[2], sys.argv[3], *sys.argv[4:5])))
