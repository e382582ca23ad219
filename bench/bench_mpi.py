#!/usr/bin/env python3
"""bench/bench_mpi.py — the measurement and the packer on several processes against
one, in the same run: `bitplan measure` as one process with --threads 2, then
`mpirun -np 2` with --threads 1 per rank, alternated REPEATS times, on

  - SmolLM2-135M (make demo's measurement: data/calib.txt, 16 x 512 tokens, the
    default 28 options, --kl-probe);
  - one block of the Llama-2-7B shape (scripts/synth-model.py --shape llama2-7b
    --layers 1: the block, the embedding and the 49152 x 4096 head; 8 x 256 tokens,
    the OPTIONS_7B options: a few minutes a run).

For each: wall seconds, the speed-up (one process's wall / two ranks'), the bytes
the ranks sent per visited layer and the share of time they spent inside MPI calls
(both printed by bitplan measure), and whether the two databases are equal
(every value but timings). Then `bitplan pack` of a 3.5-bpw plan of each one-process
database, the same way (OMP_NUM_THREADS 2 against 2 ranks of 1), and whether the
two files are equal byte for byte. Prints Markdown.

    python3 bench/bench_mpi.py [--repeats N] [--only smol|7b] [--keep DIR]

Never asserts on time. Needs mpirun (scripts/deps.sh) and ~1.3 GB of disk for the
7B block.
"""

import argparse
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, os.environ.get("BUILD", "build"), "bitplan")
SMOL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
CALIB = os.path.join(ROOT, "data", "calib.txt")
OPTIONS_7B = "4b-g128 4 4 0 128 z8\n3b-g128 3 3 0 128 z8\n"
MPI_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_btl_vader_single_copy_mechanism="none")


def timed(cmd, env):
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if p.returncode:
        sys.exit("failed: %s\n%s" % (" ".join(cmd), p.stderr[-3000:]))
    m = re.search(r"(\d+) ranks: ([\d.]+) MB sent, (\d+)% of the time", p.stdout)
    return wall, (float(m.group(2)) if m else 0.0), (int(m.group(3)) if m else 0)


def on_ranks(ranks, command, args, threads_flag):
    """One process with 2 threads, or `ranks` ranks of 1 thread each."""
    if ranks == 1:
        return [BIN, command] + args + (["--threads", "2"] if threads_flag else []), dict(MPI_ENV, OMP_NUM_THREADS="2")
    return (["mpirun", "-np", str(ranks), "--bind-to", "none", BIN, command] + args +
            (["--threads", "1"] if threads_flag else []), dict(MPI_ENV, OMP_NUM_THREADS="1"))


def measure(model, db, extra, ranks):
    return timed(*on_ranks(ranks, "measure", [model, "--calib", CALIB, "--db", db] + extra, True))


def contents(db):
    with sqlite3.connect(db) as c:
        out = {}
        for (t,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            cols = [r[1] for r in c.execute("PRAGMA table_info(%s)" % t) if r[1] not in ("seconds", "created_at")]
            rows = c.execute("SELECT %s FROM %s" % (", ".join(cols), t)).fetchall()
            out[t] = sorted((r for r in rows if not (t == "meta" and str(r[0]).startswith("claim."))), key=repr)
        return out


def unit_seconds(db):
    """Mean GPTQ seconds of one unit per tensor class (the DB's timings)."""
    with sqlite3.connect(db) as c:
        return c.execute("SELECT t.class, t.rows, t.cols, avg(m.seconds), count(*) FROM measurements m "
                         "JOIN tensors t ON t.id = m.tensor_id GROUP BY t.class ORDER BY t.id").fetchall()


def table(rows, repeats, layers, same_what, same):
    print("| repeat | 1 process, 2 threads (s) | 2 ranks × 1 thread (s) | speed-up | MB sent a layer | time inside MPI calls | %s |"
          % same_what)
    print("|---|---:|---:|---:|---:|---:|---|")
    for rep in range(repeats):
        one = [r for r in rows if r[0] == rep and r[1] == 1][0]
        two = [r for r in rows if r[0] == rep and r[1] == 2][0]
        print("| %d | %.1f | %.1f | %.2f | %.1f | %d %% | %s |" % (rep + 1, one[2], two[2], one[2] / two[2],
                                                                 two[3] / layers, two[4],
                                                                 "yes" if same(one[5], two[5]) else "NO"))


def fresh(path):
    for f in (path, path + "-wal", path + "-shm"):
        if os.path.exists(f):
            os.remove(f)
    return path


def bench(name, model, extra, layers, repeats, work):
    rows = []
    for rep in range(repeats):
        for ranks in (1, 2):
            db = fresh(os.path.join(work, "%s-%d-%d.db" % (name.split(",")[0].replace(" ", "-"), ranks, rep)))
            wall, mb, wait = measure(model, db, extra, ranks)
            rows.append((rep, ranks, wall, mb, wait, db))
            print("  %s, %d rank(s): %.1f s" % (name, ranks, wall), file=sys.stderr)
    print("\n### %s\n" % name)
    table(rows, repeats, layers, "databases equal", lambda a, b: contents(a) == contents(b))
    print("\nMean GPTQ seconds of one unit (one thread), by tensor, from the one-process database:\n")
    print("| tensor | rows × cols | seconds | units |")
    print("|---|---|---:|---:|")
    for cls, r, c, s, n in unit_seconds(rows[0][5]):
        print("| %s | %d × %d | %.2f | %d |" % (cls, r, c, s, n))
    return rows[0][5]


def bench_pack(name, model, db, layers, repeats, work):
    """`bitplan pack` (sequential Hessians) of a 3.5-bpw plan of db."""
    subprocess.run([BIN, "allocate", "--db", db, "--bpw", "3.5"], check=True, capture_output=True)
    rows = []
    for rep in range(repeats):
        for ranks in (1, 2):
            out = fresh(os.path.join(work, "%s-%d-%d.bp" % (name.split(",")[0].replace(" ", "-"), ranks, rep)))
            wall, mb, wait = timed(*on_ranks(ranks, "pack", [model, "--db", db, "-o", out], False))
            rows.append((rep, ranks, wall, mb, wait, out))
            print("  pack %s, %d rank(s): %.1f s" % (name, ranks, wall), file=sys.stderr)
    print("\n#### pack, 3.5 bpw, sequential Hessians\n")

    def same(a, b):
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read()
    table(rows, repeats, layers, "files equal", same)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--only", choices=["smol", "7b"])
    ap.add_argument("--keep", help="folder for the databases and the 7B block (default: a temporary one)")
    a = ap.parse_args()
    work = a.keep or tempfile.mkdtemp(prefix="bench-mpi-")
    os.makedirs(work, exist_ok=True)
    print("# measure on 2 ranks against 1 process — %s, %d cores" % (time.strftime("%Y-%m-%d"), os.cpu_count()))
    if a.only in (None, "smol"):
        name = "SmolLM2-135M, 28 options, --kl-probe, 16 × 512 tokens"
        db = bench(name, SMOL, ["--kl-probe"], 31, a.repeats, work)
        bench_pack(name, SMOL, db, 31, a.repeats, work)
    if a.only in (None, "7b"):
        model = os.path.join(work, "llama2-7b-1L")
        if not os.path.exists(os.path.join(model, "config.json")):
            subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "synth-model.py"), "--shape", "llama2-7b",
                            "--layers", "1", model], check=True)
        opts = os.path.join(work, "opts-7b.txt")
        with open(opts, "w") as f:
            f.write(OPTIONS_7B)
        name = "one Llama-2-7B block + head, 2 options, 8 × 256 tokens"
        db = bench(name, model, ["--options", opts, "--rows", "8", "--ctx", "256"], 2, a.repeats, work)
        bench_pack(name, model, db, 2, a.repeats, work)


if __name__ == "__main__":
    main()
