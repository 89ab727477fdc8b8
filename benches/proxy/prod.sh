# The production-shaped run, sourced by run.sh after the loopback one (MODE=prod runs only this,
# MODE=loopback only the other). Uses run.sh's $WORK, $NICE, $NGINX, helpers and the store it
# filled.
#
#   upstream: HTTPS with a certificate of the bench's own CA (openssl), HTTP/1.1 keep-alive,
#             every answer 30 ms after its request (slow_upstream.rs, an example built here:
#             one thread of tokio and rustls, cheap enough to share the load core with wrk; it
#             counts the TLS connections it accepts),
#   nginx:    the same rewrite as the loopback run, proxy_ssl verifying the CA, keepalive 1024,
#   wxgate:   trusting the CA through upstream.ca_file.
# Per proxy: a max run (wrk -c$PROD_CONNECTIONS), giving req/s, CPU per call (utime+stime from
# /proc/<pid>/stat over the run / calls), RSS after it, and new upstream TLS handshakes per
# 10,000 calls (after a warm-up at the same load); then p99 at about half the max rate: wrk is
# closed-loop, so with a 30 ms upstream and a mean pause of THINK_MS/2, c = rate x (30 ms +
# THINK_MS/2) connections give that rate; the same
# connection count against the upstream directly gives the p99 subtracted. CPU per call is also
# taken there: both proxies then serve the same rate, whereas each max run's rate is set by how
# fast the shared load core happens to drive the upstream, and CPU per call falls as the rate
# rises (more events per wake-up), which makes the max-run ratio swing by ±10 %. The half runs
# are made $PROD_HALF_ROUNDS times in alternation (direct, nginx, wxgate), and each figure is
# the median of the rounds' own (wxgate/nginx CPU, wxgate - direct p99), since a shared
# machine's load drifts within seconds. Then
# $IDLE_CONNECTIONS idle keep-alive client connections to wxgate (idle_clients.py, one call
# each) and the RSS they cost.
#
# Each client waits 0 to THINK_MS (uniformly, wrk's delay()) before each of its calls, as an app's
# clients do: with none, a thousand connections and an upstream that always answers after the
# same 30 ms move in step, every call of a wave arriving in the same millisecond, and the p99
# measured is the time to work through a wave (the direct path's own p99 was 40-55 ms then).
#
# Environment: PROD_DURATION (10), PROD_CONNECTIONS (1000), DELAY_MS (30), THINK_MS (30),
# IDLE_CONNECTIONS (10000), PROD_HALF_ROUNDS (3);
# PROFILE=1 records perf during each proxy's max run (PROFILE_RUN=half: its first half run, where
# the same-rate ratio is taken) and prints the top of both profiles;
# PERF_CALLGRAPH="--call-graph dwarf" gives callers through code without frame pointers.

PROD_DURATION=${PROD_DURATION:-10}
PROD_CONNECTIONS=${PROD_CONNECTIONS:-1000}
DELAY_MS=${DELAY_MS:-30}
THINK_MS=${THINK_MS:-30}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
PROD_HALF_ROUNDS=${PROD_HALF_ROUNDS:-3}
PROFILE_RUN=${PROFILE_RUN:-max}
BENCH_DIR="$ROOT/benches/proxy"
ulimit -n "$(ulimit -Hn)"

say "production-shaped run: HTTPS upstream answering after ${DELAY_MS} ms, $PROD_CONNECTIONS clients"
P="$WORK/prod"
mkdir -p "$P/nginx" "$P/wxgate"
# A CA of the bench's own and a certificate it signed for 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=wxgate bench CA" \
    -keyout "$P/ca.key" -out "$P/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$P/up.key" -out "$P/up.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$P/ext.cnf"
openssl x509 -req -in "$P/up.csr" -CA "$P/ca.pem" -CAkey "$P/ca.key" -CAcreateserial -days 2 \
    -extfile "$P/ext.cnf" -out "$P/up.pem" 2>/dev/null

TLS_PORT=$(free_port); PNGX_PORT=$(free_port); PWXG_PORT=$(free_port); PWXG_ADMIN=$(free_port)
say "cargo build --release --example slow_upstream"
cargo build --release --example slow_upstream >&2
cp "$TARGET_DIR/release/examples/slow_upstream" "$WORK/bin/slow_upstream"
$NICE taskset -c "$LOAD_CPU" "$WORK/bin/slow_upstream" "$TLS_PORT" "$P/up.pem" "$P/up.key" \
    "$DELAY_MS" "$P/up.stats" 2>>"$P/upstream.log" &
PIDS+=($!)
for _ in $(seq 300); do [ -s "$P/up.stats" ] && break; sleep 0.1; done
[ -s "$P/up.stats" ] || { echo "the HTTPS upstream did not start" >&2; cat "$P/upstream.log" >&2; exit 1; }

{
    nginx_common "$P/nginx" | sed 's/worker_connections 4096/worker_connections 16384/'
    cat <<EOF
http {
$(nginx_http_common "$P/nginx")
    upstream wechat {
        server 127.0.0.1:$TLS_PORT;
        keepalive 1024;
        keepalive_requests 1000000;
        keepalive_timeout 120s;
    }
    map \$arg_access_token \$client_ok { default 0; "$CLIENT_KEY" 1; }
    map \$args \$rest {
        default \$args;
        "~^(?<pre>.*?)&?access_token=[^&]*(?<post>.*)\$" "\$pre\$post";
    }
    map \$appid \$real_token { default ""; "$APPID" "$REAL_TOKEN"; }
    server {
        listen 127.0.0.1:$PNGX_PORT reuseport backlog=4096;
        location ~ "^/(?<appid>wx[0-9a-f]{16})(?<wxpath>/.*)\$" {
            if (\$client_ok = 0) { return 401; }
            if (\$real_token = "") { return 404; }
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1:$TLS_PORT;
            proxy_set_header Authorization "";
            proxy_ssl_trusted_certificate $P/ca.pem;
            proxy_ssl_verify on;
            proxy_ssl_name 127.0.0.1;
            proxy_ssl_session_reuse on;
            proxy_pass https://wechat\$wxpath?\$rest&access_token=\$real_token;
        }
        location / { return 404; }
    }
}
EOF
} >"$P/nginx/nginx.conf"
$NICE taskset -c "$PROXY_CPU" "$NGINX" -e stderr -p "$P/nginx" -c "$P/nginx/nginx.conf" 2>>"$P/nginx/error.log" &
PNGX_PID=$!
PIDS+=($PNGX_PID)

# wxgate: the loopback run's config and store, aimed at the HTTPS upstream, trusting its CA.
stop_wxgate
sed -e "s#^base_url = .*#base_url = \"https://127.0.0.1:$TLS_PORT\"\nca_file = \"$P/ca.pem\"#" \
    -e "s#^mp_base_url = .*#mp_base_url = \"https://127.0.0.1:$TLS_PORT\"#" \
    -e "s#^proxy = .*#proxy = \"127.0.0.1:$PWXG_PORT\"#" -e "s#^admin = .*#admin = \"127.0.0.1:$PWXG_ADMIN\"#" \
    -e "s#^public_base_url = .*#public_base_url = \"http://127.0.0.1:$PWXG_PORT\"#" \
    -e "s#^access_log = false#access_log = false\nkeepalive_timeout_secs = 300#" \
    "$WORK/wxgate/wxgate.toml" >"$P/wxgate/wxgate.toml"
WXGATE_LOG=warn $NICE taskset -c "$PROXY_CPU" "$WORK/bin/wxgate" --config "$P/wxgate/wxgate.toml" >>"$P/wxgate/wxgate.log" 2>&1 &
WXG_PID=$!
wait_http "http://127.0.0.1:$PWXG_ADMIN/healthz"

declare -A PURL=(
    [direct]="https://127.0.0.1:$TLS_PORT$DIRECT_PATH"
    [nginx]="http://127.0.0.1:$PNGX_PORT$PROXY_PATH"
    [wxgate]="http://127.0.0.1:$PWXG_PORT$PROXY_PATH"
)
declare -A PPID_OF=([nginx]=$PNGX_PID [wxgate]=$WXG_PID)
for t in direct nginx wxgate; do
    got=$(curl -sS --cacert "$P/ca.pem" "${PURL[$t]}")
    [ "$got" = "$ANSWER" ] || { echo "prod $t answered '$got', not '$ANSWER'" >&2; cat "$P"/*/*.log >&2; exit 1; }
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
sys_ticks() { awk '{print $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
accepted() { awk '{print $1}' "$P/up.stats"; }
cat >"$P/think.lua" <<EOF
-- A client's pause before each call: 0 to $THINK_MS ms, uniformly (wrk's own latency excludes it).
function delay() return math.random(0, $THINK_MS) end
EOF
prod_wrk() { # target connections seconds -> "calls rps p99_us"
    local out
    out=$($NICE taskset -c "$LOAD_CPU" wrk -t1 -c"$2" -d"$3"s --timeout 10s --latency -s "$P/think.lua" "${PURL[$1]}")
    if grep -q 'Non-2xx\|Socket errors' <<<"$out"; then echo "prod $1: wrk saw errors:" >&2; echo "$out" >&2; exit 1; fi
    echo "$(awk '/requests in/ {print $1}' <<<"$out") $(awk '/^Requests\/sec:/ {print $2}' <<<"$out") $(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
}

profile_run() { # target pid: perf over the run about to start, after the CPU count's window opens
    [ "$PROFILE" = 1 ] || return 0
    ( sleep 1; perf record -F 999 ${PERF_CALLGRAPH:--g} -p "$2" -o "$P/perf.$1.data" -- sleep $((PROD_DURATION - 2)) >/dev/null 2>&1 ) &
}

PROD="$WORK/prod.txt"
: >"$PROD"
TCK=$(getconf CLK_TCK)
for t in nginx wxgate; do
    pid=${PPID_OF[$t]}
    prod_wrk "$t" "$PROD_CONNECTIONS" 3 >/dev/null # warm: the upstream connections are open
    a0=$(accepted); c0=$(cpu_ticks "$pid")
    [ "$PROFILE_RUN" = max ] && profile_run "$t" "$pid"
    r=$(prod_wrk "$t" "$PROD_CONNECTIONS" "$PROD_DURATION")
    read -r calls rps p99 <<<"$r"
    c1=$(cpu_ticks "$pid"); a1=$(accepted)
    cpu_us=$(python3 -c "print(($c1 - $c0) / $TCK * 1e6 / $calls)")
    hs=$(python3 -c "print(($a1 - $a0) * 10000 / $calls)")
    echo "$t max $calls $rps $p99 $cpu_us $(rss_kb "$pid") $hs" >>"$PROD"
    printf 'prod %-7s max: %8.0f req/s  p99 %6.0f us  %5.1f us CPU/call  %s upstream TLS handshakes/10k\n' "$t" "$rps" "$p99" "$cpu_us" "$hs" >&2
done
if command -v strace >/dev/null; then
    say "prod: system calls per call (strace -c -f over a 3 s run at -c$PROD_CONNECTIONS)"
    for t in nginx wxgate; do syscalls_per_call "prod-$t" "${PPID_OF[$t]}" "${PURL[$t]}" "$PROD_CONNECTIONS"; done
fi
# Half of the smaller maximum, for both proxies and the direct path alike.
half_conns=$(python3 -c "
m = min(float(l.split()[3]) for l in open('$PROD'))
print(max(1, round(m / 2 * ($DELAY_MS + $THINK_MS / 2) / 1000)))")
for round in $(seq "$PROD_HALF_ROUNDS"); do
    for t in direct nginx wxgate; do
        prod_wrk "$t" "$half_conns" 2 >/dev/null
        pid=${PPID_OF[$t]:-}
        [ -n "$pid" ] && c0=$(cpu_ticks "$pid") && k0=$(sys_ticks "$pid")
        [ -n "$pid" ] && [ "$round" = 1 ] && [ "$PROFILE_RUN" = half ] && profile_run "$t" "$pid"
        r=$(prod_wrk "$t" "$half_conns" "$PROD_DURATION")
        read -r calls rps p99 <<<"$r"
        cpu_us=0 sys_us=0
        [ -n "$pid" ] && cpu_us=$(python3 -c "print(($(cpu_ticks "$pid") - $c0) / $TCK * 1e6 / $calls)") \
            && sys_us=$(python3 -c "print(($(sys_ticks "$pid") - $k0) / $TCK * 1e6 / $calls)")
        echo "$t half $calls $rps $p99 $cpu_us" >>"$PROD"
        printf 'prod round %d %-7s at -c%d: %8.0f req/s  p99 %6.0f us  %5.1f us CPU/call (%5.1f in the kernel)\n' \
            "$round" "$t" "$half_conns" "$rps" "$p99" "$cpu_us" "$sys_us" >&2
    done
done

say "holding $IDLE_CONNECTIONS idle keep-alive connections to wxgate"
rss0=$(rss_kb "$WXG_PID")
coproc IDLE { exec python3 "$BENCH_DIR/idle_clients.py" 127.0.0.1 "$PWXG_PORT" "$PROXY_PATH" "$IDLE_CONNECTIONS" 2>&1; }
IDLE_PID=$IDLE_PID
PIDS+=($IDLE_PID)
read -r -t 180 ready <&"${IDLE[0]}" || true
[[ "$ready" == ready* ]] || { echo "idle clients: '$ready'" >&2; exit 1; }
sleep 2 # the gateway's side settles (buffers released after the call)
rss1=$(rss_kb "$WXG_PID")
echo "idle $IDLE_CONNECTIONS $rss0 $rss1" >>"$PROD"
eval "exec ${IDLE[1]}>&-"
wait "$IDLE_PID" 2>/dev/null || true

echo
echo "Production-shaped: HTTPS upstream (own CA) answering after ${DELAY_MS} ms; wrk -t1, keep-alive, each"
echo "client pausing 0-${THINK_MS} ms before a call; max at -c$PROD_CONNECTIONS for ${PROD_DURATION}s after a 3 s warm-up;"
echo "half: -c$half_conns (closed loop: c = rate x (${DELAY_MS} + ${THINK_MS}/2) ms gives about half the smaller max),"
echo "$PROD_HALF_ROUNDS rounds in alternation, medians."
echo "Load average: $(cut -d' ' -f1-3 /proc/loadavg)."
python3 - "$PROD" <<'EOF'
import statistics
import sys
maxr, half, idle = {}, {}, None
for line in open(sys.argv[1]):
    f = line.split()
    if f[1] == "max": maxr[f[0]] = f
    elif f[1] == "half": half.setdefault(f[0], []).append(f)
    else: idle = f
med = statistics.median
p99 = {t: [float(f[4]) for f in rounds] for t, rounds in half.items()}
cpu = {t: [float(f[5]) for f in rounds] for t, rounds in half.items()}
print()
print(f"{'target':<8} {'max req/s':>10} {'CPU us/call':>12} {'RSS MB':>8} {'TLS hs/10k':>11} {'p99@half ms':>12} {'added p99 ms':>13}")
d99 = med(p99["direct"])
print(f"{'direct':<8} {'':>10} {'':>12} {'':>8} {'':>11} {d99 / 1000:>12.2f} {'':>13}")
for t in ("nginx", "wxgate"):
    _, _, calls, rps, _, c, rss, hs = maxr[t]
    added = med([(h - d) / 1000 for h, d in zip(p99[t], p99["direct"])])
    print(f"{t:<8} {float(rps):>10.0f} {float(c):>12.1f} {int(rss) / 1024:>8.1f} {float(hs):>11.2f} {med(p99[t]) / 1000:>12.2f} {added:>13.2f}")
print()
n, r0, r1 = int(idle[1]), int(idle[2]), int(idle[3])
same = [w / x for w, x in zip(cpu["wxgate"], cpu["nginx"])]
added = [(w - d) / 1000 for w, d in zip(p99["wxgate"], p99["direct"])]
print(f"wxgate CPU/call vs nginx = {float(maxr['wxgate'][5]) / float(maxr['nginx'][5]):.2f}x at each one's max, "
      f"{med(same):.2f}x at the same rate (half: {med(cpu['wxgate']):.1f} / {med(cpu['nginx']):.1f} us; "
      f"rounds {' '.join(f'{r:.2f}' for r in same)})  (target <= 1.0x)")
print(f"wxgate added p99 at half max = {med(added):.2f} ms (rounds {' '.join(f'{a:.2f}' for a in added)})  (target <= 1 ms)")
print(f"wxgate upstream TLS handshakes per 10k calls, warm = {float(maxr['wxgate'][7]):.2f}  (target <= 1)")
print(f"{n} idle keep-alive client connections: wxgate RSS {r0 / 1024:.1f} -> {r1 / 1024:.1f} MB, "
      f"{(r1 - r0) / n:.1f} KB per connection  (target <= 10 KB)")
EOF

if [ "$PROFILE" = 1 ]; then
    for t in nginx wxgate; do
        say "profile of $t over its $PROFILE_RUN run (perf report --no-children --sort dso,symbol)"
        perf report -i "$P/perf.$t.data" --no-children --sort dso,symbol --stdio -g none --percent-limit 0.7 2>/dev/null \
            | grep -v '^#' | grep -v '^$' | head -40
        if [ -n "${PERF_OUT:-}" ]; then cp "$P/perf.$t.data" "$PERF_OUT.$t"; fi
    done
fi
