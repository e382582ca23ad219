"""tests/test_measure.py — the measurement pass (`bitplan measure`) end to end on
small generated models: a run killed with SIGKILL and resumed equals an
uninterrupted run; a finished run is not redone; calibrations are kept apart;
bad input (short text, options that do not fit, NaN weights, foreign or read-only
databases) is refused with a clear message and leaves the database as it was;
stored bits equal the cost formula of layout/layout.h, recomputed here; KL probes.

What it must never do: depend on the network, or on timing for its verdicts (the
kill lands wherever it lands; the comparison holds for any moment).
"""

import os
import pathlib
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import tiny_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BITPLAN_BUILD", "build")
BIN = os.path.join(ROOT, BUILD, "bitplan")

# A small option set: plain, mixed, symmetric, several groups.
OPTIONS = """\
# name          lo hi share group fmt
2b-g64          2  2  0     64    z8
"3b/4b 50% g64" 3  4  50%   64    z8
3b-g32-sym      3  3  0     32    sym
4b-g128         4  4  0     128   z8
6b-g64          6  6  0     64    z8
8b-g32          8  8  0     32    z8
"""
N_OPTIONS = 6

# Big enough that a run lasts a few seconds (so a kill lands in the middle), small
# enough for a shared two-core machine.
KILL_MODEL = dict(n_layers=6, dim=256, hidden=512, n_heads=4, n_kv_heads=2, vocab=512, seed=3)
SMALL_MODEL = dict(n_layers=2, dim=64, hidden=128, n_heads=4, n_kv_heads=2, vocab=512, seed=1)


calib_text = tiny_model.calib_text


def run(args, check=True, **kw):
    p = subprocess.run([BIN, "measure"] + [str(a) for a in args], capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise AssertionError("bitplan measure failed: %s" % p.stderr)
    return p


def rows_of(db):
    """Every measurement as (calibration key, tensor, option fields, bits, rel_err,
    rtn_err), sorted: what must be equal between runs."""
    with sqlite3.connect(db) as c:
        return sorted(c.execute(
            "SELECT k.key, t.name, o.bits_lo, o.bits_hi, o.hi_share, o.group_size, o.scale_fmt, "
            "m.bits, m.rel_err, m.rtn_err FROM measurements m JOIN tensors t ON t.id = m.tensor_id "
            "JOIN options o ON o.id = m.option_id JOIN calibrations k ON k.id = m.calib_id").fetchall())


def dump(db):
    """The whole database as SQL text, minus timings and timestamps."""
    with sqlite3.connect(db) as c:
        return [line for line in c.iterdump() if "INSERT" in line]


count = tiny_model.row_count


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    if not os.path.exists(BIN):
        pytest.fail("%s is missing: build first (make BUILD=%s)" % (BIN, BUILD))
    d = tmp_path_factory.mktemp("measure")
    paths = {"dir": d, "opts": d / "opts.txt", "calib": d / "calib.txt", "calib2": d / "calib2.txt",
             "small": d / "small.gguf", "big": d / "big.gguf"}
    paths["opts"].write_text(OPTIONS)
    paths["calib"].write_text(calib_text(1))
    paths["calib2"].write_text(calib_text(2))
    tiny_model.write_tiny_gguf(str(paths["small"]), **SMALL_MODEL)
    tiny_model.write_tiny_gguf(str(paths["big"]), **KILL_MODEL)
    return paths


def base_args(w, model, db, calib="calib", rows=4, ctx=64):
    return [w[model], "--calib", w[calib], "--db", db, "--options", w["opts"], "--rows", rows, "--ctx", ctx,
            "--threads", 2]


# ==== Resuming ====

def test_killed_run_resumes_to_the_same_numbers(work):
    """(a) SIGKILL once rows exist, resume, compare with an uninterrupted run."""
    ref_db, cut_db = work["dir"] / "ref.db", work["dir"] / "cut.db"
    args = lambda db: base_args(work, "big", db, rows=8, ctx=128)  # noqa: E731
    run(args(ref_db))
    total = 7 * KILL_MODEL["n_layers"] + 1
    assert count(ref_db, "measurements") == total * N_OPTIONS

    p = subprocess.Popen([BIN, "measure"] + [str(a) for a in args(cut_db)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while count(cut_db, "measurements") == 0 and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    at_kill = count(cut_db, "measurements")
    assert p.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert 0 < at_kill < total * N_OPTIONS
    out = run(args(cut_db)).stdout
    assert "%d already there" % at_kill in out
    assert rows_of(cut_db) == rows_of(ref_db)


def test_rerun_does_nothing(work):
    """(b) a finished measurement is not redone and the database does not change."""
    db = work["dir"] / "rerun.db"
    run(base_args(work, "small", db))
    before = dump(db)
    p = run(base_args(work, "small", db) + ["--progress"])
    total = 7 * SMALL_MODEL["n_layers"] + 1
    assert "already measured: %d tensors × %d options" % (total, N_OPTIONS) in p.stdout
    assert dump(db) == before


def test_calibrations_kept_apart(work):
    """(c) another text (or another ctx) in the same database is a new calibration."""
    db = work["dir"] / "apart.db"
    run(base_args(work, "small", db))
    first = rows_of(db)
    run(base_args(work, "small", db, calib="calib2"))
    run(base_args(work, "small", db, ctx=32))
    total = 7 * SMALL_MODEL["n_layers"] + 1
    with sqlite3.connect(db) as c:
        per_calib = c.execute("SELECT calib_id, count(*) FROM measurements GROUP BY calib_id").fetchall()
        n_models = c.execute("SELECT count(*) FROM models").fetchone()[0]
        sources = [r[0] for r in c.execute("SELECT sources_json FROM calibrations ORDER BY id")]
    assert [n for _, n in per_calib] == [total * N_OPTIONS] * 3
    assert n_models == 1
    assert "calib.txt" in sources[0] and "calib2.txt" in sources[1]
    key0 = first[0][0]
    assert [r for r in rows_of(db) if r[0] == key0] == first
    # different text, different Hessians: different errors for the same (tensor, option)
    by_key = {}
    for r in rows_of(db):
        by_key.setdefault(r[0], {})[(r[1],) + r[2:7]] = r[8]
    a, b = [by_key[k] for k in sorted(by_key) if k != key0][:1] + [by_key[key0]]
    assert any(a[k] != b[k] for k in a)


# ==== Numbers ====

def lay_tensor_bits(lo, hi, share, group, fmt, rows, cols):
    """layout/layout.h's cost, recomputed from its documentation: values in chunks of
    32 (bits * 4 bytes per chunk), fp16 scale per (row, group), uint8 zero per
    (row, group) unless symmetric, uint16 (or uint32 above 65536 columns) perm."""
    n_groups = -(-cols // group)
    n_hi = 0 if hi == lo else min(max(int(np.floor(np.float32(share) * n_groups + 0.5)), 0), n_groups)
    value_bytes = 0
    for g in range(n_groups):
        gcols = min(group, cols - g * group)
        bits = hi if g < n_hi else lo
        value_bytes += gcols // 32 * bits * 4
    scales = rows * n_groups * 2
    zeros = rows * n_groups if fmt == 0 else 0
    perm = cols * (2 if cols <= 65536 else 4)
    return 8 * (rows * value_bytes + scales + zeros + perm)


def test_bits_are_the_layout_cost(work):
    """(e) every row's bits equals the documented cost formula."""
    db = work["dir"] / "bits.db"
    assert run(base_args(work, "small", db)).stderr == ""  # quiet in pipes
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT t.rows, t.cols, o.bits_lo, o.bits_hi, o.hi_share, o.group_size, o.scale_fmt, m.bits "
                         "FROM measurements m JOIN tensors t ON t.id = m.tensor_id "
                         "JOIN options o ON o.id = m.option_id").fetchall()
    assert len(rows) == (7 * SMALL_MODEL["n_layers"] + 1) * N_OPTIONS
    for r, cl, lo, hi, share, group, fmt, bits in rows:
        assert bits == lay_tensor_bits(lo, hi, share, group, fmt, r, cl), (r, cl, lo, hi, share, group, fmt)


def test_errors_behave(work):
    """GPTQ errors fall with bits, GPTQ beats RTN on average, tensor records match
    the model (shapes, classes, the tied head)."""
    db = work["dir"] / "bits.db"
    if not db.exists():
        run(base_args(work, "small", db))
    with sqlite3.connect(db) as c:
        tensors = c.execute("SELECT name, layer, class, input_group, rows, cols FROM tensors ORDER BY id").fetchall()
        per_opt = dict(c.execute("SELECT o.name, avg(m.rel_err) FROM measurements m JOIN options o "
                                 "ON o.id = m.option_id GROUP BY o.id").fetchall())
        gain = c.execute("SELECT avg(rtn_err), avg(rel_err) FROM measurements").fetchone()
    w = tiny_model.tiny_weights(**{k: SMALL_MODEL[k] for k in SMALL_MODEL})
    assert len(tensors) == 7 * SMALL_MODEL["n_layers"] + 1
    for name, layer, cls, group, r, cl in tensors:
        assert w[name].shape == (r, cl)
    assert tensors[-1][:4] == ("token_embd.weight", -1, "head", "head")
    assert per_opt["2b-g64"] > per_opt["4b-g128"] > per_opt["6b-g64"] > per_opt["8b-g32"] > 0
    assert gain[1] < gain[0]


# ==== Bad input ====

def test_text_too_short(work):
    """(d) a short text is refused with the token counts; nothing is written."""
    db = work["dir"] / "short.db"
    short = work["dir"] / "short.txt"
    short.write_text("The quick brown fox jumps over the lazy dog.\n" * 3)
    p = run([work["small"], "--calib", short, "--db", db, "--options", work["opts"], "--rows", 4, "--ctx", 64],
            check=False)
    assert p.returncode != 0
    msg = p.stderr.strip()
    assert msg.startswith("bitplan measure: ") and "\n" not in msg
    assert "too short" in msg and "256" in msg  # 4 rows x 64 tokens needed
    assert count(db, "measurements") == 0


def test_option_that_does_not_fit(work):
    """An option that cannot apply to a shape is refused before any work."""
    model = work["dir"] / "odd.gguf"
    tiny_model.write_tiny_gguf(str(model), n_layers=1, dim=48, hidden=96, n_heads=4, n_kv_heads=2, vocab=512)
    db = work["dir"] / "odd.db"
    p = run([model, "--calib", work["calib"], "--db", db, "--options", work["opts"], "--rows", 2, "--ctx", 32],
            check=False)
    assert p.returncode != 0
    assert "2b-g64" in p.stderr and "blk.0.attn_q.weight" in p.stderr and "48" in p.stderr
    assert not db.exists()


def test_nan_weights(work, monkeypatch):
    """(f) a NaN weight is refused, naming the tensor; the database is unchanged."""
    db = work["dir"] / "nan.db"
    run(base_args(work, "small", db))
    before = dump(db)
    orig = tiny_model.tiny_weights

    def with_nan(*a, **k):
        w = orig(*a, **k)
        w["blk.1.ffn_up.weight"][3, 5] = np.nan
        return w
    monkeypatch.setattr(tiny_model, "tiny_weights", with_nan)
    model = work["dir"] / "nan.gguf"
    tiny_model.write_tiny_gguf(str(model), **dict(SMALL_MODEL, seed=7))
    p = run([model, "--calib", work["calib"], "--db", db, "--options", work["opts"], "--rows", 4, "--ctx", 64],
            check=False)
    assert p.returncode != 0
    assert "blk.1.ffn_up.weight" in p.stderr and "NaN" in p.stderr
    assert dump(db) == before


def test_corrupt_database(work):
    db = work["dir"] / "garbage.db"
    db.write_bytes(bytes(random.Random(5).getrandbits(8) for _ in range(8192)))
    before = db.read_bytes()
    p = run(base_args(work, "small", db), check=False)
    assert p.returncode != 0
    assert "garbage.db" in p.stderr and "not a database" in p.stderr
    assert db.read_bytes() == before


def test_read_only_database(work):
    """A database that may not be written is refused before any work; it is intact."""
    db = work["dir"] / "ro.db"
    run(base_args(work, "small", db))
    before = dump(db)
    kw, d = {}, work["dir"]
    if os.geteuid() == 0:  # root writes read-only files: run as nobody, from a world-readable folder
        d = tempfile.mkdtemp(prefix="bitplan-ro-")
        os.chmod(d, 0o755)
        for name in ("small", "opts", "calib2"):
            shutil.copy(work[name], d)
        db = shutil.copy(db, d)
        d = pathlib.Path(d)
        kw = dict(user=65534, group=65534)
        if subprocess.run([BIN, "--help"], capture_output=True, **kw).returncode != 0:
            pytest.skip("the bitplan binary is not reachable for an unprivileged user")
    os.chmod(db, 0o444)
    try:
        # another text: there would be work to do, but nothing may be written
        p = subprocess.run([BIN, "measure", d / "small.gguf", "--calib", d / "calib2.txt", "--db", db, "--options",
                            d / "opts.txt", "--rows", "4", "--ctx", "64"], capture_output=True, text=True, **kw)
        assert p.returncode != 0
        assert "ro.db" in p.stderr and "read-only" in p.stderr
        assert dump(db) == before
    finally:
        if d != work["dir"]:
            shutil.rmtree(d)


# ==== KL probes ====

def test_kl_probe(work):
    """Every tensor gets a probe at the 4-bit g128 option; its rel_err is that of the
    measurement at the same option (the same quantized weights); KL is positive.
    Probes added later to a finished measurement give the same numbers."""
    db = work["dir"] / "probe.db"
    args = base_args(work, "small", db) + ["--kl-probe"]
    out = run(args).stdout
    assert "4b-g128" in out
    total = 7 * SMALL_MODEL["n_layers"] + 1
    with sqlite3.connect(db) as c:
        probes = c.execute("SELECT t.name, o.name, p.kld, p.rel_err, m.rel_err FROM kl_probes p "
                           "JOIN tensors t ON t.id = p.tensor_id JOIN options o ON o.id = p.option_id "
                           "JOIN measurements m ON m.tensor_id = p.tensor_id AND m.option_id = p.option_id "
                           "AND m.calib_id = p.calib_id").fetchall()
    assert len(probes) == total
    for name, opt, kld, rel, mrel in probes:
        assert opt == "4b-g128"
        assert rel == mrel
        assert np.isfinite(kld) and kld > 0, name
    # probes added to a finished measurement, and not redone
    db2 = work["dir"] / "probe2.db"
    run(base_args(work, "small", db2))
    run(base_args(work, "small", db2) + ["--kl-probe"])
    assert count(db2, "kl_probes") == total
    with sqlite3.connect(db) as a, sqlite3.connect(db2) as b:
        q = "SELECT t.name, p.kld, p.rel_err FROM kl_probes p JOIN tensors t ON t.id = p.tensor_id ORDER BY t.name"
        assert a.execute(q).fetchall() == b.execute(q).fetchall()
    assert "already measured" in run(base_args(work, "small", db2) + ["--kl-probe"]).stdout
