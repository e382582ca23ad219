#!/usr/bin/env python3
"""bench/bench_scale.py — time and memory of every command on a 7B-shaped model.

What it is for: bitplan's memory must grow with one transformer block, not with
the model, and a 7B measurement must take a time a person can plan around. This
runs the real commands on a synthetic Llama-2-7B (scripts/synth-model.py: random
weights, so quality figures mean nothing; time and memory do) and reports, for
each, the wall time, the peak anonymous memory (RssAnon: what the process
allocated) and the peak resident set (VmHWM: that plus the model file's pages it
touched), sampled from /proc every few milliseconds.

  bench_scale.py [--model DIR] [--work DIR] [--stages S,S...]

Stages (default: all, in this order):
  block     measure with the default 28 options until layer 0 is done (then the
            run is stopped: it would resume), giving the per-block peak memory,
            the forward time of a layer and the GPTQ units' seconds by shape,
            hence the projected whole-model measurement time for 7B and 70B
  measure1  a whole measurement at one option (4b-g128, 4 rows x 256 tokens): the
            walk over every layer, so that pack has a plan
  pack      pack --uniform 4b-g128 (4.0+ bpw) with sequential Hessians
  eval      eval of the packed file (2 chunks of 512) and of the F16 model (1)
  generate  generate 32 tokens from the packed file, against the read bandwidth
            that bench_matvec measures in the same run

Never a test: nothing here asserts on time. Prints Markdown.
"""

import argparse
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BUILD", "build")
BIN = os.path.join(ROOT, BUILD, "bitplan")
CALIB = os.path.join(ROOT, "data", "calib.txt")
HELDOUT = os.path.join(ROOT, "data", "heldout.txt")
GIB = 1024.0 ** 3


class Run:
    """A command with its wall time and peak memory, sampled from /proc."""

    def __init__(self, args, stop_when=None):
        self.args = [str(a) for a in args]
        self.stop_when = stop_when  # called while it runs; True stops it (SIGTERM)
        self.anon = self.hwm = 0    # KiB
        self.stopped = False

    def _sample(self, p):
        path = "/proc/%d/status" % p.pid
        last_check = 0
        while p.poll() is None:
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            self.anon = max(self.anon, int(line.split()[1]))
                        elif line.startswith("VmHWM:"):
                            self.hwm = max(self.hwm, int(line.split()[1]))
            except (FileNotFoundError, ProcessLookupError):
                break
            if self.stop_when and time.time() - last_check > 2:
                last_check = time.time()
                if self.stop_when():
                    self.stopped = True
                    p.terminate()
            time.sleep(0.005)

    def go(self, err_path=None):
        """Runs it; stderr goes to err_path (read while it runs) or a pipe."""
        self.t0 = time.time()
        err = open(err_path, "w") if err_path else subprocess.PIPE
        p = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=err, text=True)
        t = threading.Thread(target=self._sample, args=(p,))
        t.start()
        self.out, self.err = p.communicate()
        t.join()
        if err_path:
            err.close()
            with open(err_path) as f:
                self.err = f.read()
        self.seconds = time.time() - self.t0
        if p.returncode != 0 and not self.stopped:
            sys.exit("bench_scale: %s failed:\n%s" % (" ".join(self.args), self.err))
        return self

    def row(self, what):
        return "| %s | %.0f s | %.2f GiB | %.2f GiB |" % (what, self.seconds, self.anon / GIB * 1024,
                                                         self.hwm / GIB * 1024)


def count(db, sql):
    try:
        with sqlite3.connect(db, timeout=30) as c:
            return c.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def stage_block(a, out):
    """Layer 0 under the default options, stopped once its 196 units are written.
    The progress line (--progress, to a file) says when layer 0's forward began."""
    db = os.path.join(a.work, "block.db")
    errf = os.path.join(a.work, "block.progress")
    for f in (db, db + "-wal", db + "-shm"):
        if os.path.exists(f):
            os.remove(f)
    layer0 = "SELECT count(*) FROM measurements m JOIN tensors t ON t.id = m.tensor_id WHERE t.layer = 0"
    seen = {}

    def done():
        with open(errf) as f:
            text = f.read()
        if "forward layer   0" in text and "forward" not in seen:
            seen["forward"] = time.time()
        return count(db, layer0) >= 7 * 28

    r = Run([BIN, "measure", a.model, "--calib", CALIB, "--db", db, "--threads", 2, "--progress"] + a.extra,
            stop_when=done)
    r.go(errf)
    out.append(r.row("measure, layer 0 of %d, 28 options, 16 x 512 tokens %s" % (a.layers, " ".join(a.extra))))
    a.setup_seconds = seen.get("forward", r.t0) - r.t0
    a.block_seconds = r.seconds - a.setup_seconds
    with sqlite3.connect(db) as c:
        by_shape = c.execute(
            "SELECT t.rows || 'x' || t.cols, count(*), sum(m.seconds) FROM measurements m "
            "JOIN tensors t ON t.id = m.tensor_id WHERE t.layer = 0 GROUP BY t.rows, t.cols").fetchall()
    a.units = {shape: (n, s) for shape, n, s in by_shape}


def project(a, lines):
    """Whole-model measurement time from layer 0's units (one core each, two at a
    time) and its wall time, for 7B (32 layers) and a 70B block (8192 x 28672)
    scaled by the cost of GPTQ, rows x cols^2."""
    lines.append("")
    lines.append("| tensor (rows x cols) | units | GPTQ seconds per unit (one core) | GPTQ units/s (2 cores) |")
    lines.append("|---|---|---|---|")
    work = 0.0
    for shape, (n, s) in sorted(a.units.items()):
        lines.append("| %s | %d | %.2f | %.3f |" % (shape, n, s / n, 2 * n / s))
        work += s
    per_layer = a.block_seconds
    lines.append("")
    lines.append("Setup (hashing the 13.8 GB file, checking every weight, tokenizing the calibration text) "
                 "took %.0f s; layer 0 took %.0f s of wall time (forward over the calibration rows, Hessians, "
                 "every unit with its RTN comparison; %.0f core-seconds inside GPTQ itself). 32 layers and the "
                 "head (counted as one more) project to **%.1f h** for the 7B measurement with the default "
                 "options." % (a.setup_seconds, per_layer, work, (a.setup_seconds + per_layer * 33) / 3600))
    # GPTQ cost per unit grows as rows x cols^2: a 70B block against a 7B block
    b7 = 4 * 4096 ** 3 + 2 * 11008 * 4096 ** 2 + 4096 * 11008 ** 2
    b70 = 2 * 8192 ** 3 + 2 * 1024 * 8192 ** 2 + 2 * 28672 * 8192 ** 2 + 8192 * 28672 ** 2
    lines.append("A 70B block costs %.1fx a 7B block in GPTQ work (rows x cols^2) and has 80 layers: "
                 "about **%.0f h** on these two cores." % (b70 / b7, per_layer * b70 / b7 * 81 / 3600))
    lines.append("(The head, 49152 x 4096, is 0.7 of a block in GPTQ work, rows x cols^2; counting it as a block rounds up.)")


def stage_measure1(a, out):
    db = os.path.join(a.work, "one.db")
    opts = os.path.join(a.work, "one.txt")
    with open(opts, "w") as f:
        f.write("# name lo hi share group fmt\n4b-g128 4 4 0 128 z8\n")
    r = Run([BIN, "measure", a.model, "--calib", CALIB, "--db", db, "--options", opts, "--rows", 4, "--ctx", 256,
             "--threads", 2]).go()
    out.append(r.row("measure, all %d tensors at one option, 4 x 256 tokens" % (7 * a.layers + 1)))


def stage_pack(a, out):
    db = os.path.join(a.work, "one.db")
    bp = os.path.join(a.work, "7b-4.0.bp")
    r = Run([BIN, "pack", a.model, "--db", db, "--uniform", "4b-g128", "-o", bp]).go()
    out.append(r.row("pack --uniform 4b-g128 (%.2f GiB file)" % (os.path.getsize(bp) / GIB)))


def stage_eval(a, out):
    bp = os.path.join(a.work, "7b-4.0.bp")
    r = Run([BIN, "eval", bp, "--text", HELDOUT, "--ctx", 512, "--chunks", 2]).go()
    out.append(r.row("eval packed 4.0 bpw, 2 chunks of 512"))
    r = Run([BIN, "eval", a.model, "--text", HELDOUT, "--ctx", 512, "--chunks", 1]).go()
    out.append(r.row("eval F16 model, 1 chunk of 512"))


def stage_generate(a, out):
    bp = os.path.join(a.work, "7b-4.0.bp")
    r = Run([BIN, "generate", bp, "--prompt", "The quick brown fox", "-n", 32, "--temp", 0]).go()
    out.append(r.row("generate 32 tokens, packed 4.0 bpw"))
    m = re.search(r"([0-9.]+) tokens/s", r.err + r.out)
    bw = subprocess.run([os.path.join(ROOT, BUILD, "bench", "bench_matvec"), "--quick", "--bits", "4"],
                        capture_output=True, text=True).stdout
    a.generate_text = (r.err + r.out).strip().splitlines()[-3:]
    a.bandwidth_text = bw.strip().splitlines()[-6:]  # its table: GB/s of the product and the read baseline
    if m:
        a.gen_tps = float(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "out", "llama2-7b"))
    ap.add_argument("--work", default=os.path.join(ROOT, "out", "scale"))
    ap.add_argument("--stages", default="block,measure1,pack,eval,generate")
    ap.add_argument("--fast-error", action="store_true", help="measure with --fast-error")
    a = ap.parse_args()
    a.extra = ["--fast-error"] if a.fast_error else []
    with open(os.path.join(a.model, "config.json")) if os.path.exists(os.path.join(a.model, "config.json")) else \
            open(os.devnull) as f:
        text = f.read()
    m = re.search(r'"num_hidden_layers"\s*:\s*(\d+)', text)
    a.layers = int(m.group(1)) if m else 32
    os.makedirs(a.work, exist_ok=True)
    if not os.path.exists(os.path.join(a.model, "model.safetensors")):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "synth-model.py"), "--shape", "llama2-7b",
                        a.model], check=True)
    stages = a.stages.split(",")
    out = ["| command | wall | peak anonymous | peak resident (with file pages) |", "|---|---|---|---|"]
    funcs = {"block": stage_block, "measure1": stage_measure1, "pack": stage_pack, "eval": stage_eval,
             "generate": stage_generate}
    for s in stages:
        funcs[s](a, out)
        print("\n".join(out), flush=True)
        print(flush=True)
    if "block" in stages:
        lines = []
        project(a, lines)
        print("\n".join(lines))
    if "generate" in stages:
        print("\n".join(getattr(a, "generate_text", [])))
        print("\n".join(getattr(a, "bandwidth_text", [])))


if __name__ == "__main__":
    main()
