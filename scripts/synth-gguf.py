#!/usr/bin/env python3
"""scripts/synth-gguf.py — a synthetic model (scripts/synth-model.py) as an F16 GGUF file,
so that llama.cpp's tools read the same weights bitplan does.

    synth-gguf.py out/llama2-7b out/llama2-7b.f16.gguf

llama-quantize makes its quantizations from that file (Q2_K, Q3_K_M, ...), and bitplan
packs from it too, so both runtimes run one model. The file is what llama.cpp's own
converter would make of the folder, without needing PyTorch:

  - the tensors under their GGUF names (token_embd, blk.N.attn_q, ..., output);
  - 2-D tensors as F16 (as stored in the folder), 1-D (the norms) as F32;
  - the rows of q and k reordered from the Hugging Face rotary layout to GGUF's
    (heads of two interleaved halves), as that converter does; bitplan undoes it when
    it reads a GGUF, so the two files are one model (tests/test_synth_model.py checks
    their logits agree);
  - llama.* hyperparameters from config.json, and SmolLM2's tokenizer (the synthetic
    models' vocabulary) copied from the GGUF file scripts/get-model.sh fetches.

The weights are memory-mapped from model.safetensors and written a tensor at a time:
memory stays near the largest tensor (the 49152 x 4096 embedding, 0.4 GB as F16).
"""

import argparse
import json
import os
import re
import sys

import numpy as np

import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOLLM2_GGUF = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

# Hugging Face name -> GGUF name
NAMES = [
    (r"model\.embed_tokens\.weight", "token_embd.weight"),
    (r"model\.norm\.weight", "output_norm.weight"),
    (r"lm_head\.weight", "output.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", "blk.{}.attn_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", "blk.{}.ffn_norm.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.q_proj\.weight", "blk.{}.attn_q.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.k_proj\.weight", "blk.{}.attn_k.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.v_proj\.weight", "blk.{}.attn_v.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight", "blk.{}.attn_output.weight"),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.weight", "blk.{}.ffn_gate.weight"),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.weight", "blk.{}.ffn_up.weight"),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.weight", "blk.{}.ffn_down.weight"),
]
DTYPES = {"F16": np.float16, "F32": np.float32}
# the tokenizer fields taken over from SmolLM2's file
TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                  "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                  "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                  "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix")


def gguf_name(hf):
    for pat, name in NAMES:
        m = re.fullmatch(pat, hf)
        if m:
            return name.format(*m.groups())
    raise ValueError("%s: not a Llama tensor name this script knows" % hf)


def read_safetensors(path):
    """{name: memory-mapped array} of a safetensors file."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    base, out = 8 + n, {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if e["dtype"] not in DTYPES:
            raise ValueError("%s: %s is %s; this script takes F16 and F32 models" % (path, name, e["dtype"]))
        a, b = e["data_offsets"]
        count = (b - a) // np.dtype(DTYPES[e["dtype"]]).itemsize
        out[name] = np.memmap(path, DTYPES[e["dtype"]], "r", base + a, (count,)).reshape(e["shape"])
    return out


def hf_to_gguf_rows(w, n_head):
    """Rows of q or k from the rotary layout of Hugging Face (each head's first half,
    then its second) to GGUF's (the halves interleaved), as llama.cpp's converter."""
    rows = w.shape[0]
    return np.asarray(w).reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def copy_field(w, r, key):
    f = r.fields.get(key)
    if f is None:
        return
    t = f.types[0]
    if t == gguf.GGUFValueType.ARRAY:
        sub = f.types[1]
        if sub == gguf.GGUFValueType.STRING:
            vals = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        else:
            vals = [f.parts[i].tolist()[0] for i in f.data]
        w.add_array(key, vals)
    elif t == gguf.GGUFValueType.STRING:
        w.add_string(key, bytes(f.parts[f.data[0]]).decode("utf-8"))
    elif t == gguf.GGUFValueType.BOOL:
        w.add_bool(key, bool(f.parts[f.data[0]][0]))
    else:
        w.add_uint32(key, int(f.parts[f.data[0]][0]))


def convert(src, out, tokenizer_gguf=SMOLLM2_GGUF):
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "llama":
        raise ValueError("%s: model_type %r, not llama" % (src, cfg.get("model_type")))
    if not os.path.exists(tokenizer_gguf):
        raise FileNotFoundError("%s is missing: run scripts/get-model.sh" % tokenizer_gguf)
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    tensors = read_safetensors(os.path.join(src, "model.safetensors"))
    tmp = out + ".part"
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name(cfg.get("_name_or_path", os.path.basename(os.path.normpath(src))))
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_rope_dimension_count(head_dim)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    r = gguf.GGUFReader(tokenizer_gguf)
    for key in TOKENIZER_KEYS:
        copy_field(w, r, key)
    for hf, a in tensors.items():
        name = gguf_name(hf)
        if a.ndim == 1:
            a = np.asarray(a, np.float32)
        elif name.endswith("attn_q.weight"):
            a = hf_to_gguf_rows(a, heads)
        elif name.endswith("attn_k.weight"):
            a = hf_to_gguf_rows(a, kv_heads)
        w.add_tensor(name, a)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="a folder written by scripts/synth-model.py (F16 or F32)")
    ap.add_argument("out", help="the GGUF file to write (appears only when complete)")
    a = ap.parse_args(argv)
    try:
        convert(a.src, a.out)
    except (OSError, ValueError, KeyError) as e:
        sys.exit("synth-gguf: %s" % e)
    print("synth-gguf: %s: %.2f GB" % (a.out, os.path.getsize(a.out) / 1e9))


if __name__ == "__main__":
    main()
