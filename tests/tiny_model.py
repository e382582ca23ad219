"""tests/tiny_model.py — small random Llama-architecture models for the tests.

What it is for: every test that needs a model it can build in milliseconds. The
same seed gives the same weights in both containers:

  write_tiny_gguf(path, ...)          one GGUF file (llama arch, byte-level BPE
                                      vocabulary "gpt2", bos/eos, merges)
  write_tiny_safetensors(dir, ...)    model.safetensors (or shards plus
                                      model.safetensors.index.json), config.json,
                                      tokenizer.json, in Hugging Face layout

The weights are drawn in GGUF order; the safetensors writer stores q and k rows in
Hugging Face order (the inverse of llama.cpp's convert permutation), so a reader
that permutes them back must reproduce the GGUF tensors exactly.

What it must never do: depend on the network or on files outside this folder.

Command line:  python3 tests/tiny_model.py OUT.gguf [--safetensors DIR] [--shards N]
"""

import argparse
import json
import os
import re
import sqlite3
import struct
from collections import Counter

import numpy as np

# ==== The vocabulary: GPT-2 byte-level BPE learned from a little English ====

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BOS_ID, EOS_ID, UNK_ID = 1, 2, 0

TRAIN_TEXT = """\
The quick brown fox jumps over the lazy dog. A small model is a useful thing to have
when one wants to test a program that reads models, because it can be made in a
moment and thrown away after the test has finished. The weights of this model are
random numbers, so the text it writes will make no sense at all, but the shapes of
its tensors and the rules of its vocabulary are the same as those of a real model.
It was the best of times, it was the worst of times, it was the age of wisdom, it
was the age of foolishness, it was the epoch of belief, it was the epoch of
incredulity, it was the season of light, it was the season of darkness.
There are many ways to measure how much a layer of a network suffers when its
weights are stored with fewer bits. One of them is to compare the output of the
layer before and after the change, on inputs that the model has actually seen.
Another is to run the whole model and compare the probabilities it gives to the
next token. Both of these are measured in this project, and the results are
written into a database so that they can be read again later without any work.
In the morning the children went down to the river and watched the boats moving
slowly against the current. Their mother called them back for breakfast, and they
came running up the hill with wet shoes and bright faces, talking about the
fishermen and the birds and the long grey clouds that were coming from the west.
Numbers such as 1, 2, 3, 10, 42, 100 and 2024 appear in text as well, and so do
marks like commas, full stops, question marks? and exclamation marks!
"I think," she said, "that we should go home now." He did not answer, but he
stood up, took his coat from the chair, and followed her out into the evening.
def main(): return 0  # even a little code, with (brackets) and [lists] and {sets}
"""

# ASCII approximation of GPT-2's pre-tokenizer (contractions, letters, digits,
# other marks, each with an optional leading space; runs of white space).
_PRETOK = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")


def bytes_to_unicode():
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _encode_word(word, b2u):
    return "".join(b2u[b] for b in word.encode("utf-8"))


def _learn_merges(text):
    """Greedy BPE training, as a generator of merges (a, b): repeatedly merge the
    most frequent adjacent pair (ties broken by the pair's text, so the result is
    deterministic)."""
    b2u = bytes_to_unicode()
    words = Counter(_encode_word(w, b2u) for w in _PRETOK.findall(text))
    splits = {w: list(w) for w in words}
    while True:
        pairs = Counter()
        for w, f in words.items():
            s = splits[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += f
        if not pairs:
            return
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        yield best
        for w in words:
            s, out, i = splits[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            splits[w] = out


def calib_text(seed, copies=30):
    """English-like calibration text: the tiny vocabulary's training text, its lines
    shuffled (by seed) copies times over."""
    import random
    lines = TRAIN_TEXT.strip().split("\n")
    rng = random.Random(seed)
    out = []
    for _ in range(copies):
        rng.shuffle(lines)
        out.extend(lines)
    return "\n".join(out) + "\n"


def row_count(db, table):
    """Rows of a table of a bitplan database that another process may be writing
    (0 while the database or the table does not exist yet)."""
    try:
        with sqlite3.connect(db, timeout=30) as c:
            return c.execute("SELECT count(*) FROM %s" % table).fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def tiny_vocab(vocab=512):
    """Returns (tokens, token_types, merges): specials first (ids 0..2), then the
    256 byte tokens, then merged tokens until there are `vocab` tokens. Merges are
    "left right" strings, rank = index."""
    b2u = bytes_to_unicode()
    tokens = list(SPECIAL_TOKENS) + [b2u[b] for b in range(256)]
    types = [3] * len(SPECIAL_TOKENS) + [1] * 256
    if vocab < len(tokens):
        raise ValueError("tiny_model: vocab must be at least %d" % len(tokens))
    seen = set(tokens)
    merges = []
    for a, b in _learn_merges(TRAIN_TEXT):
        if len(tokens) == vocab:
            break
        merges.append(a + " " + b)
        if a + b not in seen:  # a merge may rebuild a token that another made
            seen.add(a + b)
            tokens.append(a + b)
            types.append(1)
    if len(tokens) < vocab:
        raise ValueError("tiny_model: the training text gives at most %d tokens" % len(tokens))
    return tokens, types, merges


# ==== The weights (GGUF order, fp32) ====

def _permute_gguf_to_hf(w, n_head):
    """Inverse of convert_hf_to_gguf's q/k permutation: GGUF interleaved RoPE rows
    (pairs 2i, 2i+1 rotate together) back to HF's halves (i, i + hd/2)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_weights(seed=0, n_layers=2, dim=64, hidden=128, n_heads=4, n_kv_heads=2, vocab=512, tied=True, bias=False):
    """Canonical GGUF names -> float32 arrays, row-major (rows = out features).
    bias: q/k/v biases as Qwen2 has them (drawn after all other weights)."""
    rng = np.random.default_rng(seed)
    hd = dim // n_heads

    def lin(rows, cols):
        return (rng.standard_normal((rows, cols)) * (0.5 / np.sqrt(cols))).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"token_embd.weight": (rng.standard_normal((vocab, dim)) * 0.1).astype(np.float32)}
    for i in range(n_layers):
        p = "blk.%d." % i
        w[p + "attn_norm.weight"] = norm(dim)
        w[p + "attn_q.weight"] = lin(n_heads * hd, dim)
        w[p + "attn_k.weight"] = lin(n_kv_heads * hd, dim)
        w[p + "attn_v.weight"] = lin(n_kv_heads * hd, dim)
        w[p + "attn_output.weight"] = lin(dim, n_heads * hd)
        w[p + "ffn_norm.weight"] = norm(dim)
        w[p + "ffn_gate.weight"] = lin(hidden, dim)
        w[p + "ffn_up.weight"] = lin(hidden, dim)
        w[p + "ffn_down.weight"] = lin(dim, hidden)
    w["output_norm.weight"] = norm(dim)
    if not tied:
        w["output.weight"] = (rng.standard_normal((vocab, dim)) * 0.1).astype(np.float32)
    for i in range(n_layers if bias else 0):
        for what, rows in (("q", n_heads * hd), ("k", n_kv_heads * hd), ("v", n_kv_heads * hd)):
            w["blk.%d.attn_%s.bias" % (i, what)] = (rng.standard_normal(rows) * 0.05).astype(np.float32)
    return w


def _round_bf16(a):
    """float32 -> float32 holding the nearest bfloat16 (round to nearest even)."""
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


def _bf16_bytes(a):
    return (_round_bf16(a).view(np.uint32) >> 16).astype(np.uint16)


def _store_value(a, dtype):
    """The fp32 values a container of this dtype gives back for a."""
    if dtype == "F16":
        return a.astype(np.float16).astype(np.float32)
    if dtype == "BF16":
        return _round_bf16(a)
    return a


# ==== GGUF ====

DEFAULTS = dict(seed=0, n_layers=2, dim=64, hidden=128, n_heads=4, n_kv_heads=2, vocab=512, tied=True)
ROPE_THETA = 10000.0
NORM_EPS = 1e-5
CTX = 256


def write_tiny_gguf(path, seed=0, n_layers=2, dim=64, hidden=128, n_heads=4, n_kv_heads=2,
                    vocab=512, tied=True, dtype="F32", raw=None, arch="llama"):
    """Writes a tiny llama GGUF. dtype: F32, F16, BF16, Q8_0, Q4_0 or Q4_1 for the 2-D
    weights (norms stay F32). raw: {name: (array, "Q4_K")} stores those tensors as
    given instead: a uint8 array of shape (rows, bytes per row) in that GGML type
    (an F16 array may be given as float16). Returns the dict of fp32 weights (GGUF
    order) as drawn (raw tensors excluded)."""
    import gguf
    tokens, types, merges = tiny_vocab(vocab)
    w = tiny_weights(seed, n_layers, dim, hidden, n_heads, n_kv_heads, vocab, tied, bias=(arch == "qwen2"))
    raw = raw or {}
    gw = gguf.GGUFWriter(path, arch)
    gw.add_name("tiny-llama-%d" % seed)
    gw.add_block_count(n_layers)
    gw.add_context_length(CTX)
    gw.add_embedding_length(dim)
    gw.add_feed_forward_length(hidden)
    gw.add_head_count(n_heads)
    gw.add_head_count_kv(n_kv_heads)
    gw.add_rope_freq_base(ROPE_THETA)
    gw.add_rope_dimension_count(dim // n_heads)
    gw.add_layer_norm_rms_eps(NORM_EPS)
    gw.add_vocab_size(vocab)
    gw.add_tokenizer_model("gpt2")
    gw.add_tokenizer_pre("gpt2")
    gw.add_token_list(tokens)
    gw.add_token_types(types)
    gw.add_token_merges(merges)
    gw.add_bos_token_id(BOS_ID)
    gw.add_eos_token_id(EOS_ID)
    gw.add_unk_token_id(UNK_ID)
    gw.add_add_bos_token(False)
    qt = getattr(gguf.GGMLQuantizationType, dtype)
    for name, a in w.items():
        if arch == "qwen2" and ".attn_q." in name:  # qwen2 GGUF keeps HF row order
            a = _permute_gguf_to_hf(a, n_heads)
        elif arch == "qwen2" and ".attn_k." in name:
            a = _permute_gguf_to_hf(a, n_kv_heads)
        if name in raw:
            gw.add_tensor(name, raw[name][0], raw_dtype=getattr(gguf.GGMLQuantizationType, raw[name][1]))
        elif a.ndim == 1 or dtype == "F32":
            gw.add_tensor(name, a)
        elif dtype == "F16":
            gw.add_tensor(name, a.astype(np.float16))
        else:
            gw.add_tensor(name, gguf.quants.quantize(a, qt), raw_dtype=qt)
    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_tensors_to_file()
    gw.close()
    return {k: v for k, v in w.items() if k not in raw}


# ==== safetensors (Hugging Face layout) ====

def hf_name(name):
    """Canonical GGUF name -> Hugging Face name."""
    m = re.match(r"blk\.(\d+)\.(.*)$", name)
    if not m:
        return {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}[name]
    table = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    base, suffix = m.group(2).rsplit(".", 1)
    return "model.layers.%s.%s.%s" % (m.group(1), table[base], suffix)


def _st_bytes(a, dtype):
    if dtype == "F32":
        return a.astype("<f4").tobytes()
    if dtype == "F16":
        return a.astype("<f2").tobytes()
    if dtype == "BF16":
        return _bf16_bytes(a).astype("<u2").tobytes()
    raise ValueError("tiny_model: safetensors dtype %r" % dtype)


def write_safetensors_file(path, tensors, dtype="F32", metadata=None):
    """tensors: list of (name, array). Writes one .safetensors file."""
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, a in tensors:
        b = _st_bytes(a, dtype)
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    return off


def _tokenizer_json(vocab):
    tokens, types, merges = tiny_vocab(vocab)
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in enumerate(tokens) if types[i] == 3]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }


def _config_json(n_layers, dim, hidden, n_heads, n_kv_heads, vocab, tied, dtype, arch):
    return {
        "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]], "model_type": arch,
        "hidden_size": dim, "intermediate_size": hidden, "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads, "num_key_value_heads": n_kv_heads, "head_dim": dim // n_heads,
        "rope_theta": ROPE_THETA, "rope_scaling": None, "rms_norm_eps": NORM_EPS,
        "tie_word_embeddings": bool(tied), "vocab_size": vocab, "max_position_embeddings": CTX,
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "hidden_act": "silu",
        "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype],
    }


def write_tiny_safetensors(dirpath, seed=0, n_layers=2, dim=64, hidden=128, n_heads=4, n_kv_heads=2,
                           vocab=512, tied=True, dtype="F32", shards=1, arch="llama"):
    """Writes the same model as write_tiny_gguf (same arguments) in HF layout into
    dirpath: model.safetensors when shards == 1, else model-0000i-of-0000n.safetensors
    plus model.safetensors.index.json; and config.json, tokenizer.json. dtype: F32,
    F16 or BF16; arch "qwen2" adds q/k/v biases. Returns the fp32 weights (GGUF order, canonical names) as a reader
    must give them back after conversion from dtype."""
    os.makedirs(dirpath, exist_ok=True)
    w = tiny_weights(seed, n_layers, dim, hidden, n_heads, n_kv_heads, vocab, tied, bias=(arch == "qwen2"))
    hd = dim // n_heads
    items = []
    for name, a in w.items():
        if ".attn_q." in name:
            a = _permute_gguf_to_hf(a, n_heads)
        elif ".attn_k." in name:
            a = _permute_gguf_to_hf(a, n_kv_heads)
        items.append((hf_name(name), a))
    assert hd % 2 == 0
    if shards == 1:
        write_safetensors_file(os.path.join(dirpath, "model.safetensors"), items, dtype, {"format": "pt"})
    else:
        per = -(-len(items) // shards)
        weight_map, total = {}, 0
        for s in range(shards):
            fname = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
            part = items[s * per:(s + 1) * per]
            total += write_safetensors_file(os.path.join(dirpath, fname), part, dtype, {"format": "pt"})
            for n, _ in part:
                weight_map[n] = fname
        with open(os.path.join(dirpath, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(dirpath, "config.json"), "w") as f:
        json.dump(_config_json(n_layers, dim, hidden, n_heads, n_kv_heads, vocab, tied, dtype, arch), f, indent=2)
    with open(os.path.join(dirpath, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(_tokenizer_json(vocab), f, ensure_ascii=False)
    return {k: _store_value(v, dtype) for k, v in w.items()}


def main():
    ap = argparse.ArgumentParser(description="write a tiny random llama model")
    ap.add_argument("out", help="output .gguf path")
    ap.add_argument("--safetensors", metavar="DIR", help="also write the HF layout into DIR")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--untied", action="store_true")
    ap.add_argument("--dtype", default="F32")
    a = ap.parse_args()
    kw = dict(seed=a.seed, n_layers=a.layers, dim=a.dim, hidden=a.hidden, n_heads=a.heads,
              n_kv_heads=a.kv_heads, vocab=a.vocab, tied=not a.untied)
    write_tiny_gguf(a.out, dtype=a.dtype, **kw)
    if a.safetensors:
        write_tiny_safetensors(a.safetensors, dtype=a.dtype if a.dtype in ("F32", "F16", "BF16") else "F32",
                               shards=a.shards, **kw)


if __name__ == "__main__":
    main()
