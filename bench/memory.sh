#!/usr/bin/env bash
# Memory with 50 clients and many keep-alive caller connections (SPEC §9: ≤ 32 MiB RSS with
# 10,000 connections each used once; back near idle once they close).
#
# Starts `gcpool simulate` (50 clients) and gcpool (50 clients) on loopback and measures
# gcpool's RSS in phases, each on fresh connections:
#   used   (default) CONNS connections each send one request and read its answer, then stay
#          idle: RSS after SETTLE seconds; then all close: RSS again after SETTLE seconds, and
#          once more LATER seconds after they closed (past the upstream pool's idle timeout,
#          50 s, and the budget windows' minute, when gcpool holds nothing of the burst).
#   unused CONNS connections that never send a request: RSS; then all close: RSS again.
# Stops everything it started.
#
#   bench/memory.sh                      # CONNS=10000, PHASES="used unused"
#   PHASES=used CONNS=5000 bench/memory.sh
#   LATER=0 bench/memory.sh              # skips the late figure (a minute shorter)
#   TLS=1 bench/memory.sh                # callers connect with TLS (a self-signed P-256 certificate)
#   GCPOOL_BIN=/path/to/gcpool SKIP_BUILD=1 bench/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-10000}
PHASES=${PHASES:-used unused}
# Spare upstream connections close 5 s after a burst, and freed pages go back to the system
# about 1 s after they are freed (src/upstream.rs, src/main.rs).
SETTLE=${SETTLE:-8}
LATER=${LATER:-65}
TLS=${TLS:-}
if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release --quiet
fi
BIN=${GCPOOL_BIN:-${CARGO_TARGET_DIR:-target}/release/gcpool}
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sim_port=$(free_port); api_port=$(free_port); admin_port=$(free_port)

if [[ -n "$TLS" ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=localhost -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2> /dev/null
fi
{
  printf 'server:\n  listen: "127.0.0.1:%s"\n  admin_listen: "127.0.0.1:%s"\n' "$api_port" "$admin_port"
  # Opening 10,000 connections takes a few seconds: the never-used ones must outlive it.
  printf '  header_read_timeout: 60s\n'
  if [[ -n "$TLS" ]]; then
    printf '  tls:\n    cert_file: %s/cert.pem\n    key_file: %s/key.pem\n' "$tmp" "$tmp"
  fi
  printf 'genesys:\n  api_base: http://127.0.0.1:%s\n  login_base: http://127.0.0.1:%s\n' "$sim_port" "$sim_port"
  printf 'inbound:\n  allow_anonymous: true\nbudgets:\n  org_per_minute: 1000000\nclients:\n'
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
sleep 1

python3 - "$api_port" "$CONNS" "$gc" "$SETTLE" "$LATER" "$tmp/gcpool.log" "${TLS:-0}" $PHASES <<'PY'
import asyncio, os, resource, ssl, subprocess, sys
port, n, gc, settle, later, log, tls, phases = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), sys.argv[6], sys.argv[7] != "0", sys.argv[8:]
context = None
if tls:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 1000)), hard))
REQUEST = b"GET /api/v2/users/me HTTP/1.1\r\nHost: x\r\n\r\n"

def status(key):
    line = [l for l in open(f"/proc/{gc}/status") if l.startswith(key)][0]
    return int(line.split()[1]) / 1024

def fds():
    return len(os.listdir(f"/proc/{gc}/fd"))

async def one_answer(r, w):
    """Sends one request and reads its whole answer (Content-Length or chunked)."""
    w.write(REQUEST)
    head = await r.readuntil(b"\r\n\r\n")
    code = int(head.split(b" ", 2)[1])
    lines = head.lower().split(b"\r\n")
    length = [int(l.split(b":")[1]) for l in lines if l.startswith(b"content-length:")]
    if length:
        await r.readexactly(length[0])
    elif any(l.startswith(b"transfer-encoding:") and b"chunked" in l for l in lines):
        while True:
            size = int((await r.readuntil(b"\r\n")).split(b";")[0], 16)
            await r.readexactly(size + 2)
            if size == 0:
                break
    return code

async def phase(name, base):
    used = name == "used"
    conns, codes = [], {}
    sem = asyncio.Semaphore(200)
    async def open_one():
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            if used:
                code = await one_answer(r, w)
                codes[code] = codes.get(code, 0) + 1
            conns.append((r, w))
    await asyncio.gather(*(open_one() for _ in range(n)))
    await asyncio.sleep(settle)
    open_rss = status("VmRSS")
    what = "each used once, then idle" if used else "never used"
    answers = f"; answers {dict(sorted(codes.items()))}" if used else ""
    print(f"[{name}] {len(conns)} connections open, {what}: gcpool holds {fds()} fds, "
          f"RSS {open_rss:.1f} MiB{answers}", flush=True)
    for _, w in conns:
        w.close()
    await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)
    conns.clear()
    await asyncio.sleep(settle)
    closed_rss = status("VmRSS")
    print(f"[{name}] all closed, {settle:g} s later: gcpool holds {fds()} fds, RSS {closed_rss:.1f} MiB "
          f"({(closed_rss / base - 1) * 100:+.0f} % of idle)", flush=True)
    later_rss = None
    if used and later > settle:
        await asyncio.sleep(later - settle)
        later_rss = status("VmRSS")
        print(f"[{name}] all closed, {later:g} s later: gcpool holds {fds()} fds, RSS {later_rss:.1f} MiB "
              f"({(later_rss / base - 1) * 100:+.0f} % of idle)", flush=True)
    return open_rss, closed_rss, later_rss

async def main():
    base = status("VmRSS")
    print(f"gcpool idle with 50 clients{', TLS' if tls else ''}: RSS {base:.1f} MiB", flush=True)
    results = {}
    for name in phases:
        results[name] = await phase(name, base)
    print(flush=True)
    print(f"idle:                                  {base:6.1f} MiB")
    if "used" in results:
        o, c, l = results["used"]
        print(f"{n} connections, each used once, idle: {o:6.1f} MiB  (goal <= 32 MiB)")
        print(f"after they close ({settle:g} s):              {c:6.1f} MiB  (goal <= {base * 1.1:.1f} MiB, idle + 10 %)")
        if l is not None:
            print(f"after they close ({later:g} s):             {l:6.1f} MiB")
    if "unused" in results:
        o, c, _ = results["unused"]
        print(f"{n} connections, never used:           {o:6.1f} MiB")
        print(f"after they close:                      {c:6.1f} MiB")
    print(f"peak RSS (VmHWM):                      {status('VmHWM'):6.1f} MiB")
asyncio.run(main())
PY
