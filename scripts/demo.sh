#!/usr/bin/env bash
# make demo: the whole job on SmolLM2-135M-Instruct, from nothing.
#   bitplan quantize (measure -> allocate at 4.0 bpw -> pack -> check -> report) ->
#   eval against full precision on held-out text -> generate a sample -> a Pareto
#   sweep -> the report again -> a short summary.
# Work goes to out/ (git-ignored). A second run reuses the measurement (resumable).
set -euo pipefail
cd "$(dirname "$0")/.."
BP=${BITPLAN:-build/bitplan}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=${DEMO_OUT:-out}
BPW=${DEMO_BPW:-4.0}
CHUNKS=${DEMO_CHUNKS:-40}
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "inspect"
"$BP" inspect "$MODEL" >"$OUT/inspect.txt"
sed -n 1,5p "$OUT/inspect.txt"; echo "..."; tail -n 8 "$OUT/inspect.txt"

# The one command: measure with KL probes (resumable; a finished measurement is
# reused), allocate exactly at $BPW bpw, pack, check on held-out calibration text
# against the source, report. The calibration text is data/calib.txt (the default).
step "quantize: the whole job in one command"
"$BP" quantize "$MODEL" --bpw "$BPW" -o "$OUT/smol-$BPW.bp" | tee "$OUT/quantize.txt"
DB=$OUT/SmolLM2-135M-Instruct.Q4_1.bitplan.db
REPORT=$OUT/smol-$BPW.report.html
plan=$(sed -n 's/^allocate  plan \([0-9][0-9]*\).*/\1/p' "$OUT/quantize.txt" | head -1)

step "eval on held-out text (Austen, Persuasion) against full precision"
"$BP" eval "$OUT/smol-$BPW.bp" --text data/heldout.txt --ctx 512 --chunks "$CHUNKS" \
    --ref "$MODEL" --db "$DB" | tee "$OUT/eval.txt"

step "generate"
"$BP" generate "$OUT/smol-$BPW.bp" --chat --prompt "What is the capital of France?" -n 48 2>"$OUT/gen-stats.txt" | tee "$OUT/gen.txt"
echo; cat "$OUT/gen-stats.txt"

step "Pareto sweep: one exact plan per target, for the report"
"$BP" allocate --db "$DB" --sweep 2.5:6:0.5 --label demo | grep -E '^plan|unreachable' || true

step "report, again with the sweep and the evaluation"
"$BP" report --db "$DB" --plan "$plan" -o "$REPORT"

step "summary"
size=$(stat -c %s "$OUT/smol-$BPW.bp")
printf 'packed file   %s (%s MiB)\n' "$OUT/smol-$BPW.bp" "$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }')"
grep -hE '^allocate|^quality|^time|^perplexity|^ref perplexity|^KL|^top-1|tokens/s' "$OUT/quantize.txt" "$OUT/eval.txt" "$OUT/gen-stats.txt"
echo "report        $REPORT"
