#!/usr/bin/env python3
"""tests/fuzz/make-seeds.py — writes the seed corpora of the fuzz harnesses,
tests/fuzz/corpus/TARGET/, from tiny synthetic models (tests/tiny_model.py) and
hand-written edge cases. Deterministic: running it again gives the same files.

    python3 tests/fuzz/make-seeds.py [OUT]      (OUT defaults to tests/fuzz/corpus)

Files named regress-* in the corpus are not written here: they are inputs a
fuzzer found a bug with, kept as found, so that `make test` replays them.

What it must never do: copy bytes of a real model (everything is drawn by
tiny_model.py or written here), or write big files (a seed is a few kilobytes:
libFuzzer mutates small inputs best).

The packed files (pack/FORMAT.md) are assembled here, not by `bitplan pack`, so
that no build is needed: random values, a permutation, and sizes from the cost
function as FORMAT.md states it (values + scales + zeros + permutation = bits / 8).
"""

import json
import os
import struct
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import tiny_model  # noqa: E402

# The smallest model the readers accept with every kind of block: 32 is one Q8_0 /
# Q4_0 block and one 32-column group.
TINY = dict(seed=7, n_layers=1, dim=32, hidden=32, n_heads=2, n_kv_heads=1, vocab=300)
SEP = b"\n#--bitplan-fuzz-part--#\n"  # FUZZ_SEP of tests/fuzz/fuzz_util.h


def write(out, target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def read(path):
    with open(path, "rb") as f:
        return f.read()


# ==== GGUF ====

def tiny_gguf_with_scores(path):
    """The Q4_0 tiny model with tokenizer.ggml.scores too (as SentencePiece
    vocabularies have them), so that the fuzzer mutates a score array."""
    import gguf
    add_merges = gguf.GGUFWriter.add_token_merges
    def add_merges_and_scores(self, merges):
        add_merges(self, merges)
        self.add_token_scores([-float(i) for i in range(TINY["vocab"])])
    gguf.GGUFWriter.add_token_merges = add_merges_and_scores
    try:
        tiny_model.write_tiny_gguf(path, dtype="Q4_0", **TINY)
    finally:
        gguf.GGUFWriter.add_token_merges = add_merges


def gguf_seeds(out, tmp):
    p = os.path.join(tmp, "tiny.gguf")
    tiny_model.write_tiny_gguf(p, dtype="Q8_0", **TINY)
    write(out, "gguf", "tiny-q8_0.gguf", read(p))
    tiny_gguf_with_scores(p)
    write(out, "gguf", "tiny-q4_0-scores.gguf", read(p))
    hdr = lambda version, n_t, n_kv: b"GGUF" + struct.pack("<IQQ", version, n_t, n_kv)
    kv_u32 = lambda k, v: struct.pack("<Q", len(k)) + k + struct.pack("<II", 4, v)
    write(out, "gguf", "empty-v3.gguf", hdr(3, 0, 0))
    write(out, "gguf", "big-endian.gguf", b"GGUF" + struct.pack(">IQQ", 3, 0, 0))
    write(out, "gguf", "absurd-counts.gguf", hdr(3, 1 << 40, 1 << 40))
    write(out, "gguf", "bad-alignment.gguf", hdr(3, 0, 1) + kv_u32(b"general.alignment", 3))
    nested = struct.pack("<Q", 1) + b"a" + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 8, 1) + struct.pack("<Q", 1) + b"x"
    write(out, "gguf", "nested-array.gguf", hdr(2, 0, 1) + nested)


# ==== safetensors + config.json (+ tokenizer.json) ====

def st_seeds(out, tmp):
    for dtype in ("F16", "BF16"):
        d = os.path.join(tmp, "st-" + dtype)
        tiny_model.write_tiny_safetensors(d, dtype=dtype, **TINY)
        parts = [read(os.path.join(d, n)) for n in ("config.json", "model.safetensors", "tokenizer.json")]
        write(out, "safetensors", "tiny-%s.bin" % dtype.lower(), SEP.join(parts if dtype == "F16" else parts[:2]))
    cfg = read(os.path.join(tmp, "st-F16", "config.json"))
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    write(out, "safetensors", "one-tensor.bin", cfg + SEP + struct.pack("<Q", len(header)) + header + bytes(8))
    write(out, "safetensors", "header-past-end.bin", cfg + SEP + struct.pack("<Q", 1 << 40) + b"{}")
    write(out, "safetensors", "not-an-object.bin", cfg + SEP + struct.pack("<Q", 2) + b"[]")


# ==== Packed files (pack/FORMAT.md) ====

def f16(rng, *shape):
    return (rng.standard_normal(shape) * 0.05).astype("<f2")


def packed_tensor(rng, name, rows, cols, bits, sym):
    """The four (three) parts of one tensor quantized under a plain option
    (bits_lo = bits_hi, one width), and its options entry."""
    group = 32
    ng = -(-cols // group)
    row_bytes = cols // 32 * bits * 4
    parts = [(name + ".qvalues", "U8", rng.integers(0, 256, (rows, row_bytes), dtype=np.uint8)),
             (name + ".qscales", "F16", (np.abs(rng.standard_normal((rows, ng))) * 0.01 + 1e-3).astype("<f2"))]
    if not sym:
        parts.append((name + ".qzeros", "U8", rng.integers(0, 1 << bits, (rows, ng), dtype=np.uint8)))
    parts.append((name + ".qperm", "U16", rng.permutation(cols).astype("<u2")))
    n_bytes = sum(a.nbytes for _, _, a in parts)
    opt = {"name": "%db g32%s" % (bits, " sym" if sym else ""), "bits_lo": bits, "bits_hi": bits, "hi_share": 0.0,
           "group": group, "scale_fmt": 1 if sym else 0, "bits": 8 * n_bytes}
    return parts, opt


def linear_shapes(c):
    q, kv = c["n_heads"] * c["head_dim"], c["n_kv_heads"] * c["head_dim"]
    return {"attn_q": (q, c["dim"]), "attn_k": (kv, c["dim"]), "attn_v": (kv, c["dim"]), "attn_output": (c["dim"], q),
            "ffn_gate": (c["hidden_dim"], c["dim"]), "ffn_up": (c["hidden_dim"], c["dim"]),
            "ffn_down": (c["dim"], c["hidden_dim"])}


def packed_file(seed, tied, choose):
    """A packed tiny model. choose(name) -> None (stored F16) or (bits, sym)."""
    rng = np.random.default_rng(seed)
    t = TINY
    c = {"arch": "llama", "name": "tiny", "n_layers": t["n_layers"], "dim": t["dim"], "hidden_dim": t["hidden"],
         "n_heads": t["n_heads"], "n_kv_heads": t["n_kv_heads"], "head_dim": t["dim"] // t["n_heads"],
         "vocab_size": t["vocab"], "max_ctx": 256, "rope_theta": 10000.0, "rope_dim": t["dim"] // t["n_heads"],
         "rope_scaling": "none", "rope_scale": 1.0, "norm_eps": 1e-5, "tied_embeddings": int(tied), "attn_bias": 0}
    linears = {"token_embd.weight": (c["vocab_size"], c["dim"])}
    if not tied:
        linears["output.weight"] = (c["vocab_size"], c["dim"])
    for l in range(c["n_layers"]):
        for k, shape in linear_shapes(c).items():
            linears["blk.%d.%s.weight" % (l, k)] = shape
    tensors, options = [], {}
    for name, (rows, cols) in linears.items():
        how = choose(name)
        if how is None:
            tensors.append((name, "F16", f16(rng, rows, cols)))
            continue
        parts, options[name] = packed_tensor(rng, name, rows, cols, *how)
        tensors += parts
    norms = ["output_norm.weight"] + ["blk.%d.%s.weight" % (l, n) for l in range(c["n_layers"]) for n in ("attn_norm", "ffn_norm")]
    tensors += [(n, "F32", (1 + 0.1 * rng.standard_normal(c["dim"])).astype("<f4")) for n in norms]
    tokens, types, merges = tiny_model.tiny_vocab(t["vocab"])
    tok = {"kind": "bpe_bytes", "pre": "gpt2", "tokens": tokens, "types": types, "scores": None, "merges": merges,
           "bos": tiny_model.BOS_ID, "eos": tiny_model.EOS_ID, "unk": -1, "add_space_prefix": 0, "add_bos": 0}
    plan = {"id": 3, "kind": "bpw", "target": 4.0, "achieved_bpw": 4.25, "plan_file_bpw": 4.3, "objective": 1.5,
            "file_bpw": 4.3, "db": "tiny.db", "model_hash": "0" * 64, "hessians": "sequential"}
    meta = {"format": "bitplan-packed", "format_version": "1", "config": json.dumps(c), "plan": json.dumps(plan),
            "options": json.dumps(options, sort_keys=True), "tokenizer": json.dumps(tok)}
    return safetensors_bytes(tensors, meta)


def safetensors_bytes(tensors, meta):
    """Runs by element size (4, 2, 1 bytes), header padded so that data starts at a
    multiple of 64, as pack/FORMAT.md lays a packed file out."""
    size = {"F32": 4, "U32": 4, "F16": 2, "U16": 2, "U8": 1}
    order = sorted(tensors, key=lambda x: -size[x[1]])
    header, blobs, off = {"__metadata__": meta}, [], 0
    for name, dtype, a in order:
        b = a.tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-(8 + len(h))) % 64)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def packed_seeds(out):
    write(out, "packed", "tiny-4b.bp", packed_file(1, True, lambda n: (4, False)))
    mix = {"attn_q": (3, True), "attn_k": (2, False), "attn_v": (8, True), "ffn_gate": (5, False), "ffn_up": (6, True),
           "ffn_down": None, "attn_output": (7, False)}
    pick = lambda n: (4, False) if n == "token_embd.weight" else None if n == "output.weight" else mix[n.split(".")[2]]
    write(out, "packed", "tiny-mixed-untied.bp", packed_file(2, False, pick))
    bare = {"__metadata__": {"format": "bitplan-packed", "format_version": "1", "config": "{\"arch\":\"llama\"}"}}
    h = json.dumps(bare).encode()
    write(out, "packed", "config-only.bp", struct.pack("<Q", len(h)) + h)


# ==== Tokenizer texts (first byte: bit 0 add_bos, bit 1 parse_special) ====

TEXTS = {
    "english.txt": (0, "The quick brown fox jumps over the lazy dog. It's 2024, isn't it? We'll see.\n"),
    "chat.txt": (3, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"),
    "chat-not-special.txt": (0, "<|im_start|>user\n<|endoftext|><|im_end"),
    "unicode.txt": (1, "Grüße, Ελληνικά, 日本語のテキスト, emoji 🦊🎉, Ünïcödé\u2581spaces\u00a0nbsp\n"),
    "digits.txt": (0, "1 12 123 1234 12345 3.14159 -42 1e10 0x1F 一二三\n"),
    "whitespace.txt": (0, "  leading\t\ttabs   and    runs\n\n\n  \r\n trailing   "),
    "code.txt": (0, "def main(): return 0  # a comment with (brackets) and [lists] and {sets}\n\tif x:\n\t\ty += 1\n"),
}


def tokenizer_seeds(out):
    for name, (flags, text) in TEXTS.items():
        write(out, "tokenizer", name, bytes([flags]) + text.encode())
    write(out, "tokenizer", "invalid-utf8.bin", bytes([2]) + b"ok \xff\xfe \xc3 \xe2\x82 \xf0\x9f\x98 \xed\xa0\x80 \xc0\xaf end\x00\x01\x7f")


# ==== JSON ====

JSONS = {
    "escapes.json": '{"a":"\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u0041 \\u00e9 \\u20ac \\ud83e\\udd8a \\u0000 end","b":[]}',
    "numbers.json": '[0,-0,1,-1,3.25,-2.5e-3,1E+10,1e308,1e999,-1e999,4.9e-324,9007199254740993,123456789012345678901234567890]',
    "nested.json": "[" * 60 + "{}" + "]" * 60,
    "too-deep.json": "[" * 70 + "]" * 70,
    "literals.json": ' {"t": true, "f": false, "n": null, "dup": 1, "dup": "second", "": {"": []}} ',
    "bad-surrogate.json": '"\\ud800\\u0041"',
    "trailing.json": '{"a": 1} x',
}


def json_seeds(out, tmp):
    for name, text in JSONS.items():
        write(out, "json", name, text)
    write(out, "json", "config.json", read(os.path.join(tmp, "st-F16", "config.json")))
    packed = packed_file(1, True, lambda n: (4, False))
    meta = json.loads(packed[8:8 + struct.unpack("<Q", packed[:8])[0]])["__metadata__"]
    write(out, "json", "packed-options.json", meta["options"])
    tok = json.loads(read(os.path.join(tmp, "st-F16", "tokenizer.json")))
    tok["model"]["vocab"] = dict(list(tok["model"]["vocab"].items())[:40])  # a few kilobytes of the real shape
    tok["model"]["merges"] = tok["model"]["merges"][:20]
    write(out, "json", "tokenizer-head.json", json.dumps(tok, ensure_ascii=False))


# ==== Option files (measure/options.c) ====

OPTIONS = {
    "example.txt": "# name            bits_lo bits_hi hi_share group scale_fmt\n4b-g64  4 4 0 64 z8\n"
                   "\"3b/5b 10% g32\"   3       5       10%      32    z8\n3b-sym-g32        3       3       0        32    sym\n",
    "ggml.txt": "Q4_0\nq4_k\nQ6_K # a comment\nQ8_0\n\n",
    "mixed.txt": "\"a # b\" 2 8 0.75 128 asym\nplain 8 8 0 4096 f16\n  Q5_K\n\"x\"\t6\t6\t0\t96\tsym\n",
    "bad-share.txt": "x 4 4 25% 64 z8\n",
    "duplicate.txt": "a 4 4 0 64 z8\nb 4 4 0.0 64 asym\n",
    "unclosed.txt": "\"open 4 4 0 64 z8\n",
}


def options_seeds(out):
    for name, text in OPTIONS.items():
        write(out, "options", name, text)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus")
    with tempfile.TemporaryDirectory() as tmp:
        gguf_seeds(out, tmp)
        st_seeds(out, tmp)
        packed_seeds(out)
        tokenizer_seeds(out)
        json_seeds(out, tmp)
        options_seeds(out)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
    print("make-seeds: %s, %d bytes in all" % (out, total))


if __name__ == "__main__":
    main()
