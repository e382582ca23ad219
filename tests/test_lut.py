"""tests/test_lut.py — the lookup-table kernels (runtime/qkernels.h, "Lookup-table
kernels") end to end on a tiny model (dim 64, hidden 128, 2 layers): uniform plans of
2, 3 and 8 bits, mixed widths and a rotated option, packed, then every token fed one
at a time (batch 1: generation's path, where those kernels run) through
tests/tool_logits --one-by-one, with the lookup kernels at every width
(BITPLAN_LUT=all), at the widths this CPU's kernel set takes them (BITPLAN_LUT
unset) and nowhere (BITPLAN_LUT=0):

  (a) without them, one token at a time gives one batch's logits up to float
      rounding (attention over a cache against attention in one batch; both
      through the int8 kernels below 64 rows);
  (b) with them, the logits are the int8 kernels' up to float rounding: their
      integer sums are the same, only the float sums run in another order (an int8
      activation that rounds the other way after that is the most it can move:
      1e-2 of the largest logit here, where a wrong table or plane moves them by
      order one);
  (c) the KL divergence against the source is the int8 kernels' within 1%.

On a CPU without the lookup kernels (no AVX2) (b) and (c) still compare the plain C
ones (BITPLAN_LUT=all takes them in every kernel set).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_requant import run  # noqa: E402
from test_rotate import BUILD, MODEL, make_work, measure  # noqa: E402

TOOL = os.path.join(BUILD, "tests", "tool_logits")
OPTIONS = ["2b 2 2 0 32 z8", "3b-sym 3 3 0 64 sym", "2b3b 2 3 0.5 32 z8", "3b5b 3 5 0.5 32 z8", "8b 8 8 0 64 z8",
           "3b-h64 3 3 0 64 z8 h64"]
TOKENS = [int(t) for t in np.random.default_rng(3).integers(1, MODEL["vocab"], 40)]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    w = make_work(tmp_path_factory, "lut")
    w["db"], _ = measure(w, "lut", OPTIONS)
    w["ref"] = logits(w, w["model"], {}, one_by_one=False)
    return w


def logits(work, path, env, one_by_one=True):
    out = work["dir"] / "logits.f32"
    args = [TOOL] + (["--one-by-one"] if one_by_one else []) + [str(path), str(out)] + [str(t) for t in TOKENS]
    e = {k: v for k, v in os.environ.items() if k != "BITPLAN_LUT"}
    p = subprocess.run(args, capture_output=True, text=True, env=dict(e, **env))
    assert p.returncode == 0, p.stderr
    return np.fromfile(out, dtype=np.float32).reshape(len(TOKENS), MODEL["vocab"])


def kl(ref, q):
    """Mean KL(ref || q) over the tokens, in nats."""
    def logp(z):
        z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    lp, lq = logp(ref), logp(q)
    return float((np.exp(lp) * (lp - lq)).sum(axis=1).mean())


@pytest.mark.parametrize("option", [o.split()[0] for o in OPTIONS])
def test_batch_one_through_the_lookup_kernels(work, option):
    path = work["dir"] / (option + ".bp")
    run("pack", work["model"], "--db", work["db"], "--uniform", option, "-o", path)
    int8 = logits(work, path, {"BITPLAN_LUT": "0"})
    batch = logits(work, path, {"BITPLAN_LUT": "0"}, one_by_one=False)
    top = np.abs(int8).max()
    assert np.abs(batch - int8).max() <= 1e-2 * top                                  # (a)
    base = kl(work["ref"], int8)
    assert 0 < base < 1.0
    for mode in ("all", None):
        got = logits(work, path, {"BITPLAN_LUT": mode} if mode else {})
        assert np.all(np.isfinite(got))
        assert np.abs(got - int8).max() <= 1e-2 * top, (mode, np.abs(got - int8).max() / top)   # (b)
        assert abs(kl(work["ref"], got) - base) <= 0.01 * base, (mode, kl(work["ref"], got), base)  # (c)
    # the lookup kernels really ran: at every width their float sums differ somewhere
    assert not np.array_equal(logits(work, path, {"BITPLAN_LUT": "all"}), int8)
