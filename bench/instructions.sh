#!/usr/bin/env bash
# CPU instructions gcpool spends per proxied request, counted by valgrind's callgrind: a
# figure that, unlike req/s, repeats on a shared machine (same binary, same requests).
#
# Runs gcpool (one worker thread) under callgrind in front of `gcpool simulate`, sends N1 then
# N2 keep-alive GETs in two runs, and prints (I(N2) − I(N1)) / (N2 − N1): start-up, token
# grants and shutdown cancel out. The simulator runs natively and is not counted.
#
#   bench/instructions.sh                         # release build of this tree
#   GCPOOL_BIN=/path/to/gcpool bench/instructions.sh
#   N1=500 N2=2500 bench/instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-500}
N2=${N2:-2500}
if [[ -z "${SKIP_BUILD:-}" && -z "${GCPOOL_BIN:-}" ]]; then
  cargo build --release --quiet
fi
BIN=${GCPOOL_BIN:-target/release/gcpool}
command -v valgrind > /dev/null || { echo "valgrind is needed" >&2; exit 1; }
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

sim_port=$(free_port)
"$BIN" simulate --listen "127.0.0.1:$sim_port" --clients 3 --token-limit 1000000 > "$tmp/sim.log" 2>&1 &
pids+=($!)
sleep 0.5

# Instructions of one gcpool run that serves $1 requests.
count() {
  local n=$1 api admin
  api=$(free_port)
  admin=$(free_port)
  cat > "$tmp/gcpool.yaml" << EOF
server: {listen: "127.0.0.1:$api", admin_listen: "127.0.0.1:$admin"}
genesys: {api_base: "http://127.0.0.1:$sim_port", login_base: "http://127.0.0.1:$sim_port"}
inbound: {allow_anonymous: true}
budgets: {token_per_minute: 1000000, org_per_minute: 3000000}
clients:
  - {name: pool-01, client_id: sim-client-01, client_secret: sim-secret-01}
EOF
  GCPOOL_WORKERS=1 RUST_LOG=error valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$n" \
    "$BIN" run --config "$tmp/gcpool.yaml" > /dev/null 2> "$tmp/gcpool.$n.log" &
  local gc=$!
  pids+=($gc)
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$admin/readyz" > /dev/null && break
    sleep 0.2
  done
  python3 - "$api" "$n" << 'PY'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
req = b"GET /api/v2/users/bench?pageSize=1 HTTP/1.1\r\nHost: x\r\n\r\n"
buf = b""
for _ in range(n):
    s.sendall(req)
    while True:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if sep:
            length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
            if len(rest) >= length:
                if not head.startswith(b"HTTP/1.1 200"):
                    sys.exit(f"unexpected answer: {head[:40]!r}")
                buf = rest[length:]
                break
        buf += s.recv(65536)
s.close()
PY
  kill -TERM "$gc"
  wait "$gc" || true
  grep -m1 '^summary:' "$tmp/cg.$n" | awk '{print $2}'
}

i1=$(count "$N1")
i2=$(count "$N2")
per=$(( (i2 - i1) / (N2 - N1) ))
echo "gcpool ($BIN): $i1 instructions for $N1 requests, $i2 for $N2"
echo "instructions per proxied request: $per"
