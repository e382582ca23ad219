#!/usr/bin/env bash
# scripts/gpu-prep.sh — run here, before a GPU run: a packed SmolLM2 file small enough
# to travel with the working tree to the GPU machine (a VRAM plan, ~42 MiB, leaving
# room under the device tool's 64 MiB for scripts/gpu-bundle.sh's 11), and what the
# memory model predicts that model and context need, for scripts/gpu-check.sh:
#
#     make demo && bash scripts/gpu-prep.sh && bash scripts/gpu-bundle.sh
#     # then, on the GPU machine (out/gpu carried along):
#     PREBUILT=out/gpu/bundle bash scripts/gpu-check.sh out/gpu/smol-vram.bp \
#         $(cat out/gpu/predicted-bytes) $(cat out/gpu/ctx)
#
# The plan is `allocate --vram BUDGET --ctx CTX --reserve 0`, so its memory total is
# exactly the prediction for weights, unquantized tensors, KV cache and scratch.
#   env: BUDGET (default 88MiB), CTX (default 2048)
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=${BUDGET:-88MiB}
CTX=${CTX:-2048}
BP=build/bitplan
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
DB=out/SmolLM2-135M-Instruct.Q4_1.bitplan.db   # make demo: bitplan quantize keeps it beside its output
OUT=out/gpu
die() { echo "gpu-prep: $*" >&2; exit 1; }

[ -x "$BP" ] || die "$BP is missing: run make first"
[ -f "$MODEL" ] || die "$MODEL is missing: run make model"
[ -f "$DB" ] || die "$DB is missing: run make demo (it measures the model)"
mkdir -p "$OUT"
"$BP" allocate --db "$DB" --vram "$BUDGET" --ctx "$CTX" --reserve 0 --label gpu-check | tee "$OUT/allocate.txt"
plan=$(sed -n 's/^plan \([0-9][0-9]*\):.*/\1/p' "$OUT/allocate.txt" | head -1)
[ -n "$plan" ] || die "allocate made no plan"
"$BP" pack "$MODEL" --db "$DB" --plan "$plan" -o "$OUT/smol-vram.bp"
"$BP" report --db "$DB" --plan "$plan" --format json -o "$OUT/report.json"
python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["vram"]["total"])' "$OUT/report.json" >"$OUT/predicted-bytes"
echo "$CTX" >"$OUT/ctx"
echo "gpu-prep: $OUT/smol-vram.bp ($(du -m "$OUT/smol-vram.bp" | cut -f1) MiB), plan $plan, predicted $(cat "$OUT/predicted-bytes") bytes at ctx $CTX"
