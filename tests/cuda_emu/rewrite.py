#!/usr/bin/env python3
"""tests/cuda_emu/rewrite.py — turns a CUDA source into C++ for the CPU emulation
(tests/cuda_emu/emu.h): kernel launches become emu_launch calls and __shared__
declarations become per-block slots. Every other line is kept as it is, and every
rewrite stays on its line, so compiler and sanitizer reports point at the .cu file.

    rewrite.py IN.cu OUT.cpp

Fails (exit 1, naming the line) on a construct it does not know how to rewrite, so
that a new kind of launch or shared declaration cannot slip through unemulated.
"""
import re
import sys

LAUNCH = re.compile(r"([A-Za-z_]\w*(?:\s*<[^<>;]*>)?)\s*<<<")
DYN_SHARED = re.compile(r"extern\s+__shared__\s+([A-Za-z_][\w\s\*]*?)\s*\b([A-Za-z_]\w*)\s*\[\s*\]\s*;")
STATIC_SHARED = re.compile(r"__shared__\s+([A-Za-z_][\w\s\*]*?)\s*\b([A-Za-z_]\w*)\s*((?:\[[^\]\[]+\])+)\s*;")


def matching(text, i, open_ch, close_ch):
    """Index just past the bracket that closes the one at text[i]."""
    depth = 0
    for j in range(i, len(text)):
        if text[j] == open_ch:
            depth += 1
        elif text[j] == close_ch:
            depth -= 1
            if depth == 0:
                return j + 1
    raise ValueError("unbalanced %s" % open_ch)


def rewrite_launches(text):
    out, pos = [], 0
    for m in LAUNCH.finditer(text):
        if m.start() < pos:
            continue
        end_cfg = text.index(">>>", m.end())
        cfg = text[m.end():end_cfg]
        k = end_cfg + 3
        while text[k].isspace():
            k += 1
        if text[k] != "(":
            raise ValueError("launch of %s without arguments" % m.group(1))
        close = matching(text, k, "(", ")")
        args = text[k + 1:close - 1].strip()
        name = re.sub(r"\s+", " ", m.group(1))
        call = 'emu_launch("%s", %s, emu_cfg(%s)%s)' % (name, m.group(1), cfg, ", " + args if args else "")
        # keep the line count: the launch's newlines follow the call
        call += "\n" * (text[m.start():close].count("\n") - call.count("\n"))
        out.append(text[pos:m.start()])
        out.append(call)
        pos = close
    out.append(text[pos:])
    return "".join(out)


def rewrite(text, path):
    text = DYN_SHARED.sub(lambda m: "%s *%s = (%s *)emu_dynamic_smem();" % (m.group(1), m.group(2), m.group(1)), text)
    text = STATIC_SHARED.sub(lambda m: "EMU_SHARED(%s, %s, %s);" % (m.group(1), m.group(2), m.group(3)), text)
    text = rewrite_launches(text)
    text = re.sub(r"^\s*#pragma\s+unroll.*$", "", text, flags=re.M)
    for n, line in enumerate(text.split("\n"), 1):
        if "__shared__" in line or "<<<" in line:
            raise ValueError("%s:%d: cannot rewrite for the emulator: %s" % (path, n, line.strip()))
    return '#line 1 "%s"\n' % path + text


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: rewrite.py IN.cu OUT.cpp")
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        text = f.read()
    try:
        out = rewrite(text, src)
    except ValueError as e:
        sys.exit("rewrite.py: %s" % e)
    with open(dst + ".tmp", "w") as f:
        f.write(out)
    import os
    os.replace(dst + ".tmp", dst)


if __name__ == "__main__":
    main()
