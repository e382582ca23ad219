"""tests/test_ggml.py — layout/ggml.c's block formats against gguf-py.

  1. every type: rows quantized by bitplan (tests/tool_ggml) and dequantized by
     gguf-py's gguf.quants.dequantize equal bitplan's own decoding bit for bit, on
     random rows and on real SmolLM2 tensors (attn_q: 576 columns, 32-value types;
     ffn_down: 1536 columns, every type);
  2. where gguf-py has a quantizer (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), bitplan's fit
     with uniform importance has no larger squared error than it (ratios printed);
  3. model/ reads a GGUF holding bitplan's bytes of every type and returns what
     gguf-py returns.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_model  # noqa: E402

gguf = pytest.importorskip("gguf")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BITPLAN_BUILD", "build")
TOOL = os.path.join(ROOT, BUILD, "tests", "tool_ggml")
DEQUANT = os.path.join(ROOT, BUILD, "tests", "tool_dequant")
REAL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
QT = gguf.GGMLQuantizationType
TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
PY_QUANT = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]  # gguf-py's quantize exists for these


def run(*args):
    assert os.path.exists(TOOL), "build %s first (make BUILD=%s %s)" % (TOOL, BUILD, os.path.relpath(TOOL, ROOT))
    r = subprocess.run([TOOL, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def quantize(tmp, qtype, x, imp=None):
    """bitplan's blocks of x (rows, cols) as uint8 (rows, bytes per row)."""
    rows, cols = x.shape
    xf, impf, out = tmp / "x.f32", tmp / "imp.f32", tmp / "q.bin"
    np.ascontiguousarray(x, dtype=np.float32).tofile(xf)
    if imp is not None:
        np.ascontiguousarray(imp, dtype=np.float32).tofile(impf)
    run("quantize", qtype, rows, cols, xf, impf if imp is not None else "-", out)
    return np.fromfile(out, dtype=np.uint8).reshape(rows, -1)


def decode(tmp, qtype, blocks, cols):
    rows = blocks.shape[0]
    inf, out = tmp / "in.bin", tmp / "y.f32"
    np.ascontiguousarray(blocks).tofile(inf)
    run("decode", qtype, rows, cols, inf, out)
    return np.fromfile(out, dtype=np.float32).reshape(rows, cols)


def same_bits(a, b):
    a = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
    b = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def block_of(qtype):
    return gguf.GGML_QUANT_SIZES[QT[qtype]][0]


def random_rows(rng, rows, cols):
    """Gaussian rows of different scales, heavy-tailed rows, and a few outliers."""
    x = rng.standard_normal((rows, cols)) * np.exp(rng.standard_normal((rows, 1)))[:, :] * 0.02
    x[rows // 2:] = rng.standard_t(2.5, size=(rows - rows // 2, cols)) * 0.01
    x[0, 5] = 1.0
    x[1, :32] = 0.0
    return x.astype(np.float32)


# ==== 1. gguf-py decodes bitplan's blocks exactly as bitplan does ====

@pytest.mark.parametrize("qtype", TYPES)
def test_random_rows_decode_like_gguf_py(qtype, tmp_path):
    rng = np.random.default_rng(TYPES.index(qtype))
    x = random_rows(rng, 16, 512)
    imp = np.exp(rng.standard_normal(512)).astype(np.float32)
    for w in (None, imp):
        q = quantize(tmp_path, qtype, x, w)
        ref = gguf.quants.dequantize(q, QT[qtype]).reshape(x.shape)
        got = decode(tmp_path, qtype, q, x.shape[1])
        assert same_bits(got, ref), "%s: %d values differ" % (qtype, int(np.sum(got != ref)))
        assert np.isfinite(got).all()


@pytest.fixture(scope="module")
def real():
    if not os.path.exists(REAL):
        pytest.skip("real model missing: run scripts/get-model.sh (make model)")
    r = gguf.GGUFReader(REAL)

    def tensor(name):
        t = next(t for t in r.tensors if t.name == name)
        return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    return tensor


@pytest.mark.parametrize("qtype", TYPES)
def test_real_tensors_decode_like_gguf_py(real, qtype, tmp_path):
    for name in ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.7.ffn_down.weight"]:
        x = real(name)
        if x.shape[1] % block_of(qtype):
            continue
        imp = real(name.replace("attn_q", "attn_norm")) ** 2 if "attn_q" in name else None
        q = quantize(tmp_path, qtype, x, imp)
        ref = gguf.quants.dequantize(q, QT[qtype]).reshape(x.shape)
        got = decode(tmp_path, qtype, q, x.shape[1])
        assert same_bits(got, ref), "%s %s: %d values differ" % (qtype, name, int(np.sum(got != ref)))
        rel = np.sqrt(np.mean((got - x) ** 2) / np.mean(x ** 2))
        assert rel < 0.6, (qtype, name, rel)


# ==== 2. No worse than gguf-py's quantizers ====

@pytest.mark.parametrize("qtype", PY_QUANT)
def test_fit_no_worse_than_gguf_py(real, qtype, tmp_path):
    rng = np.random.default_rng(5)
    cases = {"random": random_rows(rng, 64, 512),
             # transposed: the real weights off the Q4_1 grid they are stored on
             "ffn_gate^T": np.ascontiguousarray(real("blk.3.ffn_gate.weight").T)}
    if qtype not in ("Q4_1", "Q5_1"):  # the stored grid would make these exact
        cases["attn_q"] = real("blk.3.attn_q.weight")
    for name, x in cases.items():
        ours = gguf.quants.dequantize(quantize(tmp_path, qtype, x, np.ones(x.shape[1])), QT[qtype]).reshape(x.shape)
        ref = gguf.quants.dequantize(gguf.quants.quantize(x, QT[qtype]), QT[qtype]).reshape(x.shape)
        e_ours, e_ref = np.mean((ours - x) ** 2), np.mean((ref - x) ** 2)
        print("%s %s: rms ours / gguf-py %.3f" % (qtype, name, np.sqrt(e_ours / e_ref)))
        assert e_ours <= e_ref, (qtype, name, e_ours, e_ref)


# ==== 3. model/ reads a GGUF of bitplan's blocks ====

SLOTS = ["blk.%d.%s.weight" % (l, n) for l in (0, 1) for n in ("attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")]
DIMS = dict(n_layers=2, dim=256, hidden=512, n_heads=4, n_kv_heads=2, vocab=300)


def test_model_reads_every_type(tmp_path):
    assert os.path.exists(DEQUANT), "build %s first" % DEQUANT
    w = tiny_model.tiny_weights(**{k: v for k, v in DIMS.items()})
    raw = {name: (quantize(tmp_path, qtype, w[name]), qtype) for name, qtype in zip(SLOTS, TYPES)}
    path = str(tmp_path / "types.gguf")
    tiny_model.write_tiny_gguf(path, raw=raw, **DIMS)
    r = gguf.GGUFReader(path)
    for name, qtype in zip(SLOTS, TYPES):
        t = next(t for t in r.tensors if t.name == name)
        assert t.tensor_type.name == qtype
        ref = gguf.quants.dequantize(t.data, t.tensor_type)
        out = tmp_path / "t.f32"
        p = subprocess.run([DEQUANT, path, name, str(out)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        got = np.fromfile(out, dtype=np.float32)
        assert same_bits(got, ref), "%s: %d values differ" % (qtype, int(np.sum(got != ref.reshape(-1))))
        assert same_bits(got, decode(tmp_path, qtype, raw[name][0], w[name].shape[1]))
