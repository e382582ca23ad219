"""tests/test_requant.py — requantizing a quantized model: a tensor that the source
stores in a ggml block type is offered "as stored", its own blocks copied.

On tiny GGUF models whose matrices are Q4_1 (and Q8_0):
  (a) the default option set gains the source's own 32-wide type, and the
      measurement finds a zero error for it on every tensor (measured, not
      assumed: bitplan's own 4-bit options at more bits show a real error);
  (b) a plan that keeps every block as stored packs into bitplan's file, format
      version 3: each tensor's parts are its source blocks re-laid, byte for byte
      (read here from the GGUF with gguf-py and the packed file by hand: Q4_1's
      nibbles are the values, its d the scale, its m the min; no permutation), the
      file passes `bitplan verify`, and it runs with the source's logits (KL ~ 0);
  (c) a GGUF export of that plan holds the source's tensor bytes unchanged;
  (d) a plan of bitplan's own options still writes format version 2;
  (e) the report marks the tensors kept as stored.
"""

import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_model  # noqa: E402
from test_pack import expect_error, read_tensors, rewrite  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, os.environ.get("BITPLAN_BUILD", "build"))
BIN = os.path.join(BUILD, "bitplan")
GGML_FMT = 256
Q4_1, Q8_0 = 3, 8
MODEL = dict(n_layers=2, dim=64, hidden=128, n_heads=4, n_kv_heads=2, vocab=512, seed=3)

gguf = pytest.importorskip("gguf")


def run(cmd, *args, check=True, env=None):
    p = subprocess.run([BIN, cmd, *map(str, args)], capture_output=True, text=True, errors="replace", timeout=900,
                       env=dict(os.environ, **(env or {})))
    if check and p.returncode != 0:
        raise AssertionError("bitplan %s failed: %s" % (cmd, p.stderr))
    return p


def measured(db):
    """{(tensor, option name): (rel_err, scale_fmt)}."""
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT t.name, o.name, m.rel_err, o.scale_fmt FROM measurements m "
                         "JOIN tensors t ON t.id = m.tensor_id JOIN options o ON o.id = m.option_id").fetchall()
    return {(t, o): (e, f) for t, o, e, f in rows}


def source_blocks(model):
    """{name: (ggml type id, raw block bytes as uint8[rows, bytes per row])} of the GGUF's 2-D tensors."""
    r = gguf.GGUFReader(model)
    return {t.name: (int(t.tensor_type), np.asarray(t.data).view(np.uint8).reshape(int(t.shape[1]), -1))
            for t in r.tensors if len(t.shape) == 2}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    if not os.path.exists(BIN):
        pytest.fail("%s is missing: build first" % BIN)
    d = tmp_path_factory.mktemp("requant")
    w = {"dir": d, "calib": d / "calib.txt", "model": d / "q41.gguf", "db": d / "q41.db"}
    w["calib"].write_text(tiny_model.calib_text(1))
    tiny_model.write_tiny_gguf(str(w["model"]), dtype="Q4_1", **MODEL)
    run("measure", w["model"], "--calib", w["calib"], "--db", w["db"], "--rows", 4, "--ctx", 64, "--threads", 2)
    return w


def test_default_set_gains_the_source_type_at_zero_error(work):
    m = measured(work["db"])
    src = source_blocks(str(work["model"]))
    tensors = {t for t, _ in m}
    assert tensors and all(src[t][0] == Q4_1 for t in tensors)
    for t in tensors:
        err, fmt = m[(t, "Q4_1")]
        assert fmt == GGML_FMT + Q4_1
        assert err == 0.0, (t, err)                  # the blocks themselves
        assert m[(t, "4b g32")][0] > 0, t            # 4.75 bpw of bitplan's own grid cannot reproduce them
    # only the source's type is added: no other ggml type appears
    assert {o for _, o in m if m[(_, o)][1] >= GGML_FMT} == {"Q4_1"}


def plan_as_stored(work):
    """A 5.0-bpw plan: Q4_1 everywhere is the only zero-error choice within it (the
    head is pinned apart, at its cheapest option of 5 bpw or more)."""
    run("allocate", "--db", work["db"], "--bpw", 5.0, "--head-bits", 5, "--metric", "rel_err")
    with sqlite3.connect(work["db"]) as c:
        pid = c.execute("SELECT max(id) FROM plans").fetchone()[0]
        kinds = c.execute("SELECT DISTINCT o.name FROM plan_choices pc JOIN options o ON o.id = pc.option_id "
                          "JOIN tensors t ON t.id = pc.tensor_id WHERE pc.plan_id = ? AND t.class != 'head'",
                          (pid,)).fetchall()
    assert kinds == [("Q4_1",)], kinds
    return pid


def test_packed_file_holds_the_source_blocks(work):
    pid = plan_as_stored(work)
    out = work["dir"] / "q41.bp"
    run("pack", work["model"], "--db", work["db"], "--plan", pid, "-o", out)
    assert "version 3" in run("verify", out).stdout
    tensors, meta = read_tensors(out)
    assert meta["format_version"] == "3"
    opts = json.loads(meta["options"])
    src = source_blocks(str(work["model"]))
    assert opts and set(opts) <= set(src)
    for name, o in opts.items():
        if o["scale_fmt"] != GGML_FMT + Q4_1:
            assert name == "token_embd.weight"  # the head, pinned apart
            continue
        assert o["group"] == 32
        blocks = src[name][1].reshape(src[name][1].shape[0], -1, 20)      # Q4_1: fp16 d, fp16 m, 16 bytes of nibbles
        rows, nb = blocks.shape[:2]
        assert np.array_equal(tensors[name + ".qvalues"], blocks[:, :, 4:].reshape(rows, nb * 16))
        assert np.array_equal(tensors[name + ".qscales"].view(np.uint8), blocks[:, :, 0:2].reshape(rows, nb * 2))
        assert np.array_equal(tensors[name + ".qmins"].view(np.uint8), blocks[:, :, 2:4].reshape(rows, nb * 2))
        assert name + ".qperm" not in tensors and name + ".qzeros" not in tensors
        assert o["bits"] == 8 * blocks.size                                  # the cost is the blocks' bytes
    work["as_stored"] = out
    # the report marks them
    rep = json.loads(run("report", "--db", work["db"], "--plan", pid, "--format", "json").stdout)
    marked = {c["tensor"]: c["as_stored"] for c in rep["allocation"]["choices"]}
    assert sum(marked.values()) == len(marked) and any("as stored" in n for n in rep["notes"])
    # decoded to fp32, the weights are the source's: the logits agree to rounding
    p = run("eval", out, "--text", work["calib"], "--ctx", 64, "--chunks", 2, "--ref", work["model"],
            env={"BITPLAN_PACKED_DENSE": "1"})
    assert float(p.stdout.split("KL divergence")[1].split()[0]) < 1e-6, p.stdout
    # through the int8 kernels (scales, mins, centers) only the activations' rounding is left
    p = run("eval", out, "--text", work["calib"], "--ctx", 64, "--chunks", 2, "--ref", work["model"])
    assert float(p.stdout.split("KL divergence")[1].split()[0]) < 1e-3, p.stdout


def test_version_and_parts_are_checked(work):
    """A ggml type in a file that says version 2 (which cannot hold one), a missing
    min, a stray permutation: each refused, naming the tensor."""
    src, bad = work.get("as_stored"), work["dir"] / "bad.bp"
    if src is None:
        pytest.skip("needs test_packed_file_holds_the_source_blocks's file")
    name = "blk.0.attn_q.weight"

    def v2(h):
        h["__metadata__"]["format_version"] = "2"
    rewrite(src, bad, edit_header=v2)
    expect_error(work, bad, "format_version 2 cannot hold")

    def no_mins(h):
        del h[name + ".qmins"]
    rewrite(src, bad, edit_header=no_mins)
    expect_error(work, bad)

    def stray_perm(h):  # the min renamed, its checksum too: the loader's own check must see it
        h[name + ".qperm"] = h.pop(name + ".qmins")
        sums = json.loads(h["__metadata__"]["checksums"])
        sums[name + ".qperm"] = sums.pop(name + ".qmins")
        h["__metadata__"]["checksums"] = json.dumps(sums)
    rewrite(src, bad, edit_header=stray_perm)
    expect_error(work, bad, name + ".qperm", "keeps the original column order")


def test_gguf_export_copies_the_source_tensors(work):
    d = work["dir"]
    opts, db = d / "ggml.txt", d / "ggml.db"
    opts.write_text("Q4_0\nQ4_1\nQ8_0\n")
    run("measure", work["model"], "--calib", work["calib"], "--db", db, "--options", opts, "--rows", 4, "--ctx", 64)
    m = measured(db)
    assert all(e == 0.0 for (t, o), (e, f) in m.items() if o == "Q4_1")
    assert all(e > 0 for (t, o), (e, f) in m.items() if o == "Q4_0")
    run("allocate", "--db", db, "--bpw", 5.0, "--head-bits", 5, "--metric", "rel_err")
    out = d / "q41-export.gguf"
    run("export-gguf", work["model"], "--db", db, "-o", out)
    src, got = source_blocks(str(work["model"])), source_blocks(str(out))
    planned = [n for n in got if n in src and got[n][0] == Q4_1]
    assert len(planned) >= 7 * MODEL["n_layers"]
    for n in planned:
        assert np.array_equal(got[n][1], src[n][1]), n


def test_a_q8_0_source_gains_q8_0(work):
    d = work["dir"]
    model, db = d / "q80.gguf", d / "q80.db"
    tiny_model.write_tiny_gguf(str(model), dtype="Q8_0", **MODEL)
    run("measure", model, "--calib", work["calib"], "--db", db, "--rows", 2, "--ctx", 64)
    m = measured(db)
    q8 = {t: e for (t, o), (e, f) in m.items() if o == "Q8_0"}
    assert q8 and all(e == 0.0 for e in q8.values())
    assert "Q4_1" not in {o for _, o in m}


def test_plain_plans_stay_version_2(work):
    out = work["dir"] / "plain.bp"
    run("pack", work["model"], "--db", work["db"], "--uniform", "4b g32", "-o", out)
    tensors, meta = read_tensors(out)
    assert meta["format_version"] == "2"
    assert not any(k.endswith(".qmins") for k in tensors)
