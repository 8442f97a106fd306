#!/usr/bin/env bash
# Counts instructions per call of each layer with valgrind's callgrind (N and 2N calls, the
# difference over N, less the bare service's own cost) and fails when a layer exceeds its budget
# in budgets.txt by more than 5 %. Instruction counts repeat exactly on a noisy machine, unlike
# wall-clock time. Run from anywhere: bash benches/instructions/check.sh [--report]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

if ! command -v valgrind >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -q && apt-get install -y -q valgrind
    else
        echo "instruction budgets: valgrind is missing (apt-get install valgrind)" >&2
        exit 1
    fi
fi

target="${CARGO_TARGET_DIR:-$here/../../target}/instructions"
mkdir -p "$target"
if ! CARGO_TARGET_DIR="$target" cargo build --release --quiet --locked 2>"$target.log"; then
    cat "$target.log" >&2
    exit 1
fi
bin="$target/release/rampart-instructions"
n=20000

# Instructions of one run of CASE with CALLS calls.
count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

# Instructions per call of CASE, bare service included.
per_call() {
    local one two
    one=$(count "$1" "$n")
    two=$(count "$1" $((2 * n)))
    echo $(((two - one) / n))
}

bare=$(per_call bare)
echo "instructions per call over a bare service_fn (bare: $bare), budget +5 % allowed:"
failed=0
while read -r case budget goal; do
    case "$case" in ''|'#'*) continue ;; esac
    got=$(($(per_call "$case") - bare))
    verdict=ok
    if [ "$budget" = - ]; then
        verdict="(a peer's, for comparison)"
    elif [ "$got" -gt $((budget + budget / 20)) ]; then
        verdict="OVER BUDGET"
        failed=1
    fi
    printf '  %-28s %6d  budget %6s  goal %6s  %s\n' "$case" "$got" "$budget" "$goal" "$verdict"
done < budgets.txt
if [ "$failed" != 0 ]; then
    echo "instruction budgets: a layer costs more than its budget (benches/instructions/budgets.txt)" >&2
    exit 1
fi
