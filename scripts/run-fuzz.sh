#!/usr/bin/env bash
# Runs the libFuzzer harnesses that `make fuzz-build` put in build-fuzz/.
#
#   run-fuzz.sh campaign [TARGET...]   each target for FUZZ_SECONDS (default 60) on a
#                                      copy of its corpus in build-fuzz/corpus/TARGET
#                                      (kept between runs, so coverage accumulates);
#                                      a line per target: executions, cov, ft, crashes
#   run-fuzz.sh test [TARGET...]       what `make test` runs: each committed corpus
#                                      replayed, then FUZZ_TEST_SECONDS (default 10) of
#                                      fuzzing on a fresh copy; "ok"/"FAIL" per target
#
# TARGET is a name like json or gguf (tests/fuzz/fuzz_TARGET.c); default: all.
# Crashing inputs are saved in build-fuzz/crashes/TARGET/ and the script exits 1,
# naming them; tests/fuzz/corpus/ is only read. The tokenizer harness takes its
# vocabulary from models/ (or BITPLAN_FUZZ_VOCAB), so this runs from the repository root.
set -u
cd "$(dirname "$0")/.."
mode=${1:-}
[ $# -gt 0 ] && shift
B=build-fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in tests/fuzz/fuzz_*.c; do t=${f#tests/fuzz/fuzz_}; targets+=("${t%.c}"); done
fi
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

# libFuzzer's last "#N ... cov: C ft: F" line, as "N C F".
stats() { grep -oE '^#[0-9]+.*cov: [0-9]+ ft: [0-9]+' "$1" | tail -1 | sed -E 's/^#([0-9]+).*cov: ([0-9]+) ft: ([0-9]+)/\1 \2 \3/'; }

# Runs target $1 on corpus dir $2 for $3 seconds, crashes into build-fuzz/crashes/$1/.
# Extra arguments go to libFuzzer. Output in $log/$1.txt; returns libFuzzer's status.
fuzz_run() {
    local t=$1 corpus=$2 secs=$3
    shift 3
    mkdir -p "$B/crashes/$t"
    "$B/fuzz_$t" -max_total_time="$secs" -timeout=25 -rss_limit_mb=4096 -max_len=262144 -print_final_stats=1 \
        -artifact_prefix="$B/crashes/$t/" "$@" "$corpus" >"$log/$t.txt" 2>&1
}

report_failure() { # target
    echo "FAIL fuzz_$1: $(grep -a -m1 -E 'ERROR: |fuzz check failed|runtime error|deadly signal' "$log/$1.txt")"
    sed 's/^/    /' "$log/$1.txt" | grep -avE '^    #[0-9]+' | tail -25
    ls "$B/crashes/$1"/* 2>/dev/null | sed 's/^/    saved: /'
}

failed=0
for t in "${targets[@]}"; do
    if [ ! -x "$B/fuzz_$t" ]; then echo "FAIL fuzz_$t: $B/fuzz_$t is missing (make fuzz-build)"; failed=$((failed + 1)); continue; fi
    seeds=tests/fuzz/corpus/$t
    case $mode in
    campaign)
        mkdir -p "$B/corpus/$t"
        cp -n "$seeds"/* "$B/corpus/$t/" 2>/dev/null
        if fuzz_run "$t" "$B/corpus/$t" "${FUZZ_SECONDS:-60}"; then
            read -r n cov ft <<<"$(stats "$log/$t.txt")"
            echo "ok   fuzz_$t: ${n:-0} executions, cov ${cov:-?}, ft ${ft:-?}, 0 crashes ($(ls "$B/corpus/$t" | wc -l) inputs in $B/corpus/$t)"
        else
            report_failure "$t"; failed=$((failed + 1))
        fi
        ;;
    test)
        # the committed inputs, every one (-runs=0 only replays), then a short run
        work=$(mktemp -d "$log/$t.XXXX")
        cp "$seeds"/* "$work/"
        n_seeds=$(ls "$seeds" | wc -l)
        if [ "$n_seeds" -eq 0 ]; then echo "FAIL fuzz_$t: no corpus in $seeds"; failed=$((failed + 1)); continue; fi
        if ! fuzz_run "$t" "$work" 0 -runs=0; then report_failure "$t"; failed=$((failed + 1)); continue; fi
        if fuzz_run "$t" "$work" "${FUZZ_TEST_SECONDS:-10}"; then
            read -r n cov ft <<<"$(stats "$log/$t.txt")"
            echo "ok   fuzz_$t ($n_seeds corpus inputs replayed, ${n:-0} executions, cov ${cov:-?})"
        else
            report_failure "$t"; failed=$((failed + 1))
        fi
        ;;
    *) echo "usage: run-fuzz.sh campaign|test [TARGET...]" >&2; exit 2 ;;
    esac
done
[ $failed -eq 0 ]
