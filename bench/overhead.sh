#!/usr/bin/env bash
# Overhead benchmark (SPEC §9): gcpool as a plain proxy vs nginx proxy_pass, on loopback,
# in front of the same fast upstream (an nginx `return 200`).
#
#   bench/overhead.sh [--json]
#   CACHE=1 bench/overhead.sh    # cache hits: the route cached in gcpool (`cache:`) and in
#                                # nginx (`proxy_cache`, proxy_cache_lock, open_file_cache)
#   CALLERS=1 bench/overhead.sh  # callers configured (issue 15): every request carries an
#                                # API key; its caller has a sub-pool, a quota, routes, a wait
#
# Env: DURATION (10s) length of each 64-connection run; ROUNDS (3) nginx/gcpool rounds;
#      LAT_DURATION (3s) length of each 1-connection run; WARMUP (2s); CONNS (64);
#      THREADS (2); SKIP_BUILD=1 to use the existing target/release/gcpool;
#      GCPOOL_BIN=path to measure another gcpool binary (no build);
#      KEEP_TMP=1 to keep the temp dir (configs, logs, raw wrk output);
#      BENCH_INSTALL=1 (as root) to apt-get install wrk and nginx-light when missing.
# Default run time ≈ 2 minutes (after the build).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

json=0
for arg in "$@"; do
    case "$arg" in
        --json) json=1 ;;
        -h | --help)
            sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
LAT_DURATION=${LAT_DURATION:-3s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
CACHE=${CACHE:-0}
CALLERS=${CALLERS:-0}
# wrk's extra header (CALLERS=1: the API key, sent to every target alike).
WRK_HEADER=()
[[ "$CALLERS" == 0 ]] || WRK_HEADER=(-H "X-API-Key: bench-caller-key")
PATH_Q='/api/v2/users/bench?pageSize=1'

log() { printf '%s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --- tools: never installed silently ------------------------------------------------------
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v pgrep >/dev/null 2>&1 || missing+=(procps)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
if ((${#missing[@]})); then
    log "missing: ${missing[*]}"
    log "install them with:  apt-get install -y wrk nginx-light curl procps iproute2"
    if [[ "${BENCH_INSTALL:-0}" == 1 && $(id -u) == 0 ]]; then
        log "BENCH_INSTALL=1: installing"
        apt-get install -y wrk nginx-light curl procps iproute2 >&2
    else
        log "(or rerun as root with BENCH_INSTALL=1 to let this script install them)"
        exit 1
    fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# --- build ----------------------------------------------------------------------------------
if [[ -n "${GCPOOL_BIN:-}" ]]; then
    GCPOOL=$GCPOOL_BIN
else
    if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
        log "building: cargo build --release"
        (cd "$repo" && cargo build --release --quiet) >&2
    fi
    GCPOOL="$repo/target/release/gcpool"
fi
[[ -x "$GCPOOL" ]] || die "$GCPOOL not found (build failed?)"

# --- processes and cleanup ------------------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/gcpool-overhead.XXXXXX")
pids=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
        log "kept $tmp"
    else
        rm -rf "$tmp"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free loopback TCP port (not listening now, not handed out before in this run).
used_ports=" "
free_port() {
    local port listening
    listening=$(ss -Htln 2>/dev/null | awk '{print $4}' | sed 's/.*://' | tr '\n' ' ')
    for _ in $(seq 200); do
        port=$((20000 + RANDOM % 40000))
        [[ " $listening $used_ports " == *" $port "* ]] && continue
        used_ports+="$port "
        echo "$port"
        return 0
    done
    die "no free port found"
}

wait_http() { # url expected-status seconds
    local url=$1 want=$2 secs=$3 code
    for _ in $(seq $((secs * 10))); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "${WRK_HEADER[@]}" "$url" 2>/dev/null || true)
        [[ "$code" == "$want" || ("$want" == any && "$code" != 000 && -n "$code") ]] && return 0
        sleep 0.1
    done
    die "$url did not answer $want within ${secs}s (last: ${code:-none}); logs in $tmp"
}

UPSTREAM_PORT=$(free_port)
NGINX_PORT=$(free_port)
SIM_PORT=$(free_port)
GCPOOL_PORT=$(free_port)
ADMIN_PORT=$(free_port)

# CACHE=1: both proxies keep the answer for an hour whatever the upstream's headers say, and
# serve every measured request from their cache (checked below: nginx's X-Cache-Status, gcpool's
# x-gcpool-cache, and gcpool's count of upstream calls afterwards).
CACHE_HTTP=""
CACHE_LOCATION=""
if [[ "$CACHE" != 0 ]]; then
    chmod 0755 "$tmp" # nginx's workers (not root) open the cache files under it
    CACHE_HTTP="proxy_cache_path $tmp/proxy-cache levels=1:2 keys_zone=api:10m max_size=64m inactive=1h; open_file_cache max=1000 inactive=1h;"
    CACHE_LOCATION="proxy_cache api; proxy_cache_valid 200 1h; proxy_cache_lock on; proxy_ignore_headers Cache-Control Expires Set-Cookie; add_header X-Cache-Status \$upstream_cache_status;"
fi
render() { # template output
    sed -e "s|@TMP@|$tmp|g" -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" \
        -e "s|@NGINX_PORT@|$NGINX_PORT|g" -e "s|@CACHE_HTTP@|$CACHE_HTTP|g" \
        -e "s|@CACHE_LOCATION@|$CACHE_LOCATION|g" "$1" >"$2"
}
render "$here/nginx-upstream.conf.tmpl" "$tmp/nginx-upstream.conf"
render "$here/nginx-overhead.conf.tmpl" "$tmp/nginx-proxy.conf"

log "starting upstream nginx on 127.0.0.1:$UPSTREAM_PORT, nginx proxy on 127.0.0.1:$NGINX_PORT"
"$NGINX" -p "$tmp" -c "$tmp/nginx-upstream.conf" -g 'daemon off;' \
    >"$tmp/nginx-upstream.out" 2>&1 &
UPSTREAM_MASTER=$!
pids+=($!)
"$NGINX" -p "$tmp" -c "$tmp/nginx-proxy.conf" -g 'daemon off;' >"$tmp/nginx-proxy.out" 2>&1 &
PROXY_MASTER=$!
pids+=($!)

# The simulator is only gcpool's token endpoint (login_base); the API is the nginx upstream.
log "starting gcpool simulate (token endpoint) on 127.0.0.1:$SIM_PORT"
RUST_LOG=warn "$GCPOOL" simulate --listen "127.0.0.1:$SIM_PORT" --clients 3 \
    --token-limit 100000000 >"$tmp/simulator.log" 2>&1 &
pids+=($!)

cat >"$tmp/gcpool.yaml" <<EOF
server:
  listen: "127.0.0.1:$GCPOOL_PORT"
  admin_listen: "127.0.0.1:$ADMIN_PORT"
genesys:
  region: mypurecloud.com
  api_base: http://127.0.0.1:$UPSTREAM_PORT
  login_base: http://127.0.0.1:$SIM_PORT
clients:
  - name: pool-01
    client_id: sim-client-01
    client_secret: sim-secret-01
  - name: pool-02
    client_id: sim-client-02
    client_secret: sim-secret-02
  - name: pool-03
    client_id: sim-client-03
    client_secret: sim-secret-03
budgets:
  token_per_minute: 100000000
  org_per_minute: 300000000
  window: 60s
EOF
if [[ "$CALLERS" == 0 ]]; then
    printf 'inbound:\n  allow_anonymous: true\n' >>"$tmp/gcpool.yaml"
else
    # Three callers; wrk is the first. Its rules all apply on every request: the key's
    # digest, its route list, its sub-pool, its quota (one more budget in each reservation,
    # never binding), its wait, its lane's share (batch: 0.9 of every budget, never binding).
    cat >>"$tmp/gcpool.yaml" <<EOF
inbound:
  api_keys:
    - name: bench
      key: bench-caller-key
      clients: [pool-01, pool-02, pool-03]
      per_minute: 100000000
      max_wait: 5s
      lane: batch
      allow_routes: ["GET /api/v2/users/{userId}", "GET /api/v2/routing/queues/{queueId}"]
    - {name: other, key: other-caller-key, clients: [pool-01], per_minute: 1000, lane: realtime}
    - {name: third, key: third-caller-key, max_wait: 1s}
  lanes: {standard: 0.95, batch: 0.9}
EOF
fi
if [[ "$CACHE" != 0 ]]; then
    cat >>"$tmp/gcpool.yaml" <<EOF
cache:
  routes:
    - route: "GET /api/v2/users/{userId}"
      ttl: 1h
      ignore_upstream_cache_headers: true
EOF
fi

wait_http "http://127.0.0.1:$UPSTREAM_PORT$PATH_Q" 200 10
wait_http "http://127.0.0.1:$NGINX_PORT$PATH_Q" 200 10
wait_http "http://127.0.0.1:$SIM_PORT/oauth/token" any 10 # any HTTP answer: it listens

log "starting gcpool on 127.0.0.1:$GCPOOL_PORT (admin 127.0.0.1:$ADMIN_PORT)"
RUST_LOG=warn "$GCPOOL" --config "$tmp/gcpool.yaml" run >"$tmp/gcpool.log" 2>&1 &
GCPOOL_PID=$!
pids+=($!)
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" 200 15
wait_http "http://127.0.0.1:$GCPOOL_PORT$PATH_Q" 200 5

declare -A URL=(
    [direct]="http://127.0.0.1:$UPSTREAM_PORT$PATH_Q"
    [nginx]="http://127.0.0.1:$NGINX_PORT$PATH_Q"
    [gcpool]="http://127.0.0.1:$GCPOOL_PORT$PATH_Q"
)
for t in direct nginx gcpool; do
    body=$(curl -fsS --max-time 2 "${WRK_HEADER[@]}" "${URL[$t]}") || die "$t: request failed"
    [[ "$body" == '{"id":"bench","name":"x"}' ]] || die "$t answered $body"
done
# How many of gcpool's requests were answered from its cache (hit) and by upstream (miss).
cache_count() { # result
    curl -fsS --max-time 2 "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk -v r="result=\"$1\"" 'index($0, "gcpool_cache_requests_total{") == 1 && index($0, r) { s += $NF }
            END { print s + 0 }'
}
if [[ "$CACHE" != 0 ]]; then
    hdr=$(curl -fsS --max-time 2 "${WRK_HEADER[@]}" -D - -o /dev/null "${URL[nginx]}" | tr -d '\r')
    grep -qi '^x-cache-status: HIT' <<<"$hdr" || die "nginx did not answer from its cache: $hdr"
    hdr=$(curl -fsS --max-time 2 "${WRK_HEADER[@]}" -D - -o /dev/null "${URL[gcpool]}" | tr -d '\r')
    grep -qi '^x-gcpool-cache: hit' <<<"$hdr" || die "gcpool did not answer from its cache: $hdr"
fi

# --- wrk ------------------------------------------------------------------------------------
secs() { # 10s / 2m / 500ms -> whole seconds (for the safety timeout)
    case "$1" in
        *ms) echo 1 ;;
        *s) echo "${1%s}" ;;
        *m) echo $((${1%m} * 60)) ;;
        *) echo "$1" ;;
    esac
}

# CPU time (clock ticks, user + system) used so far by the server side of a target:
# the upstream nginx workers (direct), the proxy nginx workers (nginx), gcpool (all threads).
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # target
    local p pids
    case "$1" in
        direct) pids=$(pgrep -P "$UPSTREAM_MASTER" || true) ;;
        nginx) pids=$(pgrep -P "$PROXY_MASTER" || true) ;;
        gcpool) pids=$GCPOOL_PID ;;
    esac
    for p in $pids; do cat "/proc/$p/stat" 2>/dev/null || true; done |
        awk '{ sub(/^.*\) /, ""); t += $12 + $13 } END { print t + 0 }'
}

# Runs wrk; prints "rps p50_ms p99_ms errors cpu_us_per_request" (errors = socket errors +
# non-2xx/3xx; CPU of the target's server processes only, see cpu_ticks).
run_wrk() { # name target conns threads duration
    local name=$1 target=$2 c=$3 t=$4 d=$5 out="$tmp/wrk-$1.txt" cpu0 cpu1
    cpu0=$(cpu_ticks "$target")
    timeout $(($(secs "$d") + 30)) wrk -c "$c" -t "$t" -d "$d" --latency "${WRK_HEADER[@]}" "${URL[$target]}" \
        >"$out" 2>&1 || die "wrk failed for $name: $(cat "$out")"
    cpu1=$(cpu_ticks "$target")
    awk -v ticks=$((cpu1 - cpu0)) -v hz="$CLK_TCK" '
        function ms(v) {
            if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
            if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /s$/)  return substr(v, 1, length(v) - 1) * 1000
            if (v ~ /m$/)  return substr(v, 1, length(v) - 1) * 60000
            return v + 0
        }
        /^Requests\/sec:/           { rps = $2 }
        / requests in /             { n = $1 }
        /Latency Distribution/      { dist = 1; next }
        dist && $1 == "50%"         { p50 = ms($2) }
        dist && $1 == "99%"         { p99 = ms($2); dist = 0 }
        /Non-2xx or 3xx responses:/ { err += $NF }
        /Socket errors:/ {
            for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { n = $i; sub(",", "", n); err += n }
        }
        END {
            if (rps == "" || p50 == "" || p99 == "") exit 1
            printf "%.2f %.4f %.4f %d %.1f\n", rps, p50, p99, err, n ? ticks / hz / n * 1e6 : 0
        }' "$out" || die "cannot parse wrk output of $name: $(cat "$out")"
}

declare -A RES # RES[key] = "rps p50 p99 err ..." per run, appended
record() {     # key name target conns threads duration
    local key=$1 r
    shift
    r=$(run_wrk "$@")
    read -r rps p50 p99 err cpu <<<"$r"
    log "$(printf '  %-14s %10s req/s  p50 %7s ms  p99 %7s ms  cpu %6s us/req%s' "$1" "$rps" \
        "$p50" "$p99" "$cpu" "$([[ $err != 0 ]] && echo "  ERRORS $err")")"
    RES[$key]+="$r"$'\n'
    LAST_RPS=$rps
}

median() { # column(1=rps 2=p50 3=p99 5=cpu) key -> median over the recorded runs
    printf '%s' "${RES[$2]}" | awk -v c="$1" 'NF { print $c }' | sort -g |
        awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "nan"; exit }
            if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
errors() { printf '%s' "${RES[$1]}" | awk 'NF { s += $4 } END { print s + 0 }'; }

cores=$(nproc)
log ""
log "machine: nproc=$cores ($(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //'))"
log "no CPU pinning: wrk, nginx (upstream and proxy) and gcpool share the same $cores cores"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before: $load_start"
log "warm-up ($WARMUP each)"
run_wrk warm-direct direct "$CONNS" "$THREADS" "$WARMUP" >/dev/null
run_wrk warm-nginx nginx "$CONNS" "$THREADS" "$WARMUP" >/dev/null
run_wrk warm-gcpool gcpool "$CONNS" "$THREADS" "$WARMUP" >/dev/null
run_wrk warm-gcpool-c1 gcpool 1 1 "$WARMUP" >/dev/null
# wrk's requests (no Accept header) have their own key, kept during the warm-up.
[[ "$CACHE" == 0 ]] || misses_before=$(cache_count miss)

log "baseline: upstream direct, $CONNS connections, $DURATION"
record direct64 direct64 direct "$CONNS" "$THREADS" "$DURATION"
for r in $(seq "$ROUNDS"); do
    log "round $r/$ROUNDS"
    record nginx64 "nginx64-r$r" nginx "$CONNS" "$THREADS" "$DURATION"
    nginx_rps=$LAST_RPS
    record gcpool64 "gcpool64-r$r" gcpool "$CONNS" "$THREADS" "$DURATION"
    log "  round $r: ratio gcpool/nginx = $(awk "BEGIN { printf \"%.2f\", $LAST_RPS / $nginx_rps }")"
    record direct1 "direct1-r$r" direct 1 1 "$LAT_DURATION"
    record nginx1 "nginx1-r$r" nginx 1 1 "$LAT_DURATION"
    record gcpool1 "gcpool1-r$r" gcpool 1 1 "$LAT_DURATION"
done

# --- report ---------------------------------------------------------------------------------
mode="proxied"
[[ "$CALLERS" == 0 ]] || mode="proxied, callers configured"
if [[ "$CACHE" != 0 ]]; then
    mode="cache hits"
    hits=$(cache_count hit)
    misses=$(($(cache_count miss) - misses_before))
    ((misses == 0)) || die "gcpool called upstream $misses times during the cache-hit runs"
    log "gcpool: $hits answers from its cache, no upstream call during the runs"
fi
for k in direct64 nginx64 gcpool64 direct1 nginx1 gcpool1; do
    declare "rps_$k=$(median 1 $k)" "p50_$k=$(median 2 $k)" "p99_$k=$(median 3 $k)"
done
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
ratio=$(calc %.2f "$rps_gcpool64 / $rps_nginx64")
cpu_gcpool=$(median 5 gcpool64)
cpu_nginx=$(median 5 nginx64)
cpu_ratio=$(calc %.2f "$cpu_gcpool / $cpu_nginx")
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
add50=$(calc %.3f "$p50_gcpool1 - $p50_direct1")
add99=$(calc %.3f "$p99_gcpool1 - $p99_direct1")
nadd50=$(calc %.3f "$p50_nginx1 - $p50_direct1")
nadd99=$(calc %.3f "$p99_nginx1 - $p99_direct1")
verdict() { awk "BEGIN { exit !($1) }" && echo "meets goal" || echo "MISSES goal"; }
v_ratio=$(verdict "$ratio >= 1.0")
v_50=$(verdict "$add50 <= 0.1")
v_99=$(verdict "$add99 <= 1.0")
total_errors=0
for k in direct64 nginx64 gcpool64 direct1 nginx1 gcpool1; do
    total_errors=$((total_errors + $(errors $k)))
done

if ((json)); then
    row() { # key target conns runs
        printf '{"target":"%s","connections":%s,"runs":%s,"rps":%s,"p50_ms":%s,"p99_ms":%s,"cpu_us_per_request":%s,"errors":%s}' \
            "$2" "$3" "$4" "$(median 1 "$1")" "$(median 2 "$1")" "$(median 3 "$1")" \
            "$(median 5 "$1")" "$(errors "$1")"
    }
    printf '{"nproc":%s,"pinned":false,"loadavg_before":"%s","loadavg_after":"%s",' \
        "$cores" "$load_start" "$load_end"
    printf '"mode":"%s","duration":"%s","lat_duration":"%s","rounds":%s,' \
        "$mode" "$DURATION" "$LAT_DURATION" "$ROUNDS"
    printf '"path":"%s","results":[%s,%s,%s,%s,%s,%s],' "$PATH_Q" \
        "$(row direct64 direct "$CONNS" 1)" "$(row nginx64 nginx "$CONNS" "$ROUNDS")" \
        "$(row gcpool64 gcpool "$CONNS" "$ROUNDS")" "$(row direct1 direct 1 "$ROUNDS")" \
        "$(row nginx1 nginx 1 "$ROUNDS")" "$(row gcpool1 gcpool 1 "$ROUNDS")"
    printf '"ratio_gcpool_nginx_rps":%s,"ratio_gcpool_nginx_cpu_per_request":%s,' \
        "$ratio" "$cpu_ratio"
    printf '"added_ms_gcpool_over_direct":{"p50":%s,"p99":%s},' \
        "$add50" "$add99"
    printf '"added_ms_nginx_over_direct":{"p50":%s,"p99":%s},"errors":%s}\n' \
        "$nadd50" "$nadd99" "$total_errors"
else
    echo
    echo "gcpool overhead benchmark ($mode) — loopback, path $PATH_Q"
    echo "machine: nproc=$cores; wrk, both nginx and gcpool share the same $cores cores (no pinning);" \
        "load average before $load_start, after $load_end"
    echo "medians over runs; $CONNS conns: -c $CONNS -t $THREADS -d $DURATION; 1 conn: -c 1 -t 1 -d $LAT_DURATION"
    echo
    printf '%-10s %6s %5s %12s %10s %10s %14s %7s\n' target conns runs req/s p50_ms p99_ms \
        cpu_us/req errors
    line() {
        printf '%-10s %6s %5s %12.0f %10.3f %10.3f %14.1f %7s\n' "$2" "$3" "$4" \
            "$(median 1 "$1")" "$(median 2 "$1")" "$(median 3 "$1")" "$(median 5 "$1")" \
            "$(errors "$1")"
    }
    line direct64 direct "$CONNS" 1
    line nginx64 nginx "$CONNS" "$ROUNDS"
    line gcpool64 gcpool "$CONNS" "$ROUNDS"
    line direct1 direct 1 "$ROUNDS"
    line nginx1 nginx 1 "$ROUNDS"
    line gcpool1 gcpool 1 "$ROUNDS"
    echo
    echo "ratio gcpool/nginx (req/s) = $ratio   (goal >= 1.00: $v_ratio)"
    echo "ratio gcpool/nginx (server CPU per request, 64 conns) = $cpu_ratio"
    echo "added latency gcpool over direct, 1 conn: p50 $add50 ms (goal <= 0.1: $v_50), p99 $add99 ms (goal <= 1: $v_99)"
    echo "added latency nginx  over direct, 1 conn: p50 $nadd50 ms, p99 $nadd99 ms (for reference)"
    if ((total_errors)); then
        echo "WARNING: $total_errors socket errors or non-2xx answers during the runs; figures are suspect"
    fi
fi
