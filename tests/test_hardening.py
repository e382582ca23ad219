"""tests/test_hardening.py — what a careless or unlucky user does to bitplan, and what
must happen: a clear one-line error (or a warning) and nothing lost.

  destinations  pack, export-gguf, report and eval --save-logits refuse a FIFO or a
                folder as OUT and leave it as it was; a symbolic link is followed
                (its target replaced, the link kept); a dangling one is refused
  bounds        --threads, --sweep counts, --head-bits beyond every option, eval --ctx
  stdout        a command whose standard output cannot be written fails
  read-only     a database in a folder the user cannot write is read by report and
                allocate --list, and left as it was
  one measure   a second measure of the same calibration is refused, naming the
                first; once the first is gone (even by SIGKILL) the next one runs
  interrupts    SIGINT ends measure with 130 and says what was saved (the rerun
                gives the database of an uninterrupted run), and pack with 130,
                no OUT and no temporary file; a SIGKILLed pack's temporary file is
                removed by the next pack
  messages      NUL bytes, text given as a model, a packed file given to measure,
                an empty database file, runs past the trained context, an absurd
                GGUF alignment, pack run from another folder

What it must never do: depend on timing for a verdict (interrupts land wherever
they land), or touch anything outside its temporary folders.
"""

import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import tiny_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BITPLAN_BUILD", "build")
BIN = os.path.join(ROOT, BUILD, "bitplan")

OPTIONS = """\
2b-g64   2 2 0 64  z8
4b-g128  4 4 0 128 z8
8b-g32   8 8 0 32  z8
"""
SMALL = dict(n_layers=2, dim=64, hidden=128, n_heads=4, n_kv_heads=2, vocab=512, seed=1)
# a few seconds of measuring on two cores: long enough for a signal to land inside
BIG = dict(n_layers=6, dim=256, hidden=512, n_heads=4, n_kv_heads=2, vocab=512, seed=3)


def run(cmd, args, check=True, **kw):
    p = subprocess.run([BIN, cmd] + [str(a) for a in args], capture_output=True, text=True, errors="replace", **kw)
    if check and p.returncode != 0:
        raise AssertionError("bitplan %s failed: %s" % (cmd, p.stderr))
    return p


def one_line_error(p, *needles):
    assert p.returncode != 0
    assert p.returncode < 128, "died of a signal: %s" % p.stderr
    msg = p.stderr.strip()
    assert msg.count("\n") == 0, msg
    for n in needles:
        assert n in msg, msg
    return msg


calib_text = tiny_model.calib_text


def measure_args(model, w, db, rows=4, ctx=64):
    return [model, "--calib", w["calib"], "--db", db, "--options", w["opts"], "--rows", rows, "--ctx", ctx,
            "--threads", 2]


def rows_of(db):
    with sqlite3.connect(db) as c:
        return sorted(c.execute(
            "SELECT t.name, o.name, m.bits, m.rel_err, m.rtn_err FROM measurements m "
            "JOIN tensors t ON t.id = m.tensor_id JOIN options o ON o.id = m.option_id").fetchall())


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    if not os.path.exists(BIN):
        pytest.fail("%s is missing: build first (make BUILD=%s)" % (BIN, BUILD))
    d = tmp_path_factory.mktemp("hardening")
    w = {"dir": d, "opts": d / "opts.txt", "calib": d / "calib.txt", "model": d / "small.gguf", "db": d / "small.db",
         "big": d / "big.gguf"}
    w["opts"].write_text(OPTIONS)
    w["calib"].write_text(calib_text(1))
    tiny_model.write_tiny_gguf(str(w["model"]), **SMALL)
    tiny_model.write_tiny_gguf(str(w["big"]), **BIG)
    run("measure", measure_args(w["model"], w, w["db"]))
    run("allocate", ["--db", w["db"], "--bpw", 4.0, "--head-bits", 0])
    w["packed"] = d / "small.bp"
    run("pack", [w["model"], "--db", w["db"], "-o", w["packed"]])
    return w


# ==== Destinations ====

def writers(w, out):
    return {
        "pack": ("pack", [w["model"], "--db", w["db"], "-o", out]),
        "report": ("report", ["--db", w["db"], "-o", out]),
        "save-logits": ("eval", [w["model"], "--text", w["calib"], "--chunks", 2, "--ctx", 64, "--save-logits", out]),
        "quantize": ("quantize", [w["model"], "--calib", w["calib"], "--bpw", 4, "--db", w["dir"] / "q-dest.db", "-o",
                                  out]),
    }


@pytest.mark.parametrize("kind", ["pack", "report", "save-logits", "quantize"])
def test_fifo_and_folder_refused(w, kind):
    fifo, folder = w["dir"] / ("fifo-" + kind), w["dir"] / ("folder-" + kind)
    os.mkfifo(fifo)
    folder.mkdir()
    for out, needle in ((fifo, "not a regular file"), (folder, "is a directory")):
        cmd, args = writers(w, out)[kind]
        one_line_error(run(cmd, args, check=False), str(out), needle)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and folder.is_dir() and not any(folder.iterdir())
    assert not [f for f in os.listdir(w["dir"]) if ".tmp." in f]
    assert not (w["dir"] / "q-dest.db").exists()  # quantize refused before measuring


def test_symlink_followed_dangling_refused(w):
    target, link = w["dir"] / "target.bp", w["dir"] / "link.bp"
    target.write_bytes(b"old")
    os.symlink("target.bp", link)
    run("pack", [w["model"], "--db", w["db"], "-o", link])
    assert os.path.islink(link) and os.readlink(link) == "target.bp"
    assert target.read_bytes() == w["packed"].read_bytes()
    dangling = w["dir"] / "dangling.html"
    os.symlink("nowhere.html", dangling)
    one_line_error(run("report", ["--db", w["db"], "-o", dangling], check=False), "does not exist")
    assert not (w["dir"] / "nowhere.html").exists()


# ==== Bounds ====

def test_threads_bounded(w):
    for cmd, extra in (("measure", []), ("quantize", ["--bpw", 4, "-o", w["dir"] / "q.bp"])):
        args = [w["model"], "--calib", w["calib"], "--db", w["dir"] / "threads.db", "--threads", 100000] + extra
        one_line_error(run(cmd, args, check=False), "--threads", "1 to 1024")
    assert not (w["dir"] / "threads.db").exists()


def plan_count(db):
    with sqlite3.connect(db) as c:
        return c.execute("SELECT count(*) FROM plans").fetchone()[0]


def test_sweep_and_head_bits_bounded(w):
    before = plan_count(w["db"])
    one_line_error(run("allocate", ["--db", w["db"], "--sweep", "2.5:6:1e-9"], check=False), "3500000001 plans",
                   "at most 1000")
    one_line_error(run("allocate", ["--db", w["db"], "--sweep", "2.5:6:0.0001"], check=False), "35001 plans")
    for bad in ("2.5:6:nan", "2.5:6:0.5x", "6:2.5:0.5", "2.5:6"):
        one_line_error(run("allocate", ["--db", w["db"], "--sweep", bad], check=False), "FROM:TO:STEP")
    one_line_error(run("allocate", ["--db", w["db"], "--bpw", 4, "--head-bits", 99], check=False),
                   "no option of the head", "99 bits")
    assert plan_count(w["db"]) == before
    # a sane sweep still runs: 3.0, 3.5, 4.0
    out = run("allocate", ["--db", w["db"], "--sweep", "3:4:0.5", "--head-bits", 0]).stdout
    assert "3 plans stored" in out
    assert plan_count(w["db"]) == before + 3


def test_eval_ctx_range_and_trained_context(w):
    one_line_error(run("eval", [w["model"], "--text", w["calib"], "--ctx", 2147483647], check=False),
                   "from 4 to 1048576")
    p = run("eval", [w["model"], "--text", w["calib"], "--ctx", tiny_model.CTX * 2, "--chunks", 1], check=False)
    assert "past the %d the model was trained on" % tiny_model.CTX in p.stderr
    p = run("generate", [w["model"], "--prompt", "the", "-n", tiny_model.CTX + 10, "--seed", 1], check=False)
    assert "past the %d the model was trained on" % tiny_model.CTX in p.stderr


# ==== Standard output ====

@pytest.mark.parametrize("cmd", ["inspect", "allocate", "generate", "tokenize"])
def test_stdout_failure_fails(w, cmd):
    args = {"inspect": [w["model"]], "allocate": ["--db", w["db"], "--list"],
            "generate": [w["model"], "--prompt", "the", "-n", 4, "--seed", 1],
            "tokenize": [w["model"], "--string", "the cat"]}[cmd]
    with open("/dev/full", "w") as full:
        p = subprocess.run([BIN, cmd] + [str(a) for a in args], stdout=full, stderr=subprocess.PIPE, text=True)
    assert p.returncode == 1, p.stderr
    assert "cannot write standard output" in p.stderr


# ==== A read-only database ====

def as_other_user(cmd):
    """cmd run as 'nobody' when we are root (root writes anywhere), else as is."""
    if os.getuid() == 0:
        return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + cmd
    return cmd


def test_read_only_database(w):
    ro = tempfile.mkdtemp(prefix="bitplan-ro-")
    try:
        db, exe = os.path.join(ro, "small.db"), os.path.join(ro, "bitplan")
        shutil.copy(w["db"], db)
        shutil.copy(BIN, exe)  # the build folder may be out of another user's reach
        os.chmod(db, 0o444)
        os.chmod(ro, 0o555)
        before = open(db, "rb").read()
        out = "/tmp/bitplan-ro-report-%d.html" % os.getpid()
        p = subprocess.run(as_other_user([exe, "report", "--db", db, "-o", out]), capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert os.path.getsize(out) > 1000
        os.unlink(out)
        p = subprocess.run(as_other_user([exe, "allocate", "--db", db, "--list"]), capture_output=True, text=True)
        assert p.returncode == 0 and "bpw" in p.stdout, p.stderr
        assert sorted(os.listdir(ro)) == ["bitplan", "small.db"]  # no -shm, no -wal
        assert open(db, "rb").read() == before
        # a write-ahead log with changes in it cannot be read without writing: say so
        os.chmod(ro, 0o755)
        with open(db + "-wal", "wb") as f:
            f.write(b"\0" * 4096)
        os.chmod(ro, 0o555)
        p = subprocess.run(as_other_user([exe, "report", "--db", db, "-o", "/tmp/never.html"]), capture_output=True,
                           text=True)
        one_line_error(p, "write-ahead log")
    finally:
        os.chmod(ro, 0o755)
        shutil.rmtree(ro)


def test_empty_database_file_left_alone(w):
    empty = w["dir"] / "empty.db"
    empty.write_bytes(b"")
    one_line_error(run("allocate", ["--db", empty, "--bpw", 4], check=False), "empty, not a bitplan database")
    one_line_error(run("report", ["--db", empty, "-o", w["dir"] / "e.html"], check=False), "empty")
    assert empty.stat().st_size == 0 and not os.path.exists(str(empty) + "-wal")


# ==== One measure per calibration ====

def wait_for_claim(db, p, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout and p.poll() is None:
        try:
            with sqlite3.connect("file:%s?mode=ro" % db, uri=True) as c:
                if c.execute("SELECT count(*) FROM meta WHERE key LIKE 'claim.%'").fetchone()[0]:
                    return True
        except sqlite3.OperationalError:
            pass
        time.sleep(0.02)
    return False


def test_second_measure_refused_then_runs(w):
    db = w["dir"] / "twice.db"
    args = [str(a) for a in measure_args(w["big"], w, db, rows=8, ctx=128)]
    first = subprocess.Popen([BIN, "measure"] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if not wait_for_claim(db, first):
            pytest.fail("the first measure ended before it claimed: %s" % first.communicate()[1])
        second = run("measure", args, check=False)
        if first.poll() is None:  # still running: the second must have been refused
            one_line_error(second, "is being measured by", "pid %d" % first.pid)
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    # the lock died with it: the next run does the work
    p = run("measure", args)
    assert "measured" in p.stdout
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM meta WHERE key LIKE 'claim.%'").fetchone()[0] == 0


# ==== Interrupts ====

def test_sigint_measure_saves_and_resumes(w):
    ref_db, db = w["dir"] / "int-ref.db", w["dir"] / "int.db"
    run("measure", measure_args(w["big"], w, ref_db, rows=8, ctx=128))
    args = [str(a) for a in measure_args(w["big"], w, db, rows=8, ctx=128)]
    interrupted = 0
    for delay in (0.5, 1.5):
        p = subprocess.Popen([BIN, "measure"] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_claim(db, p)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate()
        if p.returncode == 130:
            interrupted += 1
            assert "interrupted" in err and "the same command resumes" in err, err
        else:
            assert p.returncode == 0, err  # it finished before the signal came
    assert interrupted >= 1
    run("measure", args)
    assert rows_of(db) == rows_of(ref_db)


def test_sigint_pack_leaves_nothing(w):
    big_db = w["dir"] / "big-pack.db"
    run("measure", measure_args(w["big"], w, big_db, rows=8, ctx=128))
    run("allocate", ["--db", big_db, "--bpw", 4.0, "--head-bits", 0])
    out = w["dir"] / "interrupted.bp"
    p = subprocess.Popen([BIN, "pack", str(w["big"]), "--db", str(big_db), "-o", str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate()
    leftovers = [f for f in os.listdir(w["dir"]) if f.startswith("interrupted.bp")]
    if p.returncode == 130:
        assert "nothing was written to" in err
        assert leftovers == []
    else:
        assert p.returncode == 0, err
    # a SIGKILLed writer's temporary file goes at the next pack of the same OUT
    killed = subprocess.Popen([BIN, "pack", str(w["big"]), "--db", str(big_db), "-o", str(out)])
    t0 = time.time()
    while time.time() - t0 < 120 and killed.poll() is None and \
            not [f for f in os.listdir(w["dir"]) if f.startswith("interrupted.bp.tmp.")]:
        time.sleep(0.002)
    killed.kill()
    killed.wait()
    run("pack", [w["big"], "--db", big_db, "-o", out])
    assert [f for f in os.listdir(w["dir"]) if f.startswith("interrupted.bp")] == ["interrupted.bp"]


# ==== Messages that must not mislead ====

def test_misleading_inputs(w):
    nul = w["dir"] / "nul-options.txt"
    nul.write_bytes(b"4b-g128 4 4 0 128 z8\n2b\0g64 2 2 0 64 z8\n")
    one_line_error(run("measure", [w["model"], "--calib", w["calib"], "--db", w["dir"] / "nul.db", "--options", nul],
                       check=False), "NUL byte")
    text = w["dir"] / "notes.txt"
    text.write_text("just some notes, not a model\n" * 20)
    one_line_error(run("inspect", [text], check=False), "not a GGUF or safetensors file")
    one_line_error(run("measure", [w["packed"], "--calib", w["calib"], "--db", w["dir"] / "packed.db"], check=False),
                   "packed file", "the model it was packed from")
    assert not (w["dir"] / "packed.db").exists()


def test_gguf_alignment_message(w):
    import gguf
    path = w["dir"] / "aligned.gguf"
    gw = gguf.GGUFWriter(str(path), "llama")
    gw.add_custom_alignment(64)
    gw.add_tensor("x", __import__("numpy").zeros(4, dtype="float32"))
    gw.write_header_to_file(), gw.write_kv_data_to_file(), gw.write_tensors_to_file(), gw.close()
    data = bytearray(path.read_bytes())
    key = b"general.alignment"
    at = data.index(key) + len(key)
    assert data[at:at + 4] == (4).to_bytes(4, "little")  # GGUF type u32
    data[at + 4:at + 8] = (1 << 31).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    one_line_error(run("inspect", [path], check=False), "power of two up to 65536", "2147483648")


def test_pack_from_another_folder(w, tmp_path):
    """The calibration text is given relative to where measure ran; pack runs from
    elsewhere and still finds it."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(w["calib"], work / "calib.txt")
    shutil.copy(w["opts"], work / "opts.txt")
    db = work / "rel.db"
    run("measure", [w["model"], "--calib", "calib.txt", "--db", "rel.db", "--options", "opts.txt", "--rows", 4,
                    "--ctx", 64], cwd=work)
    run("allocate", ["--db", db, "--bpw", 4.0, "--head-bits", 0])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run("pack", [w["model"], "--db", db, "-o", "out.bp"], cwd=elsewhere)
    # the same model, text, rows and options: the same tensors as the fixture's pack
    assert data_section(elsewhere / "out.bp") == data_section(w["packed"])


def data_section(path):
    """The bytes after a safetensors header: every tensor, none of the metadata."""
    raw = open(path, "rb").read()
    return raw[8 + int.from_bytes(raw[:8], "little"):]
