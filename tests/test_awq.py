"""tests/test_awq.py — options with activation-aware input scales (layout/layout.h,
"Activation-aware input scales"), end to end on a tiny model (dim 64, hidden 128):

  (a) the measurement scores such an option on every tensor, with an error of its
      own (not the plain option's), from GPTQ at each alpha of the grid;
  (b) a plan of them packs into format version 5, its options saying "awq" and
      each tensor carrying its multipliers m (NAME.qxscale, fp16 [cols]); decoded
      here by hand (planes, scales, zeros, permutation) and multiplied by m, the
      weights are the model's within the 8-bit grid, and not without m, so the file
      holds W / m; q, k and v, which share a Hessian, hold powers of one another's
      m with exponents that are ratios of the grid's alphas, as measure.h's
      m = (H_jj / G)^(-alpha / 2) says;
  (c) the file runs: its logits against the source's (KL) through the int8 kernels
      and through the decoded fp32 weights agree, and are those of an 8-bit model;
  (d) a scaled tensor in a file that says version 4, without its multipliers, with
      a zero multiplier, or a multiplier part that its option does not explain, is
      refused, naming the tensor or the part; GGUF has no input scales: export is
      refused.
"""

import json
import os
import sqlite3
import sys

import numpy as np
import pytest
import xxhash

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_gptq import AWQ_ALPHAS  # noqa: E402
from test_pack import decode, parts_of, read_header, read_tensors, rewrite  # noqa: E402
from test_requant import run  # noqa: E402
from test_rotate import expect_eval_error, make_work, measure, runs_as_8_bits  # noqa: E402


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return make_work(tmp_path_factory, "awq")


@pytest.fixture(scope="module")
def awq8(work):
    """A plan of 8-bit options with input scales, packed."""
    db, rows = measure(work, "awq8", ["8b-g64-awq 8 8 0 64 z8 awq", "8b-g32-awq 8 8 0 32 z8 awq"])
    run("allocate", "--db", db, "--bpw", 9.1, "--head-bits", 8, "--metric", "rel_err")
    out = work["dir"] / "awq8.bp"
    run("pack", work["model"], "--db", db, "-o", out)
    return {"db": db, "file": out, "rows": rows}


def test_measurement_scores_scales(work):
    db, _ = measure(work, "mixed", ["plain 3 3 0 64 z8", "awq 3 3 0 64 z8 awq"])
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT t.name, o.name, o.awq, m.rel_err, m.rtn_err FROM measurements m "
                         "JOIN tensors t ON t.id = m.tensor_id JOIN options o ON o.id = m.option_id").fetchall()
    by = {(t, o): (awq, e, rtn) for t, o, awq, e, rtn in rows}
    tensors = {t for t, *_ in rows}
    assert len(tensors) >= 14
    for t in tensors:
        assert by[(t, "awq")][0] == 1 and by[(t, "plain")][0] == 0
        assert 0 < by[(t, "awq")][1] < 1 and by[(t, "awq")][2] > 0
    # the scales are really there: the errors differ from the plain option's
    assert all(by[(t, "awq")][1] != by[(t, "plain")][1] for t in tensors)


def test_scaled_plan_packs_decodes_and_runs(work, awq8):
    out = awq8["file"]
    assert "version 5" in run("verify", out).stdout
    tensors, meta = read_tensors(out)
    assert meta["format_version"] == "5"
    opts = json.loads(meta["options"])
    assert opts and all(o["awq"] == 1 and "rot" not in o for o in opts.values())
    src = work["weights"]
    spread = 0
    for name, o in opts.items():
        m = tensors[name + ".qxscale"].astype(np.float32)
        assert m.shape == (src[name].shape[1],) and np.all(m > 0)
        wm = decode(parts_of(tensors, name), o, *src[name].shape)        # W / m, as stored
        top = np.abs(src[name]).max()
        err = np.abs(wm * m - src[name]).max() / top
        assert err < 0.02, (name, err)                                  # 8 bits: within the grid
        if np.ptp(np.log2(m)) > 0.15:  # columns scaled apart by 11% or more: stored W / m, not W
            spread += 1
            assert np.abs(wm - src[name] / m).max() < 0.25 * np.abs(wm - src[name]).max(), name
    assert spread >= 4, "too few tensors with multipliers far from 1 to tell W / m from W"
    runs_as_8_bits(work, out)


def test_multipliers_follow_the_inputs(work, awq8):
    """q, k and v read one input: they are quantized under one Hessian, so the m of
    each is one alpha's multipliers for that Hessian: the three rank the columns
    alike, and log m of one is log m of another times a ratio of the grid's alphas
    (what test_gptq checks against NumPy for one tensor, here through the file)."""
    tensors, meta = read_tensors(awq8["file"])
    opts = json.loads(meta["options"])
    names = ["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"]
    assert all(n in opts for n in names)
    ms = [tensors[n + ".qxscale"].astype(np.float32) for n in names]
    # every m is one alpha's: m_j / m_k = (d_j / d_k)^(-alpha/2) up to fp16 rounding,
    # the same ranking for the three (one Hessian)
    order = np.argsort(ms[0], kind="stable")
    for m in ms[1:]:
        assert np.corrcoef(np.log(m), np.log(ms[0]))[0, 1] > 0.999
    # each is a power of another: log m = (alpha / alpha') log m'
    for m in ms:
        ratio = np.median(np.log(m[order[:8]]) / np.log(ms[0][order[:8]]))
        assert any(abs(ratio - a / b) < 0.05 for a in AWQ_ALPHAS for b in AWQ_ALPHAS), ratio


def patched(src, dst, edit):
    """dst = src with edit(header, blob, data_start) applied, checksums recomputed
    for every part edit changed."""
    n, header = read_header(src)
    blob = bytearray(open(src, "rb").read())
    before = {k: bytes(blob[8 + n + e["data_offsets"][0]:8 + n + e["data_offsets"][1]])
              for k, e in header.items() if k != "__metadata__"}
    edit(header, blob, 8 + n)

    def resum(h):
        sums = json.loads(h["__metadata__"]["checksums"])
        for k, e in h.items():
            if k == "__metadata__" or k not in before:
                continue
            now = bytes(blob[8 + n + e["data_offsets"][0]:8 + n + e["data_offsets"][1]])
            if now != before[k]:
                sums[k] = xxhash.xxh3_64_hexdigest(now)
        h["__metadata__"]["checksums"] = json.dumps(sums)
    tmp = str(dst) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(bytes(blob))
    rewrite(tmp, dst, edit_header=lambda h: (h.clear(), h.update(header), resum(h)))
    os.unlink(tmp)


def test_version_and_multipliers_are_checked(work, awq8):
    src, bad = awq8["file"], work["dir"] / "bad.bp"
    name = "blk.0.attn_q.weight"

    def expect_error(path, *needles):
        expect_eval_error(work, path, *needles)

    def v4(h, blob, at):
        h["__metadata__"]["format_version"] = "4"
    patched(src, bad, v4)
    expect_error(bad, "scales its inputs", "format_version 4 cannot hold")

    def missing(h, blob, at):  # the part deleted: a hole where it was
        del h[name + ".qxscale"]
    patched(src, bad, missing)
    expect_error(bad, "hole")

    def renamed(h, blob, at):  # the multipliers (and their checksum) under another tensor's name
        h["blk.9.attn_q.weight.qxscale"] = h.pop(name + ".qxscale")
        sums = json.loads(h["__metadata__"]["checksums"])
        sums["blk.9.attn_q.weight.qxscale"] = sums.pop(name + ".qxscale")
        h["__metadata__"]["checksums"] = json.dumps(sums)
    patched(src, bad, renamed)
    expect_error(bad, "blk.9.attn_q.weight.qxscale")

    def zero(h, blob, at):
        b = at + h[name + ".qxscale"]["data_offsets"][0]
        blob[b + 6:b + 8] = b"\x00\x00"  # column 3's multiplier: +0
    patched(src, bad, zero)
    expect_error(bad, name + ".qxscale[3]", "not a positive finite multiplier")

    def set_awq(value, bits_too=False):
        def edit(h, blob, at):
            o = json.loads(h["__metadata__"]["options"])
            o[name]["awq"] = value
            if bits_too:  # the bits of the option without its multipliers
                o[name]["bits"] -= 16 * h[name + ".qxscale"]["shape"][0]
            h["__metadata__"]["options"] = json.dumps(o)
        return edit
    patched(src, bad, set_awq(0))
    expect_error(bad, name, "bits", "but the option stores")  # the cost counts the multipliers
    patched(src, bad, set_awq(0, bits_too=True))
    expect_error(bad, name + ".qxscale", "has no input scales")
    patched(src, bad, set_awq(2))
    expect_error(bad, name, "awq")


def test_gguf_export_refuses_scales(work, awq8):
    p = run("export-gguf", work["model"], "--db", awq8["db"], "-o", work["dir"] / "awq8.gguf", check=False)
    assert p.returncode != 0 and "not a ggml block type" in p.stderr, p.stderr
    assert not (work["dir"] / "awq8.gguf").exists()
