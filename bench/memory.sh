#!/usr/bin/env bash
# Memory with 50 clients and many open caller connections (SPEC §9: ≤ 64 MiB RSS with 10,000).
#
# Starts `gcpool simulate` (50 clients) and gcpool (50 clients) on loopback, opens CONNS idle
# keep-alive connections to gcpool (100 of them send one request), and prints gcpool's peak
# RSS (VmHWM). Stops everything it started.
#
#   bench/memory.sh              # CONNS=10000
#   CONNS=5000 bench/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-10000}
if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release --quiet
fi
BIN=${GCPOOL_BIN:-target/release/gcpool}
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sim_port=$(free_port); api_port=$(free_port); admin_port=$(free_port)

{
  printf 'server:\n  listen: "127.0.0.1:%s"\n  admin_listen: "127.0.0.1:%s"\n' "$api_port" "$admin_port"
  printf 'genesys:\n  api_base: http://127.0.0.1:%s\n  login_base: http://127.0.0.1:%s\n' "$sim_port" "$sim_port"
  printf 'inbound:\n  allow_anonymous: true\nbudgets:\n  org_per_minute: 100000\nclients:\n'
  for i in $(seq -w 1 50); do
    printf '  - {name: pool-%s, client_id: sim-client-%s, client_secret: sim-secret-%s}\n' "$i" "$i" "$i"
  done
} > "$tmp/gcpool.yaml"

"$BIN" simulate --listen "127.0.0.1:$sim_port" --clients 50 > "$tmp/sim.log" 2>&1 & pids+=($!)
sleep 0.5
RUST_LOG=warn "$BIN" run --config "$tmp/gcpool.yaml" > "$tmp/gcpool.log" 2>&1 & gc=$!; pids+=($gc)
for _ in $(seq 50); do
  curl -sf "http://127.0.0.1:$admin_port/readyz" > /dev/null && break
  sleep 0.2
done
echo "gcpool idle with 50 clients: $(grep VmRSS /proc/$gc/status | awk '{print $2}') kB RSS"

python3 - "$api_port" "$CONNS" "$gc" <<'PY'
import asyncio, os, resource, sys
port, n, gc = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 1000)), hard))
async def main():
    conns = []
    for i in range(n):
        _, w = await asyncio.open_connection("127.0.0.1", port)
        conns.append(w)
        if i % 1000 == 999:
            await asyncio.sleep(0.05)
    for w in conns[:100]:
        w.write(b"GET /api/v2/users/me HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(3)
    fds = len(os.listdir(f"/proc/{gc}/fd"))
    rss = [l for l in open(f"/proc/{gc}/status") if l.startswith("VmRSS")][0].split()[1]
    print(f"{len(conns)} connections open; gcpool holds {fds} file descriptors, RSS {int(rss) / 1024:.1f} MiB", flush=True)
asyncio.run(main())
PY
hwm=$(grep VmHWM /proc/$gc/status | awk '{print $2}')
python3 -c "print(f'gcpool peak RSS (VmHWM): {$hwm/1024:.1f} MiB with $CONNS caller connections (goal <= 64 MiB)')"
