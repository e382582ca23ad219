"""tests/test_streaming.py — memory that grows with one block, not with the model.

bitplan opens a model over its file's mapping: weights stay in their stored type,
the measurement and the packer hold one block at a time as fp32 (measure/walk.c),
and eval decodes slabs of rows per product (runtime/stored.c). These tests check
what that must keep and what it must give:

  - the streaming pass changes no number: measure (with KL probes) and pack
    (sequential and full Hessians) give the same rows and the same bytes as with
    --resident, which decodes every weight to fp32 first, on a GGUF model and on a
    safetensors F16 model whose q/k rows are permuted on the way in;
  - memory does not grow with depth: the peak anonymous memory of measure and of
    pack differs by less than one block's fp32 weights between 4 and 16 layers of
    the same width (and, so that the test can tell, by much more with --resident);
  - the per-product decoding is right: logits of an F16 model equal those of its
    exact F32 copy, and those of the same model decoded up front, to 1e-5.
"""

import os
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import json

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BITPLAN_BUILD", "build")
BIN = os.path.join(ROOT, BUILD, "bitplan")
TOOL = os.path.join(ROOT, BUILD, "tests", "tool_logits")

OPTIONS = """\
# name      lo hi share group fmt
2b-g64      2  2  0     64    z8
3b4b-g64    3  4  50%   64    z8
4b-g128     4  4  0     128   z8
8b-g32      8  8  0     32    z8
"""

MODEL = dict(n_layers=3, dim=128, hidden=256, n_heads=4, n_kv_heads=2, vocab=512, seed=5)


def bitplan(*args):
    p = subprocess.run([BIN] + [str(a) for a in args], capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError("bitplan %s failed: %s" % (args[0], p.stderr))
    return p


def calib_text():
    lines = tiny_model.TRAIN_TEXT.splitlines()
    rng = np.random.default_rng(7)
    return "\n".join(lines[i] for _ in range(40) for i in rng.permutation(len(lines))) + "\n"


def measured(db):
    """Every measurement and KL probe, minus timings."""
    with sqlite3.connect(db) as c:
        m = sorted(c.execute(
            "SELECT t.name, o.name, m.bits, m.rel_err, m.rtn_err FROM measurements m "
            "JOIN tensors t ON t.id = m.tensor_id JOIN options o ON o.id = m.option_id").fetchall())
        k = sorted(c.execute(
            "SELECT t.name, p.kld, p.rel_err FROM kl_probes p JOIN tensors t ON t.id = p.tensor_id").fetchall())
    return m, k


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    if not os.path.exists(BIN):
        pytest.fail("%s is missing: build first (make BUILD=%s)" % (BIN, BUILD))
    d = tmp_path_factory.mktemp("streaming")
    (d / "opts.txt").write_text(OPTIONS)
    (d / "calib.txt").write_text(calib_text())
    return d


def measure_and_pack(work, model, tag, resident):
    """Measure, allocate and pack (both Hessian modes) in a folder of its own, whose
    file names are the same for every tag (the packed file records the database's
    path)."""
    d = work / tag
    d.mkdir()
    extra = ["--resident"] if resident else []
    cwd = os.getcwd()
    os.chdir(d)
    try:
        bitplan("measure", model, "--calib", work / "calib.txt", "--db", "run.db", "--options", work / "opts.txt",
                "--rows", 4, "--ctx", 64, "--threads", 2, "--kl-probe", *extra)
        bitplan("allocate", "--db", "run.db", "--bpw", 3.5)
        bitplan("pack", model, "--db", "run.db", "-o", "seq.bp", *extra)
        bitplan("pack", model, "--db", "run.db", "-o", "full.bp", "--hessians", "full", *extra)
    finally:
        os.chdir(cwd)
    return d


@pytest.mark.parametrize("container", ["gguf", "safetensors-f16"])
def test_streaming_changes_no_number(work, container):
    if container == "gguf":
        model = work / "m.gguf"
        tiny_model.write_tiny_gguf(str(model), tied=False, **MODEL)
    else:
        model = work / "m-st"
        tiny_model.write_tiny_safetensors(str(model), dtype="F16", **MODEL)
    a = measure_and_pack(work, model, container + "-stream", resident=False)
    b = measure_and_pack(work, model, container + "-resident", resident=True)
    ma, mb = measured(a / "run.db"), measured(b / "run.db")
    assert len(ma[0]) == (7 * MODEL["n_layers"] + 1) * 4 and len(ma[1]) == 7 * MODEL["n_layers"] + 1
    assert ma == mb
    for name in ("seq.bp", "full.bp"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert not [f for f in os.listdir(a) if "spool" in f or ".tmp." in f]


# ==== Memory against depth ====

WIDE = dict(dim=384, hidden=1024, n_heads=6, n_kv_heads=2, vocab=512, seed=11)
BLOCK_BYTES = 4 * (2 * 384 * 384 + 2 * 384 * 128 + 3 * 384 * 1024)  # q,o + k,v + gate,up,down as fp32


def peak_anon_kib(args):
    """Runs bitplan and samples its anonymous memory (RssAnon) every millisecond:
    the peak seen, in KiB. Rss would count the model file's mapped pages, which
    grow with depth by design."""
    p = subprocess.Popen([BIN] + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = [0]

    def sample():
        path = "/proc/%d/status" % p.pid
        while p.poll() is None:
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            peak[0] = max(peak[0], int(line.split()[1]))
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.001)

    t = threading.Thread(target=sample)
    t.start()
    out, err = p.communicate()
    t.join()
    assert p.returncode == 0, err.decode()
    return peak[0]


def test_memory_grows_with_one_block_not_with_depth(work):
    d = work / "depth"
    d.mkdir()
    (d / "opts.txt").write_text("# name lo hi share group fmt\n4b-g128 4 4 0 128 z8\n")
    peaks = {}
    for layers in (4, 16):
        model = d / ("m%d.gguf" % layers)
        tiny_model.write_tiny_gguf(str(model), n_layers=layers, tied=True, dtype="F16", **WIDE)
        for mode in ("stream", "resident"):
            db = d / ("%d-%s.db" % (layers, mode))
            extra = ["--resident"] if mode == "resident" else []
            peaks["measure", layers, mode] = peak_anon_kib(
                ["measure", model, "--calib", work / "calib.txt", "--db", db, "--options", d / "opts.txt",
                 "--rows", 2, "--ctx", 64, "--threads", 2] + extra)
            peaks["pack", layers, mode] = peak_anon_kib(
                ["pack", model, "--db", db, "--uniform", "4b-g128", "-o", d / ("%d-%s.bp" % (layers, mode))] + extra)
    block_kib = BLOCK_BYTES / 1024
    print("peak anonymous KiB", peaks, "one block", block_kib)
    for cmd in ("measure", "pack"):
        grown = peaks[cmd, 16, "stream"] - peaks[cmd, 4, "stream"]
        resident_grown = peaks[cmd, 16, "resident"] - peaks[cmd, 4, "resident"]
        # the sampling sees growth where there is some: 12 more blocks held as fp32
        assert resident_grown > 8 * block_kib, (cmd, peaks)
        assert grown < block_kib, (cmd, grown, block_kib, peaks)


# ==== Decoding per product ====

def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        dt = {"F16": np.float16, "F32": np.float32}[e["dtype"]]
        out.append((name, np.frombuffer(data[a:b], dtype=dt).reshape(e["shape"])))
    return out


def logits(model, ids, resident=False):
    out = str(model) + (".resident" if resident else "") + ".f32"
    cmd = [TOOL] + (["--resident"] if resident else []) + [str(model), out] + [str(i) for i in ids]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return np.fromfile(out, dtype=np.float32).reshape(len(ids), -1)


def test_f16_model_equals_its_f32_copy(work):
    f16 = work / "f16"
    tiny_model.write_tiny_safetensors(str(f16), dtype="F16", n_layers=2, dim=128, hidden=384, n_heads=4,
                                      n_kv_heads=2, vocab=512, seed=9)
    f32 = work / "f32"
    shutil.copytree(f16, f32)
    tensors = [(n, a.astype(np.float32)) for n, a in read_safetensors(f16 / "model.safetensors")]
    tiny_model.write_safetensors_file(str(f32 / "model.safetensors"), tensors, dtype="F32")
    cfg = json.loads((f32 / "config.json").read_text())
    cfg["torch_dtype"] = "float32"
    (f32 / "config.json").write_text(json.dumps(cfg))

    ids = list(range(1, 90, 3))  # 30 tokens: one batch, products of 30 rows
    a, b, c = logits(f16, ids), logits(f32, ids), logits(f16, ids, resident=True)
    scale = np.abs(b).max()
    assert np.all(np.isfinite(a)) and scale > 0
    assert np.abs(a - b).max() <= 1e-5 * scale
    assert np.abs(a - c).max() <= 1e-5 * scale
    one = logits(f16, ids[:1])  # a product of one row: the matrix-vector path
    assert np.abs(one[0] - a[0]).max() <= 1e-5 * scale


def test_eval_streamed_equals_decoded_up_front(work):
    """`bitplan eval` of an unquantized model decodes slabs per product when told to
    (BITPLAN_STREAM=1, as for a model larger than memory) and gives the numbers of the
    model decoded up front (small models are), to float rounding."""
    model = work / "eval-f16.gguf"
    tiny_model.write_tiny_gguf(str(model), dtype="F16", tied=False, **MODEL)
    text = work / "eval.txt"
    text.write_text(calib_text())

    def ppl(stream):
        env = dict(os.environ, BITPLAN_STREAM="1" if stream else "0")
        p = subprocess.run([BIN, "eval", str(model), "--text", str(text), "--ctx", "64", "--chunks", "3"],
                           capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
        return float(re.search(r"^perplexity +(\S+)", p.stdout, re.M).group(1))

    a, b = ppl(True), ppl(False)
    assert a > 1 and abs(a - b) <= 1e-5 * b
