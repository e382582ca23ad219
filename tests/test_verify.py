"""tests/test_verify.py — the integrity of packed files (pack/FORMAT.md, version 2):
data_offsets checked exactly, per-tensor XXH3-64 checksums, `bitplan verify`.

On a tiny model (tests/tiny_model.py) measured with one option and packed:
  (a) the checksums in the file are the XXH3-64 of every tensor's bytes, computed
      here by the xxhash package over the bytes the header points to, and name
      every tensor; a pristine file verifies (exit 0) and runs;
  (b) bytes flipped inside a tensor's data (4 KiB, or a single bit): `verify` names
      that tensor and only it, exit 1; eval and generate refuse the file with one
      line naming the file and the tensor, and print nothing on stdout;
  (c) data_offsets that overlap (a tensor grown into the next, two tensors at the
      same offsets) or leave a hole (a tensor dropped from the header, bytes after
      the last tensor) are refused, naming the tensors; a plain safetensors model
      with overlapping tensors is refused too;
  (d) a version-1 file (checksums stripped, format_version 1, header rewritten)
      loads and generates what the version-2 file does, and `verify` says it has no
      checksums; version 2 without checksums, or with a bad "checksums" entry, is
      refused;
  (e) a GGUF file: `verify` runs the reader's structural checks.

What it must never do: take a checksum from bitplan as the reference.
"""

import json
import os
import struct
import subprocess
import sys

import pytest
import xxhash

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BITPLAN_BUILD", "build")
BIN = os.path.join(ROOT, BUILD, "bitplan")

OPTIONS = "# name lo hi share group fmt\n4b-g32 4 4 0 32 z8\n"
MODEL = dict(n_layers=2, dim=64, hidden=128, n_heads=4, n_kv_heads=2, vocab=512, seed=7)
GEN = ["--prompt", "The quick brown", "-n", "8", "--temp", "0"]


def run(cmd, args, check=True):
    p = subprocess.run([BIN, cmd] + [str(a) for a in args], capture_output=True, text=True, errors="replace")
    if check and p.returncode != 0:
        raise AssertionError("bitplan %s failed: %s" % (cmd, p.stderr))
    return p


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    if not os.path.exists(BIN):
        pytest.fail("%s is missing: build first (make BUILD=%s)" % (BIN, BUILD))
    d = tmp_path_factory.mktemp("verify")
    w = {"dir": d, "model": d / "tiny.gguf", "db": d / "tiny.db", "packed": d / "tiny.bp"}
    (d / "opts.txt").write_text(OPTIONS)
    (d / "calib.txt").write_text(tiny_model.TRAIN_TEXT * 4)
    tiny_model.write_tiny_gguf(str(w["model"]), **MODEL)
    run("measure", [w["model"], "--calib", d / "calib.txt", "--db", w["db"], "--options", d / "opts.txt", "--rows", 2,
                    "--ctx", 32, "--threads", 2])
    run("pack", [w["model"], "--db", w["db"], "--uniform", "4b-g32", "--hessians", "full", "-o", w["packed"]])
    return w


# ==== The file, read independently ====

def read_file(path):
    """(header dict, data buffer bytes)."""
    blob = open(path, "rb").read()
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def write_file(path, header, data):
    """A header rewritten correctly: padded with spaces so that the data starts at a multiple of 64."""
    h = json.dumps(header).encode()
    h += b" " * ((-(8 + len(h))) % 64)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def tensors(header):
    """name -> (begin, end), in data order."""
    t = {k: tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__"}
    return dict(sorted(t.items(), key=lambda kv: kv[1]))


def edited(work, name, edit_header=None, edit_data=None):
    header, data = read_file(work["packed"])
    data = bytearray(data)
    if edit_header:
        edit_header(header)
    if edit_data:
        edit_data(header, data)
    path = work["dir"] / name
    write_file(path, header, bytes(data))
    return path


def flip(name, count):
    """XORs count bytes in the middle of tensor name's data."""
    def f(header, data):
        a, b = header[name]["data_offsets"]
        at = a + max(0, (b - a - count) // 2)
        for i in range(at, min(b, at + count)):
            data[i] ^= 0xFF
    return f


def verify(path):
    p = run("verify", [path], check=False)
    return p.returncode, p.stdout.strip().split("\n")


def expect_refused(work, path, *needles):
    """eval and generate: non-zero exit, no output text, one line naming the file and the needles."""
    for cmd, args in (("eval", ["--text", work["dir"] / "calib.txt", "--ctx", 32, "--chunks", 1]), ("generate", GEN)):
        p = run(cmd, [path] + args, check=False)
        msg = p.stderr.strip()
        assert p.returncode != 0 and p.stdout == "", (cmd, p.stdout)
        assert msg.startswith("bitplan %s: " % cmd) and "\n" not in msg, msg
        assert str(path) in msg, msg
        for n in needles:
            assert n in msg, msg


# ==== (a) checksums, pristine file ====

def test_checksums_are_xxh3_of_each_tensor(work):
    header, data = read_file(work["packed"])
    meta = header["__metadata__"]
    assert meta["format_version"] == "2"
    sums = json.loads(meta["checksums"])
    spans = tensors(header)
    assert sorted(sums) == sorted(spans)
    for name, (a, b) in spans.items():
        assert sums[name] == xxhash.xxh3_64_hexdigest(data[a:b]), name


def test_pristine_file_verifies_and_runs(work):
    rc, out = verify(work["packed"])
    assert rc == 0, out
    assert len(out) == 1 and "sound" in out[0] and "version 2" in out[0] and "every checksum matches" in out[0], out
    p = run("generate", [work["packed"]] + GEN)
    assert p.stdout.strip()


# ==== (b) corrupted data ====

def test_flipped_bytes_name_the_tensor(work):
    header, _ = read_file(work["packed"])
    spans = tensors(header)
    big = max(spans, key=lambda k: spans[k][1] - spans[k][0])
    assert spans[big][1] - spans[big][0] > 4096
    bad = edited(work, "flipped.bp", edit_data=flip(big, 4096))
    rc, out = verify(bad)
    assert rc == 1, out
    assert len(out) == 2 and big in out[0] and "corrupt" in out[0] and out[1].endswith("1 problem"), out
    expect_refused(work, bad, big, "corrupt")


def test_one_bit_in_a_small_tensor(work):
    name = "blk.1.ffn_norm.weight"

    def one_bit(header, data):
        data[header[name]["data_offsets"][0] + 5] ^= 0x10
    bad = edited(work, "bit.bp", edit_data=one_bit)
    rc, out = verify(bad)
    assert rc == 1 and len(out) == 2 and "'%s'" % name in out[0], out
    expect_refused(work, bad, name, "corrupt")


def test_every_corrupt_tensor_is_listed(work):
    a, b = "blk.0.attn_q.weight.qvalues", "blk.1.ffn_down.weight.qscales"

    def both(header, data):
        flip(a, 16)(header, data)
        flip(b, 16)(header, data)
    bad = edited(work, "two.bp", edit_data=both)
    rc, out = verify(bad)
    assert rc == 1 and len(out) == 3 and out[2].endswith("2 problems"), out
    assert sorted(x for x in (a, b) if any("'%s'" % x in line for line in out[:2])) == sorted([a, b]), out
    expect_refused(work, bad, "corrupt", "1 more")


# ==== (c) data_offsets ====

def test_overlapping_offsets_are_refused(work):
    header, _ = read_file(work["packed"])
    order = list(tensors(header))
    first, second = order[0], order[1]
    assert header[first]["dtype"] == "F32" and len(header[first]["shape"]) == 1

    def grow(h):  # the first tensor runs 16 values into the second; sizes stay consistent
        h[first]["shape"][0] += 16
        h[first]["data_offsets"][1] += 64
    bad = edited(work, "overlap.bp", edit_header=grow)
    rc, out = verify(bad)
    assert rc == 1 and "overlap" in out[0] and first in out[0] and second in out[0], out
    expect_refused(work, bad, "overlap", first, second)

    x, y = "blk.0.attn_norm.weight", "blk.1.attn_norm.weight"  # same size; y lies after x

    def same(h):
        assert h[y]["data_offsets"][0] > h[x]["data_offsets"][0]
        h[y]["data_offsets"] = list(h[x]["data_offsets"])
    bad = edited(work, "same.bp", edit_header=same)
    expect_refused(work, bad, "overlap", x, y)


def test_holes_are_refused(work):
    header, _ = read_file(work["packed"])
    middle = list(tensors(header))[len(header) // 2]

    def drop(h):
        del h[middle]
        sums = json.loads(h["__metadata__"]["checksums"])
        del sums[middle]
        h["__metadata__"]["checksums"] = json.dumps(sums)
    bad = edited(work, "hole.bp", edit_header=drop)
    rc, out = verify(bad)
    assert rc == 1 and "hole" in out[0], out
    expect_refused(work, bad, "hole")

    def trailing(h, data):
        data.extend(b"\0" * 64)
    bad = edited(work, "tail.bp", edit_data=trailing)
    last = list(tensors(header))[-1]
    expect_refused(work, bad, "hole", last)


def test_plain_safetensors_with_overlap_is_refused(work):
    d = work["dir"] / "hf"
    tiny_model.write_tiny_safetensors(str(d), **MODEL)
    assert run("inspect", [d]).returncode == 0
    path = d / "model.safetensors"
    header, data = read_file(path)
    same = [k for k in tensors(header) if k.endswith("input_layernorm.weight")]
    header[same[1]]["data_offsets"] = list(header[same[0]]["data_offsets"])
    write_file(path, header, data)
    p = run("inspect", [d], check=False)
    assert p.returncode != 0 and "overlap" in p.stderr and same[0] in p.stderr and same[1] in p.stderr, p.stderr


# ==== (d) versions ====

def test_version1_file_loads_without_checksums(work):
    def v1(h):
        del h["__metadata__"]["checksums"]
        h["__metadata__"]["format_version"] = "1"
    old = edited(work, "v1.bp", edit_header=v1)
    rc, out = verify(old)
    assert rc == 0 and len(out) == 1 and "version 1: no checksums" in out[0], out
    assert run("generate", [old] + GEN).stdout == run("generate", [work["packed"]] + GEN).stdout


def test_bad_checksum_metadata_is_refused(work):
    def strip(h):
        del h["__metadata__"]["checksums"]
    bad = edited(work, "nosums.bp", edit_header=strip)
    rc, out = verify(bad)
    assert rc == 1 and "no checksums metadata" in out[0], out
    expect_refused(work, bad, "no checksums")

    def mangle(h):
        sums = json.loads(h["__metadata__"]["checksums"])
        sums["blk.0.attn_k.weight.qvalues"] = "xyz"
        del sums["output_norm.weight"]
        sums["no.such.tensor"] = "0123456789abcdef"
        h["__metadata__"]["checksums"] = json.dumps(sums)
    bad = edited(work, "mangled.bp", edit_header=mangle)
    rc, out = verify(bad)
    assert rc == 1 and out[-1].endswith("3 problems"), out
    assert any("no.such.tensor" in line for line in out) and any("'output_norm.weight' has no checksum" in line for line in out)
    assert any("blk.0.attn_k.weight.qvalues" in line and "16 hex digits" in line for line in out), out


# ==== (e) GGUF, usage ====

def test_verify_gguf_and_usage(work):
    rc, out = verify(work["model"])
    assert rc == 0 and len(out) == 1 and "sound structure: gguf" in out[0], out
    cut = work["dir"] / "cut.gguf"
    cut.write_bytes(work["model"].read_bytes()[:-100])
    rc, out = verify(cut)
    assert rc == 1 and len(out) == 2 and str(cut) in out[0] and out[1].endswith("1 problem"), out
    assert run("verify", [], check=False).returncode == 2
    assert run("verify", [work["packed"], work["model"]], check=False).returncode == 2
