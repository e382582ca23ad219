"""tests/test_gguf_write.py — model/gguf_write.c (mdl_gguf_out) against gguf-py's
GGUFReader, numpy, bitplan's own reader and, when it is installed, llama.cpp.

  1. GGUF sources copied tensor by tensor with their bytes unchanged: every
     metadata key/value (types and arrays included) and every tensor (name, type,
     shape, bytes) equals the source's; bitplan's reader sees the same model;
     metadata set, replaced and deleted on the way;
  2. a safetensors tiny model written as F32 GGUF: the llama keys and the
     tokenizer llama.cpp needs, tensors equal to numpy's (q/k rows in GGUF order);
  3. errors: a missing folder, a directory or a pipe as the path, a wrong declared
     size, too few or too many bytes, a write error (file size limit), abort: a
     one-line message, nothing at the path (an older file there untouched), no
     temporary file left.

The writer is driven by tests/tool_gguf_write (built by the Makefile).
"""

import json
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_model  # noqa: E402

gguf = pytest.importorskip("gguf")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BITPLAN_BUILD", "build")
TOOL = os.path.join(ROOT, BUILD, "tests", "tool_gguf_write")
DEQUANT = os.path.join(ROOT, BUILD, "tests", "tool_dequant")
REAL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def run(*args, preexec_fn=None):
    assert os.path.exists(TOOL), "build %s first (make BUILD=%s %s)" % (TOOL, BUILD, os.path.relpath(TOOL, ROOT))
    return subprocess.run([TOOL, *map(str, args)], capture_output=True, text=True, preexec_fn=preexec_fn)


def write(*args):
    r = run(*args)
    assert r.returncode == 0, r.stderr
    return r


def dequant_tool(*args):
    r = subprocess.run([DEQUANT, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def fields(reader):
    """name -> (value types, raw bytes of every part): the encoding as stored."""
    return {k: ([int(t) for t in f.types], [bytes(p.tobytes()) for p in f.parts]) for k, f in reader.fields.items()}


def tensors(reader):
    return [(t.name, int(t.tensor_type), [int(x) for x in t.shape], bytes(np.ascontiguousarray(t.data).tobytes()))
            for t in reader.tensors]


def assert_same_gguf(src, out):
    a, b = gguf.GGUFReader(src), gguf.GGUFReader(out)
    assert list(fields(a)) == list(fields(b))  # same keys, same order
    assert fields(a) == fields(b)
    assert a.alignment == b.alignment
    assert tensors(a) == tensors(b)
    for t in b.tensors:
        assert (t.data_offset - b.data_offset) % b.alignment == 0
    assert dequant_tool(out, "--tensors") == dequant_tool(src, "--tensors")
    assert dequant_tool(out, "--config") == dequant_tool(src, "--config")


def leftovers(folder, keep=()):
    return sorted(set(os.listdir(folder)) - set(keep))


# ==== 1. GGUF sources, bytes unchanged ====

@pytest.fixture(scope="module")
def real_copy(tmp_path_factory):
    if not os.path.exists(REAL):
        pytest.skip("real model missing: run scripts/get-model.sh (make model)")
    out = tmp_path_factory.mktemp("real") / "copy.gguf"
    write(REAL, out, "--rows", 100)
    return out


def test_real_model_copy_equals_source(real_copy):
    assert_same_gguf(REAL, real_copy)
    assert leftovers(real_copy.parent) == ["copy.gguf"]


def test_real_model_copy_is_byte_identical(real_copy):
    """The source was written by gguf-py with the same layout rules (order,
    alignment 32, padding): the copy is the same file."""
    with open(REAL, "rb") as f, open(real_copy, "rb") as g:
        while True:
            a, b = f.read(1 << 24), g.read(1 << 24)
            assert a == b
            if not a:
                break


@pytest.mark.parametrize("dtype", ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"])
def test_tiny_gguf_copy_equals_source(dtype, tmp_path):
    src, out = tmp_path / "src.gguf", tmp_path / "out.gguf"
    tiny_model.write_tiny_gguf(str(src), dtype=dtype, tied=False)
    write(src, out, "--rows", 1)
    assert_same_gguf(src, out)


def test_k_quant_blocks_copied(tmp_path):
    """Q4_K/Q5_K/Q6_K tensors (random valid blocks) keep their bytes."""
    rng = np.random.default_rng(3)
    raw = {}
    for name, qt, nbytes in (("blk.0.ffn_gate.weight", "Q4_K", 144), ("blk.0.ffn_up.weight", "Q5_K", 176),
                             ("blk.1.ffn_down.weight", "Q6_K", 210)):
        blocks = rng.integers(0, 256, (256, nbytes), dtype=np.uint8)  # 256 x 256 values
        blocks[:, :2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)  # a finite d (first fp16 of each block)
        raw[name] = (blocks, qt)
    src, out = tmp_path / "src.gguf", tmp_path / "out.gguf"
    tiny_model.write_tiny_gguf(str(src), dim=256, hidden=256, n_heads=4, n_kv_heads=2, raw=raw)
    write(src, out, "--rows", 3)
    assert_same_gguf(src, out)


def test_metadata_set_replace_delete(tmp_path):
    src, out = tmp_path / "src.gguf", tmp_path / "out.gguf"
    tiny_model.write_tiny_gguf(str(src))
    write(src, out, "--set-u32", "general.file_type", 15, "--set-u32", "general.quantization_version", 2,
          "--set-str", "general.name", "renamed", "--set-f32", "llama.rope.freq_base", 500000,
          "--set-bool", "tokenizer.ggml.add_bos_token", 1, "--set-i32", "test.signed", -7,
          "--del", "tokenizer.ggml.unknown_token_id")
    a, b = gguf.GGUFReader(str(src)), gguf.GGUFReader(str(out))
    fa, fb = fields(a), fields(b)
    changed = {"general.name", "llama.rope.freq_base", "tokenizer.ggml.add_bos_token", "GGUF.kv_count"}
    for k in fa:
        if k not in changed and k != "tokenizer.ggml.unknown_token_id":
            assert fa[k] == fb[k], k
    assert "tokenizer.ggml.unknown_token_id" not in fb
    get = lambda k: b.fields[k].contents()  # noqa: E731
    assert get("general.file_type") == 15 and b.fields["general.file_type"].types == [gguf.GGUFValueType.UINT32]
    assert get("general.quantization_version") == 2
    assert get("general.name") == "renamed"
    assert get("llama.rope.freq_base") == 500000.0
    assert get("tokenizer.ggml.add_bos_token") is True
    assert get("test.signed") == -7 and b.fields["test.signed"].types == [gguf.GGUFValueType.INT32]
    # replaced keys keep their place; new ones come last
    keys = [k for k in fb if not k.startswith("GGUF.")]
    assert keys.index("general.name") == [k for k in fa if not k.startswith("GGUF.")].index("general.name")
    assert keys[-3:] == ["general.file_type", "general.quantization_version", "test.signed"]
    assert tensors(a) == tensors(b)


def test_alignment_from_metadata(tmp_path):
    src, out = tmp_path / "src.gguf", tmp_path / "out.gguf"
    tiny_model.write_tiny_gguf(str(src), dtype="Q8_0")
    write(src, out, "--set-u32", "general.alignment", 4096)
    b = gguf.GGUFReader(str(out))
    assert b.alignment == 4096 and b.data_offset % 4096 == 0
    for t in b.tensors:
        assert t.data_offset % 4096 == 0
    assert os.path.getsize(out) % 4096 == 0
    assert tensors(gguf.GGUFReader(str(src))) == tensors(b)
    assert dequant_tool(out, "--tensors") == dequant_tool(src, "--tensors")
    r = run(src, tmp_path / "bad.gguf", "--set-u32", "general.alignment", 48)
    assert r.returncode == 1 and "general.alignment 48 is not a power of two" in r.stderr
    assert leftovers(tmp_path) == ["out.gguf", "src.gguf"]


# ==== 2. A safetensors source as F32 GGUF ====

LLAMA_KEYS = {
    "general.architecture": "llama", "llama.context_length": tiny_model.CTX, "llama.embedding_length": 64,
    "llama.block_count": 2, "llama.feed_forward_length": 128, "llama.attention.head_count": 4,
    "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 16, "llama.vocab_size": 512,
    "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",  # llama.cpp's name; bitplan reads both
    "tokenizer.ggml.bos_token_id": tiny_model.BOS_ID, "tokenizer.ggml.eos_token_id": tiny_model.EOS_ID,
    "tokenizer.ggml.add_bos_token": False,
}


@pytest.fixture(scope="module")
def st_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("st")
    w = tiny_model.write_tiny_safetensors(str(d / "model"), tied=False)
    with open(d / "model" / "tokenizer_config.json", "w") as f:
        json.dump({"chat_template": "{{ messages }}", "add_bos_token": False}, f)
    out = d / "out.gguf"
    write(d / "model", out, "--f32", "--rows", 5)
    return w, out


def test_safetensors_metadata(st_model):
    _, out = st_model
    r = gguf.GGUFReader(str(out))
    for k, v in LLAMA_KEYS.items():
        assert r.fields[k].contents() == v, k
    assert r.fields["llama.attention.layer_norm_rms_epsilon"].contents() == pytest.approx(tiny_model.NORM_EPS)
    assert r.fields["llama.rope.freq_base"].contents() == tiny_model.ROPE_THETA
    tokens, types, merges = tiny_model.tiny_vocab(512)
    assert r.fields["tokenizer.ggml.tokens"].contents() == tokens
    assert r.fields["tokenizer.ggml.token_type"].contents() == types
    assert r.fields["tokenizer.ggml.merges"].contents() == merges
    assert r.fields["tokenizer.chat_template"].contents() == "{{ messages }}"
    assert r.fields["general.name"].contents() == "model"
    # the same values as the GGUF tiny_model writes (as convert_hf_to_gguf would)
    tiny_model.write_tiny_gguf(str(out) + ".ref.gguf", tied=False)
    ref = gguf.GGUFReader(str(out) + ".ref.gguf")
    for k, f in ref.fields.items():
        if k.startswith("llama.") or k in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            assert r.fields[k].contents() == f.contents(), k
            assert r.fields[k].types == f.types, k


def test_safetensors_tensors_equal_numpy(st_model):
    w, out = st_model
    r = gguf.GGUFReader(str(out))
    got = {t.name: t for t in r.tensors}
    assert sorted(got) == sorted(w)
    for name, a in w.items():
        t = got[name]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert [int(x) for x in t.shape] == list(a.shape[::-1]), name  # ne[0] = cols
        assert np.array_equal(np.asarray(t.data).reshape(a.shape), a), name  # q/k in GGUF RoPE order


def test_safetensors_output_reads_back(st_model):
    _, out = st_model
    cfg = dict(line.split(" ", 1) for line in dequant_tool(out, "--config").splitlines())
    assert cfg["arch"] == "llama"
    assert cfg["n_layers"] == "2" and cfg["vocab_size"] == "512" and cfg["tied_embeddings"] == "0"


def test_safetensors_vocab_padded_to_embedding_rows(tmp_path):
    """A tokenizer with fewer tokens than embedding rows (as Qwen's) is padded
    with "[PADi]" tokens of type UNUSED: llama.cpp wants one token per row."""
    d = tmp_path / "model"
    tiny_model.write_tiny_safetensors(str(d))
    with open(d / "tokenizer.json", encoding="utf-8") as f:
        tj = json.load(f)
    vocab = tj["model"]["vocab"]
    drop = {t for t, i in vocab.items() if i >= 510}
    tj["model"]["vocab"] = {t: i for t, i in vocab.items() if i < 510}
    tj["model"]["merges"] = [m for m in tj["model"]["merges"] if m.replace(" ", "") not in drop]
    with open(d / "tokenizer.json", "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    write(d, tmp_path / "out.gguf", "--f32")
    r = gguf.GGUFReader(str(tmp_path / "out.gguf"))
    toks, types = r.fields["tokenizer.ggml.tokens"].contents(), r.fields["tokenizer.ggml.token_type"].contents()
    assert len(toks) == 512 and toks[510:] == ["[PAD510]", "[PAD511]"] and types[510:] == [5, 5]


def test_safetensors_sentencepiece_vocab(tmp_path):
    """A byte-fallback BPE tokenizer.json becomes tokenizer.ggml.model "llama"
    with scores, <0xXX> pieces as BYTE tokens, no merges, add_space_prefix."""
    d = tmp_path / "model"
    tiny_model.write_tiny_safetensors(str(d))
    with open(d / "tokenizer.json", encoding="utf-8") as f:
        tj = json.load(f)
    vocab = tj["model"]["vocab"]
    byte_tok = next(t for t, i in vocab.items() if i == 300)
    del vocab[byte_tok]
    vocab["<0x0A>"] = 300
    tj["model"]["byte_fallback"] = True
    with open(d / "tokenizer.json", "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    write(d, tmp_path / "out.gguf", "--f32")
    r = gguf.GGUFReader(str(tmp_path / "out.gguf"))
    get = lambda k: r.fields[k].contents()  # noqa: E731
    assert get("tokenizer.ggml.model") == "llama" and get("tokenizer.ggml.pre") == "default"
    assert "tokenizer.ggml.merges" not in r.fields
    assert get("tokenizer.ggml.scores")[:3] == [0.0, -1.0, -2.0] and len(get("tokenizer.ggml.scores")) == 512
    types = get("tokenizer.ggml.token_type")
    assert types[300] == 6 and types[0] == 3 and types[299] == 1
    assert get("tokenizer.ggml.add_space_prefix") is True


# ==== 3. Errors ====

@pytest.fixture
def tiny(tmp_path):
    src = tmp_path / "src" / "tiny.gguf"
    src.parent.mkdir()
    tiny_model.write_tiny_gguf(str(src), dtype="Q8_0")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    return src, out_dir


def assert_failed(r, *words):
    assert r.returncode == 1, (r.returncode, r.stderr)
    msg = r.stderr.strip()
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


def test_missing_folder(tiny):
    src, out_dir = tiny
    path = out_dir / "nowhere" / "x.gguf"
    assert_failed(run(src, path), str(path), "No such file or directory")
    assert leftovers(out_dir) == []


def test_directory_and_pipe_as_path(tiny):
    src, out_dir = tiny
    assert_failed(run(src, out_dir), str(out_dir), "is a directory")
    fifo = out_dir / "pipe"
    os.mkfifo(fifo)
    assert_failed(run(src, fifo), str(fifo), "not a regular file")
    assert leftovers(out_dir) == ["pipe"]


def test_wrong_declared_size(tiny):
    src, out_dir = tiny
    path = out_dir / "x.gguf"
    assert_failed(run(src, path, "--fault", "size"), str(path), "token_embd.weight", "bytes declared", "Q8_0")
    assert leftovers(out_dir) == []


@pytest.mark.parametrize("fault, words", [("short", ["output_norm.weight", "got 255 of its 256 bytes"]),
                                          ("extra", ["1 bytes written after the last tensor"])])
def test_wrong_byte_count_leaves_old_file(tiny, fault, words):
    src, out_dir = tiny
    path = out_dir / "x.gguf"
    path.write_bytes(b"older file")
    assert_failed(run(src, path, "--fault", fault), str(path), *words)
    assert path.read_bytes() == b"older file"
    assert leftovers(out_dir) == ["x.gguf"]


def test_abort_leaves_nothing(tiny):
    src, out_dir = tiny
    r = run(src, out_dir / "x.gguf", "--fault", "abort")
    assert r.returncode == 0, r.stderr
    assert leftovers(out_dir) == []


def test_write_error(tiny):
    """A write that fails (here EFBIG from a file size limit; ENOSPC takes the same
    path) is reported with the path and the cause; nothing stays behind."""
    src, out_dir = tiny

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40000, 40000))

    path = out_dir / "x.gguf"
    assert_failed(run(src, path, preexec_fn=limit), str(path), "write failed", "File too large")
    assert leftovers(out_dir) == []


def test_replaces_existing_file(tiny):
    src, out_dir = tiny
    path = out_dir / "x.gguf"
    path.write_bytes(b"older file")
    write(src, path)
    assert_same_gguf(src, path)
    assert leftovers(out_dir) == ["x.gguf"]


# ==== 4. llama.cpp accepts the files (when llama-cpp-python is installed) ====

LOGITS = os.path.join(ROOT, BUILD, "tests", "tool_logits")


def llama_or_skip():
    try:
        import llama_cpp
    except ImportError:
        pytest.skip("llama_cpp (llama-cpp-python) is not installed: scripts/deps.sh installs it")
    return llama_cpp


def llama_logits(path, ids):
    llama_cpp = llama_or_skip()
    # an F32 KV cache (type 0; llama.cpp's default F16 cache rounds K and V)
    m = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, type_k=0, type_v=0)
    m.eval(ids)
    return m, np.array(m.scores[:len(ids)], dtype=np.float32)


def bitplan_logits(path, ids, tmp_path):
    out = tmp_path / "logits.f32"
    r = subprocess.run([LOGITS, str(path), str(out), *map(str, ids)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return np.fromfile(out, dtype=np.float32).reshape(len(ids), -1)


def test_llama_cpp_runs_real_copy(real_copy, tmp_path):
    """llama.cpp loads the copy and agrees with bitplan's forward pass on the
    source (the Q4_1 products differ in rounding: llama.cpp quantizes activations)."""
    llama_or_skip()
    import llama_cpp
    vocab = llama_cpp.Llama(model_path=str(real_copy), n_ctx=64, vocab_only=True, verbose=False)
    ids = vocab.tokenize(b"The capital of France is", add_bos=False)
    m, got = llama_logits(real_copy, ids)
    assert m.n_vocab() == 49152
    ref = bitplan_logits(REAL, ids, tmp_path)
    assert np.all(np.isfinite(got))
    for a, b in zip(got, ref):
        assert np.corrcoef(a, b)[0, 1] > 0.99
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.8


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llama_cpp_runs_safetensors_export(arch, tmp_path):
    """The F32 export of a safetensors model gives llama.cpp the logits that
    llama.cpp computes from tiny_model's own GGUF of the same weights (for qwen2
    that file keeps HF q/k rows and runs as llama.cpp's "qwen2", NeoX RoPE; the
    export is "llama" with q/k/v biases and interleaved rows); for llama also the
    logits bitplan computes from the source. (bitplan's own qwen2 forward pass
    differs from both: it is not the reference here.)"""
    llama_or_skip()
    d = tmp_path / "model"
    tiny_model.write_tiny_safetensors(str(d), arch=arch, tied=arch == "llama")
    ref_src, ref = tmp_path / "ref_src.gguf", tmp_path / "ref.gguf"
    tiny_model.write_tiny_gguf(str(ref_src), arch=arch, tied=arch == "llama")
    write(ref_src, ref, "--set-str", "tokenizer.ggml.pre", "gpt-2" if arch == "llama" else "qwen2")  # llama.cpp's names
    out = tmp_path / "out.gguf"
    write(d, out, "--f32")
    ids = [5, 77, 300, 12, 9, 511, 4, 260]
    m, got = llama_logits(out, ids)
    assert m.n_vocab() == 512
    _, want = llama_logits(ref, ids)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    if arch == "llama":
        np.testing.assert_allclose(got, bitplan_logits(d, ids, tmp_path), rtol=0, atol=1e-5)
