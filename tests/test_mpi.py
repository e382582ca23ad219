"""tests/test_mpi.py — the measurement and the packer on several processes
(`mpirun -np N bitplan measure|pack|export-gguf`, par/): the database of 2 or 3
ranks equals one process's, every value exactly, KL probes included; a job whose
rank is killed resumes, with another N, to the same database; the packed file (both
Hessian modes) and the GGUF export of 2 or 3 ranks are one process's, byte for byte;
a rank that fails ends the job with a message naming it, and nothing is written;
other commands refuse to run on several ranks.

Runs Open MPI's mpirun (scripts/deps.sh installs it), as root where CI runs as root
(OMPI_ALLOW_RUN_AS_ROOT), without binding ranks to cores (two ranks on a 2-core
machine must not share one) and with shared-memory transfers that need no ptrace
(containers often forbid it).

What it must never do: depend on timing for a verdict (a kill lands wherever it
lands: the comparison holds for any moment).
"""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import tiny_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BITPLAN_BUILD", "build")
BIN = os.path.join(ROOT, BUILD, "bitplan")
SAN_BIN = os.path.join(ROOT, "build-san", "bitplan")

OPTIONS = """\
2b-g64          2  2  0     64    z8
"3b/4b 50% g64" 3  4  50%   64    z8
4b-g128         4  4  0     128   z8
8b-g32          8  8  0     32    z8
"""
MODEL = dict(n_layers=6, dim=256, hidden=512, n_heads=4, n_kv_heads=2, vocab=512, seed=3)
N_TENSORS = 7 * MODEL["n_layers"] + 1
N_OPTIONS = 4

MPI_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_btl_vader_single_copy_mechanism="none", OMPI_MCA_rmaps_base_oversubscribe="1")


def mpirun(n, args, binary=BIN, command="measure"):
    return ["mpirun", "-np", str(n), "--bind-to", "none", binary, command] + [str(a) for a in args]


def run(cmd, check=True, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env or MPI_ENV, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError("%s failed (%d): %s" % (" ".join(cmd), p.returncode, p.stderr[-2000:]))
    return p


def contents(db):
    """Every table's rows, sorted, without timings, timestamps and the claim labels
    (which name a process): what must be equal whatever the number of ranks."""
    out = {}
    with sqlite3.connect(db) as c:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for t in tables:
            cols = [r[1] for r in c.execute("PRAGMA table_info(%s)" % t) if r[1] not in ("seconds", "created_at")]
            rows = c.execute("SELECT %s FROM %s" % (", ".join(cols), t)).fetchall()
            if t == "meta":
                rows = [r for r in rows if not str(r[0]).startswith("claim.")]
            out[t] = sorted(rows, key=repr)
    return out


def count(db):
    return tiny_model.row_count(db, "measurements")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    if not os.path.exists(BIN):
        pytest.fail("%s is missing: build first (make BUILD=%s)" % (BIN, BUILD))
    if not shutil.which("mpirun"):
        pytest.fail("mpirun is missing: scripts/deps.sh installs openmpi-bin and libopenmpi-dev; then rebuild")
    d = tmp_path_factory.mktemp("mpi")
    w = {"dir": d, "model": d / "m.gguf", "calib": d / "calib.txt", "calib2": d / "calib2.txt", "opts": d / "opts.txt"}
    tiny_model.write_tiny_gguf(str(w["model"]), **MODEL)
    w["calib"].write_text(tiny_model.calib_text(1))
    w["calib2"].write_text(tiny_model.calib_text(2))
    w["opts"].write_text(OPTIONS)
    w["args"] = lambda db, calib="calib", model="model": [w[model], "--calib", w[calib], "--db", db, "--options",  # noqa: E731
                                                         w["opts"], "--rows", 8, "--ctx", 128, "--kl-probe",
                                                         "--threads", 1]
    ref = d / "one.db"
    run([BIN, "measure"] + [str(a) for a in w["args"](ref)], env=os.environ)
    w["ref"] = contents(ref)
    assert len(w["ref"]["measurements"]) == N_TENSORS * N_OPTIONS
    assert len(w["ref"]["kl_probes"]) == N_TENSORS
    return w


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_give_one_process_database(work, ranks):
    """Rows split across ranks, units dealt out: every value equals one process's."""
    db = work["dir"] / ("ranks%d.db" % ranks)
    out = run(mpirun(ranks, work["args"](db))).stdout
    assert out.count("measured %d tensors" % N_TENSORS) == 1, "only rank 0 speaks: " + out
    assert contents(db) == work["ref"]


def test_ranks_under_sanitizers(work):
    """Two ranks of the ASan + UBSan build (Open MPI's own allocations are not ours:
    no leak check)."""
    if not os.path.exists(SAN_BIN):
        pytest.fail("%s is missing: make test builds it" % SAN_BIN)
    db = work["dir"] / "san.db"
    env = dict(MPI_ENV, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1", UBSAN_OPTIONS="halt_on_error=1")
    run(mpirun(2, work["args"](db), binary=SAN_BIN), env=env)
    assert contents(db) == work["ref"]


def rank_pids(parent, rank):
    """PIDs of processes under `parent` whose MPI rank is `rank`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                env = f.read().split(b"\0")
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"OMPI_COMM_WORLD_RANK=%d" % rank in env and b"measure" in cmd and str(parent).encode() in cmd:
            found.append(int(pid))
    return found


def test_killed_rank_resumes_with_other_ranks(work):
    """SIGKILL one rank of a 2-rank job once rank 0 has committed rows: the job ends
    and says so; 3 ranks then finish it to the database of one process."""
    db = work["dir"] / "cut.db"
    p = subprocess.Popen(mpirun(2, work["args"](db)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=MPI_ENV)
    deadline = time.time() + 300
    while count(db) == 0 and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    victims = rank_pids(db, 1)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    _, err = p.communicate(timeout=300)
    at_kill = count(db)
    assert victims and p.returncode != 0, "the job ended before a rank could be killed"
    assert 0 < at_kill < N_TENSORS * N_OPTIONS
    out = run(mpirun(3, work["args"](db))).stdout
    assert "%d already there" % at_kill in out
    assert contents(db) == work["ref"]


def test_rank_with_no_share_of_a_group(work):
    """A resumed job with one unit left: the other ranks have no share of its group
    and must wait for it, not fail (a division by their empty share's largest
    tensor once killed them)."""
    db = work["dir"] / "one_left.db"
    shutil.copy(work["dir"] / "one.db", db)
    with sqlite3.connect(db) as c:
        c.execute("DELETE FROM measurements WHERE rowid = (SELECT max(rowid) FROM measurements)")
    out = run(mpirun(3, work["args"](db))).stdout
    assert "%d already there" % (N_TENSORS * N_OPTIONS - 1) in out
    assert contents(db) == work["ref"]


def test_failing_rank_is_named(work):
    """A rank given other text, or no model, stops the job before anything is
    written; rank 0 names it and the cause."""
    db = work["dir"] / "fail.db"
    a = [str(x) for x in work["args"](db)]
    b = [str(x) for x in work["args"](db, calib="calib2")]
    p = run(["mpirun", "--bind-to", "none", "-np", "1", BIN, "measure"] + a + [":", "-np", "1", BIN, "measure"] + b,
            check=False)
    assert p.returncode == 1
    assert "rank 1: its model, calibration text or options differ from rank 0's" in p.stderr, p.stderr
    assert count(db) == 0

    missing = work["dir"] / "missing.gguf"
    c = [str(x) for x in work["args"](db)]
    c[0] = str(missing)
    p = run(["mpirun", "--bind-to", "none", "-np", "2", BIN, "measure"] + a + [":", "-np", "1", BIN, "measure"] + c,
            check=False)
    assert p.returncode == 1
    assert "rank 2: " in p.stderr and "missing.gguf" in p.stderr, p.stderr
    assert count(db) == 0


def test_other_commands_refuse_ranks(work):
    p = run(["mpirun", "-np", "2", "--bind-to", "none", BIN, "allocate", "--db", str(work["dir"] / "one.db"), "--bpw",
             "4"], check=False)
    assert p.returncode == 2
    assert "only measure, pack and export-gguf run on several processes" in p.stderr


# ---- pack and export-gguf on ranks ----

ONE_THREAD = dict(MPI_ENV, OMP_NUM_THREADS="1")


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def packed(work):
    """A 4-bpw plan of the one-process measurement, packed by one process in both
    Hessian modes: the files the ranks must reproduce."""
    db = work["dir"] / "one.db"
    run([BIN, "allocate", "--db", str(db), "--bpw", "4"], env=os.environ)
    ref = {}
    for mode in ("sequential", "full"):
        out = work["dir"] / ("one-%s.bp" % mode)
        run([BIN, "pack", str(work["model"]), "--db", str(db), "--hessians", mode, "-o", str(out)], env=ONE_THREAD)
        ref[mode] = read(out)
    return {"db": db, "ref": ref}


@pytest.mark.parametrize("ranks,mode", [(2, "sequential"), (3, "sequential"), (2, "full")])
def test_pack_on_ranks_is_one_process_file(work, packed, ranks, mode):
    """Tensors dealt to ranks, each result sent where it is needed (sequential mode:
    every rank runs its rows on it): the same bytes as one process."""
    out = work["dir"] / ("ranks%d-%s.bp" % (ranks, mode))
    p = run(mpirun(ranks, [work["model"], "--db", packed["db"], "--hessians", mode, "-o", out], command="pack"),
            env=ONE_THREAD)
    assert p.stdout.count("packed ") == 1 and ("%d ranks: " % ranks) in p.stdout, p.stdout
    assert read(out) == packed["ref"][mode]


def test_pack_on_ranks_under_sanitizers(work, packed):
    if not os.path.exists(SAN_BIN):
        pytest.fail("%s is missing: make test builds it" % SAN_BIN)
    out = work["dir"] / "san.bp"
    env = dict(ONE_THREAD, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1", UBSAN_OPTIONS="halt_on_error=1")
    run(mpirun(2, [work["model"], "--db", packed["db"], "-o", out], binary=SAN_BIN, command="pack"), env=env)
    assert read(out) == packed["ref"]["sequential"]


def test_export_gguf_on_ranks_is_one_process_file(work):
    """A uniform plan recorded by rank 0 under mpirun (its id sent to the others),
    exported by 3 ranks, equals one process's export of that plan."""
    opts = work["dir"] / "ggml.txt"
    opts.write_text("Q4_K\nQ6_K\n")
    db = work["dir"] / "ggml.db"
    run([BIN, "measure"] + [str(a) for a in [work["model"], "--calib", work["calib"], "--db", db, "--options", opts,
                                            "--rows", 8, "--ctx", 128]], env=os.environ)
    out = work["dir"] / "ranks.gguf"
    p = run(mpirun(3, [work["model"], "--db", db, "--uniform", "Q4_K", "-o", out], command="export-gguf"),
            env=ONE_THREAD)
    plan = int(p.stdout.split("plan", 1)[1].split()[0])
    assert tiny_model.row_count(db, "plans") == 1
    one = work["dir"] / "one.gguf"
    run([BIN, "export-gguf", str(work["model"]), "--db", str(db), "--plan", str(plan), "-o", str(one)], env=ONE_THREAD)
    assert read(out) == read(one)


def test_pack_failing_rank_is_named(work, packed):
    """A rank given another model stops the pack before any work; rank 0 names it
    and nothing is written."""
    out = work["dir"] / "fail.bp"
    other = work["dir"] / "other.gguf"
    tiny_model.write_tiny_gguf(str(other), **dict(MODEL, seed=4))
    a = [str(x) for x in [work["model"], "--db", packed["db"], "-o", out]]
    b = [str(other)] + a[1:]
    p = run(["mpirun", "--bind-to", "none", "-np", "1", BIN, "pack"] + a + [":", "-np", "1", BIN, "pack"] + b,
            check=False, env=ONE_THREAD)
    assert p.returncode == 1
    assert "rank 1: " in p.stderr and "other.gguf is not the model plan" in p.stderr, p.stderr
    assert not os.path.exists(out) and not [f for f in os.listdir(work["dir"]) if f.startswith("fail.bp")]


STUB_MAIN = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "par/par.h"
int main(int argc, char **argv)
{
    char err[256] = "";
    if (par_init(&argc, &argv, err, sizeof err)) { printf("refused: %s\n", err); return 3; }
    int v = 7, all_ok;
    void *all; size_t n;
    all_ok = !par_bcast(&v, sizeof v, 0) && !par_gather(&v, sizeof v, &all, &n) && n == sizeof v &&
             !memcmp(all, &v, sizeof v);
    free(all);
    snprintf(err, sizeof err, "boom");
    int agree = par_agree(-1, err, sizeof err);
    printf("rank %d of %d, gather %s, agree %d '%s'\n", par_rank(), par_size(), all_ok ? "ok" : "bad", agree, err);
    par_finish();
    return 0;
}
"""


def test_build_without_mpi_is_one_process(tmp_path):
    """par/ without BITPLAN_MPI (make NO_MPI=1): a job of one that copies and agrees,
    and that refuses to run as one of several ranks."""
    src = tmp_path / "stub.c"
    src.write_text(STUB_MAIN)
    exe = tmp_path / "stub"
    subprocess.run(["cc", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-I", ROOT, "-o", str(exe),
                    str(src), os.path.join(ROOT, "par", "par.c")], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI"))}
    p = subprocess.run([str(exe)], capture_output=True, text=True, env=env)
    assert p.returncode == 0 and p.stdout == "rank 0 of 1, gather ok, agree -1 'boom'\n", p.stdout
    p = subprocess.run([str(exe)], capture_output=True, text=True, env=dict(env, OMPI_COMM_WORLD_SIZE="2"))
    assert p.returncode == 3 and "built without MPI" in p.stdout, p.stdout
