"""tests/test_quantize.py — `bitplan quantize`, the whole job in one command, on the
real SmolLM2 (little calibration text and three options, so that a measurement takes
about two minutes on two cores):
  (a) killed with SIGKILL while it measures and run again, its file equals, byte for
      byte, the one `measure --kl-probe`, `allocate` and `pack` give by hand with the
      same settings, and its measurements and KL probes are the same values;
  (b) its check scores the end of the calibration text that no row read
      (tool_calib: rows unchanged when those bytes change), with the numbers
      `bitplan eval` gives on that text, filed in the database for the report;
  (c) a second target reuses the measurement (no new rows) and the plan of a target
      already quantized is reused, not made again, and its file kept unless damaged;
  (d) SIGKILL in the allocate, pack and check stages, then the same command: the same
      file, no temporary file left behind, the packed file kept when it is done;
  (e) --format gguf writes what export-gguf writes for the same plan, byte for byte,
      and a rerun keeps it (the GGUF records its plan);
  (f) bad arguments: a one-line error and nothing written.
"""

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, os.environ.get("BITPLAN_BUILD", "build"))
BIN = os.path.join(BUILD, "bitplan")
TOOL_CALIB = os.path.join(BUILD, "tests", "tool_calib")
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
CALIB = os.path.join(ROOT, "data", "calib.txt")
DB = "SmolLM2-135M-Instruct.Q4_1.bitplan.db"  # quantize's default: the model's name, beside OUT
OPTIONS = "3b-g128 3 3 0 128 z8\n4b-g128 4 4 0 128 z8\n6b-g128 6 6 0 128 z8\n"
GGML_OPTIONS = "Q4_0\nQ8_0\n"
ROWS, CTX, CHUNKS = 4, 128, 2
CHECK_CTX, CHECK_BYTES_PER_TOKEN = 512, 8  # cli/cmd_quantize.c
SETTINGS = ["--options", "opts.txt", "--rows", ROWS, "--calib-ctx", CTX, "--check-chunks", CHUNKS]


def run(*args, cwd, check=True, timeout=1800):
    r = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def quantize(cwd, *extra, out="out.bp", bpw=4.5):
    return run("quantize", MODEL, "--bpw", bpw, "-o", out, "--calib", CALIB, *SETTINGS, *extra, cwd=cwd)


def count(db, table):
    with sqlite3.connect(db) as c:
        return c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def snapshot(src, dst):
    """A consistent copy of a database (WAL included)."""
    with sqlite3.connect(src) as s, sqlite3.connect(dst) as d:
        s.backup(d)


def measured(db):
    """Every measurement and KL probe, by tensor and option name."""
    with sqlite3.connect(db) as c:
        m = c.execute("SELECT t.name, o.name, m.bits, m.rel_err, m.rtn_err FROM measurements m JOIN tensors t ON "
                      "t.id = m.tensor_id JOIN options o ON o.id = m.option_id ORDER BY 1, 2").fetchall()
        k = c.execute("SELECT t.name, o.name, k.kld FROM kl_probes k JOIN tensors t ON t.id = k.tensor_id "
                      "JOIN options o ON o.id = k.option_id ORDER BY 1, 2").fetchall()
    return m, k


def leftovers(d):
    return sorted(f for f in os.listdir(d) if ".tmp" in f)


def workdir(tmp, name, db_from=None):
    d = tmp / name
    d.mkdir()
    (d / "opts.txt").write_text(OPTIONS)
    if db_from:
        snapshot(db_from, d / DB)
    return d


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """By hand (measure, allocate, pack) and by quantize, each in its own folder
    with the same relative paths (the packed file records the database's path)."""
    tmp = tmp_path_factory.mktemp("quantize")
    hand = workdir(tmp, "hand")
    run("measure", MODEL, "--calib", CALIB, "--db", DB, "--options", "opts.txt", "--rows", ROWS, "--ctx", CTX,
        "--kl-probe", cwd=hand)
    snapshot(hand / DB, tmp / "measured.db")  # the measurement alone, for the later stages' kills
    plan = run("allocate", "--db", DB, "--bpw", 4.5, cwd=hand).stdout
    assert "plan 1:" in plan
    run("pack", MODEL, "--db", DB, "--plan", 1, "-o", "out.bp", cwd=hand)

    q = workdir(tmp, "q")
    args = [BIN, "quantize", MODEL, "--bpw", "4.5", "-o", "out.bp", "--calib", CALIB, *map(str, SETTINGS)]
    p = subprocess.Popen(args, cwd=q, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while p.poll() is None and time.time() < deadline:
        try:
            if count(q / DB, "measurements") > 100:
                break
        except sqlite3.Error:
            pass
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "quantize ended before it could be killed while measuring"
    at_kill = count(q / DB, "measurements")
    assert not (q / "out.bp").exists()
    resumed = quantize(q).stdout
    return {"tmp": tmp, "hand": hand, "q": q, "at_kill": at_kill, "stdout": resumed}


def test_killed_while_measuring_equals_by_hand(w):
    """(a)"""
    assert "%d already there" % w["at_kill"] in w["stdout"], w["stdout"]
    assert measured(w["q"] / DB) == measured(w["hand"] / DB)
    assert (w["q"] / "out.bp").read_bytes() == (w["hand"] / "out.bp").read_bytes()
    assert leftovers(w["q"]) == []
    report = w["q"] / "out.report.html"
    assert report.stat().st_size > 10000 and "<svg" in report.read_text()
    stages, summary = w["stdout"].split("\n\n")
    assert [line.split()[0] for line in stages.splitlines()] == ["measure", "allocate", "pack", "check", "report"]
    assert [line.split()[0] for line in summary.splitlines()] == ["done", "quality", "time", "report"]


def calib_rows_and_heldout(tmp, text_path, max_bytes):
    out = tmp / "heldout.bin"
    r = subprocess.run([TOOL_CALIB, MODEL, str(ROWS), str(CTX), str(max_bytes), str(out), str(text_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout, out.read_bytes()


def test_check_is_on_text_no_row_read(w, tmp_path):
    """(b) the held-out end is unread by the rows, and the check's numbers are eval's."""
    with open(CALIB, "rb") as f:
        text = f.read(400_000)  # long enough to be cut into segments, as data/calib.txt is
    src = tmp_path / "calib.txt"
    src.write_bytes(text)
    max_bytes = 20_000
    rows, held = calib_rows_and_heldout(tmp_path, src, max_bytes)
    assert 0 < len(held) <= max_bytes and text.endswith(held) and text[-len(held) - 1:-len(held)] == b"\n"
    changed = tmp_path / "changed.txt"
    changed.write_bytes(text[: -len(held)] + bytes(b ^ 0x20 if 0x41 <= b < 0x7B else b for b in held))
    assert calib_rows_and_heldout(tmp_path, changed, max_bytes)[0] == rows
    short = tmp_path / "short.txt"  # tokenized whole: the rows may read every byte, nothing held out
    short.write_bytes(text[:10_000])
    assert calib_rows_and_heldout(tmp_path, short, max_bytes)[1] == b""

    # the check of (a): the same bytes of data/calib.txt, and eval's numbers on them
    _, held = calib_rows_and_heldout(tmp_path, CALIB, (CHUNKS + 1) * CHECK_CTX * CHECK_BYTES_PER_TOKEN)
    with sqlite3.connect(w["q"] / DB) as c:
        row = c.execute("SELECT text_hash, ppl, kld, top1, tokens, plan_id, subject FROM evals ORDER BY id DESC").fetchone()
    assert row[0] == hashlib.sha256(held).hexdigest() and row[5] == 1 and row[6] == "out.bp"
    (tmp_path / "held.txt").write_bytes(held)
    ev = run("eval", "out.bp", "--text", tmp_path / "held.txt", "--ctx", CHECK_CTX, "--chunks", CHUNKS, "--ref", MODEL,
             cwd=w["q"]).stdout
    said = {line.split()[0]: line.split() for line in ev.splitlines() if line.strip()}
    assert f"{row[1]:.4f}" == said["perplexity"][1]
    assert f"{row[2]:.6f}" == said["KL"][2]
    assert f"{100 * row[3]:.2f}" == said["top-1"][2]
    assert said["tokens"][2] == str(row[4])


def test_second_target_reuses_the_measurement(w):
    """(c)"""
    q = w["q"]
    before = count(q / DB, "measurements"), count(q / DB, "kl_probes"), count(q / DB, "plans")
    out = quantize(q, out="out38.bp", bpw=3.8).stdout
    assert "measure   already done" in out
    assert (count(q / DB, "measurements"), count(q / DB, "kl_probes")) == before[:2]
    assert count(q / DB, "plans") == before[2] + 1
    again = quantize(q, out="out38.bp", bpw=3.8).stdout
    assert "made before for this target" in again and "already plan 2's file: kept" in again
    assert count(q / DB, "plans") == before[2] + 1
    # a damaged file is not kept (its checksums do not match): packed again, the same bytes
    good = (q / "out38.bp").read_bytes()
    (q / "out38.bp").write_bytes(good[:-100] + bytes([good[-100] ^ 0xFF]) + good[-99:])
    redo = quantize(q, out="out38.bp", bpw=3.8).stdout
    assert "file: kept" not in redo and (q / "out38.bp").read_bytes() == good
    # a by-hand plan at a target is not taken for quantize's (its settings may differ)
    assert "allocate  plan 2:" in quantize(w["hand"], out="again.bp").stdout


@pytest.mark.parametrize("stage,after", [("allocate", "measure"), ("pack", "allocate"), ("check", "pack")])
def test_kill_in_a_stage_and_resume(w, stage, after):
    """(d) SIGKILL as the stage begins (pack: two seconds into it), the same command again."""
    d = workdir(w["tmp"], "kill-" + stage, db_from=w["tmp"] / "measured.db")
    args = [BIN, "quantize", MODEL, "--bpw", "4.5", "-o", "out.bp", "--calib", CALIB, *map(str, SETTINGS)]
    p = subprocess.Popen(args, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if line.startswith(after + " "):
            break
    if stage == "pack":
        time.sleep(2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    if stage != "check":
        assert not (d / "out.bp").exists()  # written atomically
    out = quantize(d).stdout
    assert (d / "out.bp").read_bytes() == (w["hand"] / "out.bp").read_bytes()
    assert leftovers(d) == []
    assert count(d / DB, "plans") == 1
    if stage == "check":
        assert "already plan 1's file: kept" in out


def test_gguf_equals_export_gguf(w):
    """(e)"""
    d = workdir(w["tmp"], "gguf")
    (d / "opts.txt").write_text(GGML_OPTIONS)
    out = run("quantize", MODEL, "--format", "gguf", "--bpw", 6, "-o", "out.gguf", "--calib", CALIB, *SETTINGS,
              cwd=d).stdout
    assert "check " in out and "KL divergence" in out
    run("export-gguf", MODEL, "--db", DB, "--plan", 1, "-o", "hand.gguf", cwd=d)
    assert (d / "out.gguf").read_bytes() == (d / "hand.gguf").read_bytes()
    assert (d / "out.gguf").read_bytes()[:4] == b"GGUF"
    # the export records its plan: a rerun keeps it, and the check is filed under the plan
    again = run("quantize", MODEL, "--format", "gguf", "--bpw", 6, "-o", "out.gguf", "--calib", CALIB, *SETTINGS,
                cwd=d).stdout
    assert "already plan 1's file: kept" in again
    with sqlite3.connect(d / DB) as c:
        assert c.execute("SELECT DISTINCT subject_kind, plan_id FROM evals").fetchall() == [("packed", 1)]


@pytest.mark.parametrize("args,says", [
    ([MODEL, "-o", "x.bp"], "no target given"),
    ([MODEL, "--bpw", "4", "--size", "80MiB", "-o", "x.bp"], "exclude each other"),
    ([MODEL, "--vram", "8GiB", "-o", "x.bp"], "--vram needs --ctx"),
    ([MODEL, "--bpw", "4", "--ctx", "4096", "-o", "x.bp"], "belongs to --vram"),
    ([MODEL, "--bpw", "four", "-o", "x.bp"], "is not a number of bits"),
    ([MODEL, "--bpw", "4", "-o", "x.bp", "--format", "exl2"], "neither bitplan nor gguf"),
    ([MODEL, "--bpw", "4", "-o", "x.bp", "--frobnicate", "1"], "unknown option"),
    ([MODEL, "--bpw", "4"], "no output given"),
    ([MODEL, "--bpw", "4", "-o", "nowhere/x.bp"], "no such folder"),
    (["missing.gguf", "--bpw", "4", "-o", "x.bp"], "missing.gguf"),
    (["--bpw", "4", "-o", "x.bp"], "no model given"),
    ([MODEL, "--bpw", "4", "-o", "x.bp", "--check-chunks", "-1"], "--check-chunks"),
    ([MODEL, "--bpw", "4", "-o", "x.bp", "--calib", "missing.txt"], "missing.txt"),
    ([MODEL, "--bpw", "4", "-o", MODEL], "is the model itself"),
])
def test_bad_arguments(tmp_path, args, says):
    """(f)"""
    r = run("quantize", *args, cwd=tmp_path, check=False)
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bitplan ") and says in err[0], r.stderr
    assert r.stdout == ""
    assert os.listdir(tmp_path) == []
