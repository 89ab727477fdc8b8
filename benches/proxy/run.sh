#!/usr/bin/env bash
# The proxy benchmark: one command, `bash benches/proxy/run.sh`.
#
# The same load (wrk, keep-alive, 64 connections, one thread) against
#   (a) direct:  a fast local upstream (nginx, one worker, a fixed small JSON answer),
#   (b) nginx:   nginx with one worker doing the gateway's rewrite (check the client key, drop
#                it, add the real access_token, strip the /{appid} prefix), keepalive upstream,
#   (c) wxgate:  wxgate with server.threads = 1, access log off, WXGATE_LOG=warn, and the token
#                of an active authorizer in its cache (pre-filled SQLite store),
# in alternation for several rounds; prints the median requests/s, p50 and p99 of each and the
# ratios wxgate/nginx and wxgate/direct.
#
# Pinning: both proxies run on CPU $PROXY_CPU (one core each, never at the same time); wrk and
# the upstream share CPU $LOAD_CPU. Everything listens on 127.0.0.1 only.
#
# ACCESS_LOG (off; text or json: nginx writes its access log buffered, `buffer=64k flush=1s`,
# as operators run it, and wxgate writes its own in that format, both to a file),
# Environment: ROUNDS (5), DURATION (10, seconds per run), CONNECTIONS (64), PROXY_CPU (0),
# LOAD_CPU (1), PROFILE=1 (after the rounds, `perf record -g` wxgate under the same load and
# print the top of `perf report --no-children --sort symbol`), KEEP=1 (keep the work dir),
# MODE (both: the loopback run, then the production-shaped one in prod.sh; loopback; prod),
# GATEWAY_BIN (a wxgate binary to run instead of building this tree's; not WXGATE_*, which wxgate
# reads as config), LIMITS=1 (the bench client gets a rate_per_second and a daily_share too high
# to refuse anything: what the quota guard's checks cost a call).
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PROFILE=${PROFILE:-0}
MODE=${MODE:-both}
ACCESS_LOG=${ACCESS_LOG:-off}
LIMITS=${LIMITS:-0}
WXG_LIMITS=""
[ "$LIMITS" = 1 ] && WXG_LIMITS="rate_per_second = 1000000
daily_share = 1"
case "$ACCESS_LOG" in off|text|json) ;; *) echo "ACCESS_LOG must be off, text or json" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

# --- tools ---------------------------------------------------------------------------------
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v strace >/dev/null || missing+=(strace)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
command -v taskset >/dev/null || missing+=(util-linux)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if [ "$PROFILE" = 1 ] && ! command -v perf >/dev/null; then missing+=(linux-perf); fi
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# Other work on the machine (a build) would add noise: as root, every process of the
# benchmark runs at a higher priority, the same for all targets.
NICE=""
[ "$(id -u)" -eq 0 ] && NICE="nice -n -10"
NCPU=$(nproc)
if [ "$NCPU" -lt 2 ]; then PROXY_CPU=0; LOAD_CPU=0; fi

# --- build ---------------------------------------------------------------------------------
# The warm target directory .ci/run uses, unless one is given.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/wxgate-target}"
WORK=$(mktemp -d /tmp/wxgate-bench.XXXXXX)
if [ "$ACCESS_LOG" = off ]; then NGX_ACCESS_LOG="access_log off;"; WXG_ACCESS_LOG="access_log = false"
else NGX_ACCESS_LOG="access_log $WORK/nginx/access.log combined buffer=64k flush=1s;"
     WXG_ACCESS_LOG="access_log = true
access_log_format = \"$ACCESS_LOG\""; fi
mkdir -p "$WORK/bin"
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
if [ -n "${GATEWAY_BIN:-}" ]; then # another build, to compare two in the same conditions
    cp "$GATEWAY_BIN" "$WORK/bin/wxgate"
else
    say "cargo build --release --bin wxgate"
    cargo build --release --bin wxgate >&2
    # A private copy: a shared target dir may be rebuilt by someone else during the run.
    cp "$TARGET_DIR/release/wxgate" "$WORK/bin/wxgate"
fi

PIDS=()
WXG_PID=""
cleanup() {
    local pid
    [ -n "$WXG_PID" ] && PIDS+=("$WXG_PID")
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# syscalls_per_call <name> <pid> <url> <connections>: strace -c -f on <pid> over a 3 s wrk run.
syscalls_per_call() {
    local out="$WORK/syscalls.$1" tracer calls total top
    strace -c -f -p "$2" -o "$out" 2>/dev/null &
    tracer=$!
    sleep 0.5
    calls=$($NICE taskset -c "$LOAD_CPU" wrk -t1 -c"$4" -d3s --timeout 10s "$3" | awk '/requests in/ {print $1}')
    kill -INT "$tracer"
    wait "$tracer" || true
    total=$(awk '$NF == "total" {print $4}' "$out")
    top=$(awk -v n="$calls" 'NR > 2 && $NF != "total" && $1 ~ /^[0-9.]+$/ {printf "%s %.2f, ", $NF, $4 / n}' "$out" | head -c 200)
    python3 -c "print(f'$1: {$total / $calls:.2f} system calls per call ($top...)')"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url [expected body substring]
    for _ in $(seq 300); do
        if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "no answer from $1" >&2; return 1
}

UP_PORT=$(free_port); NGX_PORT=$(free_port); WXG_PORT=$(free_port); WXG_ADMIN=$(free_port)
APPID=wx1111111111111111
COMPONENT=wx0123456789abcdef
CLIENT_KEY=bench-client-key-0123456789
REAL_TOKEN=REAL_authorizer_access_token_0123456789abcdefghijklmnopqrstuvwxyz_0123456789
ANSWER='{"errcode":0,"errmsg":"ok"}'

# --- (a) the upstream ----------------------------------------------------------------------
nginx_common() { # dir
    mkdir -p "$1/tmp"
    cat <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; multi_accept on; }
EOF
}
nginx_http_common() { # dir
    cat <<EOF
    access_log off;
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
EOF
}

mkdir -p "$WORK/upstream" "$WORK/nginx"
{
    nginx_common "$WORK/upstream"
    cat <<EOF
http {
$(nginx_http_common "$WORK/upstream")
    server {
        listen 127.0.0.1:$UP_PORT reuseport backlog=4096;
        location / {
            default_type application/json;
            return 200 '$ANSWER';
        }
    }
}
EOF
} >"$WORK/upstream/nginx.conf"

# --- (b) nginx doing the gateway's rewrite -------------------------------------------------
{
    nginx_common "$WORK/nginx"
    cat <<EOF
http {
$(nginx_http_common "$WORK/nginx")
    upstream wechat {
        server 127.0.0.1:$UP_PORT;
        keepalive 128;
    }
    # The client key, as the gateway checks it (here: one client, the query parameter).
    map \$arg_access_token \$client_ok {
        default 0;
        "$CLIENT_KEY" 1;
    }
    # The query without the client's access_token; the rest kept verbatim.
    map \$args \$rest {
        default \$args;
        "~^(?<pre>.*?)&?access_token=[^&]*(?<post>.*)\$" "\$pre\$post";
    }
    # The token cached for each authorizer.
    map \$appid \$real_token {
        default "";
        "$APPID" "$REAL_TOKEN";
    }
    server {
        listen 127.0.0.1:$NGX_PORT reuseport backlog=4096;
        $NGX_ACCESS_LOG
        location ~ "^/(?<appid>wx[0-9a-f]{16})(?<wxpath>/.*)\$" {
            if (\$client_ok = 0) { return 401; }
            if (\$real_token = "") { return 404; }
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1:$UP_PORT;
            proxy_set_header Authorization "";
            proxy_buffering on;
            proxy_pass http://wechat\$wxpath?\$rest&access_token=\$real_token;
        }
        location / { return 404; }
    }
}
EOF
} >"$WORK/nginx/nginx.conf"

# --- (c) wxgate ----------------------------------------------------------------------------
mkdir -p "$WORK/wxgate/data"
cat >"$WORK/wxgate/wxgate.toml" <<EOF
[component]
appid = "$COMPONENT"
appsecret = "bench-appsecret-0123456789abcdef"
token = "benchtoken"
encoding_aes_key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"

[upstream]
base_url = "http://127.0.0.1:$UP_PORT"
mp_base_url = "http://127.0.0.1:$UP_PORT"
timeout_ms = 10000

[listen]
proxy = "127.0.0.1:$WXG_PORT"
admin = "127.0.0.1:$WXG_ADMIN"
public_base_url = "http://127.0.0.1:$WXG_PORT"

[store]
backend = "sqlite"
path = "$WORK/wxgate/data/wxgate.sqlite3"

[admin]
token = "bench-admin-token-0123456789"

[proxy]
$WXG_ACCESS_LOG

[server]
threads = 1
shutdown_grace_secs = 0

[[clients]]
name = "bench"
key = "$CLIENT_KEY"
authorizers = ["$APPID"]
$WXG_LIMITS
EOF

start_wxgate() {
    WXGATE_LOG=warn $NICE taskset -c "$PROXY_CPU" "$WORK/bin/wxgate" --config "$WORK/wxgate/wxgate.toml" >>"$WORK/wxgate/wxgate.log" 2>&1 &
    WXG_PID=$!
    wait_http "http://127.0.0.1:$WXG_ADMIN/healthz"
}
stop_wxgate() {
    kill -TERM "$WXG_PID"
    for _ in $(seq 100); do kill -0 "$WXG_PID" 2>/dev/null || break; sleep 0.1; done
    wait "$WXG_PID" 2>/dev/null || true
    WXG_PID=""
}

say "starting the upstream (CPU $LOAD_CPU), nginx (CPU $PROXY_CPU)"
$NICE taskset -c "$LOAD_CPU" "$NGINX" -e stderr -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" 2>>"$WORK/upstream/error.log" &
PIDS+=($!)
$NICE taskset -c "$PROXY_CPU" "$NGINX" -e stderr -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" 2>>"$WORK/nginx/error.log" &
NGX_PID=$!
PIDS+=($NGX_PID)

say "starting wxgate once to create its store, then filling it (CPU $PROXY_CPU)"
start_wxgate
stop_wxgate
NOW_MS=$(($(date +%s) * 1000))
FAR_MS=$((NOW_MS + 10 * 365 * 24 * 3600 * 1000))
sqlite3 "$WORK/wxgate/data/wxgate.sqlite3" <<EOF
INSERT OR REPLACE INTO tickets (component_appid, ticket, create_time, received_at)
    VALUES ('$COMPONENT', 'bench-ticket', $((NOW_MS / 1000)), $NOW_MS);
INSERT OR REPLACE INTO component_tokens (component_appid, token, expires_at, obtained_at)
    VALUES ('$COMPONENT', 'bench-component-token', $FAR_MS, $NOW_MS);
INSERT OR REPLACE INTO authorizers (component_appid, authorizer_appid, state, refresh_token, access_token,
        access_expires_at, authorized_at, last_refresh_at, last_error, auth_code_sha1)
    VALUES ('$COMPONENT', '$APPID', 'active', 'bench-refresh-token', '$REAL_TOKEN', $FAR_MS, $NOW_MS, $NOW_MS, NULL, NULL);
EOF
start_wxgate

DIRECT_PATH="/cgi-bin/user/info?openid=o1&access_token=$REAL_TOKEN"
PROXY_PATH="/$APPID/cgi-bin/user/info?openid=o1&access_token=$CLIENT_KEY"
declare -A URL=(
    [direct]="http://127.0.0.1:$UP_PORT$DIRECT_PATH"
    [nginx]="http://127.0.0.1:$NGX_PORT$PROXY_PATH"
    [wxgate]="http://127.0.0.1:$WXG_PORT$PROXY_PATH"
)
TARGETS=(direct nginx wxgate)

# Every target must give the upstream's answer, and the proxies must refuse a wrong key.
for t in "${TARGETS[@]}"; do
    wait_http "${URL[$t]}"
    got=$(curl -fsS "${URL[$t]}")
    [ "$got" = "$ANSWER" ] || { echo "$t answered '$got', not '$ANSWER'" >&2; exit 1; }
done
for t in nginx wxgate; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "${URL[$t]/$CLIENT_KEY/wrong-key-0123456789}")
    [ "$code" = 401 ] || { echo "$t answered $code to a wrong key" >&2; exit 1; }
done

# wrk's --latency distribution, in microseconds.
to_us() {
    python3 -c '
import sys
v = sys.argv[1]
for suffix, f in (("us", 1), ("ms", 1e3), ("s", 1e6)):
    if v.endswith(suffix):
        print(float(v[: -len(suffix)]) * f); break
else:
    print(float(v))' "$1"
}
# The proxy's own CPU per call (utime + stime of its process over the run / calls: what the
# production-shaped run compares too), and the share of the proxy core the hypervisor took
# (steal): this machine's neighbours take up to a third at times, and a round with much steal
# says more about them than about the proxy.
proc_ticks() { if [ -n "$1" ]; then awk '{print $14 + $15}' "/proc/$1/stat"; else echo 0; fi; }
core_ticks() { awk -v c="cpu$PROXY_CPU" '$1 == c {t = 0; for (i = 2; i <= 9; i++) t += $i; print $9, t}' /proc/stat; }
declare -A PID_OF=()
run_wrk() { # target seconds -> "rps p50_us p99_us cpu_us_per_call steal_share"
    local out p0 p1 s0 t0 s1 t1 calls
    p0=$(proc_ticks "${PID_OF[$1]:-}"); read -r s0 t0 < <(core_ticks)
    out=$($NICE taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$2"s --latency "${URL[$1]}")
    p1=$(proc_ticks "${PID_OF[$1]:-}"); read -r s1 t1 < <(core_ticks)
    if grep -q 'Non-2xx\|Socket errors' <<<"$out"; then
        echo "$1: wrk saw errors:" >&2; echo "$out" >&2; exit 1
    fi
    calls=$(awk '/requests in/ {print $1}' <<<"$out")
    local rps p50 p99
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    echo "$rps $p50 $p99 $(python3 -c "print(($p1 - $p0) / $TCK * 1e6 / $calls, ($s1 - $s0) / max(1, $t1 - $t0))")"
}

if [ "$MODE" != prod ]; then
TCK=$(getconf CLK_TCK)
PID_OF=([nginx]=$NGX_PID [wxgate]=$WXG_PID)
say "warm-up (2 s each)"
for t in "${TARGETS[@]}"; do run_wrk "$t" 2 >/dev/null; done

RESULTS="$WORK/results.txt"
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
        r=$(run_wrk "$t" "$DURATION")
        echo "$t $r" >>"$RESULTS"
        printf 'round %d  %-7s %10.0f req/s  p50 %7.0f us  p99 %7.0f us  %5.1f us CPU/call  steal %.2f\n' "$round" "$t" $r >&2
    done
done

echo
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s, keep-alive, $ROUNDS rounds in alternation; medians."
echo "The proxy under test (nginx with worker_processes 1, or wxgate with server.threads = 1) is"
echo "pinned to CPU $PROXY_CPU; wrk and the upstream (nginx, one worker) share CPU $LOAD_CPU.${NICE:+ All at nice -10.}"
python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    t, rps, p50, p99, cpu, steal = line.split()
    rows.setdefault(t, []).append(tuple(map(float, (rps, p50, p99, cpu, steal))))
med = {t: [statistics.median(x[i] for x in v) for i in range(5)] for t, v in rows.items()}
print()
print(f"{'target':<8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/call':>12} {'steal':>6}   req/s of each round")
for t in ("direct", "nginx", "wxgate"):
    rps, p50, p99, cpu, steal = med[t]
    each = " ".join(f"{x[0]:.0f}" for x in rows[t])
    cpu = f"{cpu:.1f}" if t != "direct" else ""
    print(f"{t:<8} {rps:>10.0f} {p50 / 1000:>8.2f} {p99 / 1000:>8.2f} {cpu:>12} {steal:>6.2f}   {each}")
print()
rounds = " ".join(f"{w[0] / n[0]:.2f}" for w, n in zip(rows["wxgate"], rows["nginx"]))
cpu = [w[3] / n[3] for w, n in zip(rows["wxgate"], rows["nginx"])]
print(f"wxgate/nginx  = {med['wxgate'][0] / med['nginx'][0]:.2f}x req/s (rounds {rounds})  (target >= 1.0x per core)")
print(f"wxgate/nginx CPU per call (each proxy's process) = {statistics.median(cpu):.2f}x "
      f"(rounds {' '.join(f'{c:.2f}' for c in cpu)})")
print(f"wxgate/direct = {med['wxgate'][0] / med['direct'][0]:.2f}x")
EOF

# System calls per call: strace -c over a 3 s wrk run against each proxy (strace slows both
# alike; the count per call is what is compared, not the rate).
if command -v strace >/dev/null; then
    say "system calls per call (strace -c -f over a 3 s run)"
    ngx_worker=$(pgrep -P "$NGX_PID" | head -1 || true)
    ngx_worker=${ngx_worker:-$NGX_PID} # master_process off: the one process serves
    syscalls_per_call nginx "$ngx_worker" "${URL[nginx]}" "$CONNECTIONS"
    syscalls_per_call wxgate "$WXG_PID" "${URL[wxgate]}" "$CONNECTIONS"
fi
fi


if [ "$MODE" != loopback ]; then
    command -v openssl >/dev/null || { $SUDO apt-get install -y -qq openssl >/dev/null; }
    # shellcheck source=benches/proxy/prod.sh
    source "$ROOT/benches/proxy/prod.sh"
fi

if [ "$PROFILE" = 1 ] && [ "$MODE" != prod ]; then
    say "profiling wxgate (pid $WXG_PID) under the same load"
    ( sleep 1; perf record -F 999 -g -p "$WXG_PID" -o "$WORK/perf.data" -- sleep "$DURATION" >/dev/null 2>&1 ) &
    PERF_PID=$!
    run_wrk wxgate $((DURATION + 2)) >/dev/null
    wait "$PERF_PID" || true
    perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio -g none --percent-limit 0.7 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -60
    if [ -n "${PERF_OUT:-}" ]; then cp "$WORK/perf.data" "$PERF_OUT"; fi
fi
