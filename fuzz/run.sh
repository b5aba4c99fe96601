#!/usr/bin/env bash
# Fuzzing driver for `make fuzz`, `make fuzz-smoke` and `make fuzz-seeds` (run from the repository
# root; see README, "Tests").
#
#   fuzz/run.sh build            build every target (nightly, AddressSanitizer, debug assertions)
#   fuzz/run.sh run              replay fuzz/regressions/<target>/, then fuzz each target for
#                                FUZZ_SECONDS from fuzz/corpus/<target> (+ the working corpus
#                                fuzz/work/<target>, where new inputs go); exits 1 on any crash
#   fuzz/run.sh seeds            rewrite the generated seeds (images, HNSW dumps, JSON bodies)
#
# Environment: FUZZ_SECONDS (60), FUZZ_TARGETS (all four), FUZZ_TOOLCHAIN (nightly), FUZZ_ARGS
# (extra libFuzzer flags), FUZZ_KEEP_GOING=1 (fork mode: go on after a crash, collecting every
# crash in fuzz/artifacts/<target>/ instead of stopping at the first).
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
toolchain=${FUZZ_TOOLCHAIN:-nightly}
targets=${FUZZ_TARGETS:-image_decode config_parse hnsw_load json_bodies}
# Debug assertions: overflow checks too, so arithmetic on a hostile header panics where a release
# build would wrap silently.
build_flags=(--debug-assertions)
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0"
triple=$(rustc "+$toolchain" -vV | sed -n 's/^host: //p')
bin=fuzz/target/$triple/release

build() {
    # cargo-fuzz has no --locked; this fails instead of silently re-resolving fuzz/Cargo.lock.
    cargo "+$toolchain" fetch --locked --manifest-path fuzz/Cargo.toml -q || {
        echo "fuzz/Cargo.lock is out of date (the main crate's dependencies changed?): cp Cargo.lock fuzz/ && cargo +$toolchain fetch --manifest-path fuzz/Cargo.toml, then commit fuzz/Cargo.lock" >&2
        return 1
    }
    cargo "+$toolchain" fuzz build "${build_flags[@]}" --fuzz-dir fuzz
}

seeds() {
    build || exit 1
    for t in image_decode hnsw_load json_bodies; do
        FACESTREAM_FUZZ_WRITE_SEEDS="fuzz/corpus/$t" "$bin/$t" || { echo "seed generation failed: $t" >&2; exit 1; }
    done
    echo "seeds written to fuzz/corpus/{image_decode,hnsw_load,json_bodies}/ (config_parse's are hand-written)"
}

# The last status line libFuzzer printed ("#N DONE cov: C ft: F corp: K/S exec/s: E ...", or in
# fork mode "#N: cov: C ft: F corp: K exec/s: E oom/timeout/crash: ...").
last_status() {
    grep -aE '^#[0-9]+(:|[[:space:]]+(INITED|NEW|REDUCE|pulse|DONE))[[:space:]]' "$1" | tail -1
}

run() {
    build || exit 1
    local failed=() summary=()
    for t in $targets; do
        mkdir -p "fuzz/work/$t" "fuzz/artifacts/$t"
        local log="fuzz/work/$t.log" dict=() keep=() before after
        [ -f "fuzz/dicts/$t.dict" ] && dict=("-dict=fuzz/dicts/$t.dict")
        [ "${FUZZ_KEEP_GOING:-0}" = 1 ] && keep=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
        # Inputs that once crashed must not crash now.
        if compgen -G "fuzz/regressions/$t/*" >/dev/null; then
            if "$bin/$t" -runs=1 fuzz/regressions/"$t"/* >"fuzz/work/$t.regressions.log" 2>&1; then
                echo "== $t: regressions pass ($(ls fuzz/regressions/"$t" | wc -l) inputs)"
            else
                echo "== $t: a regression input fails (fuzz/work/$t.regressions.log):"
                grep -aE 'panicked at|^\S.*(assert|Error|error)|Running: |SUMMARY' "fuzz/work/$t.regressions.log" | grep -av '^INFO' | head -8
                failed+=("$t (regressions)")
            fi
        fi
        before=$(ls "fuzz/artifacts/$t" | wc -l)
        echo "== $t: fuzzing for $seconds s (log: $log)"
        cargo "+$toolchain" fuzz run "${build_flags[@]}" --fuzz-dir fuzz "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
            -max_total_time="$seconds" -timeout=25 -rss_limit_mb=3072 -print_final_stats=1 \
            "${dict[@]}" "${keep[@]}" ${FUZZ_ARGS:-} >"$log" 2>&1
        local rc=$?
        after=$(ls "fuzz/artifacts/$t" | wc -l)
        local runs
        runs=$(grep -aoE '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1)
        [ -z "$runs" ] && runs=$(grep -aE 'stat::number_of_executed_units' "$log" | tail -1 | sed 's/.*: */executed units: /')
        [ -z "$runs" ] && runs=$(last_status "$log" | grep -aoE '^#[0-9]+' | sed 's/#/runs: /')
        summary+=("$t: ${runs:-no run count} | $(last_status "$log")")
        if [ "$rc" -ne 0 ] || [ "$after" -gt "$before" ]; then
            echo "== $t: CRASH (exit $rc; new artifacts in fuzz/artifacts/$t/):"
            grep -aE 'panicked at|^[^ #].*(matched|assert|overflow|capacity|failed)|ERROR: (AddressSanitizer|libFuzzer)|SUMMARY:|Test unit written to' "$log" | head -12
            ls -t "fuzz/artifacts/$t" | head -$((after - before > 0 ? after - before : 1)) | sed "s|^|   fuzz/artifacts/$t/|"
            failed+=("$t")
        fi
    done
    echo
    echo "== fuzz summary (${seconds} s per target)"
    printf '   %s\n' "${summary[@]}"
    if [ "${#failed[@]}" -gt 0 ]; then
        echo "== crashes in: ${failed[*]}. Reproduce: $bin/<target> fuzz/artifacts/<target>/<file>; minimise: cargo +$toolchain fuzz tmin ${build_flags[*]} <target> <file>; keep the minimised input in fuzz/regressions/<target>/." >&2
        exit 1
    fi
}

case "${1:-run}" in
    build) build ;;
    run) run ;;
    seeds) seeds ;;
    *) echo "usage: fuzz/run.sh [build|run|seeds]" >&2; exit 2 ;;
esac
