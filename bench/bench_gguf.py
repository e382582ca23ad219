#!/usr/bin/env python3
"""bench/bench_gguf.py — bitplan's GGUF exports against llama.cpp's own quantizations at
the same file size, everything scored by llama.cpp's llama-perplexity.

    python3 bench/bench_gguf.py            (make bench runs it with BENCH_ONLY=gguf)

Needs the peer's tools (scripts/llama-tools.sh builds them into out/llama.cpp/bin) and
the real model and text (scripts/get-model.sh, scripts/get-text.sh). Work goes to
out/gguf-bench/ and is reused when it is already there (delete it to start over).

  1. The full-precision reference: the model dequantized exactly to F32
     (llama-quantize --allow-requantize ... F32) and its logits on held-out text
     (llama-perplexity --kl-divergence-base).
  2. llama.cpp: an importance matrix from the calibration text (llama-imatrix, the
     same 16 x 512 tokens bitplan measures with), then llama-quantize --imatrix at
     Q2_K, Q3_K_M, Q4_K_M, Q5_K_M, Q6_K.
  3. bitplan: one measurement of the ggml block types with KL probes (measure
     --options ggml --kl-probe), then for each llama.cpp file the best plan whose
     tensors fit in that file's tensor bytes (allocate --size, the head included),
     exported with export-gguf: the same metadata, so the same file size but for
     alignment padding.
  4. What each part contributes: the same per-tensor types as llama.cpp's file, but
     quantized by bitplan (GPTQ inside the block grid): the quantizer alone. The exact
     allocation is the rest.
  5. Every file: llama-perplexity --kl-divergence against the reference (KLD, PPL,
     same top-1), and llama-bench's generation speed (tg64, 2 threads), the pairs
     interleaved, reported as the ratio bitplan / llama.cpp.
Prints one table (markdown) for BENCHMARKS.md.

  GGUF_BENCH_OPTIONS=FILE   bitplan's option set (default: the preset ggml); e.g.
                            bench/ggml-no-q41.txt leaves out Q4_1 and Q5_1, which
                            reproduce SmolLM2's weights (stored as Q4_1) exactly
  GGUF_BENCH_SPEED=0        skip llama-bench
  GGUF_BENCH_TYPES, GGUF_BENCH_CHUNKS   the llama.cpp types, the held-out chunks (20)
"""

import os
import re
import sqlite3
import subprocess
import sys

import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "out", "gguf-bench")
BP = os.environ.get("BITPLAN", os.path.join(ROOT, "build", "bitplan"))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
CALIB = os.path.join(ROOT, "data", "calib.txt")
HELDOUT = os.path.join(ROOT, "data", "heldout.txt")
CHUNKS = int(os.environ.get("GGUF_BENCH_CHUNKS", "20"))  # held-out chunks of 512 tokens
FTYPES = os.environ.get("GGUF_BENCH_TYPES", "Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K").split()
# The option set bitplan measures (a preset or an option file; its name tags bitplan's
# files), and whether to time generation (llama-bench) as well.
OPTIONS = os.environ.get("GGUF_BENCH_OPTIONS", "ggml")
TAG = "" if OPTIONS == "ggml" else "-" + os.path.splitext(os.path.basename(OPTIONS))[0]
SPEED = os.environ.get("GGUF_BENCH_SPEED", "1") != "0"
THREADS = "2"
GGML_FMT = 256  # lay_scale_fmt LAY_FMT_GGML


def sh(*args, log=None):
    args = [str(a) for a in args]
    r = subprocess.run(args, capture_output=True, text=True)
    if log:
        with open(log, "w") as f:
            f.write(r.stdout + r.stderr)
    if r.returncode:
        sys.exit(f"bench_gguf: {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return r.stdout + r.stderr


def llama_bin():
    return sh("bash", os.path.join(ROOT, "scripts", "llama-tools.sh")).strip().splitlines()[-1]


def path(name):
    return os.path.join(OUT, name)


def once(target, make):
    if not os.path.exists(target):
        make()
    return target


# ==== Reading files and plans ====

def tensor_bytes(f):
    """{name: (ggml type, bytes, elements)} of a GGUF file."""
    return {t.name: (int(t.tensor_type), int(t.n_bytes), int(t.n_elements)) for t in gguf.GGUFReader(f).tensors}


def newest_plan(db):
    with sqlite3.connect(db) as c:
        return c.execute("SELECT max(id) FROM plans").fetchone()[0]


def plan_like(db, f):
    """A plan with the per-tensor types of llama.cpp's file f (the quantizer ablation).
    The database is bitplan's own; a plan is rows in plans and plan_choices."""
    types = tensor_bytes(f)
    with sqlite3.connect(db) as c:
        calib = c.execute("SELECT max(id) FROM calibrations WHERE status = 'done'").fetchone()[0]
        tensors = c.execute("SELECT t.id, t.name FROM tensors t").fetchall()
        opts = {f_ - GGML_FMT: i for i, f_ in c.execute("SELECT id, scale_fmt FROM options WHERE scale_fmt >= 256")}
        choices, bits, weights = [], 0, 0
        for tid, name in tensors:
            ty, nbytes, n = types[name]
            if ty not in opts:
                return None  # a type bitplan does not offer (llama.cpp's IQ fallbacks)
            m = c.execute("SELECT bits FROM measurements WHERE calib_id = ? AND tensor_id = ? AND option_id = ?",
                          (calib, tid, opts[ty])).fetchone()
            assert m and m[0] == 8 * nbytes, (name, ty)
            choices.append((tid, opts[ty], m[0]))
            if name.startswith("blk."):
                bits, weights = bits + m[0], weights + n
        cur = c.execute("INSERT INTO plans (calib_id, kind, target, metric, achieved_bpw, file_bpw, total_bits, objective,"
                        " gap, solve_seconds, n_dropped, command) VALUES (?, 'bpw', ?, 'rel_err', ?, ?, ?, 0, 0, 0, 0, ?)",
                        (calib, bits / weights, bits / weights, bits / weights, bits, "bench_gguf: types of " + f))
        pid = cur.lastrowid
        c.executemany("INSERT INTO plan_choices (plan_id, tensor_id, option_id, bits, predicted) VALUES (?, ?, ?, ?, 0)",
                      [(pid, t, o, b) for t, o, b in choices])
    return pid


# ==== Scoring ====

def kld_of(lbin, f, base):
    out = sh(os.path.join(lbin, "llama-perplexity"), "-m", f, "-f", HELDOUT, "-c", 512, "--chunks", CHUNKS,
             "-t", THREADS, "--kl-divergence-base", base, "--kl-divergence")
    num = r"([0-9.]+)\s*±\s*([0-9.]+)"
    kld = re.search(r"Mean\s+KLD:\s*" + num, out)
    ppl = re.search(r"Mean PPL\(Q\)\s*:\s*" + num, out)
    top = re.search(r"Same top p:\s*" + num, out)
    if not (kld and ppl and top):
        sys.exit("bench_gguf: cannot read llama-perplexity's KL divergence output:\n" + out[-3000:])
    return {"kld": float(kld[1]), "kld_se": float(kld[2]), "ppl": float(ppl[1]), "top1": float(top[1])}


def tg_speed(lbin, files, reps=3):
    """Generation tokens/s of each file, the files interleaved rep by rep."""
    got = {f: [] for f in files}
    for _ in range(reps):
        for f in files:
            out = sh(os.path.join(lbin, "llama-bench"), "-m", f, "-p", 0, "-n", 64, "-t", THREADS, "-r", 1, "-o", "csv")
            row = [l for l in out.splitlines() if l.startswith('"')][-1]
            got[f].append(float(row.split('","')[-2].strip('"')))
    return {f: sorted(v)[len(v) // 2] for f, v in got.items()}


def main():
    os.makedirs(OUT, exist_ok=True)
    lbin = llama_bin()
    tool = lambda name: os.path.join(lbin, name)  # noqa: E731
    f32 = once(path("f32.gguf"), lambda: sh(tool("llama-quantize"), "--allow-requantize", MODEL, path("f32.gguf"), "F32"))
    imat = once(path("imatrix.gguf"), lambda: sh(tool("llama-imatrix"), "-m", f32, "-f", CALIB, "-o", path("imatrix.gguf"),
                                                   "-c", 512, "--chunks", 16, "-t", THREADS))
    base = once(path("base.kld"), lambda: sh(tool("llama-perplexity"), "-m", f32, "-f", HELDOUT, "-c", 512, "--chunks",
                                             CHUNKS, "-t", THREADS, "--kl-divergence-base", path("base.kld")))
    db = path(f"ggml{TAG}.db")
    print("measuring (resumable) ...", file=sys.stderr)
    sh(BP, "measure", MODEL, "--calib", CALIB, "--db", db, "--options", OPTIONS, "--kl-probe", log=path(f"measure{TAG}.log"))
    rows = []
    for ft in FTYPES:
        lf = once(path(f"llama-{ft}.gguf"), lambda: sh(tool("llama-quantize"), "--imatrix", imat, f32, path(f"llama-{ft}.gguf"), ft))
        bf = path(f"bitplan{TAG}-{ft}.gguf")
        if not os.path.exists(bf):
            size = sum(v[1] for v in tensor_bytes(lf).values())  # every tensor's bytes: what --size counts
            sh(BP, "allocate", "--db", db, "--size", size)
            sh(BP, "export-gguf", MODEL, "--db", db, "--plan", newest_plan(db), "-o", bf, log=path(f"export{TAG}-{ft}.log"))
        sf = path(f"same-types{TAG}-{ft}.gguf")
        if not os.path.exists(sf):
            pid = plan_like(db, lf)
            if pid:
                sh(BP, "export-gguf", MODEL, "--db", db, "--plan", pid, "-o", sf)
        res = {k: kld_of(lbin, f, base) for k, f in (("llama", lf), ("types", sf), ("bitplan", bf)) if os.path.exists(f)}
        res.setdefault("types", {"kld": float("nan")})
        speed = tg_speed(lbin, [lf, bf]) if SPEED else {lf: float("nan"), bf: float("nan")}
        rows.append((ft, os.path.getsize(lf), os.path.getsize(bf), res, speed[lf], speed[bf]))
        print(ft, rows[-1], file=sys.stderr)
    print("| llama.cpp type | size llama.cpp / bitplan (MiB) | KLD llama.cpp | KLD same types, bitplan's quantizer | "
          "KLD bitplan | KLD ratio | PPL llama.cpp / bitplan | same top-1 % llama.cpp / bitplan | tg t/s bitplan / llama.cpp |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ft, ls, bs, r, tl, tb in rows:
        print(f"| {ft} | {ls / 2**20:.2f} / {bs / 2**20:.2f} ({100 * (bs / ls - 1):+.2f}%) | {r['llama']['kld']:.5f} | "
              f"{r['types']['kld']:.5f} | {r['bitplan']['kld']:.5f} | {r['bitplan']['kld'] / r['llama']['kld']:.3f} | "
              f"{r['llama']['ppl']:.3f} / {r['bitplan']['ppl']:.3f} | {r['llama']['top1']:.2f} / {r['bitplan']['top1']:.2f} | "
              f"{tb / tl:.3f} |")


if __name__ == "__main__":
    main()
