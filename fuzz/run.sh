#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60), one after another, and prints per target how many inputs
# it executed and any crash. Not run in CI: fuzzing is for a developer's machine.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). Stable Rust is enough: targets are built without a
# sanitizer (`-s none`); safe Rust needs none to find panics and broken invariants. New inputs libFuzzer finds
# go to fuzz/generated/<target> (ignored by git); the hand-written seeds in fuzz/corpus/<target> stay as
# they are. A crash's input is saved in fuzz/artifacts/<target>/; replay it with
# `cargo fuzz run -s none <target> <file>`.
set -u
cd "$(dirname "$0")"
secs=${1:-60}
shift $(( $# > 0 ? 1 : 0 ))
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(route host_templates credentials response_headers preview_token share_password packed_snapshot)
fi

mkdir -p generated
if ! cargo fuzz build -s none >generated/build.log 2>&1; then
    echo "building the fuzz targets failed: see fuzz/generated/build.log" >&2
    exit 2
fi
failed=0
for t in "${targets[@]}"; do
    mkdir -p "generated/$t"
    log="generated/$t.log"
    cargo fuzz run -s none "$t" "generated/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -n1)
    crash=$(grep -m1 -o 'Test unit written to .*' "$log" | sed 's/Test unit written to //')
    if [ "$rc" -eq 0 ] && [ -z "$crash" ]; then
        printf '%-18s %12s executions in %ss, no crash\n' "$t" "${execs:-?}" "$secs"
    else
        failed=1
        reason=$(grep -m1 -E "panicked at|ERROR: libFuzzer|==ERROR" -A2 "$log" | tr '\n' ' ' | cut -c1-300)
        printf '%-18s %12s executions, CRASH (exit %s): %s\n' "$t" "${execs:-?}" "$rc" "${crash:-see $log}"
        printf '%18s %s\n' "" "$reason"
    fi
done
exit "$failed"
