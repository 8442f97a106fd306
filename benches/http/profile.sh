#!/usr/bin/env bash
# Instructions per request through a router, in process (no sockets, one thread), counted with
# callgrind: bare axum, the standard server pipeline, and the Idempotency-Key layer on the memory
# store with a new key per request. Each variant runs N and 2N requests; the difference over N is
# the cost of one request. `--annotate` also prints the layer's functions (inclusive, per request).
#
#   bash benches/http/profile.sh [--annotate]
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install -y valgrind" >&2; exit 1; }
N=${N:-2000}
cargo build --release --quiet --example http_bench
bin=target/release/examples/http_bench
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
count() { # variant n -> instructions
  valgrind --tool=callgrind --callgrind-out-file="$out/$1.$2" "$bin" calls "$1" "$2" 2>&1 \
    | awk '/Collected/ {print $4}'
}
declare -A per
for v in bare pipeline memory; do
  a=$(count "$v" "$N"); b=$(count "$v" $((2 * N)))
  per[$v]=$(( (b - a) / N ))
done
printf '%-10s %12s %12s\n' variant "instr/req" "over bare"
for v in bare pipeline memory; do
  printf '%-10s %12s %12s\n' "$v" "${per[$v]}" $(( per[$v] - per[bare] ))
done
if [[ "${1:-}" == "--annotate" ]]; then
  for n in "$N" $((2 * N)); do
    callgrind_annotate --inclusive=yes --threshold=100 "$out/memory.$n" >"$out/inc.$n" 2>/dev/null
  done
  python3 - "$out/inc.$N" "$out/inc.$((2 * N))" "$N" <<'PY'
import re, sys
def load(p):
    d = {}
    for line in open(p):
        m = re.match(r'\s*([\d,]+) \([^)]*\)\s+\S*?:(.*?)( \[.*\])?$', line)
        if m:
            d[m.group(2)] = d.get(m.group(2), 0) + int(m.group(1).replace(',', ''))
    return d
a, b, n = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
rows = sorted(((k, (b[k] - a.get(k, 0)) / n) for k in b), key=lambda r: -r[1])
print("\nmemory store, new key: inclusive instructions per request")
for k, v in rows:
    if v >= 500 and ('tower_rampart' in k or k.startswith(('tokio::task::spawn', '__memcpy', '__rustc::__rust_alloc', '__rustc::__rust_dealloc', 'core::hash::BuildHasher::hash_one'))):
        print(f"{v:9.0f}  {k[:140]}")
PY
fi
