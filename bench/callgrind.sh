#!/usr/bin/env bash
# Instructions per request, the stable figure: wall-clock on a shared 2-core
# machine moves by ±15 % between identical runs, instruction counts do not.
#
#   bench/callgrind.sh [REQUESTS]     (default 2000 per case)
#
# Runs the release binary under `valgrind --tool=callgrind` in front of nginx on
# loopback, warms each case up, zeroes the counters, sends REQUESTS requests on
# one keep-alive connection with h2load, and divides the instructions the
# gateway executed by the number of requests. Cases: a public route over
# HTTP/1.1, a route with a cached RS256 token over HTTP/1.1, a public route
# over HTTP/2; then the public HTTP/1.1 route on two more gateways with traces
# on (sample_ratio 0, and 1.0 exporting two spans per request to nginx as the
# collector); then HAProxy (nbthread 1) and nginx (one process) on the public
# route over both protocols, and the system calls each of the three makes per
# request (strace, natively). Installs valgrind, nginx, haproxy, strace and
# h2load from Debian when missing.
# The gateway logs at `warn`, as in bench/run.sh; with the access log counted:
#   CG_RUST_LOG=info PORTCULLIS_LOG_FORMAT=json bench/callgrind.sh
# Portcullis alone (no peers, no syscall counts), profiles kept:
#   CG_PEERS=no CG_KEEP=/tmp/cg bench/callgrind.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}

need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
command -v strace >/dev/null || need+=(strace)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

cargo build --release --quiet
BIN=$PWD/target/release/portcullis
W=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
UP=127.0.0.1:18180 PC=127.0.0.1:18543 PCT0=127.0.0.1:18544 PCT1=127.0.0.1:18545
HA=127.0.0.1:18546 NG=127.0.0.1:18547

"$BIN" certs --out "$W" --host localhost --host 127.0.0.1 >/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$W/rsa.key" 2>/dev/null
openssl pkey -in "$W/rsa.key" -pubout -out "$W/rsa.pub"
TOKEN=$("$BIN" token --alg RS256 --key "$W/rsa.key" --iss https://bench.local/ --aud bench --sub bench-user --scope "read" --ttl 2h)

mkdir -p "$W/nginx"
cat > "$W/nginx.conf" <<CONF
worker_processes 1;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $W/nginx; proxy_temp_path $W/nginx; fastcgi_temp_path $W/nginx;
  uwsgi_temp_path $W/nginx; scgi_temp_path $W/nginx;
  server { listen $UP; location / { default_type text/plain; return 200 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n"; } }
}
CONF
"$NGINX" -c "$W/nginx.conf" -g 'daemon off;' & PIDS+=($!)

cat > "$W/gateway.yaml" <<CONF
listen: { https: $PC }
tls: { cert: gateway.crt, key: gateway.key }
providers:
  bench: { issuer: https://bench.local/, audiences: [bench], public_key_file: rsa.pub, algorithms: [RS256] }
upstreams:
  nginx: { targets: ["http://$UP"] }
routes:
  - { name: auth, match: { path: /auth }, upstream: nginx, auth: { scopes: [read] } }
  - { name: public, match: { path: /public }, upstream: nginx, public: true }
CONF
# One thread for the main runtime (accept loop, background tasks); the one
# connection of a case is served by one HTTPS worker thread. Two more gateways
# trace every request's (sample_ratio 0 and 1.0), exporting to nginx as the
# collector; their export task runs in the same process and is counted.
start_gateway() { # config file, callgrind output; sets CG_PID
  RUST_LOG=${CG_RUST_LOG:-warn} TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$2" \
    "$BIN" run -c "$1" 2>>"$W/valgrind.log" & CG_PID=$!; PIDS+=($CG_PID)
}
for v in "$PCT0 0 traced0" "$PCT1 1.0 traced1"; do
  read -r addr ratio name <<<"$v"
  sed -e "s/$PC }/$addr }/" "$W/gateway.yaml" >"$W/gateway-$name.yaml"
  printf 'telemetry: { otlp_endpoint: "http://%s", sample_ratio: %s }\n' "$UP" "$ratio" >>"$W/gateway-$name.yaml"
  mkdir -p "$W/$name"
  start_gateway "$W/gateway-$name.yaml" "$W/$name/cg.out"
  [[ $name == traced0 ]] && PCT0_PID=$CG_PID || PCT1_PID=$CG_PID
done
start_gateway "$W/gateway.yaml" "$W/cg.out"; PC_PID=$CG_PID
for addr in $PC $PCT0 $PCT1; do
  for _ in $(seq 300); do curl -skf -o /dev/null "https://$addr/public" && break; sleep 0.2; done
done

total() { # pid, directory of its profiles
  # Dump and read the instructions executed since the last zeroing.
  callgrind_control -d "$1" >/dev/null 2>&1
  local f; f=$(ls -t "$2"/cg.out* | head -1)
  awk '/^(summary|totals):/ { print $2; exit }' "$f"
}

run_case() { # name, h2load arguments... (against the gateway CASE_PID, profiles in CASE_DIR)
  local name=$1; shift
  local pid=${CASE_PID:-$PC_PID} dir=${CASE_DIR:-$W}
  h2load -n 200 -c 1 "$@" >/dev/null 2>&1        # warm up: connection, pool, token cache
  [[ -n ${CASE_SETTLE:-} ]] && sleep 1           # a traced gateway's last export of the warm-up
  callgrind_control -z "$pid" >/dev/null 2>&1
  h2load -n "$N" -c 1 "$@" >"$W/h2load.txt" 2>&1
  [[ -n ${CASE_SETTLE:-} ]] && sleep 1           # ... and of the measured requests
  local ok; ok=$(awk '/requests:/ { print $8; exit }' "$W/h2load.txt")
  local ir; ir=$(total "$pid" "$dir")
  printf '%-28s %10s instructions/request  (%s of %s succeeded)\n' "$name" "$((ir / N))" "$ok" "$N"
}

echo "instructions per request, $N requests per case, one keep-alive connection:"
run_case "h1 public route" --h1 "https://$PC/public"
run_case "h1 cached RS256 auth" --h1 -H "Authorization: Bearer $TOKEN" "https://$PC/auth"
run_case "h2 public route" "https://$PC/public"
CASE_SETTLE=1 CASE_PID=$PCT0_PID CASE_DIR=$W/traced0 run_case "h1 public, traces ratio 0" --h1 "https://$PCT0/public"
CASE_SETTLE=1 CASE_PID=$PCT1_PID CASE_DIR=$W/traced1 run_case "h1 public, traces ratio 1" --h1 "https://$PCT1/public"

# CG_KEEP=DIR keeps the per-case profiles (cg.out.N, in case order; traced0.cg.out.N and
# traced1.cg.out.N for the traced gateways) for callgrind_annotate.
if [[ -n ${CG_KEEP:-} ]]; then
  mkdir -p "$CG_KEEP" && cp "$W"/cg.out.* "$CG_KEEP"/
  for d in traced0 traced1; do for f in "$W/$d"/cg.out.*; do cp "$f" "$CG_KEEP/$d.$(basename "$f")"; done; done
fi
# CG_PEERS=no stops here: Portcullis's own figures only, for a quick before/after.
[[ ${CG_PEERS:-yes} == no ]] && exit 0

# The peers on the same request mix, one thread each: HAProxy (nbthread 1)
# and nginx (one process, master_process off) proxying TLS to the same app.
cat "$W/gateway.crt" "$W/gateway.key" >"$W/haproxy.pem"
peer_configs() { # haproxy nbthread, nginx master_process
  cat >"$W/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 30s
  http-reuse always
frontend tls
  bind $HA ssl crt $W/haproxy.pem alpn h2,http/1.1
  default_backend app
backend app
  server n1 $UP
CONF
  mkdir -p "$W/ng"
  cat >"$W/nginx-proxy.conf" <<CONF
worker_processes 1;
master_process $1;
pid $W/ng/nginx.pid;
error_log $W/ng/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $W/ng; proxy_temp_path $W/ng; fastcgi_temp_path $W/ng;
  uwsgi_temp_path $W/ng; scgi_temp_path $W/ng;
  upstream app { server $UP; keepalive 16; }
  server {
    listen $NG ssl http2;
    ssl_certificate $W/gateway.crt;
    ssl_certificate_key $W/gateway.key;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
}
peer_configs off
mkdir -p "$W/ha" "$W/ngcg"
valgrind --tool=callgrind --callgrind-out-file="$W/ha/cg.out" "$HAPROXY" -f "$W/haproxy.cfg" -db 2>>"$W/valgrind.log" &
HA_PID=$!; PIDS+=($HA_PID)
valgrind --tool=callgrind --callgrind-out-file="$W/ngcg/cg.out" "$NGINX" -c "$W/nginx-proxy.conf" -g 'daemon off;' 2>>"$W/valgrind.log" &
NG_PID=$!; PIDS+=($NG_PID)
for addr in $HA $NG; do
  for _ in $(seq 300); do curl -skf -o /dev/null "https://$addr/public" && break; sleep 0.2; done
done
CASE_PID=$HA_PID CASE_DIR=$W/ha run_case "HAProxy h1 public" --h1 "https://$HA/public"
CASE_PID=$HA_PID CASE_DIR=$W/ha run_case "HAProxy h2 public" "https://$HA/public"
CASE_PID=$NG_PID CASE_DIR=$W/ngcg run_case "nginx h1 public" --h1 "https://$NG/public"
CASE_PID=$NG_PID CASE_DIR=$W/ngcg run_case "nginx h2 public" "https://$NG/public"

# System calls per request, the three run natively (strace attached to every
# thread of the serving process while the measured requests run).
kill "$HA_PID" "$NG_PID" "$PC_PID" 2>/dev/null || true
wait "$HA_PID" "$NG_PID" "$PC_PID" 2>/dev/null || true
RUST_LOG=warn TOKIO_WORKER_THREADS=1 "$BIN" run -c "$W/gateway.yaml" 2>>"$W/native.log" & PC_PID=$!; PIDS+=($PC_PID)
"$HAPROXY" -f "$W/haproxy.cfg" -db 2>>"$W/native.log" & HA_PID=$!; PIDS+=($HA_PID)
peer_configs on
"$NGINX" -c "$W/nginx-proxy.conf" -g 'daemon off;' 2>>"$W/native.log" & NG_PID=$!; PIDS+=($NG_PID)
for addr in $PC $HA $NG; do
  for _ in $(seq 100); do curl -skf -o /dev/null "https://$addr/public" && break; sleep 0.1; done
done
syscalls() { # name, pid, h2load arguments...
  local name=$1 pid=$2; shift 2
  h2load -n 200 -c 1 "$@" >/dev/null 2>&1
  # -p with -f attaches every thread of the process.
  strace -f -c -q -o "$W/strace.txt" -p "$pid" & local st=$!
  sleep 0.5
  h2load -n "$N" -c 1 "$@" >/dev/null 2>&1
  kill -INT "$st"; wait "$st" 2>/dev/null || true
  # The total line: % time, seconds, usecs/call, calls, [errors,] total.
  local calls; calls=$(awk '$NF == "total" { print $4; exit }' "$W/strace.txt")
  printf '%-28s %10s syscalls/request\n' "$name" "$(awk -v c="${calls:-0}" -v n="$N" 'BEGIN { printf "%.2f", c / n }')"
}
echo "system calls per request, $N requests, one keep-alive connection:"
NG_WORKER=$(pgrep -P "$NG_PID" | head -1)
syscalls "Portcullis h1 public" "$PC_PID" --h1 "https://$PC/public"
syscalls "HAProxy h1 public" "$HA_PID" --h1 "https://$HA/public"
syscalls "nginx h1 public" "$NG_WORKER" --h1 "https://$NG/public"
syscalls "Portcullis h2 public" "$PC_PID" "https://$PC/public"
syscalls "HAProxy h2 public" "$HA_PID" "https://$HA/public"
syscalls "nginx h2 public" "$NG_WORKER" "https://$NG/public"

