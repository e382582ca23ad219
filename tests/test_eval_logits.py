"""tests/test_eval_logits.py — reference logits saved once and read back, so that an
evaluation never holds two models: `bitplan eval REF --save-logits BASE` runs the
reference alone and writes its logits at every scored position; `bitplan eval MODEL
--ref-logits BASE` scores MODEL against them.

  (a) --ref-logits gives --ref's numbers bit for bit (perplexity, KL divergence, its
      standard error and top-1 agreement as the database records them, the
      reference's perplexity as printed): a packed model against its source, and
      two different tiny models;
  (b) the file is what the comment in runtime/eval.c says, read here independently:
      header fields, CRC-32s, length H + N * (4 * S * V + 4), the tokens' SHA-256
      (from `bitplan tokenize`); KL divergence, top-1 agreement and the reference's
      perplexity computed here in NumPy from two saved files agree with bitplan's;
  (c) a file saved for another text, ctx, chunk count, BOS choice or vocabulary is
      refused with one line naming what differs;
  (d) truncated, corrupt or foreign files are one-line errors, never a crash;
  (e) the file is written atomically: a failed or killed run leaves nothing (and
      no partial file) under the name, and an older file there stays intact;
  (f) --ref and --ref-logits exclude each other, --save-logits runs alone;
  (g) the real SmolLM2 (skipped when absent): the size formula at vocab 49152, and
      --ref-logits equals --ref (here the model against itself: KL exactly 0).
"""

import hashlib
import os
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, os.environ.get("BITPLAN_BUILD", "build"), "bitplan")
REAL_MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
REAL_TEXT = os.path.join(ROOT, "data", "heldout.txt")
CTX, CHUNKS = 64, 3


def run(*args, timeout=300):
    return subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def ok(*args):
    r = run(*args)
    assert r.returncode == 0, r.stderr
    return r


def refused(r, *words):
    """A clean one-line refusal naming every word."""
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bitplan eval: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def printed(out, name):
    m = re.search(r"^%s\s+(\S+)" % re.escape(name), out, re.M)
    assert m, "no '%s' in:\n%s" % (name, out)
    return m.group(1)


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    if not os.path.exists(BIN):
        pytest.fail("%s is missing: build first (make all)" % BIN)
    d = tmp_path_factory.mktemp("evallogits")
    w = {"dir": d, "a": d / "a.gguf", "b": d / "b.gguf", "text": d / "text.txt"}
    tiny_model.write_tiny_gguf(str(w["a"]), seed=5)
    tiny_model.write_tiny_gguf(str(w["b"]), seed=6)
    w["text"].write_text((tiny_model.TRAIN_TEXT.strip() + "\n") * 20)
    # a packed model of a: one 4-bit option for every tensor
    opts = d / "opts.txt"
    opts.write_text("4b-g64 4 4 0 64 z8\n")
    ok("measure", w["a"], "--calib", w["text"], "--db", d / "m.db", "--rows", 2, "--ctx", 64, "--options", opts)
    w["packed"] = d / "a.bp"
    ok("pack", w["a"], "--db", d / "m.db", "--uniform", "4b-g64", "-o", w["packed"])
    w["base"] = d / "a.logits"
    r = ok("eval", w["a"], "--text", w["text"], "--ctx", CTX, "--chunks", CHUNKS, "--save-logits", w["base"])
    w["save_out"] = r.stdout
    return w


def evals(db):
    con = sqlite3.connect(db)
    rows = con.execute("SELECT subject, ppl, ppl_stderr, kld, kld_stderr, top1, ref_path, tokens FROM evals"
                       " ORDER BY id").fetchall()
    con.close()
    return rows


# ==== (a) the same numbers as --ref ====

@pytest.mark.parametrize("subject", ["packed", "b"])
def test_ref_logits_equal_ref(w, subject):
    db = w["dir"] / ("eq-%s.db" % subject)
    common = ["eval", w[subject], "--text", w["text"], "--ctx", CTX, "--chunks", CHUNKS, "--db", db]
    with_model = ok(*common, "--ref", w["a"])
    with_file = ok(*common, "--ref-logits", w["base"])
    (s1, *v1), (s2, *v2) = evals(db)
    assert s1 == s2 and v1 == v2  # ppl, ppl_stderr, kld, kld_stderr, top1, ref_path, tokens: exactly
    assert v1[2] > 0 and 0 < v1[4] < 1  # a real difference, not a model against itself
    assert v2[5] == str(w["a"])  # the database names the model the logits came from
    for name in ("perplexity", "ref perplexity", "KL divergence", "top-1 agreement"):
        assert printed(with_model.stdout, name) == printed(with_file.stdout, name)
    # the reference's perplexity is the saving run's own
    assert printed(with_file.stdout, "ref perplexity") == printed(w["save_out"], "perplexity")
    assert str(w["base"]) in with_file.stdout


def test_save_prints_the_size(w):
    size = os.path.getsize(w["base"])
    line = [l for l in w["save_out"].splitlines() if l.startswith("saved logits")]
    assert len(line) == 1 and "--chunks" in line[0], w["save_out"]
    assert "%d chunks x %d positions x 512 logits" % (CHUNKS, CTX - 1 - CTX // 2) in line[0]
    assert "%.1f KiB" % (size / 1024) in line[0]
    r = ok("eval", "--help")
    assert "--save-logits" in r.stdout and "--ref-logits" in r.stdout and "--chunks limits it" in r.stdout


# ==== (b) the format, read independently ====

def read_file(path):
    data = open(path, "rb").read()
    assert data[:8] == b"BPLOGITS"
    version, H, V, ctx, first, S, bos, device, N, n_tokens = struct.unpack_from("<IIiiiiiIqq", data, 8)
    tok_sha = data[56:88]
    model_hash = data[88:152].rstrip(b"\0").decode()
    lm, lt = struct.unpack_from("<II", data, 152)
    model_path = data[160:160 + lm].decode()
    text_path = data[160 + lm:160 + lm + lt].decode()
    assert H == 164 + lm + lt
    assert struct.unpack_from("<I", data, H - 4)[0] == zlib.crc32(data[:H - 4])
    rec = 4 * S * V + 4
    assert len(data) == H + N * rec
    chunks = []
    for c in range(N):
        body = data[H + c * rec:H + c * rec + rec - 4]
        assert struct.unpack_from("<I", data, H + c * rec + rec - 4)[0] == zlib.crc32(body)
        chunks.append(np.frombuffer(body, dtype="<f4").reshape(S, V))
    return dict(version=version, V=V, ctx=ctx, first=first, S=S, bos=bos, device=device, N=N, n_tokens=n_tokens,
                tok_sha=tok_sha, model_hash=model_hash, model_path=model_path, text_path=text_path,
                chunks=chunks)


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def test_file_format(w):
    f = read_file(w["base"])
    assert f["version"] == 1 and f["V"] == 512 and f["ctx"] == CTX and f["N"] == CHUNKS
    assert f["first"] == CTX // 2 and f["S"] == CTX - 1 - CTX // 2 and f["bos"] == -1 and f["device"] == 0
    assert f["model_hash"] == hashlib.sha256(w["a"].read_bytes()).hexdigest()
    assert f["model_path"] == str(w["a"]) and f["text_path"] == str(w["text"])
    ids = [int(t) for t in ok("tokenize", w["a"], "--text", w["text"]).stdout.split()]
    assert f["n_tokens"] == len(ids)
    assert f["tok_sha"] == hashlib.sha256(np.array(ids, dtype="<i4").tobytes()).digest()


def test_numbers_from_two_files(w):
    """KL(a || b), top-1 agreement and a's perplexity from the files' logits, in NumPy."""
    base_b = w["dir"] / "b.logits"
    ok("eval", w["b"], "--text", w["text"], "--ctx", CTX, "--chunks", CHUNKS, "--save-logits", base_b)
    fa, fb = read_file(w["base"]), read_file(base_b)
    ids = np.array([int(t) for t in ok("tokenize", w["a"], "--text", w["text"]).stdout.split()])
    kl, same, nll = [], 0, []
    for c in range(CHUNKS):
        la, lb = log_softmax(fa["chunks"][c]), log_softmax(fb["chunks"][c])
        targets = ids[c * CTX + CTX // 2 + 1:(c + 1) * CTX]
        kl.extend((np.exp(la) * (la - lb)).sum(axis=1))
        same += int((fa["chunks"][c].argmax(axis=1) == fb["chunks"][c].argmax(axis=1)).sum())
        nll.extend(-la[np.arange(len(targets)), targets])
    db = w["dir"] / "numpy.db"
    r = ok("eval", w["b"], "--text", w["text"], "--ctx", CTX, "--chunks", CHUNKS, "--ref-logits", w["base"], "--db", db)
    (_, _, _, kld, _, top1, _, tokens), = evals(db)
    assert tokens == len(kl)
    assert kld == pytest.approx(np.mean(kl), rel=1e-9)
    assert top1 == same / len(kl)
    assert float(printed(r.stdout, "ref perplexity")) == pytest.approx(np.exp(np.mean(nll)), abs=1e-4)


# ==== (c) another evaluation's file ====

@pytest.mark.parametrize("change, words", [
    ({"--ctx": 128}, ["ctx 64 there, 128 here"]),
    ({"--chunks": 2}, ["3 chunks there, 2 here"]),
    ({"--bos": None}, ["BOS none there"]),
    ({"--text": "other.txt"}, ["another text or tokenizer", "from '%s'"]),
])
def test_another_evaluation_is_refused(w, change, words):
    args = {"--text": w["text"], "--ctx": CTX, "--chunks": CHUNKS}
    if "--text" in change:  # the same text less one copy of it
        change = {"--text": w["dir"] / change["--text"]}
        change["--text"].write_text((tiny_model.TRAIN_TEXT.strip() + "\n") * 19)
    args.update(change)
    argv = [x for k, v in args.items() for x in ([k] if v is None else [k, v])]
    words = [x % w["text"] if "%s" in x else x for x in words]
    refused(run("eval", w["b"], *argv, "--ref-logits", w["base"]), "a.logits was saved for another evaluation", *words)


def test_another_vocabulary_is_refused(w):
    v = w["dir"] / "v400.gguf"
    tiny_model.write_tiny_gguf(str(v), seed=5, vocab=400)
    refused(run("eval", v, "--text", w["text"], "--ctx", CTX, "--chunks", CHUNKS, "--ref-logits", w["base"]),
            "vocabulary 512 there, 400 here")


# ==== (d) broken files ====

def broken(w, name, data):
    p = w["dir"] / name
    p.write_bytes(data)
    return run("eval", w["b"], "--text", w["text"], "--ctx", CTX, "--chunks", CHUNKS, "--ref-logits", p)


def test_truncated_files_are_refused(w):
    data = w["base"].read_bytes()
    H = struct.unpack_from("<I", data, 12)[0]
    for n in (len(data) - 1, len(data) // 2, H + 10, H, H - 1, 100):
        refused(broken(w, "trunc-%d.logits" % n, data[:n]), "truncated")
    refused(broken(w, "empty.logits", b""), "empty")
    refused(broken(w, "long.logits", data + data[-100:]), "100 more than its header says")


def test_corrupt_files_are_refused(w):
    data = bytearray(w["base"].read_bytes())
    H = struct.unpack_from("<I", data, 12)[0]
    rec = (len(data) - H) // CHUNKS
    for at, word in ((20, "corrupt header"), (100, "corrupt header"), (H + 5, "chunk 1 of 3 is corrupt"),
                     (H + 2 * rec + 7, "chunk 3 of 3 is corrupt"), (len(data) - 1, "chunk 3 of 3 is corrupt")):
        bad = bytearray(data)
        bad[at] ^= 0x10
        refused(broken(w, "bad-%d.logits" % at, bytes(bad)), word)
    refused(broken(w, "foreign.logits", w["text"].read_bytes()), "not a reference logits file")
    bad = bytearray(data)
    bad[8] = 2  # version 2, checksum fixed up: still refused, by version
    struct.pack_into("<I", bad, H - 4, zlib.crc32(bytes(bad[:H - 4])))
    refused(broken(w, "v2.logits", bytes(bad)), "version 2")
    refused(run("eval", w["b"], "--text", w["text"], "--ref-logits", w["dir"] / "absent.logits"), "cannot open")


# ==== (e) atomic writes ====

def leftovers(d, name):
    return sorted(f.name for f in d.iterdir() if f.name.startswith(name + ".tmp."))


def test_failed_save_leaves_nothing(w):
    d = w["dir"]
    way = d / "dir.logits"
    way.mkdir()  # a folder in the way: refused before the run, and left as it was
    line = refused(run("eval", w["a"], "--text", w["text"], "--ctx", CTX, "--chunks", CHUNKS, "--save-logits", way),
                   "is a directory")
    assert way.is_dir() and not list(way.iterdir()) and leftovers(d, "dir.logits") == [], line
    short = d / "short.txt"
    short.write_text("too short")
    refused(run("eval", w["a"], "--text", short, "--ctx", CTX, "--save-logits", d / "short.logits"))
    assert not (d / "short.logits").exists() and leftovers(d, "short.logits") == []
    refused(run("eval", w["a"], "--text", w["text"], "--ctx", CTX, "--save-logits", d / "no" / "such" / "x.logits"),
            "cannot create")


def test_kill_leaves_no_partial_file(w):
    d = w["dir"]
    big = d / "big.gguf"  # slow enough to be killed while writing: seconds for the whole text
    tiny_model.write_tiny_gguf(str(big), n_layers=6, dim=256, hidden=512, n_heads=4, n_kv_heads=2, vocab=512, seed=3)
    text = d / "long.txt"
    text.write_text((tiny_model.TRAIN_TEXT.strip() + "\n") * 100)  # ~1100 chunks of 64
    out = d / "killed.logits"
    old = b"an older file, which must survive"
    kills = 0
    for delay in (0.0, 0.2, 0.5):
        out.write_bytes(old)
        p = subprocess.Popen([BIN, "eval", str(big), "--text", str(text), "--ctx", "64", "--save-logits", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.time()
        while p.poll() is None and not leftovers(d, "killed.logits") and time.time() - t0 < 60:
            time.sleep(0.002)
        time.sleep(delay)  # kill once the temporary file is being written
        p.send_signal(signal.SIGKILL)
        p.wait()
        if p.returncode == -signal.SIGKILL:
            kills += 1
            assert out.read_bytes() == old
        for f in leftovers(d, "killed.logits"):
            os.unlink(d / f)
    assert kills >= 2


# ==== (f) options that exclude each other ====

def test_exclusive_options(w):
    base = ["eval", w["b"], "--text", w["text"], "--ctx", CTX]
    refused(run(*base, "--ref", w["a"], "--ref-logits", w["base"]), "--ref and --ref-logits exclude each other")
    refused(run(*base, "--ref", w["a"], "--save-logits", w["dir"] / "x.logits"), "--save-logits", "--ref")
    refused(run(*base, "--ref-logits", w["base"], "--save-logits", w["dir"] / "x.logits"), "--ref-logits")
    assert not (w["dir"] / "x.logits").exists()


# ==== (g) the real model ====

def test_real_model(tmp_path):
    if not (os.path.exists(REAL_MODEL) and os.path.exists(REAL_TEXT)):
        pytest.skip("models/SmolLM2-135M-Instruct.Q4_1.gguf or data/heldout.txt is absent (make model text)")
    base = tmp_path / "smol.logits"
    args = ["--text", REAL_TEXT, "--ctx", 64, "--chunks", 2]
    saved = ok("eval", REAL_MODEL, *args, "--save-logits", base)
    H = 164 + len(REAL_MODEL.encode()) + len(REAL_TEXT.encode())
    assert os.path.getsize(base) == H + 2 * (4 * 31 * 49152 + 4)  # 12.2 MB
    assert "2 chunks x 31 positions x 49152 logits" in saved.stdout
    db = tmp_path / "smol.db"
    a = ok("eval", REAL_MODEL, *args, "--ref", REAL_MODEL, "--db", db)
    b = ok("eval", REAL_MODEL, *args, "--ref-logits", base, "--db", db)
    (_, *v1), (_, *v2) = evals(db)
    assert v1 == v2 and v1[2] == 0.0 and v1[4] == 1.0
    assert printed(a.stdout, "ref perplexity") == printed(b.stdout, "ref perplexity") == printed(saved.stdout,
                                                                                                 "perplexity")
