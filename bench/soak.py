#!/usr/bin/env python3
"""Bounded soak: normal traffic mixed with the hostile cases of issue 10, against the real binary.

Starts `gcpool simulate`, a `redis-server` (when installed) and `gcpool run` on loopback, then for
DURATION seconds runs, side by side:

  normal     keep-alive callers: GETs and small POSTs at a steady rate (their answers must be 200)
  silent     sockets that never send a byte (closed by header_read_timeout)
  loris      request heads dripped a byte at a time (cut by header_read_timeout)
  stall      POSTs that announce 500 KB and send 2 bytes (408 at request_timeout)
  flood      bodies of 400 KB sent in part and held (503 body_memory past the in-flight cap)
  h2idle     HTTP/2 connections: preface, SETTINGS, ack, then nothing (GOAWAY at idle_timeout)
  bad        encoded traversal and unknown methods (400 / 405, never forwarded)
  upstall    answers whose upstream body stalls midway (cut after request_timeout)
  revoke     every issued token revoked upstream every 7 s (re-mints, no caller 401)
  storm      every token of pool-02 refused upstream for 5 s every 30 s (a 401 storm: pool-02
             re-mints at most once per interval, sits out, fails; callers go to the others)
  redis      Redis paused (SIGSTOP) 3 s every 40 s and flushed every 55 s (with shared_state)

and prints, at the start and at the end (after the hostile load stopped and idle connections
closed): gcpool's RSS, open file descriptors and threads, its refusal and abort counters, and the
normal callers' answers by status. It stops everything it started.

    bench/soak.py                   # 300 s, release build
    DURATION=60 bench/soak.py       # shorter
    GCPOOL_BIN=target/debug/gcpool SKIP_BUILD=1 bench/soak.py
"""

import asyncio
import collections
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DURATION = float(os.environ.get("DURATION", "300"))
BIN = os.environ.get("GCPOOL_BIN", os.path.join(ROOT, "target/release/gcpool"))
NORMAL_RATE = float(os.environ.get("RATE", "40"))  # normal requests per second

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\0\0\0\x04\0\0\0\0\0"
SETTINGS_ACK = b"\0\0\0\x04\x01\0\0\0\0"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def metrics(admin):
    out = {}
    for line in http_get(f"http://127.0.0.1:{admin}/metrics").splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def process_figures(pid):
    status = open(f"/proc/{pid}/status").read().splitlines()
    field = {l.split(":")[0]: l.split(":", 1)[1].strip() for l in status}
    return {
        "rss_mib": round(int(field["VmRSS"].split()[0]) / 1024, 1),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(field["Threads"]),
    }


def sockets_by_peer(pid, ports):
    """gcpool's TCP sockets by what is at the other end: `ports` maps a port to a name."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    counts = collections.Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] not in inodes:
                continue
            local = int(fields[1].rsplit(":", 1)[1], 16)
            remote = int(fields[2].rsplit(":", 1)[1], 16)
            if remote == 0:
                counts["listening"] += 1
            elif remote in ports:
                counts[ports[remote]] += 1
            elif local in ports:
                counts[f"from callers to {ports[local]}"] += 1
            else:
                counts["other"] += 1
    return dict(counts)


class Soak:
    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="gcpool-soak-")
        self.procs = []
        self.sim_port, self.api_port, self.admin_port = free_port(), free_port(), free_port()
        self.redis = None
        self.counts = collections.Counter()
        self.normal = collections.Counter()
        self.stop = asyncio.Event()

    # --- processes -----------------------------------------------------------------------

    def start(self):
        log = lambda name: open(os.path.join(self.tmp, name), "w")
        self.procs.append(subprocess.Popen(
            [BIN, "simulate", "--listen", f"127.0.0.1:{self.sim_port}", "--clients", "3",
             "--token-limit", "100000"],
            stdout=subprocess.DEVNULL, stderr=log("sim.log")))
        shared = ""
        if shutil.which("redis-server"):
            self.redis_port = free_port()
            self.redis = subprocess.Popen(
                ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", self.tmp],
                stdout=log("redis.log"), stderr=subprocess.STDOUT)
            self.procs.append(self.redis)
            shared = (f"shared_state:\n  redis_url: redis://127.0.0.1:{self.redis_port}/0\n"
                      "  key_prefix: soak\n  replicas_hint: 1\n")
        config = (
            f"server:\n  listen: 127.0.0.1:{self.api_port}\n  admin_listen: 127.0.0.1:{self.admin_port}\n"
            "  header_read_timeout: 2s\n  idle_timeout: 5s\n  request_timeout: 3s\n"
            "  max_body_bytes_in_flight: 16777216\n  max_connections: 4000\n"
            f"genesys:\n  api_base: http://127.0.0.1:{self.sim_port}\n"
            f"  login_base: http://127.0.0.1:{self.sim_port}\n"
            "inbound:\n  allow_anonymous: true\n"
            "budgets:\n  token_per_minute: 100000\n  org_per_minute: 300000\n"
            "clients:\n"
            + "".join(f"  - {{name: pool-0{i}, client_id: sim-client-0{i}, client_secret: sim-secret-0{i}}}\n"
                      for i in (1, 2, 3))
            + shared)
        path = os.path.join(self.tmp, "gcpool.yaml")
        open(path, "w").write(config)
        time.sleep(0.5)
        self.gcpool = subprocess.Popen([BIN, "run", "--config", path],
                                       stdout=subprocess.DEVNULL, stderr=log("gcpool.log"),
                                       env={**os.environ, "RUST_LOG": "warn"})
        self.procs.append(self.gcpool)
        for _ in range(100):
            try:
                http_get(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1)
                return
            except Exception:
                time.sleep(0.1)
        sys.exit("gcpool did not become ready; see " + self.tmp)

    def cleanup(self):
        for p in self.procs:
            try:
                os.kill(p.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- helpers -------------------------------------------------------------------------

    async def connect(self):
        return await asyncio.open_connection("127.0.0.1", self.api_port)

    async def read_head(self, reader, timeout):
        data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        head = data.decode("latin-1")
        status = int(head.split(" ", 2)[1])
        length = 0
        for line in head.split("\r\n"):
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        return status, length

    async def until_closed(self, reader, timeout):
        try:
            while await asyncio.wait_for(reader.read(65536), timeout):
                pass
            return True
        except (asyncio.TimeoutError, ConnectionError):
            return False

    async def every(self, period, action):
        while not self.stop.is_set():
            try:
                await action()
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                    ConnectionError) as e:
                self.counts[f"{action.__name__}: {type(e).__name__}"] += 1
            try:
                await asyncio.wait_for(self.stop.wait(), period)
            except asyncio.TimeoutError:
                pass

    # --- traffic -------------------------------------------------------------------------

    async def normal_caller(self, n):
        reader = writer = None
        period = n / NORMAL_RATE
        while not self.stop.is_set():
            try:
                if writer is None:
                    reader, writer = await self.connect()
                if random.random() < 0.3:
                    body = json.dumps({"interval": "2026-11-01/2026-11-02"}).encode()
                    writer.write(b"POST /api/v2/analytics/conversations/details/query HTTP/1.1\r\n"
                                 b"Host: x\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                else:
                    writer.write(b"GET /api/v2/users/me HTTP/1.1\r\nHost: x\r\n\r\n")
                status, length = await self.read_head(reader, 10)
                await reader.readexactly(length)
                self.normal[status] += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                self.normal[type(e).__name__] += 1
                if writer:
                    writer.close()
                reader = writer = None
            await asyncio.sleep(period * random.uniform(0.5, 1.5))
        if writer:
            writer.close()

    async def silent(self):
        conns = [await self.connect() for _ in range(50)]
        closed = await asyncio.gather(*(self.until_closed(r, 6) for r, _ in conns))
        self.counts["silent sockets closed by gcpool"] += sum(closed)
        self.counts["silent sockets left open"] += len(closed) - sum(closed)
        for _, w in conns:
            w.close()

    async def loris(self):
        reader, writer = await self.connect()
        for b in b"GET /api/v2/users/me HTTP/1.1\r\nHost: x\r\nx-slow: yes\r\n\r\n":
            try:
                writer.write(bytes([b]))
                await writer.drain()
            except ConnectionError:
                self.counts["slow heads cut"] += 1
                return
            await asyncio.sleep(0.3)
        self.counts["slow heads served (unexpected)"] += 1
        writer.close()

    async def stall(self):
        reader, writer = await self.connect()
        writer.write(b"POST /api/v2/analytics/conversations/details/query HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 500000\r\n\r\n{\"")
        status, _ = await self.read_head(reader, 8)
        self.counts[f"stalled bodies answered {status}"] += 1
        writer.close()

    async def flood(self):
        async def one():
            reader, writer = await self.connect()
            writer.write(b"POST /api/v2/analytics/conversations/details/query HTTP/1.1\r\n"
                         b"Host: x\r\nContent-Length: 500000\r\n\r\n" + b" " * 400_000)
            try:
                await writer.drain()
                status, _ = await self.read_head(reader, 8)
                self.counts[f"held 400 KB bodies answered {status}"] += 1
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                self.counts[f"held 400 KB bodies: {type(e).__name__}"] += 1
            writer.close()
        await asyncio.gather(*(one() for _ in range(60)))

    async def h2idle(self):
        reader, writer = await self.connect()
        writer.write(H2_PREFACE + SETTINGS)
        await asyncio.sleep(0.2)
        writer.write(SETTINGS_ACK)
        data = b""
        started = time.monotonic()
        try:
            while True:
                chunk = await asyncio.wait_for(reader.read(65536), 10)
                if not chunk:
                    break
                data += chunk
        except (asyncio.TimeoutError, ConnectionError):
            self.counts["h2 idle connections not closed in 10 s"] += 1
            writer.close()
            return
        types, at = [], 0
        while at + 9 <= len(data):
            types.append(data[at + 3])
            at += 9 + int.from_bytes(data[at:at + 3], "big")
        lived = time.monotonic() - started
        key = "h2 idle closed with GOAWAY" if 7 in types else "h2 idle closed without GOAWAY"
        self.counts[f"{key} after {'<2' if lived < 2 else '2-4' if lived < 4 else '>=4'} s"] += 1
        writer.close()

    async def bad(self):
        for line in (b"GET /api/v2/users/x%2F..%2F..%2Fauthorization%2Froles HTTP/1.1",
                     b"GET /api/v2/..%5c..%5cetc/passwd HTTP/1.1",
                     b"FOO /api/v2/users HTTP/1.1",
                     b"TRACE /api/v2/users/me HTTP/1.1"):
            reader, writer = await self.connect()
            writer.write(line + b"\r\nHost: x\r\n\r\n")
            status, _ = await self.read_head(reader, 5)
            self.counts[f"bad requests answered {status}"] += 1
            writer.close()

    async def upstall(self):
        reader, writer = await self.connect()
        writer.write(b"GET /api/v2/users/me HTTP/1.1\r\nHost: x\r\nx-sim-stall-body-after: 20\r\n\r\n")
        status, length = await self.read_head(reader, 5)
        got = 0
        try:
            while True:
                chunk = await asyncio.wait_for(reader.read(65536), 8)
                if not chunk:
                    break
                got += len(chunk)
        except asyncio.TimeoutError:
            self.counts["stalled answers left hanging"] += 1
            writer.close()
            return
        except ConnectionError:
            pass
        self.counts["stalled answers cut short" if got < length else "stalled answers complete?"] += 1
        writer.close()

    async def revoke(self):
        req = urllib.request.Request(f"http://127.0.0.1:{self.sim_port}/sim/revoke-tokens", method="POST")
        await asyncio.to_thread(urllib.request.urlopen, req, None, 5)
        self.counts["token revocations"] += 1

    async def storm(self):
        def post(refused):
            url = (f"http://127.0.0.1:{self.sim_port}/sim/refuse-tokens"
                   f"?client_id=sim-client-02&refused={'true' if refused else 'false'}")
            urllib.request.urlopen(urllib.request.Request(url, method="POST"), None, 5)
        await asyncio.to_thread(post, True)
        await asyncio.sleep(5)
        await asyncio.to_thread(post, False)
        self.counts["401 storms on pool-02 (5 s)"] += 1

    async def redis_pause(self):
        os.kill(self.redis.pid, signal.SIGSTOP)
        await asyncio.sleep(3)
        os.kill(self.redis.pid, signal.SIGCONT)
        self.counts["redis pauses (3 s)"] += 1

    async def redis_flush(self):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
        writer.write(b"*1\r\n$8\r\nFLUSHALL\r\n")
        await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        self.counts["redis flushes"] += 1

    # --- run -----------------------------------------------------------------------------

    def report(self, label):
        figures = process_figures(self.gcpool.pid)
        m = metrics(self.admin_port)
        ports = {self.sim_port: "upstream (simulator)", self.api_port: "api", self.admin_port: "admin"}
        if self.redis:
            ports[self.redis_port] = "redis"
        print(f"\n== {label}: RSS {figures['rss_mib']} MiB, {figures['fds']} open fds, "
              f"{figures['threads']} threads; sockets {sockets_by_peer(self.gcpool.pid, ports)}",
              flush=True)
        for name, value in sorted(m.items()):
            if value and name.startswith(("gcpool_rejections_total", "gcpool_response_aborted_total",
                                          "gcpool_token_refresh_total", "gcpool_token_refused_total",
                                          "gcpool_shared_state_up", "gcpool_upstream_429_total")):
                print(f"   {name} {value:g}")
        return figures

    async def run(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20000), hard))
        start = self.report("start")
        tasks = [asyncio.create_task(self.normal_caller(8)) for _ in range(8)]
        tasks += [
            asyncio.create_task(self.every(1, self.silent)),
            asyncio.create_task(self.every(0.5, self.loris)),
            asyncio.create_task(self.every(0.2, self.stall)),
            asyncio.create_task(self.every(2, self.flood)),
            asyncio.create_task(self.every(0.5, self.h2idle)),
            asyncio.create_task(self.every(1, self.bad)),
            asyncio.create_task(self.every(1, self.upstall)),
            asyncio.create_task(self.every(7, self.revoke)),
            asyncio.create_task(self.every(25, self.storm)),
        ]
        # several of each hostile kind at once
        tasks += [asyncio.create_task(self.every(0.5, self.h2idle)) for _ in range(20)]
        tasks += [asyncio.create_task(self.every(0.2, self.stall)) for _ in range(20)]
        if self.redis:
            async def pause_later():
                await asyncio.sleep(20)
                await self.every(40, self.redis_pause)

            async def flush_later():
                await asyncio.sleep(35)
                await self.every(55, self.redis_flush)
            tasks += [asyncio.create_task(pause_later()), asyncio.create_task(flush_later())]
        began = time.monotonic()
        while time.monotonic() - began < DURATION:
            await asyncio.sleep(min(30, DURATION - (time.monotonic() - began)))
            f = process_figures(self.gcpool.pid)
            print(f"   t={time.monotonic() - began:5.0f}s RSS {f['rss_mib']} MiB, {f['fds']} fds, "
                  f"normal answers {dict(self.normal)}", flush=True)
        self.stop.set()
        await asyncio.wait(tasks, timeout=15)
        for t in tasks:
            t.cancel()
        await asyncio.sleep(8)  # idle connections (idle_timeout 5 s) close
        end = self.report("end")
        stats = json.loads(http_get(f"http://127.0.0.1:{self.sim_port}/sim/stats"))
        print("\n== hostile actions and what they met")
        for k, v in sorted(self.counts.items()):
            print(f"   {k}: {v}")
        print(f"\n== normal callers' answers: {dict(self.normal)}")
        print(f"== upstream (simulator): accepted {stats.get('accepted')}, 429s {stats.get('rejected_429')}, "
              f"401s {stats.get('rejected_401')}, token grants {stats.get('token_grants')}")
        print(f"== RSS {start['rss_mib']} -> {end['rss_mib']} MiB, fds {start['fds']} -> {end['fds']}, "
              f"threads {start['threads']} -> {end['threads']}")
        bad = sum(v for k, v in self.normal.items() if k != 200)
        print("== verdict: " + ("every normal request answered 200" if bad == 0 else
                                f"{bad} normal requests were not answered 200"))
        return bad


def main():
    if not os.environ.get("SKIP_BUILD") and "GCPOOL_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    soak = Soak()
    try:
        soak.start()
        bad = asyncio.run(soak.run())
    finally:
        soak.cleanup()
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
