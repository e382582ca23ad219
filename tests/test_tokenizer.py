"""tests/test_tokenizer.py — bitplan's tokenizer against Hugging Face `tokenizers`.

The reference is built from the same vocabulary and merges, read from the GGUF
file with the `gguf` package, with the pre-tokenizer SmolLM2 uses: Digits
(individual_digits) then ByteLevel (GPT-2's regex, no prefix space); llama.cpp's
"smollm" pre-tokenizer is the same split. bitplan is driven through
`bitplan tokenize MODEL` (model/ reads the vocabulary) and, for many short
strings at once and for vocabularies no model file carries, through
tests/tool_tokenize (a vocabulary dump written here).

Checked: real texts (Python docs, an Austen novel), tricky strings (digits,
Unicode, emoji, white space runs, CRLF, contractions), special tokens, BOS,
random strings, the Unicode class table at every range boundary, the gpt2 /
llama-bpe / qwen2 pre-tokenizers (HF Split with their regular expressions),
SentencePiece-style BPE with byte fallback (HF BPE built the way HF converts a
SentencePiece model: every pair whose concatenation is a piece, by score), and
decode(encode(x)) == x.

What it must never do: use bitplan's code for the reference, or the network.
"""

import os
import random
import re
import struct
import subprocess

import pytest

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BITPLAN_BUILD", "build")
BITPLAN = os.path.join(ROOT, BUILD, "bitplan")
TOOL = os.path.join(ROOT, BUILD, "tests", "tool_tokenize")
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
DATA = os.path.join(ROOT, "data")

DOCS = ["tutorial_introduction", "library_re", "library_stdtypes", "reference_lexical_analysis",
        "howto_unicode", "library_codecs", "whatsnew_3.11", "c-api_unicode", "faq_programming"]

TRICKY = [
    "", " ", "  ", "\n", "a", "Hello, world!", "hello  world   !", "   leading and trailing   ",
    "1234567890 3.14159 1,000,000 0x1F 2024-11-27 v1.2.3 ½ ² ٣٤٥ Ⅻ",
    "don't can't I'm you're we've they'll he'd It'S 'LL ''s",
    "naïve café résumé Ærøskøbing Zürich straße ΑΒΓ αβγ Привет мир",
    "日本語のテキスト、中文文本。한국어 텍스트", "عربي עברית हिन्दी ไทย",
    "emoji 🤗👍🏽🏳️‍🌈 👨‍👩‍👧‍👦 ❤️ 🇫🇷", "zero\u200bwidth\u200djoiner\ufeffbom",
    "tabs\tand\t\ttabs", "crlf\r\nline\r\n\r\nend\r\n", "mixed \t\n \r\n\t  white", "\n\n\n\n",
    " " * 50 + "x", "x" + " " * 50, "a" * 300, "!" * 100, "1" * 100,
    "def f(x):\n    return x ** 2  # square\n", "<|im_start|>user\nhi<|im_end|>",
    "\u00a0nbsp\u2003em\u3000ideographic", "\x0b\x0c vertical \x85 next line",
    "ctrl \x01\x02\x04\x06\x13\x1d\x7f chars", "<<<>>> [[]] {{}} ((()))", "http://example.com/a?b=c&d=e#f",
]

CHAT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n12 + 30 = 42.<|im_end|>\n"
        "<|endoftext|><repo_name>x<file_sep><jupyter_code>print(1)<empty_output>")

GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = LLAMA3_RE.replace(r"\p{N}{1,3}", r"\p{N}")

BYTES, SPM = 0, 1
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


# ==== Reading the vocabulary, and the references ====

def need(path, what):
    assert os.path.exists(path), f"{path} is missing: {what}"
    return path


class Vocab:
    """The GGUF tokenizer arrays, as the gguf package reads them."""

    def __init__(self, path):
        r = gguf.GGUFReader(path)
        self.model = r.fields["tokenizer.ggml.model"].contents()
        self.pre = r.fields["tokenizer.ggml.pre"].contents()
        self.tokens = r.fields["tokenizer.ggml.tokens"].contents()
        self.types = r.fields["tokenizer.ggml.token_type"].contents()
        self.merges = r.fields["tokenizer.ggml.merges"].contents()
        self.bos = r.fields["tokenizer.ggml.bos_token_id"].contents()
        self.eos = r.fields["tokenizer.ggml.eos_token_id"].contents()
        self.special = [t for t, ty in zip(self.tokens, self.types) if ty == CONTROL]


def hf_bytes(v, split_regex=None, ignore_merges=False, special=False):
    """HF byte-level BPE over v: SmolLM2's pre-tokenizer, or Split(regex) + ByteLevel."""
    bpe = models.BPE(vocab={t: i for i, t in enumerate(v.tokens)},
                     merges=[tuple(m.split(" ", 1)) for m in v.merges], ignore_merges=ignore_merges)
    tk = Tokenizer(bpe)
    if split_regex is None:
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    else:
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
                                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    if special:
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in v.special])
    return tk


@pytest.fixture(scope="module")
def vocab():
    return Vocab(need(MODEL, "run scripts/get-model.sh (make model)"))


@pytest.fixture(scope="module")
def hf(vocab):
    return hf_bytes(vocab)


# ==== Driving bitplan ====

def bitplan_ids(text, *flags, tmp_path):
    """Token ids from `bitplan tokenize MODEL --text FILE`, with its stderr count checked."""
    path = tmp_path / "text.txt"
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    p = subprocess.run([BITPLAN, "tokenize", MODEL, "--text", str(path), *flags], capture_output=True, check=True)
    ids = [int(x) for x in p.stdout.split()]
    assert p.stderr.decode().strip() == f"{len(ids)} tokens from {path.stat().st_size} bytes"
    return ids


def write_dump(path, kind, tokens, types, scores, merges, bos=-1, eos=-1, unk=-1, add_space_prefix=0, pre=""):
    """The vocabulary dump tests/tool_tokenize reads (format in its header)."""
    with open(path, "wb") as f:
        f.write(b"BPTOKV1\n")
        f.write(struct.pack("<7i", kind, len(tokens), len(merges), bos, eos, unk, add_space_prefix))
        f.write(struct.pack("<i", len(pre.encode())) + pre.encode())
        for t, ty, sc in zip(tokens, types, scores):
            b = t.encode()
            f.write(struct.pack("<i", len(b)) + b + struct.pack("<if", ty, sc))
        for m in merges:
            b = m.encode()
            f.write(struct.pack("<i", len(b)) + b)
    return path


def tool_encode(dump, texts, *flags):
    """One list of ids per text, from tool_tokenize."""
    data = b"".join(struct.pack("<I", len(b)) + b for b in (t.encode() for t in texts))
    p = subprocess.run([TOOL, str(dump), *flags], input=data, capture_output=True, check=True)
    lines = p.stdout.decode().split("\n")
    assert len(lines) == len(texts) + 1
    return [[int(x) for x in line.split()] for line in lines[:-1]]


def tool_decode(dump, id_lists):
    p = subprocess.run([TOOL, str(dump), "--decode"], input="".join(" ".join(map(str, ids)) + "\n" for ids in id_lists).encode(),
                       capture_output=True, check=True)
    out, pos = [], 0
    while pos < len(p.stdout):
        n = struct.unpack("<I", p.stdout[pos:pos + 4])[0]
        out.append(p.stdout[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


@pytest.fixture(scope="module")
def smol_dump(vocab, tmp_path_factory):
    def dump(pre):
        path = tmp_path_factory.mktemp("vocab") / f"{pre}.vocab"
        return write_dump(path, BYTES, vocab.tokens, vocab.types, [0.0] * len(vocab.tokens), vocab.merges,
                          bos=vocab.bos, eos=vocab.eos, pre=pre)
    return dump


def first_difference(a, b, tokens):
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"at token {i}: bitplan {[tokens[x] for x in a[max(0, i - 3):i + 4]]} vs HF {[tokens[x] for x in b[max(0, i - 3):i + 4]]}"


# ==== The real model's tokenizer ====

def test_model_declares_smollm_bytes(vocab):
    assert vocab.model == "gpt2" and vocab.pre == "smollm"
    assert len(vocab.tokens) == 49152 and len(vocab.merges) == 48900


def test_real_texts_match_hf(vocab, hf, tmp_path):
    paths = [os.path.join(DATA, "python-doc", d + ".txt") for d in DOCS] + [os.path.join(DATA, "austen", "persuasion.txt")]
    total_tokens = total_bytes = 0
    for path in paths:
        text = open(need(path, "run scripts/get-text.sh (make text)"), encoding="utf-8").read()
        ours, ref = bitplan_ids(text, tmp_path=tmp_path), hf.encode(text).ids
        assert ours == ref, f"{os.path.basename(path)}: {first_difference(ours, ref, vocab.tokens)}"
        total_tokens += len(ref)
        total_bytes += len(text.encode())
    assert total_tokens > 250_000 and total_bytes > 1_000_000   # the comparison covered real volume


def test_tricky_strings_match_hf(vocab, hf, tmp_path):
    for s in TRICKY:
        ours, ref = bitplan_ids(s, tmp_path=tmp_path), hf.encode(s).ids
        assert ours == ref, f"{s!r}: {first_difference(ours, ref, vocab.tokens)}"


def test_special_tokens_and_bos(vocab, tmp_path):
    ref = hf_bytes(vocab, special=True).encode(CHAT).ids
    ours = bitplan_ids(CHAT, "--special", tmp_path=tmp_path)
    assert ours == ref, first_difference(ours, ref, vocab.tokens)
    assert ours.count(vocab.tokens.index("<|im_start|>")) == 3 and ours.count(vocab.eos) == 3
    # without --special the same text is plain text, as HF without added tokens reads it
    assert bitplan_ids(CHAT, tmp_path=tmp_path) == hf_bytes(vocab).encode(CHAT).ids
    assert bitplan_ids("hello", "--bos", tmp_path=tmp_path) == [vocab.bos] + hf_bytes(vocab).encode("hello").ids


def test_pieces_output(vocab, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Hi\tthere\n")
    p = subprocess.run([BITPLAN, "tokenize", MODEL, "--text", str(path), "--pieces"], capture_output=True, check=True)
    rows = [line.split("\t", 1) for line in p.stdout.decode().splitlines()]
    assert "".join(piece for _, piece in rows) == "Hi\\tthere\\n"
    assert [int(i) for i, _ in rows] == hf_bytes(vocab).encode("Hi\tthere\n").ids


def test_cli_errors(tmp_path):
    for args in ([], [MODEL], [MODEL, "--string", "a", "--text", "x"], [MODEL, "--text", str(tmp_path / "none")],
                 [str(tmp_path), "--string", "a"], [MODEL, "--frobnicate"]):
        p = subprocess.run([BITPLAN, "tokenize", *args], capture_output=True)
        assert p.returncode != 0 and p.stdout == b""
        lines = p.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bitplan tokenize: "), lines


def test_random_strings_match_hf(vocab, hf, smol_dump):
    rng = random.Random(7)
    alphabet = list(" \t\n\r\x0b\x0c\x85\xa0\u2000\u3000'sStTrReEvVmMlLdD aZé1٣²½Ⅻ.,!?-_()[]{}<>|/\\\"#$%^&*~`"
                    "日本🤗👍🏽\u0301\u200d\ufeff") + ["<|im_start|>", "'ll", "'re", "'ve", "\r\n", "  "]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(5000)]
    ours = tool_encode(smol_dump("smollm"), texts)
    for s, a, b in zip(texts, ours, hf.encode_batch(texts)):
        assert a == b.ids, f"{s!r}: {first_difference(a, b.ids, vocab.tokens)}"


def test_gguf_and_dump_agree(vocab, smol_dump, tmp_path):
    """model/ hands tok_new the same vocabulary the gguf package reads."""
    text = open(os.path.join(DATA, "python-doc", "library_re.txt"), encoding="utf-8").read()
    assert bitplan_ids(text, tmp_path=tmp_path) == tool_encode(smol_dump("smollm"), [text])[0]


def unicode_boundaries():
    """Code points at both ends of every range of model/unicode.c's table, and just outside."""
    src = open(os.path.join(ROOT, "model", "unicode.c"), encoding="utf-8").read()
    cps = set()
    for lo, hi in re.findall(r"\{0x([0-9A-F]+), 0x([0-9A-F]+), [LNS]\}", src):
        cps.update((int(lo, 16) - 1, int(lo, 16), int(hi, 16), int(hi, 16) + 1))
    return sorted(c for c in cps if 0x80 <= c <= 0x10FFFF and not 0xD800 <= c <= 0xDFFF)


def test_unicode_classes_match_hf(vocab, hf, smol_dump):
    cps = unicode_boundaries()
    assert len(cps) > 2000
    rng = random.Random(3)
    cps += [c for c in (rng.randrange(0x80, 0x110000) for _ in range(5000)) if not 0xD800 <= c <= 0xDFFF]
    # the class decides the split: "a" X "b" is one piece only for letters, " X" joins only non-space
    texts = [f"a{chr(c)}b {chr(c)}{chr(c)}1{chr(c)}\t{chr(c)}" for c in cps]
    ours = tool_encode(smol_dump("smollm"), texts)
    bad = [f"U+{c:04X}" for c, a, b in zip(cps, ours, hf.encode_batch(texts)) if a != b.ids]
    assert not bad, f"{len(bad)} code points classed differently, e.g. {bad[:10]}"


@pytest.mark.parametrize("pre,regex,ignore_merges", [("gpt2", GPT2_RE, False), ("llama-bpe", LLAMA3_RE, True),
                                                     ("qwen2", QWEN2_RE, False)])
def test_other_pretokenizers_match_hf(vocab, smol_dump, pre, regex, ignore_merges):
    rng = random.Random(11)
    alphabet = list(" \t\n\r\x0b\xa0\u3000'sStTrReEvVmMlLdD aZé1٣²½.,!?-_()<>|/\"#~日🤗\u0301") + ["'LL", "\r\n", " \n"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
    texts += TRICKY + [open(os.path.join(DATA, "python-doc", d + ".txt"), encoding="utf-8").read() for d in DOCS[:3]]
    ref = hf_bytes(vocab, split_regex=regex, ignore_merges=ignore_merges)
    ours = tool_encode(smol_dump(pre), texts)
    for s, a, b in zip(texts, ours, ref.encode_batch(texts)):
        assert a == b.ids, f"{pre} {s[:60]!r}: {first_difference(a, b.ids, vocab.tokens)}"


def test_byte_level_round_trip(vocab, hf, smol_dump):
    texts = TRICKY + [open(os.path.join(DATA, "austen", "emma.txt"), encoding="utf-8").read()]
    dump = smol_dump("smollm")
    ids = tool_encode(dump, texts)
    # SmolLM2's vocabulary lacks 21 bytes (e.g. 0x04, 0xF1); text without them comes back exactly
    missing = {"\x04", "\x06", "\x13", "\x14", "\x16", "\x1d"}
    for s, got, i in zip(texts, tool_decode(dump, ids), ids):
        assert got.decode("utf-8") == hf.decode(i, skip_special_tokens=False)
        if not missing & set(s):
            assert got == s.encode()


# ==== SentencePiece-style BPE ====

SP = "\u2581"


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    """A small SentencePiece-style vocabulary trained here, as a dump and as HF's BPE."""
    text = open(need(os.path.join(DATA, "austen", "northanger_abbey.txt"), "make text"), encoding="utf-8").read()
    trainer = Tokenizer(models.BPE())
    trainer.normalizer = normalizers.Sequence([normalizers.Prepend(SP), normalizers.Replace(" ", SP)])
    from tokenizers import trainers
    trainer.train_from_iterator(text.split("\n")[:4000], trainers.BpeTrainer(vocab_size=500, show_progress=False,
                                                                       limit_alphabet=60))
    learned = sorted(trainer.get_vocab().items(), key=lambda kv: kv[1])
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + [t for t, _ in learned]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256 + [NORMAL] * len(learned)
    scores = [0.0] * 259 + [-float(i) for i in range(len(learned))]      # later pieces rank lower
    index = {t: i for i, t in enumerate(tokens)}
    # HF's SentencePiece conversion: every pair whose concatenation is a normal piece, best piece first
    merges = []
    for t, _ in learned:
        for k in range(1, len(t)):
            if t[:k] in index and t[k:] in index and index[t[:k]] >= 259 and index[t[k:]] >= 259:
                merges.append((scores[index[t]], index[t[:k]], index[t[k:]], t[:k], t[k:]))
    merges.sort(key=lambda m: (-m[0], m[1], m[2]))
    hf = Tokenizer(models.BPE(vocab=index, merges=[(a, b) for *_, a, b in merges], byte_fallback=True, unk_token="<unk>"))
    hf.normalizer = normalizers.Sequence([normalizers.Prepend(SP), normalizers.Replace(" ", SP)])
    hf.decoder = decoders.Sequence([decoders.Replace(SP, " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    dump = write_dump(tmp_path_factory.mktemp("spm") / "spm.vocab", SPM, tokens, types, scores, [],
                      bos=1, eos=2, unk=0, add_space_prefix=1)
    return dump, hf, tokens


def test_spm_matches_hf(spm):
    dump, hf, tokens = spm
    text = open(os.path.join(DATA, "austen", "persuasion.txt"), encoding="utf-8").read()
    rng = random.Random(5)
    texts = [t for t in TRICKY if t] + text.split("\n")[:3000] + [text[:200_000]]
    texts += ["".join(rng.choice("the and Ünïcødé 日本 🤗 ,.!  \t\n") for _ in range(rng.randint(1, 60))) for _ in range(2000)]
    ours = tool_encode(dump, texts)
    for s, a, b in zip(texts, ours, hf.encode_batch(texts)):
        assert a == b.ids, f"{s[:60]!r}: {first_difference(a, b.ids, tokens)}"
    # byte fallback was exercised, and decoding gives the text back
    assert any(tokens[i].startswith("<0x") for ids in ours for i in ids)
    for s, got in zip(texts, tool_decode(dump, ours)):
        assert got == s.encode()


def test_spm_bos(spm):
    dump, hf, _ = spm
    assert tool_encode(dump, ["Anne", ""], "--bos") == [[1] + hf.encode("Anne").ids, [1]]
