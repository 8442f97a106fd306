#!/usr/bin/env bash
# HTTP-level cost of the layers, measured with wrk on loopback (issue #16 item 5):
# bare axum, the standard server pipeline, the Idempotency-Key layer on the memory store and on
# Redis (a redis-server this script starts on a free port), and the Redis store's own limit for the
# same two calls. Every request is a POST with a new Idempotency-Key. wrk and the server share
# the machine's cores, as in the issue's figures.
#
#   bash benches/http/run.sh            # 32 connections, 8 s per variant, 3 rounds
#   ROUNDS=1 DURATION=4s bash benches/http/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server is missing: apt-get install -y redis-server" >&2; exit 1; }
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-32}
cargo build --release --quiet --example http_bench
bin=target/release/examples/http_bench

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

redis_port=$(free_port)
redis-server --port "$redis_port" --save '' --appendonly no --daemonize no >/dev/null &
redis_pid=$!
pids=("$redis_pid")
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis_url="redis://127.0.0.1:$redis_port"

start() { # variant: starts its server, sets port[variant] once it listens
  local p; p=$(free_port)
  "$bin" "$1" "127.0.0.1:$p" "$redis_url" >/dev/null 2>"target/http_bench_$1.log" &
  pids+=("$!")
  pid[$1]=$!
  for _ in $(seq 100); do
    if (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port[$1]=$p; return; fi
    sleep 0.05
  done
  echo "the $1 server did not start: $(cat "target/http_bench_$1.log")" >&2
  exit 1
}

declare -A port pid cpu
notes=()
# The server's CPU time, user and system, in clock ticks.
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
for v in bare pipeline memory redis; do start "$v"; done

echo "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) (wrk figures mean little while anything else runs)"
echo "wrk -t2 -c$CONNECTIONS -d$DURATION, a new Idempotency-Key per request; requests per second"
printf '%-10s' round; for v in bare pipeline memory redis; do printf '%12s' "$v"; done; printf '%14s\n' store-limit
for r in $(seq "$ROUNDS"); do
  printf '%-10s' "$r"
  for v in bare pipeline memory redis; do
    read -r u0 s0 < <(ticks "${pid[$v]}")
    out=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" -s benches/http/new_key.lua "http://127.0.0.1:${port[$v]}")
    read -r u1 s1 < <(ticks "${pid[$v]}")
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    cpu[$r.$v]=$(awk -v u="$((u1 - u0))" -v s="$((s1 - s0))" -v hz="$hz" -v n="$n" \
      'BEGIN {printf "%.1f+%.1f", u / hz * 1e6 / n, s / hz * 1e6 / n}')
    # Only 201s count: a refusal (503, a full store) or an error is cheaper than a new key.
    bad=$(awk '/Non-2xx or 3xx responses|Socket errors/ {print}' <<<"$out")
    if [[ -n "$bad" ]]; then rps="$rps!"; notes+=("round $r, $v: $bad"); fi
    printf '%12s' "$rps"
  done
  limit=$("$bin" store-limit "$CONNECTIONS" "$redis_url" | awk '{print $2}')
  printf '%14s\n' "$limit"
done
# CPU time per request varies less with other load than requests per second do (though a busy
# machine's caches still inflate it); Redis's own CPU is not in it.
echo "server CPU per request (user+system, microseconds)"
for r in $(seq "$ROUNDS"); do
  printf '%-10s' "$r"
  for v in bare pipeline memory redis; do printf '%12s' "${cpu[$r.$v]}"; done
  printf '\n'
done
for n in "${notes[@]}"; do echo "! $n"; done
echo "load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
