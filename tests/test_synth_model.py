"""tests/test_synth_model.py — scripts/synth-model.py, on the tiny shape.

Checked: the same arguments give the same bytes (command line and library, in two
processes); a 6-layer model holds the 4-layer one's tensors byte for byte; the
config.json values, the tensors' names, shapes and dtypes; bitplan opens the
folder and counts the expected parameters; the structure of the weights (outlier
input channels shared by q/k/v and by gate/up, row-scale spread, output RMS near
the input's, norms near 1, small embeddings, a head without outliers); the overrides (--layers, --dim,
--ffn, --heads, --kv-heads, --dtype, --tied, --no-weights) and llama-70b's
config-only default; that bitplan tokenizes text on the synthetic model exactly as
on the SmolLM2 GGUF file the tokenizer came from; that the model runs (finite
perplexity); that chunked Philox draws equal one long draw.

What it must never do: take more than a few seconds, or write outside tmp_path.
"""

import importlib.util
import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BITPLAN_BUILD", "build")
BITPLAN = os.path.join(ROOT, BUILD, "bitplan")
SCRIPT = os.path.join(ROOT, "scripts", "synth-model.py")
SMOLLM2 = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

if not os.path.exists(SMOLLM2):
    pytest.skip("real model missing (the tokenizer comes from it): run scripts/get-model.sh", allow_module_level=True)
pytest.importorskip("gguf")

_spec = importlib.util.spec_from_file_location("synth_model", SCRIPT)
synth = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synth)

TINY = dict(layers=4, dim=256, ffn=688, heads=8, kv_heads=4, head_dim=32)
VOCAB = 49152


def tiny_params(layers=4, dim=256, ffn=688, heads=8, kv_heads=4, tied=False):
    """Parameters counted by hand: embedding (+ head), per layer q, k, v, o, gate,
    up, down and two norms, the final norm."""
    hd = dim // heads
    per_layer = dim * heads * hd + 2 * dim * kv_heads * hd + heads * hd * dim + 3 * dim * ffn + 2 * dim
    return VOCAB * dim * (1 if tied else 2) + layers * per_layer + dim


def read_safetensors(path):
    """{name: (dtype, shape, raw bytes)} from a single safetensors file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    return {k: (v["dtype"], tuple(v["shape"]), data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in header.items()}


def f32(entry):
    dtype, shape, raw = entry
    if dtype == "BF16":
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return np.frombuffer(raw, {"F16": "<f2", "F32": "<f4"}[dtype]).astype(np.float32).reshape(shape)


def bitplan(*args):
    assert os.path.exists(BITPLAN), "build %s first (make)" % BITPLAN
    r = subprocess.run([BITPLAN, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def inspect_params(path):
    line = next(l for l in bitplan("inspect", path).splitlines() if l.startswith("parameters:"))
    return int(line.split()[1])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny shape, written by the command line in its own process."""
    out = tmp_path_factory.mktemp("synth") / "tiny"
    r = subprocess.run([sys.executable, SCRIPT, "--shape", "tiny", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "28068096 parameters" in r.stdout
    return out


@pytest.fixture(scope="module")
def tensors(tiny):
    return read_safetensors(tiny / "model.safetensors")


def test_same_arguments_same_bytes(tiny, tmp_path):
    synth.main(["--shape", "tiny", "--jobs", "3", str(tmp_path)])  # this process, other thread count
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (tmp_path / name).read_bytes() == (tiny / name).read_bytes(), name


def test_other_seed_other_weights(tensors, tmp_path):
    synth.main(["--shape", "tiny", "--seed", "1", str(tmp_path)])
    other = read_safetensors(tmp_path / "model.safetensors")
    assert other.keys() == tensors.keys()
    assert all(other[k][2] != tensors[k][2] for k in tensors)


def test_deeper_model_shares_the_first_layers(tensors, tmp_path):
    synth.main(["--shape", "tiny", "--layers", "6", str(tmp_path)])
    deep = read_safetensors(tmp_path / "model.safetensors")
    for name, entry in tensors.items():
        assert deep[name] == entry, name
    extra = sorted(set(deep) - set(tensors))
    assert len(extra) == 2 * 9 and all(n.startswith(("model.layers.4.", "model.layers.5.")) for n in extra)
    # and tensors of the same shape in different layers differ (streams keyed by name)
    q = [deep["model.layers.%d.self_attn.q_proj.weight" % i][2] for i in range(6)]
    assert len(set(q)) == 6


def test_config(tiny):
    c = json.loads((tiny / "config.json").read_text())
    assert c["architectures"] == ["LlamaForCausalLM"] and c["model_type"] == "llama"
    assert (c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"]) == (4, 256, 688)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (8, 4, 32)
    assert c["vocab_size"] == VOCAB and c["tie_word_embeddings"] is False
    assert c["rms_norm_eps"] == 1e-5 and c["rope_theta"] == 10000.0 and c["torch_dtype"] == "float16"
    assert (c["bos_token_id"], c["eos_token_id"]) == (1, 2)
    assert c["bitplan_synth"]["shape"] == "tiny" and c["bitplan_synth"]["seed"] == 0


def test_tensor_names_shapes_dtypes(tensors):
    want = {"model.embed_tokens.weight": (VOCAB, 256), "model.norm.weight": (256,), "lm_head.weight": (VOCAB, 256)}
    for i in range(4):
        p = "model.layers.%d." % i
        want.update({p + "input_layernorm.weight": (256,), p + "post_attention_layernorm.weight": (256,),
                     p + "self_attn.q_proj.weight": (256, 256), p + "self_attn.k_proj.weight": (128, 256),
                     p + "self_attn.v_proj.weight": (128, 256), p + "self_attn.o_proj.weight": (256, 256),
                     p + "mlp.gate_proj.weight": (688, 256), p + "mlp.up_proj.weight": (688, 256),
                     p + "mlp.down_proj.weight": (256, 688)})
    assert {k: v[1] for k, v in tensors.items()} == want
    assert {v[0] for v in tensors.values()} == {"F16"}
    assert all(np.isfinite(f32(v)).all() for v in tensors.values())


def test_bitplan_opens_it(tiny):
    out = bitplan("inspect", tiny)
    assert "synth-tiny" in out
    assert "llama, 4 layers, dim 256, ffn 688, heads 8 (kv 4, head_dim 32), vocab 49152" in out
    assert "embeddings separate" in out
    assert inspect_params(tiny) == tiny_params() == synth.n_params(dict(TINY, tied=False)) == 28068096


def outliers(w, n):
    """The n columns of largest norm, and how far the weakest of them stands above
    the median column."""
    norms = np.sqrt((w.astype(np.float64) ** 2).sum(0))
    top = np.argsort(norms)[::-1][:n]
    return set(top.tolist()), norms[top].min() / np.median(norms)


def test_outlier_columns_shared_by_the_same_input(tensors):
    p = "model.layers.1."
    w = {k: f32(tensors[p + n]) for k, n in (("q", "self_attn.q_proj.weight"), ("k", "self_attn.k_proj.weight"),
                                             ("v", "self_attn.v_proj.weight"), ("o", "self_attn.o_proj.weight"),
                                             ("gate", "mlp.gate_proj.weight"), ("up", "mlp.up_proj.weight"),
                                             ("down", "mlp.down_proj.weight"))}
    sets = {}
    for k, a in w.items():  # 256 or 688 inputs: 2 outlier channels at 10x..50x
        sets[k], ratio = outliers(a, 2)
        assert ratio > 7, k
        _, third = outliers(a, 3)
        assert third < 1.5, k  # ... and only 2
    assert sets["q"] == sets["k"] == sets["v"]
    assert sets["gate"] == sets["up"]
    assert sets["q"] != sets["gate"] and sets["q"] != sets["o"]
    other_layer, _ = outliers(f32(tensors["model.layers.2.self_attn.q_proj.weight"]), 2)
    assert other_layer != sets["q"]
    head = f32(tensors["lm_head.weight"])
    assert outliers(head, 1)[1] < 1.2  # the head has none (and half the scale)
    assert 0.2 < (head.astype(np.float64) ** 2).sum(1).mean() < 0.3


def test_weight_statistics(tensors):
    q = f32(tensors["model.layers.0.self_attn.q_proj.weight"]).astype(np.float64)
    assert 0.8 < (q * q).sum(1).mean() < 1.25  # = E|Wx|^2 per output for x of unit RMS: near 1
    down = f32(tensors["model.layers.0.mlp.down_proj.weight"]).astype(np.float64)
    assert 0.8 < (down * down).sum(1).mean() < 1.25
    inliers = q[:, np.sort(np.argsort((q * q).sum(0))[:-2])]  # without the 2 outlier columns
    row_norm = np.sqrt((inliers * inliers).sum(1))
    assert 0.22 < np.std(np.log(row_norm)) < 0.4  # log-normal row scales, sigma 0.3
    z = inliers / row_norm[:, None]
    z /= z.std()
    assert 3.5 < (z ** 4).mean() < 6  # heavier tails than a normal's (kurtosis 3)
    norms = np.concatenate([f32(v) for k, v in tensors.items() if "norm" in k])
    assert norms.min() > 0.7 and abs(norms.mean() - 1) < 0.02 and 0.02 < norms.std() < 0.1
    e = f32(tensors["model.embed_tokens.weight"])
    assert abs(e.std() - 0.02) < 0.001 and abs(e.mean()) < 0.001


def test_overrides(tmp_path):
    synth.main(["--shape", "tiny", "--layers", "2", "--dim", "128", "--ffn", "344", "--heads", "4", "--kv-heads", "2",
                "--dtype", "bf16", "--tied", str(tmp_path)])
    c = json.loads((tmp_path / "config.json").read_text())
    assert (c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"]) == (2, 128, 344)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (4, 2, 32)
    assert c["tie_word_embeddings"] is True and c["torch_dtype"] == "bfloat16"
    t = read_safetensors(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in t and {v[0] for v in t.values()} == {"BF16"}
    assert t["model.layers.1.self_attn.k_proj.weight"][1] == (64, 128)
    assert t["model.layers.1.mlp.down_proj.weight"][1] == (128, 344)
    n = tiny_params(layers=2, dim=128, ffn=344, heads=4, kv_heads=2, tied=True)
    assert inspect_params(tmp_path) == n == sum(math.prod(v[1]) for v in t.values())
    assert "embeddings tied" in bitplan("inspect", tmp_path)


def test_f32_matches_f16(tensors, tmp_path):
    synth.main(["--shape", "tiny", "--layers", "1", "--dtype", "f32", str(tmp_path)])
    t = read_safetensors(tmp_path / "model.safetensors")
    for name in ("model.layers.0.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight"):
        assert t[name][0] == "F32"
        assert np.array_equal(f32(t[name]).astype(np.float16), f32(tensors[name]).astype(np.float16)), name


def test_70b_is_config_only_unless_asked(tmp_path):
    synth.main(["--shape", "llama-70b", str(tmp_path)])
    assert sorted(os.listdir(tmp_path)) == ["config.json", "tokenizer.json"]
    c = json.loads((tmp_path / "config.json").read_text())
    assert (c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"]) == (80, 8192, 28672)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["rope_theta"]) == (64, 8, 500000.0)
    synth.main(["--shape", "llama-70b", "--weights", "--layers", "1", "--dim", "64", "--ffn", "128", "--heads", "2",
                "--kv-heads", "1", str(tmp_path)])
    assert inspect_params(tmp_path) == tiny_params(layers=1, dim=64, ffn=128, heads=2, kv_heads=1)


def test_named_shapes():
    for name, want in (("llama2-7b", (32, 4096, 11008, 32, 32, 10000.0)), ("llama3-8b", (32, 4096, 14336, 32, 8, 500000.0))):
        s = synth.SHAPES[name]
        assert (s["layers"], s["dim"], s["ffn"], s["heads"], s["kv_heads"], s["rope_theta"]) == want, name
    assert synth.n_params(dict(synth.SHAPES["llama2-7b"], head_dim=128, tied=False)) == 6878924800


@pytest.mark.parametrize("bad", [["--heads", "7"], ["--heads", "16", "--dim", "48"], ["--kv-heads", "3"], ["--layers", "0"]])
def test_bad_shapes_are_refused(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        synth.main(["--shape", "tiny", *bad, str(tmp_path)])
    assert e.value.code == 2 and "error:" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_tokenizer_matches_smollm2(tiny, tmp_path):
    text = ("The 12 quick foxes (naïve café, 日本語 🤗) jumped over 3,141 lazy dogs.\n\n"
            "def f(x):\n    return x ** 2  # don't\t\r\n") * 3
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    for extra in ([], ["--bos"]):
        ids = bitplan("tokenize", tiny, "--text", tmp_path / "t.txt", *extra)
        assert ids == bitplan("tokenize", SMOLLM2, "--text", tmp_path / "t.txt", *extra)
    chat = "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|endoftext|><repo_name>x<file_sep>"
    ids = bitplan("tokenize", tiny, "--special", "--string", chat)
    assert ids == bitplan("tokenize", SMOLLM2, "--special", "--string", chat)
    assert ids.split()[0] == "1" and " 2 " in ids  # <|im_start|>, <|im_end|> are one token each
    tokenizers = pytest.importorskip("tokenizers")  # and Hugging Face reads the same file the same way
    hf = tokenizers.Tokenizer.from_file(str(tiny / "tokenizer.json"))
    assert hf.encode(text, add_special_tokens=False).ids == [int(i) for i in bitplan("tokenize", tiny, "--text",
                                                                                       tmp_path / "t.txt").split()]


def test_it_runs(tiny, tmp_path):
    (tmp_path / "t.txt").write_text("It was the best of times, it was the worst of times. " * 40)
    out = bitplan("eval", tiny, "--text", tmp_path / "t.txt", "--chunks", "1", "--ctx", "128")
    ppl = float(next(l for l in out.splitlines() if l.startswith("perplexity")).split()[1])
    assert VOCAB / 2 < ppl < VOCAB * 4  # random weights: about chance, and finite


def test_chunks_equal_one_draw():
    key = synth._key(7, "some.tensor")
    whole = synth._bits16(key, 0, 1000)
    for start, count in ((0, 1), (3, 17), (16, 16), (17, 500), (999, 1)):
        assert np.array_equal(synth._bits16(key, start, count), whole[start:start + count])
    t = synth._z_table()
    assert t.shape == (65536,) and abs(float(np.mean(t * t)) - 1) < 1e-6 and np.array_equal(t, -t[::-1])


GGUF_SCRIPT = os.path.join(ROOT, "scripts", "synth-gguf.py")
TOOL_LOGITS = os.path.join(ROOT, BUILD, "tests", "tool_logits")


def logits(model, out, ids):
    r = subprocess.run([TOOL_LOGITS, str(model), str(out)] + [str(i) for i in ids], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return np.fromfile(out, np.float32).reshape(len(ids), VOCAB)


def test_gguf_copy_is_the_same_model(tiny, tensors, tmp_path):
    """scripts/synth-gguf.py: GGUF names, F16 matrices and F32 norms, q and k rows in
    GGUF's rotary order (llama.cpp's converter's rule, written out here), the
    hyperparameters; and bitplan computes the same logits from both files."""
    import gguf
    out = tmp_path / "tiny.gguf"
    r = subprocess.run([sys.executable, GGUF_SCRIPT, str(tiny), str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    g = gguf.GGUFReader(str(out))
    field = lambda k: g.fields[k].parts[g.fields[k].data[0]][0]  # noqa: E731
    assert bytes(g.fields["general.architecture"].parts[-1]).decode() == "llama"
    assert (field("llama.block_count"), field("llama.embedding_length"), field("llama.feed_forward_length"),
            field("llama.attention.head_count"), field("llama.attention.head_count_kv")) == (4, 256, 688, 8, 4)
    assert len(g.fields["tokenizer.ggml.tokens"].data) == VOCAB
    got = {t.name: t for t in g.tensors}
    assert len(got) == len(tensors)
    hf = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
          "output_norm.weight": "model.norm.weight", "blk.1.attn_norm.weight": "model.layers.1.input_layernorm.weight",
          "blk.2.ffn_down.weight": "model.layers.2.mlp.down_proj.weight",
          "blk.3.attn_q.weight": "model.layers.3.self_attn.q_proj.weight",
          "blk.0.attn_k.weight": "model.layers.0.self_attn.k_proj.weight"}
    for name, src in hf.items():
        w = f32(tensors[src])
        t = got[name]
        a = np.asarray(t.data, np.float32).reshape(w.shape)
        assert t.tensor_type == (gguf.GGMLQuantizationType.F32 if w.ndim == 1 else gguf.GGMLQuantizationType.F16), name
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = TINY["heads"] if "attn_q" in name else TINY["kv_heads"]
            hd = TINY["head_dim"]
            # GGUF row h*hd + 2i (+1) is Hugging Face row h*hd + i (+ hd/2)
            want = np.empty_like(w)
            for h in range(heads):
                for i in range(hd // 2):
                    want[h * hd + 2 * i] = w[h * hd + i]
                    want[h * hd + 2 * i + 1] = w[h * hd + hd // 2 + i]
            w = want
        assert np.array_equal(a, w), name
    ids = [1, 504, 3711, 28, 9156, 30, 216, 4417, 2]
    a, b = logits(tiny, tmp_path / "a.f32", ids), logits(out, tmp_path / "b.f32", ids)
    assert np.isfinite(a).all() and np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(a)), np.max(np.abs(a - b))


def test_prompt_batches_take_the_int8_kernels(tmp_path):
    """A packed model's prompt-sized batch (70 tokens) as generation loads it: the
    down projection's rows (1024 columns) take the int8 kernels, rows unpacked once
    (runtime/qlinear.c), the narrower ones the exact path; as evaluation loads it,
    every layer is exact. The two differ (the int8 rounding is there, so the path
    was taken) by little (a wrong unpacking or block order moves logits by order
    one: tests/test_qkernels.c checks each product bit by bit)."""
    model = tmp_path / "wide"
    r = subprocess.run([sys.executable, SCRIPT, "--shape", "tiny", "--layers", "1", "--ffn", "1024", str(model)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    packed = tmp_path / "wide.bp"
    bitplan("pack", model, "--rtn", "--uniform", "4b g128", "-o", packed)
    ids = [int(t) for t in np.random.default_rng(5).integers(1, VOCAB, 70)]
    tool = os.path.join(ROOT, BUILD, "tests", "tool_logits")

    def run_logits(*flags):
        out = tmp_path / "logits.f32"
        p = subprocess.run([tool, *flags, str(packed), str(out)] + [str(i) for i in ids], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return np.fromfile(out, dtype=np.float32).reshape(len(ids), VOCAB).astype(np.float64)

    def logp(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    exact, int8 = logp(run_logits()), logp(run_logits("--int8"))
    assert np.all(np.isfinite(int8))
    assert np.abs(int8 - exact).max() > 1e-4
    kl = float((np.exp(exact) * (exact - int8)).sum(axis=1).mean())
    assert kl < 1e-3, kl
