"""tests/test_faults.py — failures injected into bitplan's writes and allocations, one
point at a time, over every point an operation reaches (tests/tool_faults.c does the
injecting and checks each outcome; this file builds the inputs and runs it):

  (a) `bitplan measure` (from no database: creation, migration, setup, every
      measurement and KL probe transaction, marking done) and `bitplan allocate`
      (one plan) with the Nth SQLite write, sync, truncate or size hint failing
      (SQLITE_IOERR_*), alone or with every later one: each run ends with status 0
      or one line "bitplan CMD: ...: disk I/O error"; the database passes
      integrity_check and foreign_key_check and holds only committed work equal to
      an unfaulted run's (each input group's measurements all there or none, a
      'done' calibration complete, a plan with all its choices or the database as
      before); a rerun without faults gives exactly the unfaulted run's content;
  (b) loading a GGUF and a safetensors model (mdl_open + rt_model_open), a packed
      file (pack_load) and a tokenizer (mdl_tokenizer) with the Nth allocation of
      bitplan's code failing: a one-line message that says memory, or the same model
      (logits, token ids) as without the failure.
Both run in build/ and in build-san/ (AddressSanitizer + UndefinedBehaviorSanitizer,
which `make test` builds), where a crash or a leak fails the sweep.

What it must never do: count a run as handled without checking its outcome.
"""

import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BITPLAN_BUILD", "build")
SAN_BUILD = os.environ.get("BITPLAN_SAN_BUILD", "build-san")
BIN = os.path.join(ROOT, BUILD, "bitplan")

# One block and two options: every write path of a pass in a fraction of a second.
MODEL = dict(n_layers=1, dim=64, hidden=128, n_heads=4, n_kv_heads=2, vocab=512, seed=1)
OPTIONS = "2b-g64 2 2 0 64 z8\n4b-g64 4 4 0 64 z8\n"
MEASURE = ["--options", "opts.txt", "--rows", "2", "--ctx", "32", "--threads", "1", "--kl-probe"]


def tool(build):
    path = os.path.join(ROOT, build, "tests", "tool_faults")
    if build == SAN_BUILD and BUILD != SAN_BUILD and not os.path.exists(path):
        pytest.skip("%s is missing: make test builds it (the sanitizer build)" % path)
    if not os.path.exists(path):
        pytest.fail("%s is missing: build first (make BUILD=%s %s)" % (path, build, path))
    return path


@pytest.fixture(scope="module")
def work():
    if not os.path.exists(BIN):
        pytest.fail("%s is missing: build first (make BUILD=%s)" % (BIN, BUILD))
    # SQLite syncs every commit; a memory file system keeps hundreds of runs fast
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    d = tempfile.mkdtemp(prefix="bitplan-faults-", dir=shm)
    lines = tiny_model.TRAIN_TEXT.strip().split("\n")
    rng, text = random.Random(1), []
    for _ in range(10):
        rng.shuffle(lines)
        text.extend(lines)
    with open(os.path.join(d, "calib.txt"), "w") as f:
        f.write("\n".join(text) + "\n")
    with open(os.path.join(d, "opts.txt"), "w") as f:
        f.write(OPTIONS)
    tiny_model.write_tiny_gguf(os.path.join(d, "tiny.gguf"), **MODEL)
    tiny_model.write_tiny_safetensors(os.path.join(d, "st"), **MODEL)
    for args in (["measure", "tiny.gguf", "--calib", "calib.txt", "--db", "base.db"] + MEASURE,
                 ["allocate", "--db", "packed.db", "--bpw", "3", "--head-bits", "0"],
                 ["pack", "tiny.gguf", "--db", "packed.db", "-o", "tiny.bp"]):
        if args[0] == "allocate":
            shutil.copy(os.path.join(d, "base.db"), os.path.join(d, "packed.db"))
        p = subprocess.run([BIN] + args, cwd=d, capture_output=True, text=True)
        assert p.returncode == 0, "bitplan %s failed: %s" % (args[0], p.stderr)
    yield d
    shutil.rmtree(d)


def sweep(work, build, args, timeout=300):
    """Runs one sweep; returns (points, failed runs, runs that absorbed the fault)."""
    p = subprocess.run([tool(build)] + args, cwd=work, capture_output=True, text=True, errors="replace",
                       timeout=timeout)
    assert p.returncode == 0, "tool_faults %s: exit %d\n%s%s" % (" ".join(args), p.returncode, p.stdout, p.stderr[-6000:])
    m = re.search(r"(\d+) (?:write operations|allocations), each failed in turn.*?: (\d+) \w+ failed cleanly, (\d+) absorbed",
                  p.stdout)
    assert m, p.stdout
    print(p.stdout)
    return tuple(int(x) for x in m.groups())


BUILDS = [BUILD] + ([SAN_BUILD] if SAN_BUILD != BUILD else [])


# ==== (a) database writes ====

@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("mode", [[], ["persist"]], ids=["once", "persist"])
def test_measure_survives_every_write_fault(work, build, mode):
    points, failed, absorbed = sweep(work, build, ["io"] + mode + ["measure", "-", "m.db", "m.log", "tiny.gguf",
                                                                   "--calib", "calib.txt", "--db", "m.db"] + MEASURE)
    # creation, migration, setup, 4 groups' and the head's measurements, 8 probes,
    # done: each is at least a WAL write and a sync
    assert points >= 2 * 15 and failed >= 15


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("mode", [[], ["persist"]], ids=["once", "persist"])
def test_allocate_survives_every_write_fault(work, build, mode):
    points, failed, absorbed = sweep(work, build, ["io"] + mode + ["allocate", "base.db", "a.db", "a.log",
                                                                   "--db", "a.db", "--bpw", "3", "--head-bits", "0"])
    assert points >= 2 and failed >= 1


# ==== (b) allocations of the loaders ====

@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("kind,path", [("gguf", "tiny.gguf"), ("st", "st"), ("packed", "tiny.bp"),
                                       ("tokenizer", "tiny.gguf"), ("tokenizer", "st")],
                         ids=["gguf", "safetensors", "packed", "tokenizer-gguf", "tokenizer-json"])
def test_loader_survives_every_allocation_failure(work, build, kind, path):
    for mode in ([], ["persist"]) if build == BUILD else ([],):
        points, failed, absorbed = sweep(work, build, ["alloc"] + mode + [kind, path])
        assert points >= 10 and failed >= 1
