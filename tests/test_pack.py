"""tests/test_pack.py — `bitplan pack` and packed files end to end, against an
independent reading of pack/FORMAT.md written here in Python.

On a tiny model (tests/tiny_model.py) measured with a small option set (plain,
mixed-width, symmetric, several group sizes), allocated and packed:
  (a) every quantized tensor's four (three) parts add up to lay_tensor_bits / 8,
      computed here from the formula in layout/layout.h, and the file's header says
      what FORMAT.md says (dtypes, shapes, alignment, metadata);
  (b) a NumPy decoder of the bit planes, scales, zeros and permutation gives
      exactly the weights the runtime decodes (get_row), and the packed model's
      logits (packed CPU kernels, int8 activations) agree with the dense logits of
      those dequantized weights written as an F32 GGUF: mean KL < 1e-3 nats and
      top-1 agreement > 97%.
      Why that tolerance: the kernels quantize each activation group to int8
      (runtime/qkernels.h), a relative error of up to 1/254 per element; measured
      here the two logit sets differ by KL ~1e-5..1e-4, so 1e-3 leaves room for
      other random draws while a wrong scale, zero or permutation gives KL > 0.1;
  (c) the real model at one plan: (a) for every tensor (skipped when the model or
      a measurement database is absent);
  (d) broken files: truncated, a part's shape edited, an option that is invalid
      (bits 9) or unknown, a missing part, a bad permutation: one-line errors;
  (e) kill -9 during `bitplan pack` leaves no file under the output name.

What it must never do: use bitplan's own decoder as the reference.
"""

import json
import os
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import xxhash

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BITPLAN_BUILD", "build")
BIN = os.path.join(ROOT, BUILD, "bitplan")
TOOL = os.path.join(ROOT, BUILD, "tests", "tool_pack")
REAL_MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

OPTIONS = """\
# name          lo hi share group fmt
2b-g64          2  2  0     64    z8
"3b/5b 50% g64" 3  5  50%   64    z8
3b-g32-sym      3  3  0     32    sym
4b-g128         4  4  0     128   z8
"6b/7b 25% g32" 6  7  25%   32    z8
8b-g32          8  8  0     32    z8
"""
OPTION_NAMES = ["2b-g64", "3b/5b 50% g64", "3b-g32-sym", "4b-g128", "6b/7b 25% g32", "8b-g32"]
# dim 96 gives a short last group for g64 (96 = 64 + 32): the format allows it
MODEL = dict(n_layers=2, dim=96, hidden=160, n_heads=4, n_kv_heads=2, vocab=512, seed=5)


# ==== The format, read independently ====

def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return n, header


def read_tensors(path):
    """name -> numpy array (by the header's dtype and shape), and the metadata."""
    n, header = read_header(path)
    data = np.fromfile(path, dtype=np.uint8, offset=8 + n)
    dt = {"U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "F16": np.float16, "F32": np.float32}
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        out[name] = data[b:end].view(dt[e["dtype"]]).reshape(e["shape"])
    return out, header.get("__metadata__", {})


def n_groups(o, cols):
    return (cols + o["group"] - 1) // o["group"]


def n_hi(o, cols):
    if o["bits_hi"] == o["bits_lo"]:
        return 0
    n = n_groups(o, cols)
    k = int(np.floor(np.float64(np.float32(o["hi_share"])) * n + 0.5))
    return min(max(k, 0), n)


def group_bits(o, cols, g):
    return o["bits_hi"] if g < n_hi(o, cols) else o["bits_lo"]


def group_cols(o, cols, g):
    return min(o["group"], cols - g * o["group"])


def row_bytes(o, cols):
    return sum(group_cols(o, cols, g) // 32 * group_bits(o, cols, g) * 4 for g in range(n_groups(o, cols)))


def tensor_bits(o, rows, cols):
    """lay_tensor_bits from layout/layout.h: values + fp16 scales + uint8 zeros + perm."""
    ng = n_groups(o, cols)
    zeros = rows * ng if o["scale_fmt"] == 0 else 0
    perm = cols * (2 if cols <= 65536 else 4)
    return 8 * (rows * row_bytes(o, cols) + rows * ng * 2 + zeros + perm)


def unpack_chunk(bits, b):
    """32 values from the bit planes of FORMAT.md (b: the chunk's bytes)."""
    if bits == 8:
        return b.astype(np.int64)
    q = np.zeros(32, np.int64)
    shift, pos = 0, 0
    for p in (4, 2, 1):
        if not bits & p:
            continue
        plane = b[pos:pos + p * 4].astype(np.int64)
        if p == 4:   # byte k: value k (low nibble), k + 16 (high nibble)
            v = np.concatenate([plane & 15, plane >> 4])
        elif p == 2:  # byte k: values k, k + 8, k + 16, k + 24
            v = np.concatenate([(plane >> s) & 3 for s in (0, 2, 4, 6)])
        else:         # byte k: values 8k .. 8k + 7 at bits 0..7
            v = np.array([(plane[i // 8] >> (i % 8)) & 1 for i in range(32)])
        q |= v << shift
        shift += p
        pos += p * 4
    return q


def decode(parts, o, rows, cols):
    """W[rows][cols] in the original column order: s * (q - z) at column perm[j]."""
    values, scales = parts["qvalues"], parts["qscales"].astype(np.float32)
    zeros, perm = parts.get("qzeros"), parts["qperm"].astype(np.int64)
    ng = n_groups(o, cols)
    w = np.zeros((rows, cols), np.float32)
    for r in range(rows):
        off = 0
        for g in range(ng):
            bits, gc = group_bits(o, cols, g), group_cols(o, cols, g)
            q = np.concatenate([unpack_chunk(bits, values[r, off + c * bits * 4: off + (c + 1) * bits * 4])
                                for c in range(gc // 32)])
            off += gc // 32 * bits * 4
            z = np.float32(zeros[r, g]) if zeros is not None else np.float32(1 << (bits - 1))
            j0 = g * o["group"]
            w[r, perm[j0:j0 + gc]] = scales[r, g] * (q.astype(np.float32) - z)
    return w


def parts_of(tensors, name):
    return {k: tensors[name + "." + k] for k in ("qvalues", "qscales", "qzeros", "qperm") if name + "." + k in tensors}


# ==== Running bitplan ====

def run(cmd, args, check=True, **kw):
    p = subprocess.run([BIN, cmd] + [str(a) for a in args], capture_output=True, text=True, errors="replace", **kw)
    if check and p.returncode != 0:
        raise AssertionError("bitplan %s failed: %s" % (cmd, p.stderr))
    return p


def tool(args):
    p = subprocess.run([TOOL] + [str(a) for a in args], capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError("tool_pack failed: %s" % p.stderr)


calib_text = tiny_model.calib_text


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    for b in (BIN, TOOL):
        if not os.path.exists(b):
            pytest.fail("%s is missing: build first (make BUILD=%s all %s)" % (b, BUILD, TOOL))
    d = tmp_path_factory.mktemp("pack")
    w = {"dir": d, "opts": d / "opts.txt", "calib": d / "calib.txt", "model": d / "tiny.gguf", "db": d / "tiny.db"}
    w["opts"].write_text(OPTIONS)
    w["calib"].write_text(calib_text(1))
    w["weights"] = tiny_model.write_tiny_gguf(str(w["model"]), **MODEL)
    run("measure", [w["model"], "--calib", w["calib"], "--db", w["db"], "--options", w["opts"], "--rows", 4, "--ctx", 64,
                    "--threads", 2])
    run("allocate", ["--db", w["db"], "--bpw", 4.0, "--head-bits", 0])
    w["packed"] = d / "tiny.bp"
    run("pack", [w["model"], "--db", w["db"], "-o", w["packed"]])
    return w


def plan_options(packed):
    _, meta = read_tensors(packed)
    return json.loads(meta["options"])


# ==== (a) sizes ====

def check_sizes(path, expect_tensors=None):
    tensors, meta = read_tensors(path)
    assert meta["format"] == "bitplan-packed" and meta["format_version"] == "2"
    cfg = json.loads(meta["config"])
    opts = json.loads(meta["options"])
    if expect_tensors is not None:
        assert sorted(opts) == sorted(expect_tensors)
    for name, o in opts.items():
        parts = parts_of(tensors, name)
        rows, cols = parts["qvalues"].shape[0], parts["qperm"].shape[0]
        assert ("qzeros" in parts) == (o["scale_fmt"] == 0), name
        assert sum(p.nbytes for p in parts.values()) * 8 == tensor_bits(o, rows, cols) == o["bits"], name
        assert parts["qvalues"].shape == (rows, row_bytes(o, cols))
        assert parts["qscales"].shape == (rows, n_groups(o, cols))
        assert name not in tensors  # quantized tensors are only their parts
    for name, t in tensors.items():
        if name.rsplit(".", 1)[-1] in ("qvalues", "qscales", "qzeros", "qperm"):
            continue
        assert t.dtype == (np.float32 if t.ndim == 1 else np.float16), name
    return tensors, cfg, opts


def test_sizes_are_the_cost_function(work):
    tensors, cfg, opts = check_sizes(work["packed"])
    assert cfg["dim"] == MODEL["dim"] and cfg["n_layers"] == MODEL["n_layers"] and cfg["tied_embeddings"] == 1
    assert len(opts) == MODEL["n_layers"] * 7 + 1 and "token_embd.weight" in opts  # tied: the head is quantized
    n, header = read_header(work["packed"])
    assert (8 + n) % 64 == 0
    ends = sorted((e["data_offsets"][0], e["data_offsets"][1], e["dtype"]) for k, e in header.items() if k != "__metadata__")
    size = {"U8": 1, "U16": 2, "F16": 2, "U32": 4, "F32": 4}
    assert ends[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ends, ends[1:]))  # contiguous, no holes
    assert all(b % size[dt] == 0 for b, _, dt in ends)
    assert os.path.getsize(work["packed"]) == 8 + n + ends[-1][1]


def test_every_option_kind_packs(work):
    """A uniform plan per option: symmetric, mixed widths (3/5, 6/7), short groups."""
    for opt in OPTION_NAMES:
        out = work["dir"] / ("u-%s.bp" % OPTION_NAMES.index(opt))
        p = run("pack", [work["model"], "--db", work["db"], "--uniform", opt, "-o", out, "--hessians", "full"])
        assert "bpw" in p.stdout
        tensors, _, opts = check_sizes(out)
        assert {o["name"] for o in opts.values()} == {opt}
        o = next(iter(opts.values()))
        w = decode(parts_of(tensors, "blk.0.attn_q.weight"), o, MODEL["dim"], MODEL["dim"])
        w0 = work["weights"]["blk.0.attn_q.weight"]
        rel = np.linalg.norm(w - w0) / np.linalg.norm(w0)
        assert rel < {2: 0.9, 3: 0.5, 4: 0.25, 6: 0.06, 8: 0.015}[o["bits_lo"]], (opt, rel)  # GPTQ: output, not weight error


def nearest_on_grid(w0, parts, o, rows, cols):
    """Whether every weight was rounded to its nearest point of its group's grid
    s * (k - z), k = 0 .. 2^bits - 1 (the file's own s and z): round-to-nearest's
    definition, computed here. Returns the worst excess distance in steps."""
    scales, zeros = parts["qscales"].astype(np.float64), parts.get("qzeros")
    wq = decode(parts, o, rows, cols).astype(np.float64)
    worst = 0.0
    for g in range(n_groups(o, cols)):
        bits, j0 = group_bits(o, cols, g), g * o["group"]
        cols_g = parts["qperm"][j0:j0 + group_cols(o, cols, g)].astype(np.int64)
        s = scales[:, g:g + 1]
        z = zeros[:, g:g + 1].astype(np.float64) if zeros is not None else float(1 << (bits - 1))
        grid = s[:, :, None] * (np.arange(1 << bits)[None, None, :] - np.asarray(z)[..., None] if zeros is not None
                                else np.arange(1 << bits)[None, None, :] - z)
        w = w0[:, cols_g].astype(np.float64)
        best = np.min(np.abs(w[:, :, None] - grid), axis=2)
        excess = (np.abs(w - wq[:, cols_g]) - best) / np.maximum(s, 1e-30)
        worst = max(worst, float(excess.max()))
    return worst


def test_rtn_without_database(work):
    """pack --rtn --uniform, no database: every option kind; each weight on its
    group's nearest grid point, columns in their own order (no Hessian to reorder
    them), the plan recorded as plan 0 without Hessians; the file runs; and --rtn
    on a database's plan gives the same tensors."""
    for opt in OPTION_NAMES:
        out = work["dir"] / ("rtn-%d.bp" % OPTION_NAMES.index(opt))
        p = run("pack", [work["model"], "--rtn", "--uniform", opt, "--options", work["opts"], "-o", out])
        assert "round-to-nearest" in p.stdout
        tensors, _, opts = check_sizes(out)
        assert {o["name"] for o in opts.values()} == {opt} and len(opts) == MODEL["n_layers"] * 7 + 1
        _, meta = read_tensors(out)
        plan = json.loads(meta["plan"])
        assert plan["id"] == 0 and plan["hessians"] == "none" and plan["db"] == ""
        for name, rows, cols in (("blk.0.attn_q.weight", MODEL["dim"], MODEL["dim"]),
                                 ("blk.1.ffn_down.weight", MODEL["dim"], MODEL["hidden"])):
            parts = parts_of(tensors, name)
            assert np.array_equal(parts["qperm"], np.arange(cols)), name
            worst = nearest_on_grid(work["weights"][name], parts, opts[name], rows, cols)
            assert worst < 1e-3, (opt, name, worst)  # a point off its nearest is a whole step or more away
    run("eval", [work["dir"] / "rtn-3.bp", "--text", work["calib"], "--ctx", 64, "--chunks", 2])
    via_db = work["dir"] / "rtn-db.bp"
    run("pack", [work["model"], "--db", work["db"], "--uniform", "4b-g128", "--rtn", "-o", via_db])
    a, _ = read_tensors(via_db)
    b, _ = read_tensors(work["dir"] / "rtn-3.bp")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_rtn_refusals(work):
    out = work["dir"] / "refused.bp"
    rot = work["dir"] / "rot.txt"
    rot.write_text("4b-g32-awq 4 4 0 32 z8 awq\n")
    cases = [
        (["--rtn", "--uniform", "4b-g32-awq", "--options", rot], "scales its inputs"),
        (["--uniform", "4b-g128"], "no --db D given"),
        (["--rtn", "--uniform", "5b-g7"], 'no option named "5b-g7"'),
        (["--rtn", "--uniform", "4b-g128", "--options", work["opts"], "--db", work["db"]], "--options is for --rtn"),
    ]
    for args, needle in cases:
        p = run("pack", [work["model"], *args, "-o", out], check=False)
        assert p.returncode != 0 and needle in p.stderr, (args, p.stderr)
        assert not os.path.exists(out)


# ==== (b) an independent decoder against the runtime ====

def test_decoder_matches_runtime_exactly(work):
    tensors, _, opts = check_sizes(work["packed"])
    for name, o in opts.items():
        parts = parts_of(tensors, name)
        rows, cols = parts["qvalues"].shape[0], parts["qperm"].shape[0]
        out = work["dir"] / "rows.f32"
        tool(["rows", work["packed"], name, out])
        got = np.fromfile(out, np.float32).reshape(rows, cols)
        assert np.array_equal(decode(parts, o, rows, cols), got), name


def write_dequantized_gguf(packed, path):
    """The packed model's weights, decoded here, as an F32 GGUF of the same model."""
    import gguf
    tensors, meta = read_tensors(packed)
    cfg, opts, tok = json.loads(meta["config"]), json.loads(meta["options"]), json.loads(meta["tokenizer"])
    gw = gguf.GGUFWriter(str(path), "llama")
    gw.add_block_count(cfg["n_layers"])
    gw.add_context_length(cfg["max_ctx"])
    gw.add_embedding_length(cfg["dim"])
    gw.add_feed_forward_length(cfg["hidden_dim"])
    gw.add_head_count(cfg["n_heads"])
    gw.add_head_count_kv(cfg["n_kv_heads"])
    gw.add_rope_freq_base(cfg["rope_theta"])
    gw.add_rope_dimension_count(cfg["rope_dim"])
    gw.add_layer_norm_rms_eps(cfg["norm_eps"])
    gw.add_tokenizer_model("gpt2")
    gw.add_tokenizer_pre(tok["pre"])
    gw.add_token_list(tok["tokens"])
    gw.add_token_types(tok["types"])
    gw.add_token_merges(tok["merges"])
    done = set()
    for name, o in opts.items():
        parts = parts_of(tensors, name)
        gw.add_tensor(name, decode(parts, o, parts["qvalues"].shape[0], parts["qperm"].shape[0]))
        done |= {name + "." + k for k in parts}
    for name, t in tensors.items():
        if name not in done:
            gw.add_tensor(name, t.astype(np.float32))
    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_tensors_to_file()
    gw.close()


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def test_logits_equal_dequantized_model(work):
    deq = work["dir"] / "dequantized.gguf"
    write_dequantized_gguf(work["packed"], deq)
    ids = [int(i) for i in np.random.default_rng(3).integers(3, MODEL["vocab"], 96)]
    a, b = work["dir"] / "packed.f32", work["dir"] / "dense.f32"
    tool(["logits", work["packed"], a] + ids)
    tool(["logits", deq, b] + ids)
    lp = log_softmax(np.fromfile(a, np.float32).reshape(len(ids), -1))
    lq = log_softmax(np.fromfile(b, np.float32).reshape(len(ids), -1))
    kl = (np.exp(lq) * (lq - lp)).sum(axis=1)
    assert kl.mean() < 1e-3, kl.mean()
    assert (lp.argmax(1) == lq.argmax(1)).mean() > 0.97
    # and the quantization itself is not nothing: the original model differs more
    c = work["dir"] / "orig.f32"
    tool(["logits", work["model"], c] + ids)
    lo = log_softmax(np.fromfile(c, np.float32).reshape(len(ids), -1))
    assert (np.exp(lo) * (lo - lp)).sum(axis=1).mean() > 10 * kl.mean()


def test_eval_and_generate_run_packed(work):
    text = work["dir"] / "held.txt"
    text.write_text(calib_text(9, copies=4))
    p = run("eval", [work["packed"], "--text", text, "--ref", work["model"], "--ctx", 64, "--chunks", 4])
    assert "KL divergence" in p.stdout and "perplexity" in p.stdout
    p = run("generate", [work["packed"], "--prompt", "The quick brown", "-n", 8])
    assert p.returncode == 0


def test_progress_lines_report_the_run(work):
    """--progress: pack's last line counts every layer and changes no byte; eval's last
    line is its last chunk, at the perplexity the result prints."""
    again = work["dir"] / "again.bp"
    # plan 1 is the fixture's (other tests record uniform plans, and pack takes the newest)
    p = run("pack", [work["model"], "--db", work["db"], "--plan", 1, "-o", again, "--progress"])
    n_layers = MODEL["n_layers"]
    last = p.stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert re.match(r"\s*pack\s+quantize\s+layer\s+%d/%d\s" % (n_layers, n_layers), last), p.stderr
    assert again.read_bytes() == work["packed"].read_bytes()
    text = work["dir"] / "held.txt"
    text.write_text(calib_text(9, copies=4))
    p = run("eval", [work["packed"], "--text", text, "--ctx", 64, "--chunks", 3, "--progress"])
    lines = [l for l in p.stderr.replace("\r", "\n").splitlines() if l.startswith("eval: chunk")]
    assert [l.split(",")[0] for l in lines] == ["eval: chunk %d/3" % i for i in (1, 2, 3)], p.stderr
    shown = float(re.search(r"perplexity ([0-9.]+)", lines[-1]).group(1))
    result = float(re.search(r"^perplexity\s+([0-9.]+)", p.stdout, re.M).group(1))
    assert abs(shown - result) <= 5e-5 * result, (lines[-1], p.stdout)


EMU_BIN = os.path.join(ROOT, os.environ.get("BITPLAN_EMU_BUILD", "build-san"), "bitplan")


def test_cuda_runs_the_packed_file(work):
    """--device cuda end to end: eval's logits on the device against the CPU running the
    same weights dequantized to fp32, and generation. Runs on the CPU emulation of the
    CUDA runtime that `make test` builds into build-san (tests/cuda_emu/), or on a GPU."""
    if not os.path.exists(EMU_BIN):
        pytest.skip("%s is missing: make test builds it (the CUDA emulation, CUDA_EMU=1)" % EMU_BIN)
    deq = work["dir"] / "dequantized-cuda.gguf"
    write_dequantized_gguf(work["packed"], deq)
    text = work["dir"] / "held-cuda.txt"
    text.write_text(calib_text(11, copies=2))
    args = [work["packed"], "--text", text, "--ref", deq, "--ctx", 64, "--chunks", 2]
    p = subprocess.run([EMU_BIN, "eval"] + [str(a) for a in args + ["--device", "cuda"]], capture_output=True,
                       text=True, errors="replace")
    if p.returncode != 0 and ("no CUDA GPU" in p.stderr or "built without CUDA" in p.stderr):
        pytest.skip("%s has no CUDA emulation (no CUDA headers at build time) and this machine no GPU: %s"
                    % (EMU_BIN, p.stderr.strip()))
    assert p.returncode == 0, p.stderr
    assert re.search(r"^device +\S", p.stderr, re.M), p.stderr  # which device ran it
    kl = float(re.search(r"^KL divergence +(\S+)", p.stdout, re.M).group(1))
    top1 = float(re.search(r"^top-1 agreement +(\S+) %", p.stdout, re.M).group(1))
    assert kl < 1e-4 and top1 > 99, p.stdout
    # greedy generation: the same tokens as the CPU running the dequantized weights
    gen = ["--prompt", "The quick brown", "-n", "12", "--temp", "0"]
    g = subprocess.run([EMU_BIN, "generate", str(work["packed"])] + gen + ["--device", "cuda"], capture_output=True,
                       text=True, errors="replace")
    assert g.returncode == 0, g.stderr
    assert g.stdout == run("generate", [deq] + gen).stdout
    # an unquantized model kept over its file (BITPLAN_STREAM=1): each layer is decoded
    # to fp32 only while it is uploaded
    env = dict(os.environ, BITPLAN_STREAM="1")
    d = subprocess.run([EMU_BIN, "generate", str(deq)] + gen + ["--device", "cuda"], capture_output=True, text=True,
                       errors="replace", env=env)
    assert d.returncode == 0, d.stderr
    assert d.stdout == g.stdout


def test_full_hessians_reproduce_the_measurement(work):
    """Packing is deterministic; full and sequential Hessians agree on layer 0 (whose
    input no quantized layer has touched) and differ after it."""
    a, b = work["dir"] / "full1.bp", work["dir"] / "full2.bp"
    run("pack", [work["model"], "--db", work["db"], "--plan", 1, "-o", a, "--hessians", "full"])
    run("pack", [work["model"], "--db", work["db"], "--plan", 1, "-o", b, "--hessians", "full"])
    ta, _ = read_tensors(a)
    tb, _ = read_tensors(b)
    ts, _ = read_tensors(work["packed"])
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)
    assert all(np.array_equal(ta[k], ts[k]) for k in ta if k.startswith("blk.0.attn_"))  # same inputs for layer 0 qkv
    assert any(not np.array_equal(ta[k], ts[k]) for k in ta if k.startswith("blk.1."))


# ==== (d) broken files ====

def rewrite(src, dst, edit_header=None, cut=None):
    n, header = read_header(src)
    with open(src, "rb") as f:
        f.seek(8 + n)
        data = f.read()
    if edit_header:
        edit_header(header)
    h = json.dumps(header).encode()
    h += b" " * ((-(8 + len(h))) % 64)
    blob = struct.pack("<Q", len(h)) + h + data
    with open(dst, "wb") as f:
        f.write(blob[:cut] if cut else blob)


def expect_error(work, path, *needles):
    p = run("eval", [path, "--text", work["calib"], "--chunks", 1, "--ctx", 32], check=False)
    assert p.returncode != 0, p.stdout
    msg = p.stderr.strip()
    print(msg)
    assert msg.startswith("bitplan eval: ") and "\n" not in msg, msg
    assert "Assertion" not in msg and str(path) in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def edit_option(field, value, name="blk.0.attn_q.weight"):
    def f(h):
        o = json.loads(h["__metadata__"]["options"])
        o[name][field] = value
        h["__metadata__"]["options"] = json.dumps(o)
    return f


def test_truncated_file(work):
    bad = work["dir"] / "trunc.bp"
    size = os.path.getsize(work["packed"])
    rewrite(work["packed"], bad, cut=size - 100)
    expect_error(work, bad, "past the end")
    rewrite(work["packed"], bad, cut=20)
    expect_error(work, bad)


def test_shape_disagrees_with_option(work):
    bad = work["dir"] / "shape.bp"

    def f(h):  # one row fewer in the values and one byte fewer in data_offsets' span: consistent container
        e = h["blk.1.ffn_up.weight.qscales"]
        e["shape"][1] -= 1
        e["data_offsets"][1] -= 2 * e["shape"][0]
    rewrite(work["packed"], bad, edit_header=f)
    # the container is now inconsistent (a hole), which model/ or pack/ must catch
    expect_error(work, bad)
    bad2 = work["dir"] / "shape2.bp"

    def g(h):  # the config says another size than the tensors hold
        c = json.loads(h["__metadata__"]["config"])
        c["hidden_dim"] += 32
        h["__metadata__"]["config"] = json.dumps(c)
    rewrite(work["packed"], bad2, edit_header=g)
    expect_error(work, bad2, "ffn_")


def test_invalid_and_unknown_options(work):
    bad = work["dir"] / "opt.bp"
    rewrite(work["packed"], bad, edit_header=edit_option("bits_lo", 9))
    expect_error(work, bad, "blk.0.attn_q.weight", "bits")
    rewrite(work["packed"], bad, edit_header=edit_option("group", 48))
    expect_error(work, bad, "group 48")
    rewrite(work["packed"], bad, edit_header=edit_option("bits", 12345))
    expect_error(work, bad, "bits 12345")

    def unknown(h):
        o = json.loads(h["__metadata__"]["options"])
        o["blk.7.attn_q.weight"] = o["blk.0.attn_q.weight"]
        h["__metadata__"]["options"] = json.dumps(o)
    rewrite(work["packed"], bad, edit_header=unknown)
    expect_error(work, bad, "blk.7.attn_q.weight", "not a linear layer")

    def version(h):
        h["__metadata__"]["format_version"] = "6"
    rewrite(work["packed"], bad, edit_header=version)
    expect_error(work, bad, "format_version 6")


def test_missing_part(work):
    bad = work["dir"] / "missing.bp"
    opts = plan_options(work["packed"])
    name = next(n for n, o in opts.items() if o["scale_fmt"] == 0)

    def drop(h):
        del h[name + ".qzeros"]
    rewrite(work["packed"], bad, edit_header=drop)  # leaves a hole in the data: still must be refused
    expect_error(work, bad)

    def orphan(h):
        o = json.loads(h["__metadata__"]["options"])
        del o[name]
        h["__metadata__"]["options"] = json.dumps(o)
    rewrite(work["packed"], bad, edit_header=orphan)
    expect_error(work, bad, name, "no entry in the options")


def test_bad_permutation(work):
    bad = work["dir"] / "perm.bp"
    n, header = read_header(work["packed"])
    e = header["blk.0.ffn_down.weight.qperm"]
    with open(work["packed"], "rb") as f:
        blob = bytearray(f.read())
    at = 8 + n + e["data_offsets"][0]
    blob[at:at + 2] = blob[at + 2:at + 4]  # stored columns 0 and 1 now name the same column
    bad.write_bytes(bytes(blob))
    expect_error(work, bad, "blk.0.ffn_down.weight.qperm", "corrupt")  # the checksum catches it first

    def resum(h):  # a checksum that agrees with the edit: the permutation check must catch it
        sums = json.loads(h["__metadata__"]["checksums"])
        sums["blk.0.ffn_down.weight.qperm"] = xxhash.xxh3_64_hexdigest(bytes(blob[at:8 + n + e["data_offsets"][1]]))
        h["__metadata__"]["checksums"] = json.dumps(sums)
    rewrite(bad, bad, edit_header=resum)
    expect_error(work, bad, "qperm", "not a permutation")


def test_pack_refuses_other_model_and_changed_text(work):
    other = work["dir"] / "other.gguf"
    tiny_model.write_tiny_gguf(str(other), **dict(MODEL, seed=6))
    p = run("pack", [other, "--db", work["db"], "-o", work["dir"] / "x.bp"], check=False)
    assert p.returncode != 0 and "is not the model plan" in p.stderr and p.stderr.count("\n") == 1
    saved = work["calib"].read_text()
    try:
        work["calib"].write_text(saved + "one more line\n")
        p = run("pack", [work["model"], "--db", work["db"], "-o", work["dir"] / "x.bp"], check=False)
        assert p.returncode != 0 and "changed since the measurement" in p.stderr
    finally:
        work["calib"].write_text(saved)
    assert not os.path.exists(work["dir"] / "x.bp")


# ==== (e) kill -9 ====

def test_kill_leaves_no_file(work):
    big = work["dir"] / "big.gguf"
    db = work["dir"] / "big.db"
    tiny_model.write_tiny_gguf(str(big), n_layers=6, dim=256, hidden=512, n_heads=4, n_kv_heads=2, vocab=512, seed=3)
    run("measure", [big, "--calib", work["calib"], "--db", db, "--options", work["opts"], "--rows", 8, "--ctx", 128,
                    "--threads", 2])
    run("allocate", ["--db", db, "--bpw", 4.0, "--head-bits", 0])
    out = work["dir"] / "killed.bp"
    kills = 0
    for during_write in (False, True, True, True, False):
        p = subprocess.Popen([BIN, "pack", str(big), "--db", str(db), "-o", str(out)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        t0 = time.time()
        while p.poll() is None:  # kill while quantizing, or once the temporary file is being written
            writing = any(f.name.startswith("killed.bp.tmp.") for f in work["dir"].iterdir())
            if (writing if during_write else time.time() - t0 > 0.2):
                p.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        p.wait()
        if p.returncode == -signal.SIGKILL:
            kills += 1
            assert not os.path.exists(out)
        for f in work["dir"].iterdir():  # a killed writer may leave its temporary file, never OUT
            if f.name.startswith("killed.bp"):
                f.unlink()
    assert kills >= 2
    run("pack", [big, "--db", db, "-o", out])  # and a run to the end leaves a good file
    check_sizes(out)


# ==== (c) the real model ====

def real_db():
    p = os.environ.get("BITPLAN_PACK_DB", "")
    if p and os.path.exists(p):
        with sqlite3.connect(p) as c:
            try:
                if c.execute("SELECT count(*) FROM plans").fetchone()[0]:
                    return p
            except sqlite3.OperationalError:
                pass
    return None


# A small but real measurement of SmolLM2: three options of different kinds (a mix,
# a plain width, a symmetric one), 2 rows of 64 tokens; enough for a plan to pack.
REAL_OPTIONS = """\
"2b/3b 30% g64" 2 3 30% 64  z8
4b-g128         4 4 0   128 z8
6b-g32-sym      6 6 0   32  sym
"""


def measured_real_db(tmp_path):
    db, opts = tmp_path / "real.db", tmp_path / "real-options.txt"
    opts.write_text(REAL_OPTIONS)
    calib = os.path.join(ROOT, "data", "calib.txt")
    assert os.path.exists(calib), "data/calib.txt is missing: run scripts/get-text.sh"
    run("measure", [REAL_MODEL, "--calib", calib, "--db", db, "--rows", 2, "--ctx", 64, "--options", opts], cwd=ROOT)
    run("allocate", ["--db", db, "--bpw", 4.0])
    return str(db)


def quantize_activations(x, perm, group):
    """x~: the int8-per-group activations the packed kernels use (runtime/qkernels.h):
    in stored column order, d = amax / 127 per group, q = round-half-even(x * 127 / amax)
    in float32; returned in the original column order as d * q."""
    xs = x[:, perm].astype(np.float32)
    out = np.zeros_like(xs)
    for j0 in range(0, xs.shape[1], group):
        blk = xs[:, j0:j0 + group]
        amax = np.abs(blk).max(axis=1, keepdims=True).astype(np.float32)
        inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
        out[:, j0:j0 + group] = (amax / np.float32(127)) * np.rint(blk * inv)
    back = np.empty_like(out)
    back[:, perm] = out
    return back


def check_kernels_on_real_tensors(packed, tmp_path):
    """The packed kernels on real tensors of every option in the file, against the
    independent decoder times the same int8 activations, in double (QK_REL_TOL 1e-5)."""
    tensors, _, opts = check_sizes(packed)
    seen = {}
    for name, o in sorted(opts.items()):
        seen.setdefault(o["name"], name)
    rng = np.random.default_rng(17)
    for opt_name, name in sorted(seen.items()):
        o, parts = opts[name], parts_of(tensors, name)
        rows, cols = parts["qvalues"].shape[0], parts["qperm"].shape[0]
        if rows > 4096:
            continue  # the head: same kernels, 49152 rows of decoding in NumPy is slow
        x = rng.standard_normal((3, cols)).astype(np.float32)
        xp, yp = tmp_path / "x.f32", tmp_path / "y.f32"
        x.tofile(xp)
        tool(["matvec", packed, name, xp, 3, yp])
        got = np.fromfile(yp, np.float32).reshape(3, rows)
        w = decode(parts, o, rows, cols).astype(np.float64)
        ref = quantize_activations(x, parts["qperm"].astype(np.int64), o["group"]).astype(np.float64) @ w.T
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err < 1e-5, (opt_name, name, err)


def test_real_model_sizes(tmp_path):
    """(a) on SmolLM2 at one plan: every one of the 211 quantized tensors stores
    exactly lay_tensor_bits. BITPLAN_PACK_REAL=FILE checks a packed file already
    made; BITPLAN_PACK_DB=D packs D's newest plan; by default a small measurement is
    made here."""
    given = os.environ.get("BITPLAN_PACK_REAL", "")
    if given and os.path.exists(given):
        assert len(check_sizes(given)[2]) == 211  # 30 layers x 7, and the tied head
        check_kernels_on_real_tensors(given, tmp_path)
        return
    assert os.path.exists(REAL_MODEL), "the real model is missing: run scripts/get-model.sh"
    db = real_db() or measured_real_db(tmp_path)
    with sqlite3.connect(db) as c:
        tensors = [r[0] for r in c.execute(
            "SELECT t.name FROM plan_choices pc JOIN tensors t ON t.id = pc.tensor_id "
            "WHERE pc.plan_id = (SELECT max(id) FROM plans)")]
    out = tmp_path / "smol.bp"
    run("pack", [REAL_MODEL, "--db", db, "-o", out, "--hessians", "full"], cwd=ROOT)
    tensors_file, _, opts = check_sizes(out, expect_tensors=tensors)
    assert len(opts) == 211
    check_kernels_on_real_tensors(out, tmp_path)
