#!/usr/bin/env bash
# Fuzzing with AFL++ through cargo-afl, on the stable toolchain
# (docs/security.md, "Fuzzing"). One instrumented binary holds every
# target (fuzz/src/targets.rs); the seed corpus is fuzz/corpus/TARGET.
#
#   scripts/fuzz.sh build                  build the instrumented slate-fuzz
#                                          (run and long build it first too,
#                                          unless SLATE_FUZZ_BIN names one)
#   scripts/fuzz.sh smoke [SECONDS]        every target SECONDS (default 10);
#                                          fails on any crash or hang
#   scripts/fuzz.sh run TARGET SECONDS     one target; prints its summary line
#   scripts/fuzz.sh long [TOTAL_SECONDS]   every target in turn, one at a time,
#                                          an equal share of TOTAL (default
#                                          3600 each); summary table at the end
#
# Results go to target/fuzz/TARGET (findings in crashes/ and hangs/, with
# the inputs AFL++ kept in queue/); replay one with
#   /var/tmp/slate-fuzz/target/release/slate-fuzz TARGET < FILE
# AFL++'s machine-wide tuning is not touched: the variables below make it
# run as it is (no CPU frequency check, no core binding, crashes caught by
# the harness rather than from core dumps, so core_pattern can stay).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# The instrumented build lives outside the work tree, like the test corpus,
# so that a fresh clone (CI) rebuilds only what changed.
export CARGO_TARGET_DIR=${SLATE_FUZZ_TARGET:-/var/tmp/slate-fuzz/target}
bin=${SLATE_FUZZ_BIN:-$CARGO_TARGET_DIR/release/slate-fuzz}
out=${SLATE_FUZZ_OUT:-$root/target/fuzz}
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

# AFL++ takes a variable that is set at all as "on", whatever its value:
# set only those wanted.
export AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_UI=1 AFL_FAST_CAL=1

# Not --locked: fuzz/Cargo.lock starts from the workspace's versions, and a
# dependency the workspace gains later is added to it here, not refused.
build() {
    (cd "$root/fuzz" && cargo afl build --release --quiet)
}

targets() {
    "$bin" --list
}

# run TARGET SECONDS TIMEOUT_MS: fuzz one target, then print
# "TARGET seconds execs execs/s corpus edges% crashes hangs".
run() {
    local t=$1 secs=$2 tmo=$3 dir=$out/$1
    rm -rf "$dir"
    mkdir -p "$out"
    local log=$out/$t.log
    export SLATE_FUZZ_SCRATCH=$dir.scratch
    local rc=0
    cargo afl fuzz -i "$root/fuzz/corpus/$t" -o "$dir" -V "$secs" -t "$tmo" -- "$bin" "$t" >"$log" 2>&1 || rc=$?
    rm -rf "$SLATE_FUZZ_SCRATCH"
    if [ "$rc" -ne 0 ]; then
        echo "fuzz: afl-fuzz failed on $t; its log ($log) ends:" >&2
        tail -n 20 "$log" >&2
        return 1
    fi
    local stats=$dir/default/fuzzer_stats
    [ -f "$stats" ] || { echo "fuzz: no statistics for $t ($log)" >&2; return 1; }
    stat() { awk -v k="$1" '$1 == k { print $3 }' "$stats"; }
    printf '%-13s %6ss %12s execs %8s/s %6s inputs %8s edges %3s crashes %3s hangs\n' \
        "$t" "$(stat run_time)" "$(stat execs_done)" "$(stat execs_per_sec)" "$(stat corpus_count)" \
        "$(stat edges_found)" "$(stat saved_crashes)" "$(stat saved_hangs)"
}

findings() {
    local n=0 t
    for t in "$@"; do
        local dir=$out/$t/default
        for kind in crashes hangs; do
            local c
            c=$(find "$dir/$kind" -type f ! -name README.txt 2>/dev/null | wc -l)
            if [ "$c" -gt 0 ]; then
                echo "fuzz: $t: $c $kind in $dir/$kind (replay: $bin $t < FILE)" >&2
                n=$((n + c))
            fi
        done
    done
    [ "$n" -eq 0 ]
}

case "${1:-}" in
build)
    build
    ;;
smoke)
    secs=${2:-10}
    build
    mapfile -t ts < <(targets)
    for t in "${ts[@]}"; do
        # A generous per-input limit: CI machines are busy, and a smoke run
        # must only fail on a real hang.
        AFL_BENCH_UNTIL_CRASH=1 run "$t" "$secs" 10000
    done
    findings "${ts[@]}"
    echo "fuzz: smoke run of ${#ts[@]} targets, ${secs}s each: no crash, no hang"
    ;;
run)
    [ $# -eq 3 ] || { echo "usage: $0 run TARGET SECONDS" >&2; exit 2; }
    [ -n "${SLATE_FUZZ_BIN:-}" ] || build
    run "$2" "$3" 5000
    findings "$2"
    ;;
long)
    [ -n "${SLATE_FUZZ_BIN:-}" ] || build
    mkdir -p "$out"
    mapfile -t ts < <(targets)
    total=${2:-$((3600 * ${#ts[@]}))}
    each=$((total / ${#ts[@]}))
    echo "fuzz: ${#ts[@]} targets, ${each}s each, started $(date -u '+%Y-%m-%d %H:%M UTC')" | tee "$out.summary"
    status=0
    for t in "${ts[@]}"; do
        run "$t" "$each" 5000 | tee -a "$out.summary" || status=1
    done
    findings "${ts[@]}" || status=1
    echo "fuzz: finished $(date -u '+%Y-%m-%d %H:%M UTC'); summary in $out.summary"
    exit $status
    ;;
*)
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
