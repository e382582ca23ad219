#!/usr/bin/env python3
"""bench/bench_lut.py — bitplan's batch-1 generation and prompt speed against
llama.cpp's llama-bench on the same model, at about the same bytes per token, in one
run with the pairs interleaved, each against the read bandwidth measured in that run.

    python3 bench/bench_lut.py --bp A.bp --bp B.bp [--types Q3_K_M,Q4_K_M] [--rounds 3]
    python3 bench/bench_lut.py --bp A.bp --gguf A.Q2_K.gguf [--int8-gen-only]   (another model)
    python3 bench/bench_lut.py --bp A.bp --gguf A.Q2_K.gguf --prompt-only [--bp-base OLD/bitplan]
        [--llama-bench-dir DIR]   (DIR/llama-bench: another build of the peer, AVX2 only, say)
    BENCH_ONLY=lut BENCH_LUT_FILES="A.bp B.bp" make bench

Needs build/bitplan, build/bench/bench_matvec and the peer's tools
(scripts/llama-tools.sh builds them into out/llama.cpp/bin). llama.cpp's files are
made from the real model (models/SmolLM2-135M-Instruct.Q4_1.gguf) by llama-quantize
--allow-requantize through F32 into out/lut-bench/, and reused when there; the
bitplan files are given (bitplan pack ... --plan N). --gguf names llama.cpp's files
instead, for another model: the 7B-shaped synthetic one, for instance
(scripts/synth-model.py, scripts/synth-gguf.py, llama-quantize, bitplan pack --rtn:
BENCHMARKS.md has the commands).

Each round runs, in turn: bench_matvec --bandwidth; every bitplan file through
`bitplan generate`, twice, as llama-bench measures: 64 greedy tokens after a 1-token
prompt (tg64), and a prompt of about 512 tokens of data/heldout.txt (pp512), 2
threads, with the lookup-table kernels where the kernel set takes them (BITPLAN_LUT
unset; with --lut-all at every width), then with BITPLAN_LUT=0 (the int8 kernels
alone; with --int8-gen-only only their generation, as batches never take the
lookups); every llama.cpp file
through llama-bench (-p 512 -n 64 -t 2 -lm none: no mmap, -r 1). The table gives
the median over rounds: generation tokens/s, the GB/s that means (the file's tensor
bytes but an untied embedding's, of which a token reads one row: SmolLM2's head is its
tied embedding, read whole), that over the
median read bandwidth of the same run, and prompt tokens/s. --prompt-only times
prompts alone (bitplan once a file, llama-bench -p 512 -n 0), with --bp-base another
bitplan build's prompts beside them (an older commit's, say). Never a test: nothing
here asserts on time. Prints Markdown.
"""

import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BUILD", "build")
BP = os.path.join(ROOT, BUILD, "bitplan")
MATVEC = os.path.join(ROOT, BUILD, "bench", "bench_matvec")
LLAMA = os.path.join(ROOT, "out", "llama.cpp", "bin")
LLAMA_BENCH_DIR = [LLAMA]  # --llama-bench-dir: llama-bench of another build (AVX2 only, say)
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
HELDOUT = os.path.join(ROOT, "data", "heldout.txt")
OUT = os.path.join(ROOT, "out", "lut-bench")
PROMPT_CHARS = 1880  # about 512 SmolLM2 tokens of held-out prose; the run prints the count


def run(args, env=None):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, errors="replace", env=env)
    if p.returncode:
        sys.exit("bench_lut: %s failed:\n%s" % (" ".join(map(str, args)), p.stderr[-2000:]))
    return p


def tensor_bytes(path):
    """Bytes a token reads of a file's tensors: all of them, but for an untied
    embedding (the file has a separate head, output.weight) only one row of which is
    read. GGUF through gguf's reader, safetensors (.bp) by its header's data offsets."""
    with open(path, "rb") as f:
        magic = f.read(4)
        if magic == b"GGUF":
            import gguf
            sizes = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(path).tensors}
        else:
            f.seek(0)
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            sizes = {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}
    untied = any(k.startswith("output.weight") for k in sizes)
    return sum(v for k, v in sizes.items() if not (untied and k.startswith("token_embd.weight")))


def llama_file(qtype):
    os.makedirs(OUT, exist_ok=True)
    f32 = os.path.join(OUT, "smol-f32.gguf")
    if not os.path.exists(f32):
        run([os.path.join(LLAMA, "llama-quantize"), "--allow-requantize", MODEL, f32, "F32"])
    out = os.path.join(OUT, "smol-%s.gguf" % qtype)
    if not os.path.exists(out):
        run([os.path.join(LLAMA, "llama-quantize"), f32, out, qtype])
    return out


def bandwidth():
    out = run([MATVEC, "--bandwidth"]).stdout
    return float(re.search(r"2 threads: ([\d.]+) GB/s", out).group(1))


def generate(path, prompt, n, lut, bp=BP):
    """lut: None, the kernel set's choice (BITPLAN_LUT unset); otherwise BITPLAN_LUT's value."""
    env = dict(os.environ, OMP_NUM_THREADS="2")
    env.pop("BITPLAN_LUT", None)
    if lut is not None:
        env["BITPLAN_LUT"] = lut
    err = run([bp, "generate", path, "--prompt", prompt, "-n", n, "--temp", 0], env).stderr
    m = re.search(r"prompt: (\d+) tokens, ([\d.]+) tokens/s; generation: (\d+) tokens, ([\d.]+) tokens/s", err)
    if not m:
        sys.exit("bench_lut: no speed line from bitplan generate:\n" + err[-1000:])
    return int(m.group(1)), float(m.group(2)), int(m.group(3)), float(m.group(4))


def bitplan_speed(path, prompt, lut, with_prompt=True):
    """(prompt tokens, prompt tokens/s or NaN, generation tokens/s)."""
    _, _, n_gen, tg = generate(path, "The", 64, lut)
    if n_gen != 64:
        sys.exit("bench_lut: %s stopped after %d tokens" % (path, n_gen))
    if not with_prompt:
        return 0, float("nan"), tg
    n, pp, _, _ = generate(path, prompt, 1, lut)
    return n, pp, tg


def llama_speed(path, gen=True):
    out = run([os.path.join(LLAMA_BENCH_DIR[0], "llama-bench"), "-m", path, "-p", 512, "-n", 64 if gen else 0, "-t", 2,
               "-lm", "none", "-r", 1, "-o", "json"]).stdout
    rows = json.loads(out)
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] and not r["n_gen"])
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] and not r["n_prompt"]) if gen else float("nan")
    return pp, tg


def prompt_only(a, prompt, llama_files):
    """Prompt tokens/s of each bitplan file (and of --bp-base's build), and llama.cpp's pp512, interleaved."""
    runs = [(p, "bitplan", BP) for p in a.bp] + ([(p, "bitplan " + a.bp_base, a.bp_base) for p in a.bp]
                                                 if a.bp_base else []) + [(g, what, None) for g, what in llama_files]
    speeds, n_tokens = {i: [] for i in range(len(runs))}, 0
    for _ in range(a.rounds):
        for i, (path, _, bp) in enumerate(runs):
            if bp is None:
                speeds[i].append(llama_speed(path, gen=False)[0])
            else:
                n, pp, _, _ = generate(path, prompt, 1, None, bp)
                n_tokens = max(n_tokens, n)
                speeds[i].append(pp)
    print("bitplan prompt: %d tokens; llama.cpp: pp512. Medians of %d rounds, 2 threads.\n" % (n_tokens, a.rounds))
    print("| file | run | MB/token | prompt tok/s | rounds |")
    print("|---|---|---:|---:|---|")
    for i, (path, what, _) in enumerate(runs):
        print("| %s | %s | %.1f | %.2f | %s |" % (os.path.basename(path), what, tensor_bytes(path) / 1e6,
                                               statistics.median(speeds[i]), ", ".join("%.2f" % v for v in speeds[i])))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bp", action="append", required=True, help="a bitplan packed file (repeatable)")
    ap.add_argument("--types", default="Q2_K,Q3_K_M,Q4_K_M", help="llama.cpp types, comma-separated")
    ap.add_argument("--gguf", action="append", help="a llama.cpp file to run instead of --types' (repeatable)")
    ap.add_argument("--int8-gen-only", action="store_true",
                    help="the int8 kernels' generation only (batches never take the lookups: the prompt is the same path)")
    ap.add_argument("--prompt-only", action="store_true", help="prompt speed alone (pp512)")
    ap.add_argument("--bp-base", help="with --prompt-only: another bitplan binary to time the same files with")
    ap.add_argument("--lut-all", action="store_true",
                    help="the lookup run with BITPLAN_LUT=all (every width by lookup), for a kernel set whose own "
                         "choice takes none (AVX-512)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--llama-bench-dir", help="the folder of another llama-bench build to time llama.cpp's files with")
    a = ap.parse_args()
    if a.llama_bench_dir:
        LLAMA_BENCH_DIR[0] = a.llama_bench_dir
    with open(HELDOUT, encoding="utf-8") as f:
        prompt = f.read()[:PROMPT_CHARS]
    if a.prompt_only:
        prompt_only(a, prompt, [(g, "llama.cpp") for g in a.gguf] if a.gguf else
                    [(llama_file(t), "llama.cpp " + t) for t in a.types.split(",") if t])
        return
    lut_run = ("all", "bitplan, lookup kernels (BITPLAN_LUT=all)") if a.lut_all else (None, "bitplan, lookup kernels")
    files = [(p, lut_run[1], lut_run[0]) for p in a.bp] + [(p, "bitplan, int8 kernels", "0") for p in a.bp]
    files += [(g, "llama.cpp", False) for g in a.gguf] if a.gguf else \
        [(llama_file(t), "llama.cpp " + t, False) for t in a.types.split(",") if t]
    speeds = {i: [] for i in range(len(files))}
    bws, prompt_tokens = [], 0
    for _ in range(a.rounds):
        bws.append(bandwidth())
        for i, (path, _, lut) in enumerate(files):
            if lut is False:
                speeds[i].append(llama_speed(path))
            else:
                n, pp, tg = bitplan_speed(path, prompt, lut, lut != "0" or not a.int8_gen_only)
                prompt_tokens = max(prompt_tokens, n)
                speeds[i].append((pp, tg))
    bw = statistics.median(bws)
    print("Read bandwidth (bench_matvec --bandwidth, 2 threads): median %.1f GB/s of %s" %
          (bw, ", ".join("%.1f" % b for b in bws)))
    print("bitplan prompt: %d tokens; llama.cpp: pp512. Medians of %d rounds, 2 threads.\n" % (prompt_tokens, a.rounds))
    print("| file | kernels | MB/token | generation tok/s | GB/s | / bandwidth | prompt tok/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for i, (path, what, _) in enumerate(files):
        mb = tensor_bytes(path) / 1e6
        pp = statistics.median(s[0] for s in speeds[i])
        tg = statistics.median(s[1] for s in speeds[i])
        print("| %s | %s | %.1f | %.2f | %.2f | %.2f | %s |" %
              (os.path.basename(path), what, mb, tg, mb * tg / 1e3, mb * tg / 1e3 / bw,
               "(the same path)" if pp != pp else "%.1f" % pp))


if __name__ == "__main__":
    main()
