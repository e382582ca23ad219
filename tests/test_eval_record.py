"""tests/test_eval_record.py — `bitplan eval --db` files each evaluation in the
database, so reports can set measured beside predicted: the row holds what the
evaluation printed, the text's SHA-256, the model it belongs to (by content hash),
and nothing is recorded when the evaluation fails.
"""

import hashlib
import os
import re
import sqlite3
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import tiny_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, os.environ.get("BITPLAN_BUILD", "build"), "bitplan")


def run(*args):
    return subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalrec")
    model = d / "tiny.gguf"
    tiny_model.write_tiny_gguf(str(model), seed=5)
    text = d / "text.txt"
    text.write_text((tiny_model.TRAIN_TEXT.strip() + "\n") * 20)
    return d, model, text


def field(out, name):
    m = re.search(r"^%s\s+([0-9.]+)" % re.escape(name), out, re.M)
    assert m, "no '%s' in:\n%s" % (name, out)
    return float(m.group(1))


def test_eval_is_recorded_with_the_model_and_text(setup):
    d, model, text = setup
    db = d / "a.db"
    r = run("eval", model, "--text", text, "--ctx", 64, "--chunks", 3, "--ref", model, "--db", db)
    assert r.returncode == 0, r.stderr
    con = sqlite3.connect(db)
    rows = con.execute("SELECT subject, subject_kind, plan_id, text_hash, ctx, tokens, ppl, kld, top1, ref_path,"
                       " command, model_id FROM evals").fetchall()
    assert len(rows) == 1
    subject, kind, plan, thash, ctx, tokens, ppl, kld, top1, ref, command, model_id = rows[0]
    assert subject == str(model) and kind == "model" and plan is None
    assert thash == hashlib.sha256(text.read_bytes()).hexdigest()
    assert ctx == 64 and tokens == int(field(r.stdout, "tokens scored"))
    assert abs(ppl - field(r.stdout, "perplexity")) <= 1e-4 * ppl
    assert kld == pytest.approx(0.0, abs=1e-9) and top1 == 1.0 and ref == str(model)
    assert "--db" in command and "eval" in command
    assert model_id is None  # this database never measured the model


def test_eval_finds_a_measured_model(setup):
    d, model, text = setup
    db = d / "m.db"
    opts = d / "opts.txt"
    opts.write_text("4b-g64 4 4 0 64 z8\n")
    r = run("measure", model, "--calib", text, "--db", db, "--rows", 2, "--ctx", 64, "--options", opts)
    assert r.returncode == 0, r.stderr
    r = run("eval", model, "--text", text, "--ctx", 64, "--chunks", 2, "--db", db)
    assert r.returncode == 0, r.stderr
    con = sqlite3.connect(db)
    (model_id,) = con.execute("SELECT id FROM models").fetchone()
    assert con.execute("SELECT model_id, kld FROM evals").fetchall() == [(model_id, None)]


def test_failed_eval_records_nothing(setup):
    d, model, text = setup
    db = d / "f.db"
    short = d / "short.txt"
    short.write_text("too short")
    r = run("eval", model, "--text", short, "--ctx", 64, "--db", db)
    assert r.returncode != 0 and "bitplan eval:" in r.stderr
    assert not db.exists() or sqlite3.connect(db).execute("SELECT count(*) FROM evals").fetchone() == (0,)
