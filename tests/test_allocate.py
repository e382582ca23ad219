"""Cross-checks of `bitplan allocate` on a database made here with Python's sqlite3.

The database follows db/schema.sql: a small Llama-shaped model (2 blocks), an option
set, and measured errors that fall with the bits per weight. The plans that bitplan
stores are checked against independent arithmetic (budgets, bits per weight, the
memory model) and its LP file against `glpsol` (GLPK's own solver program).
"""
import json
import math
import os
import random
import re
import shutil
import sqlite3
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BITPLAN_BUILD", "build")
BITPLAN = os.path.join(ROOT, BUILD, "bitplan")

CONFIG = {"arch": "llama", "n_layers": 2, "dim": 256, "hidden_dim": 512, "n_heads": 4,
          "n_kv_heads": 2, "head_dim": 64, "vocab_size": 1024, "tied_embeddings": False}
# (bits, group) of each option; bits_hi == bits_lo, asymmetric scales (fp16 + u8 zero)
OPTIONS = [(b, g) for b in (2, 3, 4, 5, 6, 8) for g in (32, 128)]
CLASSES = [("q", "attn", 256, 256), ("k", "attn", 128, 256), ("v", "attn", 128, 256),
           ("o", "attn_out", 256, 256), ("gate", "mlp", 512, 256), ("up", "mlp", 512, 256),
           ("down", "mlp_out", 256, 512)]


def tensor_bits(bits, group, rows, cols):
    """layout/layout.h's cost for a plain option: values, fp16 scale + u8 zero per group, u16 perm."""
    groups = -(-cols // group)
    return 8 * (rows * cols * bits // 8 + rows * groups * 3 + cols * 2)


def make_db(path, probes=False, calib=True, seed=1, version=4):
    """A database as bitplan measure leaves it; version 3: as it left it before
    options had input scales; version 2: before they had a rotation (schema.sql is
    version 1, and 1 -> 2 changed no column)."""
    con = sqlite3.connect(path)
    with open(os.path.join(ROOT, "db", "schema.sql")) as f:
        con.executescript(f.read())
    if version >= 3:
        con.execute("ALTER TABLE options ADD COLUMN rot INTEGER NOT NULL DEFAULT 0")  # version 3's column
    if version >= 4:
        con.execute("ALTER TABLE options ADD COLUMN awq INTEGER NOT NULL DEFAULT 0")  # version 4's column
    con.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(version),))
    tensors = [(f"blk.{l}.{c}.weight", l, c, g, r, k) for l in range(CONFIG["n_layers"]) for c, g, r, k in CLASSES]
    tensors.append(("output.weight", -1, "head", "head", CONFIG["vocab_size"], CONFIG["dim"]))
    n_params = sum(r * k for *_, r, k in tensors) + CONFIG["vocab_size"] * CONFIG["dim"] + \
        CONFIG["n_layers"] * 2 * CONFIG["dim"] + CONFIG["dim"]
    con.execute("INSERT INTO models(id, content_hash, path, arch, config_json, n_params) VALUES (1, 'h', 'm.gguf', 'llama', ?, ?)",
                (json.dumps(CONFIG), n_params))
    for i, (name, layer, cls, group, rows, cols) in enumerate(tensors, 1):
        con.execute("INSERT INTO tensors VALUES (?, 1, ?, ?, ?, ?, ?, ?)", (i, name, layer, cls, group, rows, cols))
    for i, (b, g) in enumerate(OPTIONS, 1):
        con.execute("INSERT INTO options(id, name, bits_lo, bits_hi, hi_share, group_size, scale_fmt) "
                    "VALUES (?, ?, ?, ?, 0, ?, 0)", (i, f"{b}b g{g}", b, b, g))
    if calib:
        con.execute("INSERT INTO calibrations(id, model_id, key, sources_json, rows, ctx, tokenizer, damp, status)"
                    " VALUES (1, 1, 'k', '[]', 4, 64, 'bpe', 0.01, 'done')")
        rng = random.Random(seed)
        for i, (name, layer, cls, group, rows, cols) in enumerate(tensors, 1):
            scale = rng.uniform(0.2, 5.0)
            for o, (b, g) in enumerate(OPTIONS, 1):
                err = scale * 2.0 ** (-1.8 * b) * (1 + 0.3 * (g == 128)) * rng.uniform(0.9, 1.1)
                con.execute("INSERT INTO measurements VALUES (1, ?, ?, ?, ?, NULL, 0.1)",
                            (i, o, tensor_bits(b, g, rows, cols), err))
            if probes:
                ref = 4 if i % 2 else 3
                b, g = OPTIONS[ref - 1]
                err = con.execute("SELECT rel_err FROM measurements WHERE tensor_id=? AND option_id=?", (i, ref)).fetchone()[0]
                con.execute("INSERT INTO kl_probes VALUES (1, ?, ?, ?, ?, 0.5)", (i, ref, rng.uniform(0.001, 0.1), err))
    con.commit()
    con.close()
    return tensors


def run(*args):
    return subprocess.run([BITPLAN, "allocate", *args], capture_output=True, text=True, timeout=120)


def plans(db):
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM plans ORDER BY id")]
    for p in rows:
        p["choices"] = [dict(r) for r in con.execute(
            "SELECT pc.*, t.class, t.layer, t.rows, t.cols, o.bits_lo FROM plan_choices pc JOIN tensors t ON t.id = pc.tensor_id"
            " JOIN options o ON o.id = pc.option_id WHERE plan_id = ? ORDER BY tensor_id", (p["id"],))]
    con.close()
    return rows


def block_weights(tensors):
    return sum(r * k for _, layer, *_, r, k in tensors if layer >= 0)


@pytest.fixture(scope="module", autouse=True)
def need_binary():
    if not os.access(BITPLAN, os.X_OK):
        pytest.fail(f"{BITPLAN} is not built (make)")


def test_bpw_plan_meets_budget_and_matches_glpsol(tmp_path):
    if not shutil.which("glpsol"):
        pytest.fail("glpsol is missing: scripts/deps.sh installs glpk-utils")
    db, lp = str(tmp_path / "a.db"), str(tmp_path / "a.lp")
    tensors = make_db(db)
    r = run("--db", db, "--bpw", "3.6", "--gap", "0", "--write-lp", lp)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^plan 1: bpw 3\.6 ", r.stdout, re.M)
    (p,) = plans(db)
    w = block_weights(tensors)
    block_bits = sum(c["bits"] for c in p["choices"] if c["layer"] >= 0)
    assert block_bits <= math.floor(3.6 * w)
    assert len(p["choices"]) == len(tensors)
    assert p["achieved_bpw"] == pytest.approx(block_bits / w, rel=1e-12)
    assert p["total_bits"] == sum(c["bits"] for c in p["choices"])
    assert p["objective"] == pytest.approx(sum(c["predicted"] for c in p["choices"]), rel=1e-9)
    assert p["command"].endswith("--write-lp " + lp) and p["kind"] == "bpw" and p["metric"] == "rel_err"
    # the head sits outside the bpw budget: its cheapest option of at least 6 bpw
    head = [c for c in p["choices"] if c["class"] == "head"][0]
    head_opts = [(tensor_bits(b, g, head["rows"], head["cols"]), b) for b, g in OPTIONS]
    assert head["bits"] == min(bits for bits, b in head_opts if bits / (head["rows"] * head["cols"]) >= 6)
    # whole file: planned bits + norms as F32 + the untied embedding as F16
    n_params = sum(r * k for *_, r, k in tensors) + CONFIG["vocab_size"] * CONFIG["dim"] + 2 * 2 * 256 + 256
    want = (p["total_bits"] + 32 * (2 * 2 * 256 + 256) + 16 * CONFIG["vocab_size"] * CONFIG["dim"]) / n_params
    assert p["file_bpw"] == pytest.approx(want, rel=1e-12)
    # GLPK's own program on the LP file reaches the same optimum (the head is pinned,
    # its damage is part of both objectives)
    out = tmp_path / "glpsol.txt"
    g = subprocess.run(["glpsol", "--lp", lp, "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert g.returncode == 0, g.stdout + g.stderr
    text = out.read_text()
    assert "INTEGER OPTIMAL" in text
    obj = float(re.search(r"Objective:\s+\S+ = (\S+)", text).group(1))
    assert obj == pytest.approx(p["objective"], rel=1e-6)
    # and its solution picks, per tensor, columns whose bits add up within the budget
    lines = re.findall(r"^\s*\d+\s+x_(\d+)_(\d+)\s+\*\s+(\d)", text, re.M)
    chosen = {int(t): int(o) for t, o, v in lines if v == "1"}
    assert len(chosen) == len(tensors)


@pytest.mark.parametrize("version", [2, 3])
def test_older_database_migrates(tmp_path, version):
    """A database from before rotations (2) or input scales (3): a read-only command
    asks for a writable open; allocate (writable) migrates it in place, every option
    keeping its id and fields with rot and awq 0, every reference intact, and a
    rotated twin of an option, or one with input scales, can then be stored beside it
    (the key includes rot and awq), but not one with both."""
    db = str(tmp_path / "old.db")
    make_db(db, version=version)
    before = [r[:7] for r in sqlite3.connect(db).execute("SELECT * FROM options ORDER BY id").fetchall()]
    r = subprocess.run([BITPLAN, "report", "--db", db, "--format", "json"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "needs migrating; open it writable" in r.stderr, r.stderr
    assert run("--db", db, "--bpw", "4").returncode == 0
    con = sqlite3.connect(db)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("4",)
    after = con.execute("SELECT id, name, bits_lo, bits_hi, hi_share, group_size, scale_fmt, rot, awq FROM options "
                        "ORDER BY id").fetchall()
    assert [a[:7] for a in after] == before and all(a[7] == 0 and a[8] == 0 for a in after)
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    assert con.execute("SELECT count(*) FROM measurements m LEFT JOIN options o ON o.id = m.option_id "
                       "WHERE o.id IS NULL").fetchone() == (0,)
    con.execute("INSERT INTO options(name, bits_lo, bits_hi, hi_share, group_size, scale_fmt, rot) "
                "SELECT name || ' h64', bits_lo, bits_hi, hi_share, group_size, scale_fmt, 64 FROM options WHERE id = 1")
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("INSERT INTO options(name, bits_lo, bits_hi, hi_share, group_size, scale_fmt, rot) "
                    "SELECT name, bits_lo, bits_hi, hi_share, group_size, scale_fmt, 64 FROM options WHERE id = 1")
    con.execute("INSERT INTO options(name, bits_lo, bits_hi, hi_share, group_size, scale_fmt, awq) "
                "SELECT name || ' awq', bits_lo, bits_hi, hi_share, group_size, scale_fmt, 1 FROM options WHERE id = 1")
    with pytest.raises(sqlite3.IntegrityError):  # not both
        con.execute("INSERT INTO options(name, bits_lo, bits_hi, hi_share, group_size, scale_fmt, rot, awq) "
                    "SELECT name || ' x', bits_lo, bits_hi, hi_share, group_size, scale_fmt, 64, 1 FROM options "
                    "WHERE id = 1")
    con.close()


def test_unreachable_targets_name_the_range(tmp_path):
    db = str(tmp_path / "u.db")
    make_db(db)
    for target in ("1.0", "12"):
        r = run("--db", db, "--bpw", target)
        assert r.returncode != 0
        line = r.stderr.strip()
        assert "\n" not in line and line.startswith("bitplan allocate: ")
        m = re.search(r"reach (\d+\.\d+) to (\d+\.\d+) bpw", line)
        assert m, line
        lo, hi = float(m.group(1)), float(m.group(2))
        assert 2 < lo < 3 and 8 < hi < 9
    assert plans(db) == []


def test_no_calibration_is_an_error(tmp_path):
    db = str(tmp_path / "e.db")
    make_db(db, calib=False)
    r = run("--db", db, "--bpw", "4")
    assert r.returncode != 0 and "no calibration" in r.stderr


def test_sweep_shares_a_label_and_damage_falls(tmp_path):
    db = str(tmp_path / "s.db")
    make_db(db)
    r = run("--db", db, "--sweep", "2.0:9.0:1.0", "--label", "s1")
    assert r.returncode == 0, r.stderr
    assert "2 bpw: unreachable" in r.stdout and "9 bpw: unreachable" in r.stdout
    ps = plans(db)
    assert [p["target"] for p in ps] == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert all(p["sweep"] == "s1" for p in ps)
    objs = [p["objective"] for p in ps]
    assert all(a >= b for a, b in zip(objs, objs[1:]))
    # a single plan can join the sweep's curve; without --label it stands alone
    assert run("--db", db, "--bpw", "4.5", "--label", "s1").returncode == 0
    assert run("--db", db, "--bpw", "4.5").returncode == 0
    assert [(p["target"], p["sweep"]) for p in plans(db)[-2:]] == [(4.5, "s1"), (4.5, None)]


def test_ties_and_class_bounds(tmp_path):
    db = str(tmp_path / "t.db")
    make_db(db)
    r = run("--db", db, "--bpw", "4.2", "--tie", "qkv", "--tie", "gate_up", "--min-bits", "down=6", "--max-bits", "q=4.5")
    assert r.returncode == 0, r.stderr
    (p,) = plans(db)
    for layer in range(CONFIG["n_layers"]):
        by = {c["class"]: c["option_id"] for c in p["choices"] if c["layer"] == layer}
        assert by["q"] == by["k"] == by["v"]
        assert by["gate"] == by["up"]
    for c in p["choices"]:
        bpw = c["bits"] / (c["rows"] * c["cols"])
        if c["class"] == "down":
            assert bpw >= 6
        if c["class"] == "q":
            assert bpw <= 4.5


def test_vram_plan_fits_and_prints_every_term(tmp_path):
    db = str(tmp_path / "v.db")
    tensors = make_db(db)
    r = run("--db", db, "--vram", "1.2MiB", "--ctx", "256", "--batch", "2", "--kv-bits", "8", "--reserve", "0")
    assert r.returncode == 0, r.stderr
    for term in ("packed weights", "unquantized", "KV cache", "scratch", "reserve"):
        assert term in r.stdout
    (p,) = plans(db)
    mem = json.loads(p["memory_json"])
    c = CONFIG
    kv = c["n_layers"] * 2 * c["n_kv_heads"] * c["head_dim"] * 256 * 2 * 8 // 8
    scratch = 4 * 2 * (3 * c["dim"] + (c["n_heads"] + 2 * c["n_kv_heads"]) * c["head_dim"] + 2 * c["hidden_dim"]
                       + c["n_heads"] * 256 + c["vocab_size"])
    unq = 4 * (2 * 2 * 256 + 256)  # the norms; the untied embedding stays in host memory
    assert mem["kv_cache"] == kv and mem["scratch"] == scratch and mem["unquantized"] == unq
    assert mem["weights"] == p["total_bits"] // 8
    assert mem["total"] == mem["weights"] + unq + kv + scratch + 0
    assert mem["total"] <= round(1.2 * 2**20) and mem["budget"] == round(1.2 * 2**20)
    assert p["kind"] == "vram" and p["target"] == round(1.2 * 2**20)
    # too small a card: the error names the smallest and largest memory
    r = run("--db", db, "--vram", "200KiB", "--ctx", "256", "--reserve", "0")
    assert r.returncode != 0 and re.search(r"need \d+\.\d+ MiB to \d+\.\d+ MiB", r.stderr), r.stderr


def test_size_plan_fits_the_file_and_beats_a_tighter_one(tmp_path):
    """--size: the planned bits (head included) plus norms as F32 and the untied
    embedding as F16 fit the size; a larger size never costs damage; too small a size
    names the range."""
    db = str(tmp_path / "s.db")
    tensors = make_db(db)
    unq = 4 * (2 * 2 * 256 + 256) + 2 * CONFIG["vocab_size"] * CONFIG["dim"]
    lo = unq + sum(min(tensor_bits(b, g, r, k) for b, g in OPTIONS) for *_, r, k in tensors) // 8
    hi = unq + sum(max(tensor_bits(b, g, r, k) for b, g in OPTIONS) for *_, r, k in tensors) // 8
    objectives = []
    for size in (lo + (hi - lo) // 4, lo + (hi - lo) // 2):
        r = run("--db", db, "--size", str(size), "--gap", "0")
        assert r.returncode == 0, r.stderr
        p = plans(db)[-1]
        assert p["kind"] == "size" and p["target"] == size
        assert p["total_bits"] == sum(c["bits"] for c in p["choices"])
        assert p["total_bits"] // 8 + unq <= size
        mem = json.loads(p["memory_json"])
        assert mem["unquantized"] == unq and mem["total"] <= size
        objectives.append(p["objective"])
    assert objectives[1] <= objectives[0]
    r = run("--db", db, "--size", str(lo - 1000))
    assert r.returncode != 0 and "unreachable" in r.stderr, r.stderr


def test_kl_probes_give_the_kld_metric(tmp_path):
    db = str(tmp_path / "k.db")
    make_db(db, probes=True)
    r = run("--db", db, "--bpw", "4")
    assert r.returncode == 0, r.stderr
    (p,) = plans(db)
    assert p["metric"] == "kld"
    con = sqlite3.connect(db)
    for c in p["choices"]:
        kld, perr = con.execute("SELECT kld, rel_err FROM kl_probes WHERE tensor_id=?", (c["tensor_id"],)).fetchone()
        err = con.execute("SELECT rel_err FROM measurements WHERE tensor_id=? AND option_id=?",
                          (c["tensor_id"], c["option_id"])).fetchone()[0]
        assert c["predicted"] == pytest.approx(kld * err / perr, rel=1e-12)
    r = run("--db", db, "--list")
    assert r.returncode == 0 and re.search(r"^\s+1\s+1\s+bpw\s+4\s+kld", r.stdout, re.M)


def test_vram_plan_of_a_measurement_counts_attention_biases(tmp_path):
    """A measured Qwen2-shaped model (q/k/v biases): the measurement records the
    biases in the model's configuration, so a VRAM plan counts them with the norms
    among the unquantized parameters; a Llama of the same shape has none."""
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    import tiny_model
    calib = tmp_path / "calib.txt"
    calib.write_text(tiny_model.calib_text(1))
    opts = tmp_path / "opts.txt"
    opts.write_text("4b-g64 4 4 0 64 z8\n")
    dim, layers, q_dim, kv_dim = 64, 2, 4 * 16, 2 * 16
    unq = {}
    for arch in ("qwen2", "llama"):
        model, db = str(tmp_path / (arch + ".gguf")), str(tmp_path / (arch + ".db"))
        tiny_model.write_tiny_gguf(model, n_layers=layers, dim=dim, hidden=128, n_heads=4, n_kv_heads=2, arch=arch)
        p = subprocess.run([BITPLAN, "measure", model, "--calib", str(calib), "--db", db, "--options", str(opts),
                            "--rows", "2", "--ctx", "32"], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        r = run("--db", db, "--vram", "64MiB", "--ctx", "64", "--reserve", "0")
        assert r.returncode == 0, r.stderr
        (plan,) = plans(db)
        unq[arch] = json.loads(plan["memory_json"])["unquantized"]
    norms = 4 * (2 * layers * dim + dim)
    assert unq["llama"] == norms
    assert unq["qwen2"] == norms + 4 * layers * (q_dim + 2 * kv_dim)


def test_long_labels_and_commands_are_stored_and_listed_whole(tmp_path):
    db = str(tmp_path / "l.db")
    make_db(db)
    label = "run-" + "x" * 1500 + "-end"
    assert run("--db", db, "--bpw", "4", "--label", label).returncode == 0
    assert run("--db", db, "--sweep", "4:5:1", "--label", label + "2").returncode == 0
    ps = plans(db)
    assert [p["sweep"] for p in ps] == [label, label + "2", label + "2"]
    assert all(label in p["command"] and p["command"].endswith(p["sweep"]) for p in ps)
    listed = run("--db", db, "--list")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[-1] for line in listed.stdout.splitlines()[1:]] == [p["sweep"] for p in ps]
