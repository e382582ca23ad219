"""tests/test_structure.py — the module graph (scripts/check-deps.py): the tree as it
stands obeys the rules (no module uses one it may not, no cycle), and the checker
does catch a forbidden include and a cycle in a small tree made for it.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(ROOT, "scripts", "check-deps.py")


def check(root):
    return subprocess.run([sys.executable, CHECK, str(root)], capture_output=True, text=True)


def test_tree_obeys_the_module_rules():
    p = check(ROOT)
    assert p.returncode == 0, p.stdout


def tree(root, files):
    """Writes {relative path: text} under root."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_forbidden_include_is_named(tmp_path):
    p = check(tree(tmp_path, {"layout/layout.h": "/* leaf */\n",
                              "model/model.c": '#include "../layout/layout.h"\n#include "runtime/runtime.h"\n',
                              "runtime/runtime.h": '#include "../model/model.h"\n', "model/model.h": "\n"}))
    assert p.returncode == 1
    assert 'model/model.c: #include "runtime/runtime.h": model/ may not use runtime/' in p.stdout, p.stdout
    assert "cycle: model -> runtime -> model" in p.stdout, p.stdout
    assert "layout" not in p.stdout.replace("layout/layout.h", ""), p.stdout  # the allowed include is not flagged


def test_allowed_includes_pass(tmp_path):
    p = check(tree(tmp_path, {"util/util.h": "\n", "layout/layout.h": "\n",
                              "model/model.h": '#include "../layout/layout.h"\n#include "util/util.h"\n',
                              "cli/main.c": '#include "model/model.h"\n#include <stdio.h>\n'}))
    assert p.returncode == 0, p.stdout
    assert "3 dependencies" in p.stdout, p.stdout
