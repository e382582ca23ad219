#!/usr/bin/env bash
# Runs bitplan's tests and ends with one line: "N passed, N failed[, N skipped]".
#   C unit tests (cmocka, TAP output) from build/ and, if built, build-san/
#   (AddressSanitizer + UndefinedBehaviorSanitizer); the libFuzzer harnesses of
#   build-fuzz/ (scripts/run-fuzz.sh test: each corpus replayed, then a short run;
#   one test per harness); then pytest (tests/test_*.py).
# BITPLAN_ONLY=c, fuzz or py runs one part.
set -u
cd "$(dirname "$0")/.."
pass=0; fail=0; skip=0
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

count_tap() { # file → adds to the totals
    local p f s
    # cmocka writes a skipped test as "not ok N # SKIP" (or "ok N # SKIP")
    p=$(grep -E '^ok [0-9]+' "$1" | grep -vc '# SKIP'); f=$(grep -E '^not ok [0-9]+' "$1" | grep -vc '# SKIP')
    s=$(grep -cE '^(not )?ok [0-9]+.*# SKIP' "$1")
    pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
}

run_c() { # build dir
    local dir=$1 t out rc
    [ -d "$dir/tests" ] || return 0
    for t in "$dir"/tests/test_*; do
        [ -x "$t" ] || continue
        out="$log/$(basename "$dir")-$(basename "$t").tap"
        CMOCKA_MESSAGE_OUTPUT=TAP BITPLAN_BUILD="$dir" "$t" >"$out" 2>&1; rc=$?
        count_tap "$out"
        if [ $rc -ne 0 ]; then
            if [ "$(grep -E '^not ok' "$out" | grep -vc '# SKIP')" = 0 ]; then fail=$((fail + 1)); fi   # crashed
            echo "FAIL $t (exit $rc)"; sed 's/^/    /' "$out" | tail -40
        else
            echo "ok   $t ($(grep -E '^ok ' "$out" | grep -vc '# SKIP') tests)"
        fi
        # a skipped test says why
        if grep -q '# SKIP' "$out"; then
            echo "     $(grep -c '# SKIP' "$out") skipped: $(grep -m1 '^# skipped:' "$out" | sed 's/^# skipped: //')"
        fi
    done
}

if [ "${BITPLAN_ONLY:-c}" = c ] || [ -z "${BITPLAN_ONLY:-}" ]; then
    run_c build
    [ -z "${BITPLAN_ONLY:-}" ] && run_c build-san
fi
if [ "${BITPLAN_ONLY:-fuzz}" = fuzz ]; then
    for f in tests/fuzz/fuzz_*.c; do
        t=${f#tests/fuzz/fuzz_}; t=${t%.c}
        if bash scripts/run-fuzz.sh test "$t" >"$log/fuzz-$t.txt" 2>&1; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
        cat "$log/fuzz-$t.txt"
    done
fi
if [ "${BITPLAN_ONLY:-py}" = py ] || [ -z "${BITPLAN_ONLY:-}" ]; then
    if ls tests/test_*.py >/dev/null 2>&1; then
        BITPLAN_BUILD=build python3 -m pytest -q -rs tests >"$log/py.txt" 2>&1; rc=$?
        tail -30 "$log/py.txt"
        line=$(tail -1 "$log/py.txt")
        p=$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+'); f=$(grep -oE '[0-9]+ (failed|errors?)' <<<"$line" | awk '{s += $1} END {print s + 0}')
        s=$(grep -oE '[0-9]+ skipped' <<<"$line" | grep -oE '[0-9]+')
        pass=$((pass + ${p:-0})); fail=$((fail + ${f:-0})); skip=$((skip + ${s:-0}))
        [ $rc -ne 0 ] && [ $rc -ne 5 ] && [ "${f:-0}" = 0 ] && fail=$((fail + 1))
    fi
fi
if [ $skip -gt 0 ]; then echo "$pass passed, $fail failed, $skip skipped"; else echo "$pass passed, $fail failed"; fi
[ $fail -eq 0 ] && [ $pass -gt 0 ]
