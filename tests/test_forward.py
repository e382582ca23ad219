"""tests/test_forward.py — bitplan's forward pass against an independent NumPy one.

The reference reads the GGUF with the `gguf` package, dequantizes every tensor with
gguf.quants.dequantize and runs the Llama forward pass in float64: RMSNorm, RoPE as
llama.cpp applies it to GGUF llama models (q/k rows already permuted so that pairs
(2i, 2i+1) of a head rotate by pos * theta^(-2i/rope_dim)), grouped-query causal
attention, SwiGLU, final norm, tied or separate head. bitplan's logits come from
tests/tool_logits (fp32, one batch).

Agreement is measured as max|a - b| / max|b| over all logits (b: NumPy), and must
be below 1e-4.

What it must never do: use bitplan's code for the reference, or the network.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import gguf

sys.path.insert(0, os.path.dirname(__file__))
import tiny_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BITPLAN_BUILD", "build")
TOOL = os.path.join(ROOT, BUILD, "tests", "tool_logits")
REAL_MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
TOL = 1e-4

TEXT = ("It was a bright cold day in April, and the clocks were striking thirteen. "
        "The hallway smelt of boiled cabbage and old rag mats. At one end of it a coloured poster, "
        "too large for indoor display, had been tacked to the wall.")


# ==== The NumPy reference ====

def field(reader, key):
    return reader.fields[key].contents()


def read_model(path):
    """(config dict, {name: float64 array in row-major [rows][cols]})."""
    r = gguf.GGUFReader(path)
    arch = field(r, "general.architecture")
    cfg = {
        "layers": field(r, arch + ".block_count"),
        "heads": field(r, arch + ".attention.head_count"),
        "kv_heads": field(r, arch + ".attention.head_count_kv"),
        "eps": field(r, arch + ".attention.layer_norm_rms_epsilon"),
        "theta": field(r, arch + ".rope.freq_base") if arch + ".rope.freq_base" in r.fields else 10000.0,
    }
    w = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        w[t.name] = np.asarray(a, dtype=np.float64).reshape(tuple(int(d) for d in reversed(t.shape)))
    dim = w["token_embd.weight"].shape[1]
    cfg["head_dim"] = dim // cfg["heads"]
    key = arch + ".rope.dimension_count"
    cfg["rope_dim"] = field(r, key) if key in r.fields else cfg["head_dim"]
    return cfg, w


def rms_norm(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def rope_interleaved(x, theta, rope_dim):
    """x: [n][heads][head_dim], row i at position i; pairs (2j, 2j+1) rotate."""
    n = x.shape[0]
    freq = theta ** (-np.arange(0, rope_dim, 2) / rope_dim)
    ang = np.arange(n)[:, None] * freq[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = x.copy()
    x0, x1 = x[..., 0:rope_dim:2], x[..., 1:rope_dim:2]
    out[..., 0:rope_dim:2] = x0 * c - x1 * s
    out[..., 1:rope_dim:2] = x0 * s + x1 * c
    return out


def attention(q, k, v):
    """q [n][H][hd], k/v [n][KV][hd]: causal grouped-query attention, [n][H*hd]."""
    n, H, hd = q.shape
    group = H // k.shape[1]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    out = np.empty_like(q)
    for h in range(H):
        s = q[:, h] @ k[:, h // group].T / np.sqrt(hd) + mask
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        out[:, h] = p @ v[:, h // group]
    return out.reshape(n, H * hd)


def rope_halves(x, theta, rope_dim):
    """NeoX-style RoPE (pairs (j, j + rope_dim/2)): only used to show that the
    comparison notices a wrong pairing."""
    perm = np.concatenate([np.arange(0, rope_dim, 2), np.arange(1, rope_dim, 2)])
    z = rope_interleaved(x[..., np.argsort(perm)], theta, rope_dim)
    return z[..., perm]


def reference_logits(cfg, w, ids, rope=rope_interleaved):
    n, hd, eps = len(ids), cfg["head_dim"], cfg["eps"]
    x = w["token_embd.weight"][ids]
    for layer in range(cfg["layers"]):
        p = "blk.%d." % layer
        h = rms_norm(x, w[p + "attn_norm.weight"], eps)
        q = (h @ w[p + "attn_q.weight"].T).reshape(n, cfg["heads"], hd)
        k = (h @ w[p + "attn_k.weight"].T).reshape(n, cfg["kv_heads"], hd)
        v = (h @ w[p + "attn_v.weight"].T).reshape(n, cfg["kv_heads"], hd)
        q = rope(q, cfg["theta"], cfg["rope_dim"])
        k = rope(k, cfg["theta"], cfg["rope_dim"])
        x = x + attention(q, k, v) @ w[p + "attn_output.weight"].T
        h = rms_norm(x, w[p + "ffn_norm.weight"], eps)
        g = h @ w[p + "ffn_gate.weight"].T
        u = h @ w[p + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ w[p + "ffn_down.weight"].T
    x = rms_norm(x, w["output_norm.weight"], eps)
    head = w.get("output.weight", w["token_embd.weight"])
    return x @ head.T


# ==== bitplan ====

def bitplan_logits(path, ids, tmp_path):
    assert os.path.exists(TOOL), "build %s first (make BUILD=%s %s)" % (TOOL, BUILD, TOOL)
    out = tmp_path / "logits.f32"
    subprocess.run([TOOL, str(path), str(out)] + [str(i) for i in ids], check=True)
    return np.fromfile(out, dtype=np.float32).reshape(len(ids), -1)


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def text_ids(path, text, n):
    """Token ids of a real text: byte-level BPE from the GGUF's own vocabulary and
    merges, run by the `tokenizers` package."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    r = gguf.GGUFReader(path)
    tokens = field(r, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in field(r, "tokenizer.ggml.merges")]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    ids = tk.encode(text).ids
    assert len(ids) >= n
    return ids[:n]


# ==== Tests ====

def test_real_model_first_32_tokens(tmp_path):
    assert os.path.exists(REAL_MODEL), "run scripts/get-model.sh first"
    ids = text_ids(REAL_MODEL, TEXT, 32)
    cfg, w = read_model(REAL_MODEL)
    ref = reference_logits(cfg, w, ids)
    got = bitplan_logits(REAL_MODEL, ids, tmp_path)
    assert got.shape == ref.shape
    err = rel_err(got, ref)
    print("SmolLM2 relative error %.3g" % err)
    assert err < TOL
    # The reference is sharp enough to see a real difference: the argmax agrees.
    assert np.array_equal(got.argmax(axis=1), ref.argmax(axis=1))


@pytest.mark.parametrize("dtype,tied", [("F32", True), ("F32", False), ("Q8_0", True), ("F16", False)])
def test_tiny_model(tmp_path, dtype, tied):
    path = tmp_path / "tiny.gguf"
    tiny_model.write_tiny_gguf(str(path), seed=3, n_layers=3, dim=64, hidden=96, n_heads=4, n_kv_heads=2,
                               vocab=320, tied=tied, dtype=dtype)
    ids = list(np.random.default_rng(1).integers(0, 320, size=40))
    cfg, w = read_model(str(path))
    ref = reference_logits(cfg, w, ids)
    got = bitplan_logits(path, ids, tmp_path)
    assert rel_err(got, ref) < TOL


def test_reference_detects_a_wrong_rope(tmp_path):
    """The comparison is sensitive to the RoPE pairing: NeoX-style halves give a
    clearly different answer, so agreement above is not an accident."""
    path = tmp_path / "tiny.gguf"
    tiny_model.write_tiny_gguf(str(path), seed=4, n_layers=2, dim=64, hidden=96, n_heads=4, n_kv_heads=2,
                               vocab=300)
    ids = list(np.random.default_rng(2).integers(0, 300, size=24))
    cfg, w = read_model(str(path))
    got = bitplan_logits(path, ids, tmp_path)
    assert rel_err(got, reference_logits(cfg, w, ids)) < TOL
    assert rel_err(got, reference_logits(cfg, w, ids, rope=rope_halves)) > 1e-3
