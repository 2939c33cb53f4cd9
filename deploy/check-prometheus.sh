#!/usr/bin/env bash
# Checks deploy/prometheus and deploy/grafana with the real tools:
#   1. promtool check config / check rules / test rules (unit tests in rules_test.yml);
#   2. a real scrape: gcpool (in front of its simulator) + Prometheus with a temp copy of the shipped
#      scrape config pointed at gcpool's admin port; asserts `gcpool_requests_total` is queryable;
#   3. every gcpool_* metric name used by the rules and the Grafana dashboard exists in the README's
#      metric table (the SPEC §7 contract) and in what a live /metrics returns.
# Builds nothing: pass the gcpool binary as $1 (default target/debug/gcpool). Loopback only; everything
# started here is stopped on exit. Installs the Debian package `prometheus` when promtool is missing.
#
#   bash deploy/check-prometheus.sh [path/to/gcpool]
set -euo pipefail
cd "$(dirname "$0")/.."

GCPOOL="$(realpath "${1:-target/debug/gcpool}")"
PROM_DIR=deploy/prometheus
DASHBOARD=deploy/grafana/gcpool-dashboard.json
[ -x "$GCPOOL" ] || { echo "gcpool binary not found: $GCPOOL (build it first)" >&2; exit 1; }

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  echo "== installing prometheus (Debian package: prometheus + promtool)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq prometheus
  # The package may start its own service; this check runs its own instance.
  if command -v service >/dev/null 2>&1; then service prometheus stop >/dev/null 2>&1 || true; fi
fi

TMP="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  for f in "$TMP"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }; done
  exit 1
}

echo "== promtool check config"
promtool check config "$PROM_DIR/prometheus.yml"
# Debian's Prometheus is built without kubernetes_sd: there, validate the Kubernetes config (its
# relabelling and rule files) with the discovery block swapped for file_sd.
if promtool check config "$PROM_DIR/prometheus-kubernetes.yml" >"$TMP/k8s-check.out" 2>&1; then
  cat "$TMP/k8s-check.out"
elif grep -q "field kubernetes_sd_configs not found" "$TMP/k8s-check.out"; then
  echo "(this promtool lacks kubernetes_sd: checking prometheus-kubernetes.yml with file_sd in its place)"
  mkdir "$TMP/k8s"
  cp "$PROM_DIR/rules.yml" "$TMP/k8s/"
  echo '[]' >"$TMP/k8s/pods.json"
  sed -e 's/^\([[:space:]]*\)kubernetes_sd_configs:/\1file_sd_configs:/' \
      -e 's/^\([[:space:]]*\)- role: pod$/\1- files: [pods.json]/' \
      "$PROM_DIR/prometheus-kubernetes.yml" >"$TMP/k8s/prometheus.yml"
  grep -q 'file_sd_configs' "$TMP/k8s/prometheus.yml" || fail "kubernetes_sd block not rewritten"
  promtool check config "$TMP/k8s/prometheus.yml"
else
  cat "$TMP/k8s-check.out" >&2
  fail "promtool check config $PROM_DIR/prometheus-kubernetes.yml"
fi

echo "== promtool check rules"
promtool check rules "$PROM_DIR/rules.yml"

echo "== promtool test rules"
promtool test rules "$PROM_DIR/rules_test.yml"

echo "== grafana dashboard is valid JSON"
python3 -m json.tool "$DASHBOARD" >/dev/null || fail "$DASHBOARD is not valid JSON"

# ---------------------------------------------------------------- real scrape
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
wait_http() { # url seconds
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}
wait_listen() { # url seconds: any HTTP answer
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" != "000" ] && return 0
    sleep 0.2
  done
  return 1
}
SIM_PORT=$(free_port)
API_PORT=$(free_port)
ADMIN_PORT=$(free_port)
PROM_PORT=$(free_port)

echo "== real scrape: simulator :$SIM_PORT, gcpool api :$API_PORT admin :$ADMIN_PORT, prometheus :$PROM_PORT"
# pool-02's token is limited to 2 requests a window, so the simulator answers some 429s and
# gcpool_upstream_429_total shows up in /metrics.
"$GCPOOL" simulate --listen "127.0.0.1:$SIM_PORT" --hidden-token-limit sim-client-02=2 \
  >"$TMP/simulator.log" 2>&1 &
PIDS+=($!)
sed -e "s/127\.0\.0\.1:8080/127.0.0.1:$API_PORT/" \
    -e "s/127\.0\.0\.1:9464/127.0.0.1:$ADMIN_PORT/" \
    -e "s/127\.0\.0\.1:9000/127.0.0.1:$SIM_PORT/g" \
    config/simulator.yaml >"$TMP/gcpool.yaml"
grep -q "127.0.0.1:$ADMIN_PORT" "$TMP/gcpool.yaml" || fail "admin port not rewritten in the temp config"
wait_listen "http://127.0.0.1:$SIM_PORT/api/v2/users/me" 20 || fail "simulator not listening on :$SIM_PORT"
"$GCPOOL" run --config "$TMP/gcpool.yaml" >"$TMP/gcpool.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" 30 || fail "gcpool not ready on :$ADMIN_PORT"

for _ in $(seq 1 12); do
  curl -sS -o /dev/null "http://127.0.0.1:$API_PORT/api/v2/users/me" || true
done
curl -sS -o /dev/null "http://127.0.0.1:$API_PORT/api/v2/users/some-user-id" || true
# config/simulator.yaml caches this route: a miss, then a hit (the cache panels' series).
for _ in 1 2; do
  curl -sS -o /dev/null "http://127.0.0.1:$API_PORT/api/v2/routing/queues/some-queue-id" || true
done

mkdir "$TMP/prom" "$TMP/tsdb"
cp "$PROM_DIR/rules.yml" "$TMP/prom/rules.yml"
sed -e "s/- gcpool:9464$/- 127.0.0.1:$ADMIN_PORT/" "$PROM_DIR/prometheus.yml" >"$TMP/prom/prometheus.yml"
grep -q "127.0.0.1:$ADMIN_PORT" "$TMP/prom/prometheus.yml" || fail "static target not rewritten"
promtool check config "$TMP/prom/prometheus.yml" >/dev/null
prometheus --config.file="$TMP/prom/prometheus.yml" --storage.tsdb.path="$TMP/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$TMP/prometheus.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$PROM_PORT/-/ready" 30 || fail "prometheus not ready on :$PROM_PORT"

# The first scrape comes within one scrape interval (15 s); allow up to 60 s.
RESULT=""
for ((i = 0; i < 60; i++)); do
  RESULT=$(curl -fsS "http://127.0.0.1:$PROM_PORT/api/v1/query?query=gcpool_requests_total" || true)
  if printf '%s' "$RESULT" | python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if d.get("status") == "success" and d["data"]["result"] else 1)' 2>/dev/null; then
    break
  fi
  RESULT=""
  sleep 1
done
[ -n "$RESULT" ] || fail "no gcpool_requests_total in prometheus after 60 s"
echo "scraped after ~${i}s; query gcpool_requests_total:"
printf '%s' "$RESULT" | python3 -c '
import json, sys
for r in json.load(sys.stdin)["data"]["result"]:
    print("  ", r["metric"], "=", r["value"][1])'
UP=$(curl -fsS "http://127.0.0.1:$PROM_PORT/api/v1/query?query=up%7Bjob%3D%22gcpool%22%7D")
printf '%s' "$UP" | python3 -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
assert r and all(x["value"][1] == "1" for x in r), r
print("   up{job=\"gcpool\"} = 1")' || fail "target not up: $UP"
RULES=$(curl -fsS "http://127.0.0.1:$PROM_PORT/api/v1/rules")
EXPECTED_RULES=$(grep -cE '^[[:space:]]*- (record|alert):' "$PROM_DIR/rules.yml")
printf '%s' "$RULES" | python3 -c '
import json, sys
rules = [r for g in json.load(sys.stdin)["data"]["groups"] for r in g["rules"]]
bad = [r["name"] for r in rules if r.get("health") == "err"]
assert len(rules) == int(sys.argv[1]) and not bad, (len(rules), sys.argv[1], bad)
print("   %d rules loaded by prometheus (all of rules.yml), none unhealthy" % len(rules))' "$EXPECTED_RULES" \
  || fail "rules not loaded: $RULES"

# ---------------------------------------------------------------- metric names
echo "== metric names in rules and dashboard exist (README table and live /metrics)"
curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" >"$TMP/metrics.txt"
# Names a live gcpool exposes (samples and # TYPE lines), histogram suffixes stripped.
grep -oE '^(# TYPE )?gcpool_[a-z0-9_]+' "$TMP/metrics.txt" | sed 's/^# TYPE //' \
  | sed -E 's/_(bucket|sum|count)$//' | sort -u >"$TMP/live.txt"
# Names of the README's "Admin endpoints and metrics" table (the SPEC §7 contract).
sed -n '/^## Admin endpoints and metrics/,/^## /p' README.md | grep -E '^\| `gcpool_' \
  | grep -oE 'gcpool_[a-z0-9_]+' | sort -u >"$TMP/readme.txt"
grep -ohE 'gcpool_[a-z0-9_]+' "$PROM_DIR/rules.yml" "$PROM_DIR/rules_test.yml" "$DASHBOARD" \
  | sed -E 's/_(bucket|sum|count)$//' | sort -u >"$TMP/used.txt"
[ -s "$TMP/used.txt" ] || fail "no metric names found in rules/dashboard"
MISSING_README=$(comm -23 "$TMP/used.txt" "$TMP/readme.txt")
MISSING_LIVE=$(comm -23 "$TMP/used.txt" "$TMP/live.txt")
[ -z "$MISSING_README" ] || fail "not in README's metric table: $MISSING_README"
[ -z "$MISSING_LIVE" ] || fail "not exposed by a live gcpool: $MISSING_LIVE"
echo "   $(wc -l <"$TMP/used.txt") metric names used, all in README and live /metrics"

echo "== prometheus checks OK"
