#!/usr/bin/env python3
"""scripts/synth-model.py — deterministic random-weight Llama models of real shapes.

Quality numbers measured on these models MEAN NOTHING: the weights are random, so
perplexity, KL divergence and the sensitivity of one layer against another say
nothing about any trained model. Time and memory measured on them DO mean
something: the tensors have the shapes, dtypes and file layout of the real models,
so measuring, packing, loading and running cost what they would cost on the real
thing (and GPTQ sees weights with a trained model's kind of structure, below).

    synth-model.py --shape llama2-7b /work/synth/llama2-7b
    synth-model.py --shape tiny --layers 16 --dtype bf16 DIR

writes a Hugging Face-style folder that `bitplan inspect DIR` opens:

  model.safetensors   every tensor, one file, all in --dtype (f16, bf16 or f32)
  config.json         LlamaForCausalLM; "bitplan_synth" records shape and seed
  tokenizer.json      SmolLM2's byte-level BPE tokenizer, taken from the GGUF file
                      fetched by scripts/get-model.sh

The vocabulary of every shape is SmolLM2's, 49152 tokens (the real models have
32000 or 128256), so the parameter counts in the table below differ a little
from theirs (6.74 B for Llama 2 7B, 8.03 B for Llama 3 8B).

Shapes (--layers, --dim, --ffn, --heads, --kv-heads override; head_dim = dim/heads):

  shape       layers  dim   ffn    heads/kv  rope base  parameters  f16 file
  llama2-7b   32      4096  11008  32/32     10000      6.88 B      13.76 GB
  llama3-8b   32      4096  14336  32/8      500000     7.38 B      14.76 GB
  llama-70b   80      8192  28672  64/8      500000     69.26 B     138.5 GB (*)
  tiny         4       256    688   8/4      10000      28.1 M      56 MB

  (*) llama-70b is for the VRAM memory model: by default only config.json and
      tokenizer.json are written; --weights writes the weights as well.

RMS norm epsilon 1e-5, no rope scaling, no biases.
Every head is untied (--tied ties it to the embedding).

The weights. Each tensor is drawn from its own stream, seeded by --seed and the
SHA-256 of the tensor's name, so the same arguments give the same bytes (whatever
--jobs), and two models of the same width share every tensor they both have: a
4-layer model is the embedding, first four layers, final norm and head of the
16-layer one, byte for byte. The stream is Philox's (it can jump, so threads draw
chunks independently); each 16-bit word picks one of 65536 quantiles of z.
A linear weight W (rows = outputs, cols = inputs) is

    W[i, j] = z[i, j] * r[i] * c[j] / sqrt(sum_j c[j]^2)

  z  unit-variance draws with Student-t (8 degrees of freedom) tails, as trained
     weights are heavier-tailed than a normal;
  r  per-row scales exp(0.3 z), scaled to mean square 1 (log-normal-like);
  c  per-input-channel scales: 1, except a few outlier channels (cols/2048, at
     least 2) at 10x to 50x. The set belongs to the INPUT the layer reads, so
     q/k/v share one (the attention input), gate/up share one (the MLP input),
     o and down each have their own;
  the last factor keeps the RMS of each output near the RMS of the input, so the
  activations stay bounded through 80 layers.

The head has no outlier channels and half that scale (logits of RMS about 0.5),
so perplexities come out near the vocabulary size, as random weights should give
(outlier channels in the head make a few logits huge: perplexities of 1e7-1e10).

Norm weights are exp(0.05 z) (near 1), embedding values 0.02 z.

Memory and time: the header is written first (every shape is known in advance),
then the tensors in chunks of 8M values, at most 2 * --jobs + 1 chunks held at
once (under 300 MB resident for llama2-7b); the file appears under its name only
when it is complete. llama2-7b takes 80 to 110 s on two busy cores.
"""

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from tiny_model import _bf16_bytes, hf_name  # noqa: E402

SMOLLM2_GGUF = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
VOCAB = 49152  # SmolLM2's tokenizer
BOS_ID, EOS_ID = 1, 2  # <|im_start|>, <|im_end|> as in SmolLM2-Instruct

SHAPES = {
    "llama2-7b": dict(layers=32, dim=4096, ffn=11008, heads=32, kv_heads=32, rope_theta=10000.0, ctx=4096, weights=True),
    "llama3-8b": dict(layers=32, dim=4096, ffn=14336, heads=32, kv_heads=8, rope_theta=500000.0, ctx=8192, weights=True),
    "llama-70b": dict(layers=80, dim=8192, ffn=28672, heads=64, kv_heads=8, rope_theta=500000.0, ctx=8192, weights=False),
    "tiny": dict(layers=4, dim=256, ffn=688, heads=8, kv_heads=4, rope_theta=10000.0, ctx=2048, weights=True),
}
NORM_EPS = 1e-5

DTYPES = {  # --dtype -> safetensors dtype, bytes per value, torch_dtype
    "f16": ("F16", 2, "float16"),
    "bf16": ("BF16", 2, "bfloat16"),
    "f32": ("F32", 4, "float32"),
}

T_DOF = 8           # tails of z
ROW_SIGMA = 0.3     # spread of r
NORM_SIGMA = 0.05   # spread of the norm weights
EMBD_STD = 0.02
HEAD_GAIN = 0.5     # logits of RMS 0.5: near-uniform predictions
OUTLIER_EVERY = 2048  # one outlier channel per this many inputs
OUTLIER_MIN, OUTLIER_LO, OUTLIER_HI = 2, 10.0, 50.0
CHUNK = 1 << 23     # values per generated chunk


# ==== Random streams ====

def _key(seed, name):
    """The seed of one named stream: --seed and the SHA-256 of the name."""
    words = np.frombuffer(hashlib.sha256(name.encode()).digest(), dtype="<u4")
    return np.random.SeedSequence([seed, *map(int, words)])


@lru_cache(maxsize=1)
def _z_table():
    """65536 quantiles of a unit-variance Student-t: z = table[16 random bits].
    Built from the density alone, with no library distribution functions."""
    n, dof = 1 << 16, float(T_DOF)
    x = np.linspace(0.0, 200.0, 4_000_001)
    pdf = (1.0 + x * x / dof) ** (-(dof + 1.0) / 2.0)
    cdf = np.concatenate([[0.0], np.cumsum((pdf[1:] + pdf[:-1]) / 2.0)])  # trapezoid, from 0
    cdf /= cdf[-1]
    u = (np.arange(n // 2) + 0.5) / (n // 2)  # upper half; the lower half mirrors it
    upper = np.interp(u, cdf, x)
    table = np.concatenate([-upper[::-1], upper])
    return (table / math.sqrt(np.mean(table * table))).astype(np.float32)


def _bits16(key, start, count):
    """Values start .. start+count-1 of the stream of 16-bit words of key. Philox
    jumps to any position, so chunks can be drawn in any order, by any thread,
    and the result does not depend on the chunk size."""
    bg = np.random.Philox(key)
    bg.advance(start // 16)  # one Philox step = four 64-bit words = 16 words of 16 bits
    skip = start % 16
    raw = bg.random_raw(-(-(skip + count) // 4))
    return raw.view("<u2")[skip:skip + count]


def _draw_z(key, start, count):
    return _z_table()[_bits16(key, start, count)]


def _uniform(key, n):
    """n uniform draws in (0, 1) from the stream of key."""
    raw = np.random.Philox(key).random_raw(n)
    return ((raw >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53


# ==== The model's tensors ====

class Tensor:
    """One tensor: its name in the file, its shape and how its values are made.
    kind: "linear" (reads the activation input_name; None: no outlier channels),
    "embed" or "norm". The row
    and column scales are drawn here (they are small); values() draws the rest,
    chunk by chunk. Every draw comes from a Philox stream of its own (the raw
    stream, which NumPy keeps fixed, not its distribution algorithms, which it
    may change between versions)."""

    def __init__(self, name, shape, kind, seed, input_name=None, gain=1.0):
        self.name, self.shape, self.kind = name, tuple(shape), kind
        self.key = _key(seed, name)
        self.row_scale = self.col_scale = None
        if kind == "linear":
            rows, cols = shape
            c = channel_scales(seed, input_name, cols) if input_name else np.ones(cols, dtype=np.float32)
            r = np.exp(ROW_SIGMA * _draw_z(_key(seed, name + "#rows"), 0, rows).astype(np.float64))
            r *= gain / (math.sqrt(np.mean(r * r)) * math.sqrt(np.sum(c.astype(np.float64) ** 2)))
            self.row_scale, self.col_scale = r.astype(np.float32), c

    @property
    def numel(self):
        return math.prod(self.shape)

    def values(self, r0, r1):
        """Rows r0..r1-1 as float32 (a 1-D tensor has one row: the whole of it)."""
        if self.kind == "norm":
            return np.exp(NORM_SIGMA * _draw_z(self.key, 0, self.shape[0]).astype(np.float64)).astype(np.float32)
        cols = self.shape[1]
        w = _draw_z(self.key, r0 * cols, (r1 - r0) * cols).reshape(r1 - r0, cols)
        if self.kind == "embed":
            w *= np.float32(EMBD_STD)
        else:
            w *= self.row_scale[r0:r1, None]
            w *= self.col_scale[None, :]
        return w

    def row_chunks(self):
        if len(self.shape) == 1:
            yield 0, 1
            return
        rows, step = self.shape[0], max(1, CHUNK // self.shape[1])
        for r0 in range(0, rows, step):
            yield r0, min(rows, r0 + step)


@lru_cache(maxsize=64)
def channel_scales(seed, input_name, cols):
    """The input-channel scales c of every layer that reads input_name: ones, and a
    few outlier channels at 10x to 50x (log-uniform)."""
    key = _key(seed, "input:" + input_name)
    n = min(cols, max(OUTLIER_MIN, cols // OUTLIER_EVERY))
    u = _uniform(key, cols + n)
    c = np.ones(cols, dtype=np.float32)
    where = np.argsort(u[:cols], kind="stable")[:n]  # n channels at random
    c[where] = np.exp(math.log(OUTLIER_LO) + u[cols:] * math.log(OUTLIER_HI / OUTLIER_LO))
    return c


def model_shape(args):
    """The shape: the named one with the overrides applied, checked."""
    s = dict(SHAPES[args.shape])
    for k in ("layers", "dim", "ffn", "heads", "kv_heads"):
        if getattr(args, k) is not None:
            s[k] = getattr(args, k)
    for k in ("layers", "dim", "ffn", "heads", "kv_heads"):
        if s[k] < 1:
            raise ValueError("--%s must be positive" % k.replace("_", "-"))
    if s["dim"] % s["heads"] or (s["dim"] // s["heads"]) % 2:
        raise ValueError("dim %d must be an even multiple of heads %d" % (s["dim"], s["heads"]))
    if s["heads"] % s["kv_heads"]:
        raise ValueError("heads %d must be a multiple of kv heads %d" % (s["heads"], s["kv_heads"]))
    s["head_dim"] = s["dim"] // s["heads"]
    s["tied"] = bool(args.tied)
    return s


def tensors(s, seed):
    """Every tensor of the model, in file order, with Hugging Face names."""
    dim, ffn, q, kv = s["dim"], s["ffn"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    out = [Tensor(hf_name("token_embd.weight"), (VOCAB, dim), "embed", seed)]
    for i in range(s["layers"]):
        p = "blk.%d." % i

        def lin(what, rows, cols, reads):
            return Tensor(hf_name(p + what + ".weight"), (rows, cols), "linear", seed, p + reads)

        out += [Tensor(hf_name(p + "attn_norm.weight"), (dim,), "norm", seed),
                lin("attn_q", q, dim, "attn_in"), lin("attn_k", kv, dim, "attn_in"), lin("attn_v", kv, dim, "attn_in"),
                lin("attn_output", dim, q, "attn_out"),
                Tensor(hf_name(p + "ffn_norm.weight"), (dim,), "norm", seed),
                lin("ffn_gate", ffn, dim, "ffn_in"), lin("ffn_up", ffn, dim, "ffn_in"),
                lin("ffn_down", dim, ffn, "ffn_hidden")]
    out.append(Tensor(hf_name("output_norm.weight"), (dim,), "norm", seed))
    if not s["tied"]:
        out.append(Tensor(hf_name("output.weight"), (VOCAB, dim), "linear", seed, gain=HEAD_GAIN))
    return out


def n_params(s):
    """Parameters of a shape (as `bitplan inspect` counts them)."""
    dim, ffn, q, kv = s["dim"], s["ffn"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    layer = 2 * dim + dim * (q + 2 * kv) + q * dim + 3 * dim * ffn
    return VOCAB * dim * (1 if s["tied"] else 2) + s["layers"] * layer + dim


# ==== Writing ====

def _encode(w, dtype):
    if dtype == "f16":
        return w.astype("<f2")
    if dtype == "bf16":
        return _bf16_bytes(w).astype("<u2")
    return w.astype("<f4", copy=False)


def _header(ts, dtype, metadata):
    st_dtype, size = DTYPES[dtype][:2]
    header, off = {"__metadata__": metadata}, 0
    for t in ts:
        n = t.numel * size
        header[t.name] = {"dtype": st_dtype, "shape": list(t.shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return len(h).to_bytes(8, "little") + h, off


class _Progress:
    """Bytes written and time left, on stderr, on a terminal only."""

    def __init__(self, total):
        self.total, self.done, self.t0, self.last = total, 0, time.monotonic(), 0.0
        self.on = sys.stderr.isatty()

    def add(self, n):
        self.done += n
        now = time.monotonic()
        if self.on and (now - self.last > 0.5 or self.done == self.total):
            self.last, el = now, now - self.t0
            left = el * (self.total - self.done) / self.done if self.done else 0
            sys.stderr.write("\r  %.2f of %.2f GB, %.0f s, %.0f s left   " % (self.done / 1e9, self.total / 1e9, el, left))
            if self.done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def write_safetensors(path, ts, dtype, metadata, jobs=2):
    """Writes model.safetensors: header, then each tensor, chunk by chunk, drawn
    by `jobs` threads (NumPy lets go of the GIL while it draws and converts)
    and written in order. At most 2 * jobs + 1 chunks are held at once."""
    head, total = _header(ts, dtype, metadata)
    _z_table()  # built once, before the threads ask for it
    tmp = path + ".part"
    progress = _Progress(len(head) + total)

    def make(t, r0, r1):
        return _encode(t.values(r0, r1), dtype)

    try:
        with open(tmp, "wb") as f, ThreadPoolExecutor(max_workers=jobs) as ex:
            f.write(head)
            progress.add(len(head))
            pending = deque()

            def flush_one():
                a = pending.popleft().result()
                f.write(a.data)
                progress.add(a.nbytes)

            for t in ts:
                for r0, r1 in t.row_chunks():
                    pending.append(ex.submit(make, t, r0, r1))
                    if len(pending) > 2 * jobs:
                        flush_one()
            while pending:
                flush_one()
    except BaseException:  # a full disk, ^C: leave no partial file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, path)
    return len(head) + total


def config_json(s, shape_name, seed, dtype):
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "_name_or_path": "synth-%s" % shape_name,
        "hidden_size": s["dim"], "intermediate_size": s["ffn"], "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"], "head_dim": s["head_dim"],
        "hidden_act": "silu", "max_position_embeddings": s["ctx"], "rms_norm_eps": NORM_EPS,
        "rope_theta": s["rope_theta"], "rope_scaling": None, "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": s["tied"], "vocab_size": VOCAB, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
        "initializer_range": EMBD_STD, "torch_dtype": DTYPES[dtype][2],
        "bitplan_synth": {"shape": shape_name, "seed": seed,
                          "note": "random weights: time and memory are meaningful, quality numbers are not"},
    }


@lru_cache(maxsize=2)
def tokenizer_json(gguf_path=SMOLLM2_GGUF):
    """SmolLM2's tokenizer.json, rebuilt from the GGUF file's tokenizer.ggml.*
    arrays: the vocabulary (control tokens as special added tokens), the merges,
    and SmolLM2's pre-tokenizer (single digits, then GPT-2's byte-level split)."""
    import gguf
    if not os.path.exists(gguf_path):
        raise FileNotFoundError("%s is missing: run scripts/get-model.sh" % gguf_path)
    r = gguf.GGUFReader(gguf_path)

    def field(key):
        return r.fields[key].contents()

    if field("tokenizer.ggml.model") != "gpt2" or field("tokenizer.ggml.pre") != "smollm":
        raise ValueError("%s: not a SmolLM2 byte-level BPE tokenizer" % gguf_path)
    tokens, types, merges = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type"), field("tokenizer.ggml.merges")
    if len(tokens) != VOCAB or len(set(tokens)) != VOCAB:
        raise ValueError("%s: expected %d distinct tokens, found %d" % (gguf_path, VOCAB, len(set(tokens))))
    unk = field("tokenizer.ggml.unknown_token_id")
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": types[i] == 3} for i, t in enumerate(tokens) if types[i] in (3, 4)]  # control, user-defined
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]},
        "post_processor": dict(byte_level, trim_offsets=False),
        "decoder": dict(byte_level, add_prefix_space=True),
        "model": {"type": "BPE", "dropout": None, "unk_token": tokens[unk], "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }


@lru_cache(maxsize=1)
def _tokenizer_text():
    return json.dumps(tokenizer_json(), ensure_ascii=False)


def write_model(out, s, shape_name, seed=0, dtype="f16", weights=True, jobs=2):
    """Writes config.json, tokenizer.json and (weights) model.safetensors into out.
    Returns the size of model.safetensors in bytes (0 without weights)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(_tokenizer_text())
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config_json(s, shape_name, seed, dtype), f, indent=2)
    if not weights:
        return 0
    meta = {"format": "pt", "bitplan_synth": "%s seed %d" % (shape_name, seed)}
    return write_safetensors(os.path.join(out, "model.safetensors"), tensors(s, seed), dtype, meta, jobs)


def main(argv=None):
    shapes = "\n".join("  %-10s %2d layers, dim %4d, ffn %5d, heads %2d/%d, %6.2f B parameters" % (
        name, v["layers"], v["dim"], v["ffn"], v["heads"], v["kv_heads"],
        n_params(dict(v, head_dim=v["dim"] // v["heads"], tied=False)) / 1e9) for name, v in SHAPES.items())
    ap = argparse.ArgumentParser(
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a deterministic random-weight Llama model of a real shape (Hugging Face layout).\n"
                    "Quality numbers on it mean nothing (random weights); time and memory do.\n"
                    "The vocabulary of every shape is SmolLM2's, %d tokens." % VOCAB,
        epilog="shapes:\n%s\nllama-70b writes config.json and tokenizer.json only, unless --weights." % shapes)
    ap.add_argument("out", help="output folder")
    ap.add_argument("--shape", required=True, choices=list(SHAPES), help="the shape (below)")
    ap.add_argument("--layers", type=int, help="number of layers (overrides the shape's)")
    ap.add_argument("--dim", type=int, help="hidden size")
    ap.add_argument("--ffn", type=int, help="MLP intermediate size")
    ap.add_argument("--heads", type=int, help="attention heads (head_dim = dim / heads)")
    ap.add_argument("--kv-heads", type=int, help="key/value heads")
    ap.add_argument("--tied", action="store_true", help="tie the head to the embedding")
    ap.add_argument("--dtype", choices=list(DTYPES), default="f16", help="of every tensor (default f16)")
    ap.add_argument("--seed", type=int, default=0, help="the same seed and shape give the same bytes (default 0)")
    ap.add_argument("--weights", action=argparse.BooleanOptionalAction, default=None,
                    help="write model.safetensors (default: yes, except for llama-70b: config and tokenizer only)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="threads drawing weights (default: all cores)")
    a = ap.parse_args(argv)
    if a.seed < 0 or a.jobs < 1:
        ap.error("--seed must be >= 0 and --jobs >= 1")
    try:
        s = model_shape(a)
    except ValueError as e:
        ap.error(str(e))
    weights = SHAPES[a.shape]["weights"] if a.weights is None else a.weights
    t0 = time.monotonic()
    try:
        size = write_model(a.out, s, a.shape, a.seed, a.dtype, weights, a.jobs)
    except (OSError, ValueError) as e:
        sys.exit("synth-model: %s" % e)
    what = "%.2f GB model.safetensors (%s)" % (size / 1e9, a.dtype) if weights else "config and tokenizer only"
    print("synth-model: %s: %s, %d layers, %d parameters; %s in %.1f s" % (
        a.out, a.shape, s["layers"], n_params(s), what, time.monotonic() - t0))


if __name__ == "__main__":
    main()
