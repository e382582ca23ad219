"""tests/test_gguf.py — bitplan's model reader against independent references.

  1. the real model: dequantized tensors equal gguf-py's gguf.quants.dequantize;
  2. every block type (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K, F16, BF16): random valid
     blocks written with GGUFWriter, read back by bitplan, equal gguf-py exactly;
  3. metadata and config equal what gguf-py reads;
  4. the tiny model as safetensors (single file and shards, F32/F16/BF16) gives
     the same fp32 tensors as the GGUF version, q/k (RoPE permutation) included;
     qwen2 GGUF q/k rows are permuted the same way.

bitplan's side comes from tests/tool_dequant (built by the Makefile).
"""

import hashlib
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
TOOL = os.path.join(ROOT, BUILD, "tests", "tool_dequant")
REAL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
QT = gguf.GGMLQuantizationType


def tool(*args):
    assert os.path.exists(TOOL), "build %s first (make BUILD=%s %s)" % (TOOL, BUILD, os.path.relpath(TOOL, ROOT))
    r = subprocess.run([TOOL, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def bitplan_tensor(model, name, tmp_path):
    out = tmp_path / (name + ".f32")
    tool(model, name, out)
    return np.fromfile(out, dtype=np.float32)


def bitplan_config(model):
    return dict(line.split(" ", 1) for line in tool(model, "--config").splitlines())


def bitplan_tensors(model):
    rows = [line.split(" ") for line in tool(model, "--tensors").splitlines()]
    return {r[0]: (r[1], tuple(int(x) for x in r[2].split(",")), int(r[3])) for r in rows}


def same_bits(a, b):
    a = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
    b = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


# ==== 1. The real model ====

REAL_TENSORS = ["token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
                "blk.0.attn_v.weight", "blk.0.attn_output.weight", "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight",
                "blk.0.ffn_down.weight", "blk.0.attn_norm.weight", "blk.29.ffn_down.weight"]


@pytest.fixture(scope="module")
def real():
    if not os.path.exists(REAL):
        pytest.skip("real model missing: run scripts/get-model.sh (make model)")
    return gguf.GGUFReader(REAL)


@pytest.mark.parametrize("name", REAL_TENSORS)
def test_real_model_dequant_matches_gguf_py(real, name, tmp_path):
    t = next(t for t in real.tensors if t.name == name)
    ref = gguf.quants.dequantize(t.data, t.tensor_type)
    got = bitplan_tensor(REAL, name, tmp_path)
    assert got.size == ref.size
    assert same_bits(got, ref), "%s (%s): %d values differ" % (name, t.tensor_type.name,
                                                              int(np.sum(got != ref.reshape(-1))))


def test_real_model_tensor_list_matches(real):
    mine = bitplan_tensors(REAL)
    assert len(mine) == len(real.tensors)
    for t in real.tensors:
        dtype, shape, perm = mine[t.name]
        assert dtype == t.tensor_type.name
        assert shape == tuple(int(x) for x in reversed(t.shape))  # row-major, outermost first
        assert perm == 0  # llama GGUF is already in interleaved RoPE order


def field(reader, key):
    return reader.fields[key].contents()


def test_real_model_config_matches_gguf_py(real):
    c = bitplan_config(REAL)
    a = field(real, "general.architecture")
    assert c["arch"] == a == "llama"
    assert int(c["n_layers"]) == field(real, a + ".block_count")
    assert int(c["dim"]) == field(real, a + ".embedding_length")
    assert int(c["hidden_dim"]) == field(real, a + ".feed_forward_length")
    assert int(c["n_heads"]) == field(real, a + ".attention.head_count")
    assert int(c["n_kv_heads"]) == field(real, a + ".attention.head_count_kv")
    assert int(c["max_ctx"]) == field(real, a + ".context_length")
    assert int(c["rope_dim"]) == field(real, a + ".rope.dimension_count")
    assert np.float32(c["rope_theta"]) == np.float32(field(real, a + ".rope.freq_base"))
    assert np.float32(c["norm_eps"]) == np.float32(field(real, a + ".attention.layer_norm_rms_epsilon"))
    assert int(c["vocab_size"]) == len(real.fields["tokenizer.ggml.tokens"].data)
    assert int(c["tied_embeddings"]) == (not any(t.name == "output.weight" for t in real.tensors))
    assert c["name"] == field(real, "general.name")


@pytest.mark.parametrize("key", ["llama.block_count", "tokenizer.ggml.bos_token_id", "general.quantization_version",
                                 "llama.rope.freq_base", "tokenizer.ggml.model", "tokenizer.ggml.pre",
                                 "general.name", "tokenizer.ggml.add_space_prefix"])
def test_real_model_metadata_matches_gguf_py(real, key):
    got = tool(REAL, "--meta", key).rstrip("\n")
    want = field(real, key)
    if isinstance(want, str):
        assert got == want
    elif isinstance(want, bool):
        assert int(got) == int(want)
    elif isinstance(want, float):
        assert float(got) == float(np.float32(want))
    else:
        assert int(got) == want


def test_real_model_hash_is_sha256_of_file():
    if not os.path.exists(REAL):
        pytest.skip("real model missing")
    h = hashlib.sha256()
    with open(REAL, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    assert tool(REAL, "--hash").strip() == h.hexdigest()


# ==== 2. Every block type, random valid blocks ====

BLOCK = {"Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q4_K": (256, 144), "Q5_K": (256, 176),
         "Q6_K": (256, 210)}
# where the fp16 scales sit in each block
SCALES = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


def random_blocks(rng, qtype, rows, cols):
    """Random bytes, with each fp16 scale replaced by a finite value of sane size
    (including negative ones and subnormal-free small ones)."""
    per, nbytes = BLOCK[qtype]
    nb = cols // per
    raw = rng.integers(0, 256, size=(rows, nb, nbytes), dtype=np.uint8)
    for off in SCALES[qtype]:
        s = (rng.standard_normal((rows, nb)) * 0.05).astype(np.float16)
        raw[:, :, off:off + 2] = s.view(np.uint8).reshape(rows, nb, 2)
    return raw.reshape(rows, nb * nbytes)


def random_halfs(rng, rows, cols, bf16):
    """Random 16-bit patterns that are finite (no NaN/Inf), subnormals included."""
    u = rng.integers(0, 1 << 16, size=(rows, cols), dtype=np.uint32)
    if bf16:
        bad = ((u >> 7) & 0xFF) == 0xFF
        u[bad] &= ~np.uint32(0x4000)
    else:
        bad = ((u >> 10) & 0x1F) == 0x1F
        u[bad] &= ~np.uint32(0x4000)
    return u.astype(np.uint16)


# tensor -> type; dim 256 and hidden 512 make every row a whole number of 256-blocks
PLACEMENT = {"blk.0.attn_q.weight": "Q4_0", "blk.0.attn_k.weight": "Q4_K", "blk.0.attn_v.weight": "Q5_K",
             "blk.0.attn_output.weight": "Q6_K", "blk.0.ffn_gate.weight": "Q8_0", "blk.0.ffn_up.weight": "Q4_1",
             "blk.0.ffn_down.weight": "BF16", "token_embd.weight": "F16"}
DIMS = dict(n_layers=1, dim=256, hidden=512, n_heads=4, n_kv_heads=2, vocab=300)


@pytest.fixture(scope="module")
def blocks_model(tmp_path_factory):
    rng = np.random.default_rng(7)
    w = tiny_model.tiny_weights(**DIMS)
    raw = {}
    for name, qtype in PLACEMENT.items():
        rows, cols = w[name].shape
        if qtype == "F16":
            raw[name] = (random_halfs(rng, rows, cols, False).view(np.float16), "F16")
        elif qtype == "BF16":
            raw[name] = (random_halfs(rng, rows, cols, True).view(np.uint8).reshape(rows, 2 * cols), "BF16")
        else:
            raw[name] = (random_blocks(rng, qtype, rows, cols), qtype)
    path = str(tmp_path_factory.mktemp("blocks") / "blocks.gguf")
    tiny_model.write_tiny_gguf(path, raw=raw, **DIMS)
    return path


@pytest.mark.parametrize("name", sorted(PLACEMENT))
def test_block_type_matches_gguf_py(blocks_model, name, tmp_path):
    r = gguf.GGUFReader(blocks_model)
    t = next(t for t in r.tensors if t.name == name)
    assert t.tensor_type.name == PLACEMENT[name]
    ref = gguf.quants.dequantize(t.data, t.tensor_type)
    assert np.isfinite(ref).all()
    got = bitplan_tensor(blocks_model, name, tmp_path)
    assert same_bits(got, ref), "%s: %d of %d values differ" % (PLACEMENT[name], int(np.sum(got != ref.reshape(-1))), ref.size)


def test_tiny_quantized_types_match_gguf_py(tmp_path):
    for dtype in ["Q8_0", "Q4_0", "Q4_1", "F16", "BF16"]:
        path = str(tmp_path / ("tiny_%s.gguf" % dtype))
        tiny_model.write_tiny_gguf(path, dtype=dtype, tied=False)
        r = gguf.GGUFReader(path)
        for t in r.tensors:
            ref = gguf.quants.dequantize(t.data, t.tensor_type)
            assert same_bits(bitplan_tensor(path, t.name, tmp_path), ref), (dtype, t.name)


# ==== 3. Config of the tiny model against gguf-py ====

def test_tiny_config_matches_gguf_py(tmp_path):
    path = str(tmp_path / "t.gguf")
    tiny_model.write_tiny_gguf(path, n_layers=3, dim=96, hidden=160, n_heads=6, n_kv_heads=3, vocab=400, tied=False)
    r = gguf.GGUFReader(path)
    c = bitplan_config(path)
    assert (int(c["n_layers"]), int(c["dim"]), int(c["hidden_dim"])) == (
        field(r, "llama.block_count"), field(r, "llama.embedding_length"), field(r, "llama.feed_forward_length"))
    assert (int(c["n_heads"]), int(c["n_kv_heads"]), int(c["head_dim"])) == (6, 3, 16)
    assert int(c["vocab_size"]) == len(r.fields["tokenizer.ggml.tokens"].data) == 400
    assert int(c["tied_embeddings"]) == 0
    assert int(tool(path, "--meta", "tokenizer.ggml.eos_token_id")) == field(r, "tokenizer.ggml.eos_token_id")


# ==== 4. safetensors == GGUF ====

@pytest.mark.parametrize("dtype,shards", [("F32", 1), ("F32", 3), ("F16", 2), ("BF16", 1)])
def test_safetensors_equals_gguf(tmp_path, dtype, shards):
    kw = dict(seed=3, n_layers=2, dim=64, hidden=96, n_heads=4, n_kv_heads=2, vocab=320, tied=(shards != 3))
    g = str(tmp_path / "t.gguf")
    d = str(tmp_path / "st")
    drawn = tiny_model.write_tiny_gguf(g, **kw)
    expect = tiny_model.write_tiny_safetensors(d, dtype=dtype, shards=shards, **kw)
    tg, ts = bitplan_tensors(g), bitplan_tensors(d)
    assert set(tg) == set(ts) == set(drawn)
    for name in drawn:
        assert tg[name][1] == ts[name][1]  # same shapes
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            assert ts[name][2] == (4 if "attn_q" in name else 2)
        a = bitplan_tensor(g, name, tmp_path)
        b = bitplan_tensor(d, name, tmp_path)
        assert same_bits(a, drawn[name]), name
        assert same_bits(b, expect[name]), name  # HF order permuted back, dtype rounding as numpy's
    cg, cs = bitplan_config(g), bitplan_config(d)
    for k in cg:
        if k != "name":
            assert cg[k] == cs[k], k


def test_sharded_hash_is_sha256_of_shards_in_order(tmp_path):
    d = tmp_path / "st"
    tiny_model.write_tiny_safetensors(str(d), shards=3)
    h = hashlib.sha256()
    for name in sorted(p for p in os.listdir(d) if p.endswith(".safetensors")):
        h.update((d / name).read_bytes())
    assert tool(d / "model.safetensors.index.json", "--hash").strip() == h.hexdigest()


def test_qwen2_gguf_and_safetensors_agree(tmp_path):
    """qwen2 GGUF keeps HF row order (llama.cpp runs it with NeoX RoPE); both
    containers must come out in interleaved order, biases included."""
    g, d = str(tmp_path / "q.gguf"), str(tmp_path / "qst")
    drawn = tiny_model.write_tiny_gguf(g, arch="qwen2")
    tiny_model.write_tiny_safetensors(d, arch="qwen2")
    tg, ts = bitplan_tensors(g), bitplan_tensors(d)
    assert set(tg) == set(ts) == set(drawn)
    for name in ["blk.1.attn_q.weight", "blk.1.attn_q.bias", "blk.1.attn_k.weight", "blk.1.attn_k.bias"]:
        assert tg[name][2] == ts[name][2] == (4 if "attn_q" in name else 2), name
    for name in drawn:
        assert same_bits(bitplan_tensor(g, name, tmp_path), drawn[name]), name
        assert same_bits(bitplan_tensor(d, name, tmp_path), drawn[name]), name
    cg, cs = bitplan_config(g), bitplan_config(d)
    assert cg["arch"] == cs["arch"] == "qwen2"
    assert cg["attn_bias"] == cs["attn_bias"] == "1"
