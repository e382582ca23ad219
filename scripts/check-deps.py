#!/usr/bin/env python3
"""scripts/check-deps.py — keeps the module structure true: reads every #include "..."
of the project's C, C++ and CUDA sources, maps each file to its module (its top-level
folder) and fails on a dependency the rules below do not allow, or on a cycle
between modules. `make test` runs it; README.md's "Architecture" section draws the
same graph.

    python3 scripts/check-deps.py [ROOT]

Exit status 0 if every include is allowed, 1 otherwise (one line per violation).
"""

import os
import re
import sys

# Who may include whom. A module not listed as a key is not a module of the
# library (tests/, bench/, scripts/: they may use anything).
ALLOWED = {
    "util": set(),
    "par": set(),
    "layout": set(),
    "db": {"layout", "util"},
    "model": {"layout", "util"},
    "runtime": {"model", "layout", "util"},
    "measure": {"runtime", "model", "layout", "db", "par", "util"},
    "allocate": {"db", "layout", "util"},
    "pack": {"measure", "runtime", "model", "layout", "db", "par", "util"},
    "reports": {"db", "layout", "util"},
    "cli": {"measure", "allocate", "pack", "runtime", "reports", "model", "layout", "db", "par", "util"},
}
SOURCES = (".c", ".h", ".cu", ".cuh", ".cc", ".cpp")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def module_of(root, path):
    rel = os.path.relpath(path, root)
    top = rel.split(os.sep, 1)[0]
    return top if top in ALLOWED and os.sep in rel else None


def resolve(root, src, name):
    """The file an #include "name" in src means: beside src, else from the root
    (the build passes -I.)."""
    for base in (os.path.dirname(src), root):
        p = os.path.normpath(os.path.join(base, name))
        if os.path.exists(p):
            return p
    return None


def edges(root):
    """(from module, to module, file, include) for every include across modules."""
    for mod in ALLOWED:
        for d, _, files in os.walk(os.path.join(root, mod)):
            for f in sorted(files):
                if not f.endswith(SOURCES):
                    continue
                src = os.path.join(d, f)
                with open(src, encoding="utf-8", errors="replace") as fh:
                    text = fh.read()
                for name in INCLUDE.findall(text):
                    target = resolve(root, src, name)
                    to = module_of(root, target) if target else None
                    if to and to != mod:
                        yield mod, to, os.path.relpath(src, root), name


def find_cycle(graph):
    """A cycle of the module graph as a list of modules, or None."""
    state = {}

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state:
                c = visit(n, path + [n])
                if c:
                    return c
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            c = visit(m, [m])
            if c:
                return c
    return None


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
    bad, graph = [], {}
    for frm, to, src, name in edges(root):
        graph.setdefault(frm, set()).add(to)
        if to not in ALLOWED[frm]:
            bad.append('%s: #include "%s": %s/ may not use %s/' % (src, name, frm, to))
    cycle = find_cycle(graph)
    if cycle:
        bad.append("modules form a cycle: " + " -> ".join(cycle))
    for line in bad:
        print("check-deps: " + line)
    if not bad:
        n = sum(len(v) for v in graph.values())
        print("check-deps: %d modules, %d dependencies, all allowed, no cycle" % (len(ALLOWED), n))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
