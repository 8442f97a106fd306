#!/usr/bin/env bash
# Instructions per request through a router, in process (no sockets, one thread), counted with
# callgrind: bare axum, the standard server pipeline, and the Idempotency-Key layer on the memory
# store with a new key per request. Each variant runs N and 2N requests; the difference over N is
# the cost of one request. Only the requests are counted (`--toggle-collect`), not the setup.
#
#   bash benches/http/profile.sh [--annotate]
#   FILL=1000000 CACHE=1 VARIANTS=memory bash benches/http/profile.sh --annotate
#   BIN=/tmp/http_bench.before CACHE=1 bash benches/http/profile.sh
#   RENEW=20000 CACHE=1 VARIANTS=memory bash benches/http/profile.sh
#
# FILL: completed records put in the memory store before the requests, as a long wrk run leaves
# it (the N and 2N runs both start from a store of FILL records). CACHE=1 also simulates the
# caches (valgrind's simulator, fixed geometry so runs compare across machines: 32 KiB 8-way I1
# and D1, 8 MiB 16-way LL, 64-byte lines) and prints D1 and LL misses per request (reads +
# writes). RENEW=held pauses the clock and moves it on as the requests go, after `held` unmeasured
# requests, so that `held` keys always wait for their first renewal (wrk at 40,000 new keys per
# second holds 130,000: rate x lease/3) and every measured key's entry in the renewal queue is
# made, comes due and is dropped inside the window; without it the window never runs the
# layer's renewal watcher (the runtime is never idle). OUT=dir keeps the callgrind files. `--annotate` prints the memory variant's functions per request (inclusive; with
# CACHE=1, sorted by D1 misses, with their LL misses).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install -y valgrind" >&2; exit 1; }
N=${N:-2000}
FILL=${FILL:-0}
RENEW=${RENEW:-0}
CACHE=${CACHE:-0}
read -r -a variants <<<"${VARIANTS:-bare pipeline memory}"
# BIN=path profiles a binary built before (to compare two versions of the code).
bin=${BIN:-target/release/examples/http_bench}
[[ -n "${BIN:-}" ]] || cargo build --release --quiet --example http_bench
if [[ -n "${OUT:-}" ]]; then # keep the callgrind files there
  out=$OUT; mkdir -p "$out"
else
  out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
fi
opts=(--tool=callgrind --collect-atstart=no '--toggle-collect=*measured*')
if [[ "$CACHE" == 1 ]]; then
  opts+=(--cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=8388608,16,64)
fi
count() { # variant n -> the "Collected" events: Ir [Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw]
  valgrind "${opts[@]}" --callgrind-out-file="$out/$1.$2" "$bin" calls "$1" "$2" "$FILL" "$RENEW" 2>&1 \
    | awk '/Collected/ {$1 = $2 = $3 = ""; print}'
}
declare -A ir d1 ll
for v in "${variants[@]}"; do
  read -r -a a <<<"$(count "$v" "$N")"
  read -r -a b <<<"$(count "$v" $((2 * N)))"
  ir[$v]=$(((b[0] - a[0]) / N))
  if [[ "$CACHE" == 1 ]]; then
    d1[$v]=$(awk -v n="$N" -v a="${a[4]} ${a[5]}" -v b="${b[4]} ${b[5]}" \
      'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.2f", (y[1] + y[2] - x[1] - x[2]) / n}')
    ll[$v]=$(awk -v n="$N" -v a="${a[7]} ${a[8]}" -v b="${b[7]} ${b[8]}" \
      'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.2f", (y[1] + y[2] - x[1] - x[2]) / n}')
  fi
done
echo "N=$N and $((2 * N)) requests, memory store filled with $FILL records first," \
  "$RENEW keys waiting for their first renewal (0: the renewal watcher never runs)"
printf '%-10s %12s %12s %12s %12s\n' variant "instr/req" "over bare" "D1 miss/req" "LL miss/req"
for v in "${variants[@]}"; do
  over=-; [[ -n "${ir[bare]:-}" ]] && over=$((ir[$v] - ir[bare]))
  printf '%-10s %12s %12s %12s %12s\n' "$v" "${ir[$v]}" "$over" "${d1[$v]:--}" "${ll[$v]:--}"
done
if [[ "${1:-}" == "--annotate" && -f "$out/memory.$N" ]]; then
  python3 - "$out/memory.$N" "$out/memory.$((2 * N))" "$N" <<'PY'
import re, subprocess, sys
def load(p):
    text = subprocess.run(['callgrind_annotate', '--inclusive=yes', '--threshold=100', p],
                          capture_output=True, text=True).stdout
    events = re.search(r'^Events shown:\s+(.*)$', text, re.M).group(1).split()
    d = {}
    for line in text.splitlines():
        m = re.match(r'\s*((?:[\d,.]+ (?:\([^)]*\)\s+)?)+)\s*\S*?:(.*?)( \[.*\])?$', line)
        if not m:
            continue
        nums = [int(x.replace(',', '')) for x in re.findall(r'([\d,]+)(?: \([^)]*\))?', m.group(1))]
        if len(nums) != len(events):
            continue
        row = d.setdefault(m.group(2), [0] * len(events))
        for i, x in enumerate(nums):
            row[i] += x
    return events, d
ev, a = load(sys.argv[1])
_, b = load(sys.argv[2])
n = int(sys.argv[3])
col = {e: i for i, e in enumerate(ev)}
def per(k, e):
    if e not in col:
        return None
    i = col[e]
    return (b[k][i] - a.get(k, [0] * len(ev))[i]) / n
cache = 'D1mr' in col
def d1(k): return per(k, 'D1mr') + per(k, 'D1mw')
def ll(k): return per(k, 'DLmr') + per(k, 'DLmw')
key = d1 if cache else (lambda k: per(k, 'Ir'))
rows = sorted(b, key=lambda k: -key(k))
print("\nmemory store, new key, per request (inclusive): instructions" + (", D1 misses, LL misses" if cache else ""))
for k in rows:
    keep = 'tower_rampart' in k or k.startswith(('tokio::task::spawn', '__memcpy', '__rustc::__rust_alloc',
        '__rustc::__rust_dealloc', '__rustc::__rust_realloc', 'core::hash::BuildHasher::hash_one', 'hashbrown', 'malloc', 'free', '_int_'))
    if not keep:
        continue
    if cache and d1(k) >= 0.3:
        print(f"{per(k, 'Ir'):9.0f} {d1(k):7.2f} {ll(k):7.2f}  {k[:130]}")
    elif not cache and per(k, 'Ir') >= 500:
        print(f"{per(k, 'Ir'):9.0f}  {k[:140]}")
PY
fi
