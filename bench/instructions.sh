#!/usr/bin/env bash
# CPU instructions gcpool spends per proxied request, counted by valgrind's callgrind: a
# figure that, unlike req/s, repeats on a shared machine (same binary, same requests) — and
# the same for nginx as the proxy, and their ratio.
#
# Runs gcpool (one worker thread) under callgrind in front of `gcpool simulate`, sends N1 then
# N2 keep-alive GETs in two runs, and prints (I(N2) − I(N1)) / (N2 − N1): start-up, token
# grants and shutdown cancel out. Then the same for nginx as the proxy (`proxy_pass` with
# upstream keepalive, one process, the bearer token set in its config) in front of the same
# simulator. The simulator runs natively and is not counted.
#
#   bench/instructions.sh                         # release build of this tree
#   GCPOOL_BIN=/path/to/gcpool bench/instructions.sh
#   N1=500 N2=2500 bench/instructions.sh
#   NGINX=0 bench/instructions.sh                 # gcpool only
#   KEEP=/tmp/cg bench/instructions.sh            # keep the callgrind files (callgrind_annotate)
#   BARE=0 bench/instructions.sh                  # without the hyper floor (examples/bare_proxy.rs)
#   GAP_MS=20 N1=100 N2=300 bench/instructions.sh # a pause between requests (connections that idle)
#   CACHE=1 bench/instructions.sh                 # per cache hit: the route cached in gcpool
#                                                 # (`cache:`) and in nginx (`proxy_cache`)
#   CACHE=1 CACHE_TTL=0s NGINX=0 bench/instructions.sh  # per coalesced-only miss (`ttl: 0s`):
#                                                 # every request leads a flight, keeps nothing
#   CALLERS=1 NGINX=0 BARE=0 bench/instructions.sh  # with callers (issue 15): each request
#                                                 # sends an API key whose caller has every rule
#   KEYS=1 NGINX=0 BARE=0 bench/instructions.sh   # with one API key and no caller rules
#
# The floor: `examples/bare_proxy.rs`, the least a hyper proxy does per request (hyper's
# HTTP/1.1 server and client connections, one thread, no admission, no metrics), measured the
# same way: what gcpool spends above it is gcpool's own.
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-500}
N2=${N2:-2500}
if [[ -z "${SKIP_BUILD:-}" && -z "${GCPOOL_BIN:-}" ]]; then
  cargo build --release --quiet
fi
BARE_BIN=""
CACHE=${CACHE:-0}
# CALLERS=1 / KEYS=1: every request sends the API key (to every proxy alike).
if [[ "${CALLERS:-0}" != 0 || "${KEYS:-0}" != 0 ]]; then
  export GCPOOL_BENCH_KEY=1
fi
# The floor caches nothing: no floor for hits.
[[ "$CACHE" == 0 ]] || BARE=0
if [[ "${BARE:-1}" != 0 ]]; then
  [[ -n "${SKIP_BUILD:-}" ]] || cargo build --release --quiet --example bare_proxy
  BARE_BIN=target/release/examples/bare_proxy
fi
BIN=${GCPOOL_BIN:-target/release/gcpool}
command -v valgrind > /dev/null || { echo "valgrind is needed" >&2; exit 1; }
NGINX_BIN=""
if [[ "${NGINX:-1}" != 0 ]]; then
  NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
  [[ -x "$NGINX_BIN" ]] || { echo "nginx is needed for the comparison (NGINX=0 to skip)" >&2; exit 1; }
fi
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

sim_port=$(free_port)
"$BIN" simulate --listen "127.0.0.1:$sim_port" --clients 3 --token-limit 1000000 > "$tmp/sim.log" 2>&1 &
pids+=($!)
sleep 0.5

# $2 keep-alive GETs on one connection to 127.0.0.1:$1, each answered 200 before the next.
send() {
  python3 - "$1" "$2" "${GAP_MS:-0}" << 'PY'
import socket, sys, time
port, n, gap = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) / 1000
s = socket.create_connection(("127.0.0.1", port))
req = b"GET /api/v2/users/bench?pageSize=1 HTTP/1.1\r\nHost: x\r\n" + (
    b"X-API-Key: bench-caller-key\r\n" if "GCPOOL_BENCH_KEY" in __import__("os").environ else b""
) + b"\r\n"
buf = b""
for _ in range(n):
    if gap:
        time.sleep(gap)
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
}

# Instructions of one gcpool run that serves $1 requests.
count() {
  local n=$1 api admin
  api=$(free_port)
  admin=$(free_port)
  cat > "$tmp/gcpool.yaml" << EOF
server: {listen: "127.0.0.1:$api", admin_listen: "127.0.0.1:$admin"}
genesys: {api_base: "http://127.0.0.1:$sim_port", login_base: "http://127.0.0.1:$sim_port"}
budgets: {token_per_minute: 1000000, org_per_minute: 3000000}
clients:
  - {name: pool-01, client_id: sim-client-01, client_secret: sim-secret-01}
EOF
  if [[ "${CALLERS:-0}" != 0 ]]; then
    cat >> "$tmp/gcpool.yaml" << EOF
inbound:
  api_keys:
    - {name: bench, key: bench-caller-key, clients: [pool-01], per_minute: 100000000, max_wait: 5s, lane: batch, allow_routes: ["GET /api/v2/users/{userId}"]}
    - {name: other, key: other-caller-key, per_minute: 1000, lane: realtime}
  lanes: {standard: 0.95, batch: 0.9}
EOF
  elif [[ "${KEYS:-0}" != 0 ]]; then
    printf 'inbound:\n  api_keys:\n    - {name: bench, key: bench-caller-key}\n' >> "$tmp/gcpool.yaml"
  else
    printf 'inbound: {allow_anonymous: true}\n' >> "$tmp/gcpool.yaml"
  fi
  if [[ "$CACHE" != 0 ]]; then
    cat >> "$tmp/gcpool.yaml" << EOF
cache:
  routes:
    - {route: "GET /api/v2/users/{userId}", ttl: ${CACHE_TTL:-1h}, ignore_upstream_cache_headers: true}
EOF
  fi
  GCPOOL_WORKERS=1 RUST_LOG=error valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$n" \
    "$BIN" run --config "$tmp/gcpool.yaml" > /dev/null 2> "$tmp/gcpool.$n.log" &
  local gc=$!
  pids+=($gc)
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$admin/readyz" > /dev/null && break
    sleep 0.2
  done
  send "$api" "$n"
  kill -TERM "$gc"
  wait "$gc" || true
  [[ -n "${KEEP:-}" ]] && mkdir -p "$KEEP" && cp "$tmp/cg.$n" "$KEEP/"
  grep -m1 '^summary:' "$tmp/cg.$n" | awk '{print $2}'
}

# Sends $3 requests through the proxy on port $2 once it answers (process $1, under callgrind
# writing $5), stops it with signal $4 and prints its instruction count.
serve_and_count() {
  local pid=$1 port=$2 n=$3 signal=$4 out=$5
  for _ in $(seq 300); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/api/v2/users/warmup" && break
    sleep 0.2
  done
  send "$port" "$n"
  kill "-$signal" "$pid"
  wait "$pid" || true
  [[ -n "${KEEP:-}" ]] && mkdir -p "$KEEP" && cp "$out" "$KEEP/"
  grep -m1 '^summary:' "$out" | awk '{print $2}'
}

# Instructions of one nginx run (the proxy, a single process) that serves $1 requests.
count_nginx() {
  local n=$1 port dir
  port=$(free_port)
  dir="$tmp/nginx.$n"
  mkdir -p "$dir"
  local cache_path="" cache_use=""
  if [[ "$CACHE" != 0 ]]; then
    # As gcpool's: answers kept whatever the simulator's no-store says.
    cache_path="proxy_cache_path $dir/cache keys_zone=api:10m;"
    cache_use="proxy_cache api; proxy_cache_valid 200 1h; proxy_ignore_headers Cache-Control Expires Set-Cookie;"
  fi
  cat > "$dir/nginx.conf" << EOF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream sim { server 127.0.0.1:$sim_port; keepalive 16; keepalive_requests 1000000; }
    $cache_path
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer $token";
            $cache_use
        }
    }
}
EOF
  valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.nginx.$n" \
    "$NGINX_BIN" -p "$dir/" -c "$dir/nginx.conf" > /dev/null 2> "$dir/valgrind.log" &
  pids+=($!)
  serve_and_count $! "$port" "$n" QUIT "$tmp/cg.nginx.$n"
}

# Instructions of one bare hyper proxy run (examples/bare_proxy.rs) that serves $1 requests.
count_bare() {
  local n=$1 port
  port=$(free_port)
  valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.bare.$n" \
    "$BARE_BIN" "127.0.0.1:$port" "127.0.0.1:$sim_port" "Bearer $token" > /dev/null 2> "$tmp/bare.$n.log" &
  pids+=($!)
  serve_and_count $! "$port" "$n" TERM "$tmp/cg.bare.$n"
}

i1=$(count "$N1")
i2=$(count "$N2")
per=$(( (i2 - i1) / (N2 - N1) ))
what="proxied request"
[[ "$CACHE" == 0 ]] || what="cache hit"
[[ "$CACHE" == 0 || "${CACHE_TTL:-1h}" != 0s ]] || what="coalesced-only miss"
echo "gcpool ($BIN): $i1 instructions for $N1 requests, $i2 for $N2"
echo "instructions per $what: $per"

if [[ -z "$NGINX_BIN" && -z "$BARE_BIN" ]]; then
  exit 0
fi
token=$(curl -sf -u sim-client-01:sim-secret-01 -d grant_type=client_credentials \
  "http://127.0.0.1:$sim_port/oauth/token" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
if [[ -n "$NGINX_BIN" ]]; then
  j1=$(count_nginx "$N1")
  j2=$(count_nginx "$N2")
  nginx_per=$(( (j2 - j1) / (N2 - N1) ))
  echo "nginx ($NGINX_BIN): $j1 instructions for $N1 requests, $j2 for $N2"
  echo "nginx instructions per $what: $nginx_per"
  python3 -c "print(f'ratio gcpool/nginx (instructions per $what) = {$per / $nginx_per:.2f}   (goal <= 1.00)')"
fi
if [[ -n "$BARE_BIN" ]]; then
  k1=$(count_bare "$N1")
  k2=$(count_bare "$N2")
  bare_per=$(( (k2 - k1) / (N2 - N1) ))
  echo "bare hyper proxy ($BARE_BIN): $k1 instructions for $N1 requests, $k2 for $N2"
  echo "bare hyper proxy instructions per proxied request: $bare_per (the floor with hyper)"
  python3 -c "print(f'gcpool above the hyper floor: {$per - $bare_per} instructions per request ({$per / $bare_per:.2f} x the floor)')"
  if [[ -n "$NGINX_BIN" ]]; then
    python3 -c "print(f'ratio hyper floor/nginx = {$bare_per / $nginx_per:.2f}')"
  fi
fi
