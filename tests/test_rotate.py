"""tests/test_rotate.py — options that rotate their inputs (layout/layout.h, "Input
rotations"), end to end on a tiny model (dim 64, hidden 128):

  (a) the measurement scores a rotated option on every tensor whose columns its
      block divides, and skips the rest (h128 on the 64-column tensors);
  (b) a plan of rotated options packs into format version 4, its options naming
      the rotation and the seed; decoded here by hand (the planes, the scales, the
      zeros, the permutation) and rotated back with R written out as a matrix, the
      weights are the model's to within the 8-bit grid, so the file, the seed and
      the orientation of R are what FORMAT.md says;
  (c) the file runs: its logits against the source's (KL) through the int8
      kernels and through the decoded fp32 weights agree, and are those of an
      8-bit model;
  (d) a rotated tensor in a file that says version 3, or without its seed, is
      refused, naming the tensor;
  (e) GGUF has no rotation: exporting such a plan is refused.
"""

import json
import os
import sqlite3
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_model  # noqa: E402
from test_gptq import LAY_ROT_SEED, ref_rotation  # noqa: E402
from test_pack import decode, parts_of, read_tensors, rewrite, tool  # noqa: E402
from test_requant import run  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, os.environ.get("BITPLAN_BUILD", "build"))
BIN = os.path.join(BUILD, "bitplan")
MODEL = dict(n_layers=2, dim=64, hidden=128, n_heads=4, n_kv_heads=2, vocab=512, seed=5)


def kl_of(out):
    return float(out.split("KL divergence")[1].split()[0])


def make_work(tmp_path_factory, name):
    """A directory with the tiny model (its weights in w["weights"]) and calibration text."""
    if not os.path.exists(BIN):
        pytest.fail("%s is missing: build first" % BIN)
    d = tmp_path_factory.mktemp(name)
    w = {"dir": d, "calib": d / "calib.txt", "model": d / "f32.gguf"}
    w["calib"].write_text(tiny_model.calib_text(2))
    w["weights"] = tiny_model.write_tiny_gguf(str(w["model"]), **MODEL)
    return w


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return make_work(tmp_path_factory, "rotate")


def expect_eval_error(work, path, *needles):
    """eval refuses the file with one line that names every needle."""
    p = run("eval", path, "--text", work["calib"], "--chunks", 1, "--ctx", 32, check=False)
    msg = p.stderr.strip()
    assert p.returncode != 0 and msg.startswith("bitplan eval: ") and "\n" not in msg, msg
    assert all(n in msg for n in needles), msg


def measure(work, name, lines):
    opts, db = work["dir"] / (name + ".txt"), work["dir"] / (name + ".db")
    opts.write_text("\n".join(lines) + "\n")
    run("measure", work["model"], "--calib", work["calib"], "--db", db, "--options", opts, "--rows", 4, "--ctx", 64,
        "--threads", 2)
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT t.name, t.cols, o.name, o.rot, m.rel_err FROM measurements m "
                         "JOIN tensors t ON t.id = m.tensor_id JOIN options o ON o.id = m.option_id").fetchall()
    return db, rows


def runs_as_8_bits(work, path):
    """The file's KL against the source through the int8 kernels and through the
    decoded fp32 weights: those of an 8-bit model, and equal."""
    kl = {}
    for way, env in (("kernels", {}), ("dense", {"BITPLAN_PACKED_DENSE": "1"})):
        p = run("eval", path, "--text", work["calib"], "--ctx", 64, "--chunks", 2, "--ref", work["model"], env=env)
        kl[way] = kl_of(p.stdout)
    assert kl["dense"] < 1e-3 and kl["kernels"] < 1e-3, kl
    assert abs(kl["kernels"] - kl["dense"]) < 5e-4, kl


def test_measurement_scores_rotations_where_they_apply(work):
    db, rows = measure(work, "mixed", ["plain 3 3 0 64 z8", "h64 3 3 0 64 z8 h64", "h128 3 3 0 64 z8 h128"])
    tensors = {(t, c) for t, c, *_ in rows}
    by = {(t, o): (rot, e) for t, c, o, rot, e in rows}
    assert tensors and any(c == 128 for _, c in tensors) and any(c == 64 for _, c in tensors)
    for t, cols in tensors:
        assert by[(t, "h64")][0] == 64 and 0 < by[(t, "h64")][1] < 1
        assert ((t, "h128") in by) == (cols % 128 == 0), (t, cols)
    # the errors differ from the plain option's: the rotation is really there
    assert all(by[(t, "h64")][1] != by[(t, "plain")][1] for t, _ in tensors)


def test_rotated_plan_packs_decodes_and_runs(work):
    db, _ = measure(work, "rot8", ["8b-g64-h64 8 8 0 64 z8 h64", "8b-g32-h64 8 8 0 32 z8 h64"])
    run("allocate", "--db", db, "--bpw", 8.7, "--head-bits", 8, "--metric", "rel_err")
    out = work["dir"] / "rot8.bp"
    run("pack", work["model"], "--db", db, "-o", out)
    assert "version 4" in run("verify", out).stdout
    tensors, meta = read_tensors(out)
    assert meta["format_version"] == "4"
    opts = json.loads(meta["options"])
    assert opts and all(o["rot"] == 64 and o["rot_seed"] == LAY_ROT_SEED for o in opts.values())
    src = work["weights"]
    for name, o in opts.items():
        wr = decode(parts_of(tensors, name), o, *src[name].shape)        # W R, as stored
        w = wr.astype(np.float64) @ ref_rotation(wr.shape[1], 64, LAY_ROT_SEED).T
        err = np.abs(w - src[name]).max() / np.abs(src[name]).max()
        assert err < 0.02, (name, err)                                 # 8 bits: within the grid
        assert np.abs(wr - src[name]).max() > 0.1 * np.abs(src[name]).max()  # and not stored unrotated
    work["rot8"] = out
    runs_as_8_bits(work, out)


def test_loaded_layers_offer_their_rotation_apart(work, tmp_path):
    """A loaded rotated layer offers its rotation and its product apart
    (rotate_input, matmul_rotated), with which the forward pass rotates the input
    that q, k and v (or gate and up) share once; the two make matmul's y bit for bit,
    in a batch past the layer's 64 rows too."""
    src = work.get("rot8")
    if src is None:
        pytest.skip("needs test_rotated_plan_packs_decodes_and_runs's file")
    rng = np.random.default_rng(3)
    for name in ("blk.0.attn_k.weight", "blk.1.ffn_up.weight"):
        rows, cols = work["weights"][name].shape
        for n in (1, 100):
            x, out = tmp_path / "x.f32", tmp_path / "y.f32"
            rng.standard_normal((n, cols)).astype(np.float32).tofile(x)
            tool(["halves", src, name, x, n, out])
            y = np.fromfile(out, np.float32).reshape(2, n, rows)
            assert np.abs(y[0]).max() > 0, (name, n)
            assert np.array_equal(y[0], y[1]), (name, n)


def test_version_and_seed_are_checked(work):
    src, bad = work.get("rot8"), work["dir"] / "bad.bp"
    if src is None:
        pytest.skip("needs test_rotated_plan_packs_decodes_and_runs's file")
    name = "blk.0.attn_q.weight"

    def expect_error(path, *needles):
        expect_eval_error(work, path, *needles)

    def v3(h):
        h["__metadata__"]["format_version"] = "3"
    rewrite(src, bad, edit_header=v3)
    expect_error(bad, "rotates its inputs", "format_version 3 cannot hold")

    def no_seed(h):
        o = json.loads(h["__metadata__"]["options"])
        del o[name]["rot_seed"]
        h["__metadata__"]["options"] = json.dumps(o)
    rewrite(src, bad, edit_header=no_seed)
    expect_error(bad, name, "rot_seed")

    def odd_block(h):
        o = json.loads(h["__metadata__"]["options"])
        o[name]["rot"] = 96
        h["__metadata__"]["options"] = json.dumps(o)
    rewrite(src, bad, edit_header=odd_block)
    expect_error(bad, name, "rotation block 96")


def test_gguf_export_refuses_a_rotation(work):
    db = work["dir"] / "rot8.db"
    if not db.exists():
        pytest.skip("needs test_rotated_plan_packs_decodes_and_runs's database")
    p = run("export-gguf", work["model"], "--db", db, "-o", work["dir"] / "rot8.gguf", check=False)
    assert p.returncode != 0 and "not a ggml block type" in p.stderr, p.stderr
    assert not (work["dir"] / "rot8.gguf").exists()
