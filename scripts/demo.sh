#!/usr/bin/env bash
# make demo: the whole job on SmolLM2-135M-Instruct, from nothing.
#   measure -> allocate at 4.0 bpw -> pack -> eval against full precision on held-out
#   text -> generate a sample -> report -> a short summary.
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

# --kl-probe scales each tensor's error curve into predicted KL divergence; plans
# made on it beat plans made on the raw relative errors (BENCHMARKS.md).
step "measure with KL probes (resumable; a finished measurement is reused)"
"$BP" measure "$MODEL" --calib data/calib.txt --db "$OUT/smol.db" --kl-probe

step "allocate: $BPW bpw"
"$BP" allocate --db "$OUT/smol.db" --bpw "$BPW" --label demo | tee "$OUT/allocate.txt"
plan=$(sed -n 's/.*plan \([0-9][0-9]*\).*/\1/p' "$OUT/allocate.txt" | head -1)

step "pack plan $plan"
"$BP" pack "$MODEL" --db "$OUT/smol.db" --plan "$plan" -o "$OUT/smol-$BPW.bp"

step "eval on held-out text (Austen, Persuasion) against full precision"
"$BP" eval "$OUT/smol-$BPW.bp" --text data/heldout.txt --ctx 512 --chunks "$CHUNKS" \
    --ref "$MODEL" --db "$OUT/smol.db" | tee "$OUT/eval.txt"

step "generate"
"$BP" generate "$OUT/smol-$BPW.bp" --chat --prompt "What is the capital of France?" -n 48 2>"$OUT/gen-stats.txt" | tee "$OUT/gen.txt"
echo; cat "$OUT/gen-stats.txt"

step "Pareto sweep: one exact plan per target, for the report"
"$BP" allocate --db "$OUT/smol.db" --sweep 2.5:6:0.5 --label demo | grep -E '^plan|unreachable' || true

step "report"
"$BP" report --db "$OUT/smol.db" --plan "$plan" -o "$OUT/report.html"

step "summary"
size=$(stat -c %s "$OUT/smol-$BPW.bp")
printf 'packed file   %s (%s MiB)\n' "$OUT/smol-$BPW.bp" "$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }')"
grep -hE '^plan [0-9]|^perplexity|^ref perplexity|^KL|^top-1|tokens/s' "$OUT/allocate.txt" "$OUT/eval.txt" "$OUT/gen-stats.txt"
echo "report        $OUT/report.html"
