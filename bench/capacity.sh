#!/usr/bin/env bash
# Capacity used under saturating load (SPEC §9: ≥ 98 %, and 0 upstream 429s).
#
# Runs `gcpool demo` (simulator + gcpool + load generator, one process, loopback only) with
# offered load at twice the pool's capacity for several windows, and prints the capacity
# used: requests admitted upstream in whole windows since the first one ÷ what an exact
# sliding-window admitter could admit in them (pool capacity per window × windows).
#
#   bench/capacity.sh                         # 3 clients × 50 per 10 s, 40 s of load
#   WINDOW=10s TOKEN_LIMIT=50 CLIENTS=3 DURATION=40s bench/capacity.sh
set -euo pipefail
cd "$(dirname "$0")/.."

WINDOW=${WINDOW:-10s}
TOKEN_LIMIT=${TOKEN_LIMIT:-50}
CLIENTS=${CLIENTS:-3}
DURATION=${DURATION:-40s}

if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release --quiet
fi
BIN=${GCPOOL_BIN:-target/release/gcpool}

window_s=${WINDOW%s}
capacity=$((CLIENTS * TOKEN_LIMIT))
# Twice the capacity, in bursts of one window's capacity.
rate=$(python3 -c "print(2 * $capacity / $window_s)")

echo "capacity: $CLIENTS clients × $TOKEN_LIMIT per $WINDOW = $capacity per window; offered $rate req/s for $DURATION" >&2
report=$("$BIN" demo --skip-baseline --json --clients "$CLIENTS" --window "$WINDOW" \
  --token-limit "$TOKEN_LIMIT" --duration "$DURATION" --rate "$rate" --burst "$capacity" \
  --max-wait "$WINDOW")

python3 - "$report" <<'PY'
import json, sys
r = json.loads(sys.argv[1])["with_gcpool"]
cap = r["capacity_used"]
print(f"served {r['served']} of {r['sent']} sent; local 429s {r['local_429']}; upstream 429s {r['upstream_429']}")
print(f"served per client: {r['served_per_client']}")
print(f"queue wait p50 {r['queue_wait_p50_ms']} ms, p99 {r['queue_wait_p99_ms']} ms")
if cap is None:
    print("capacity used: n/a (less than one whole window measured)")
    sys.exit(1)
print(f"capacity used: {cap * 100:.2f} % over {r['windows_measured']} windows (goal >= 98 %)")
print(f"upstream 429s: {r['upstream_429']} (goal 0)")
ok = cap >= 0.98 and r["upstream_429"] == 0
print("result:", "meets the goals" if ok else "MISSES a goal")
PY
