#!/usr/bin/env bash
# Load benchmark: Portcullis against HAProxy (TLS only, and TLS + jwt_verify) and
# nginx (TLS proxy), all in front of the same nginx upstream on loopback. Prints
# one table, then the cost of rate limits and of the access log, and the memory of
# idle connections.
#
#   bench/run.sh           full run (3 alternating rounds, 10 s per row; about 20 minutes)
#   bench/run.sh --quick   1 round, 1 s per row, fewer tokens and idle connections (< 1 minute)
#
# Loopback only. Installs wrk, h2load (nghttp2-client), nginx, haproxy and
# redis-server from Debian when missing. Needs root for apt-get only.
set -euo pipefail
cd "$(dirname "$0")/.."

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
ROUNDS=3 DURATION=10 CONNS=64 H2_CONNS=16 H2_STREAMS=4 TOKENS=50000 IDLE=5000
if [[ "${1:-}" == "--quick" ]]; then ROUNDS=1 DURATION=1 TOKENS=2000 IDLE=500; fi

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
command -v redis-server >/dev/null || need+=(redis-server)
if ((${#need[@]})); then
  echo "installing ${need[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

cargo build --release --quiet
BIN=$PWD/target/release/portcullis
W=$(mktemp -d)
chmod 755 "$W" # nginx workers (not root) read the 1 MiB file
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

UP=127.0.0.1:18080 PC=127.0.0.1:18443 PC_ADMIN=127.0.0.1:19901 HA=127.0.0.1:18444 HAJ=127.0.0.1:18445
PCL=127.0.0.1:18447 PCL_ADMIN=127.0.0.1:19902
PCA=127.0.0.1:18448 PCA_ADMIN=127.0.0.1:19903 PCB=127.0.0.1:18449 PCB_ADMIN=127.0.0.1:19904
NG=127.0.0.1:18446 REDIS_PORT=16379
PCD=127.0.0.1:19910 NGA=127.0.0.1:18450 NGP=127.0.0.1:18451
PCT0=127.0.0.1:18452 PCT0_ADMIN=127.0.0.1:19905 PCT1=127.0.0.1:18453 PCT1_ADMIN=127.0.0.1:19906

# Keys, certificate (ECDSA P-256, the cheapest safe handshake), tokens, a 1 MiB body.
"$BIN" certs --out "$W" --host localhost --host 127.0.0.1 >/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$W/rsa.key" 2>/dev/null
openssl pkey -in "$W/rsa.key" -pubout -out "$W/rsa.pub"
cat "$W/gateway.crt" "$W/gateway.key" > "$W/haproxy.pem"
mint() { "$BIN" token --alg RS256 --key "$W/rsa.key" --iss https://bench.local/ --aud bench --sub bench-user --scope "read write" --ttl 2h "$@"; }
TOKEN=$(mint)
# The same token with the claims a five-condition policy reads (Keycloak-shaped).
CLAIMS_TOKEN=$(mint --claim org=bench --claim 'realm_access={"roles":["offline_access","orders-reader"]}' \
  --claim 'resource_access={"orders-api":{"roles":["viewer"]}}' --claim 'amr=["pwd","mfa"]')
echo "minting $TOKENS tokens" >&2
mint --count "$TOKENS" > "$W/tokens.txt"
# Opaque tokens (introspected): one for the cache-hit row, many for the miss row.
OPAQUE=opaque-bench-token-0123456789abcdef
for i in $(seq "$TOKENS"); do echo "opaque-bench-$i-$RANDOM$RANDOM"; done > "$W/opaque-tokens.txt"
OPAQUE_EXP=$(($(date +%s) + 7200))
head -c 1048576 /dev/zero | tr '\0' x > "$W/big.bin"
chmod 644 "$W/big.bin"

# nginx, the upstream: a 64-byte answer, a 1 MiB download, an upload sink.
mkdir -p "$W/nginx" "$W/nginx-proxy"
cat > "$W/nginx.conf" <<CONF
worker_processes 1;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $W/nginx; proxy_temp_path $W/nginx; fastcgi_temp_path $W/nginx;
  uwsgi_temp_path $W/nginx; scgi_temp_path $W/nginx;
  server {
    listen $UP;
    location / { default_type text/plain; return 200 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n"; }
    location = /public/big { default_type application/octet-stream; alias $W/big.bin; }
    location = /public/upload { client_max_body_size 2m; client_body_buffer_size 2m; default_type text/plain; return 200 "ok\n"; }
    # The introspection endpoint (RFC 7662) of the opaque-token rows: every token is active.
    # The OTLP collector of the traced rows: accepts every export (a 1 MiB body at most).
    location = /v1/traces { client_max_body_size 1m; client_body_buffer_size 1m; return 200; }
    location = /introspect { default_type application/json; return 200 '{"active":true,"iss":"https://opaque.bench/","aud":"bench","sub":"bench-user","scope":"read write","exp":$OPAQUE_EXP}'; }
  }
}
CONF
"$NGINX" -c "$W/nginx.conf" -g 'daemon off;' & PIDS+=($!)

# nginx, the TLS proxy peer: two workers (as HAProxy and Portcullis use two
# threads), keep-alive upstream connections, HTTP/2 by ALPN.
cat > "$W/nginx-proxy.conf" <<CONF
worker_processes 2;
worker_rlimit_nofile 19000;
pid $W/nginx-proxy/nginx.pid;
error_log $W/nginx-proxy/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $W/nginx-proxy; proxy_temp_path $W/nginx-proxy; fastcgi_temp_path $W/nginx-proxy;
  uwsgi_temp_path $W/nginx-proxy; scgi_temp_path $W/nginx-proxy;
  upstream app { server $UP; keepalive 128; }
  server {
    listen $NG ssl http2;
    ssl_certificate $W/gateway.crt;
    ssl_certificate_key $W/gateway.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    client_max_body_size 2m;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering off;
      proxy_buffering off;
    }
  }
}
CONF
"$NGINX" -c "$W/nginx-proxy.conf" -g 'daemon off;' & NG_PID=$!; PIDS+=($NG_PID)

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null & PIDS+=($!)

# Portcullis: the same RS256 checks HAProxy does below, plus identity headers; two
# routes rate-limited by client address (never reached: the cost of the check).
cat > "$W/gateway.yaml" <<CONF
listen: { https: $PC, admin: $PC_ADMIN, decision: $PCD }
tls: { cert: gateway.crt, key: gateway.key }
limits: { max_connections: 20000, max_body_bytes: 2097152 }
providers:
  bench:
    issuer: https://bench.local/
    audiences: [bench]
    public_key_file: rsa.pub
    algorithms: [RS256]
  opaque:
    issuer: https://opaque.bench/
    audiences: [bench]
    introspection: { endpoint: "http://$UP/introspect", client_id: bench, client_secret_file: introspection.secret }
  opaque-uncached:              # no issuer: the shared answer's iss is not checked
    audiences: [bench]
    introspection: { endpoint: "http://$UP/introspect", client_id: bench, client_secret_file: introspection.secret, cache_ttl: 0s }
upstreams:
  nginx: { targets: ["http://$UP"] }
store: { redis: "redis://127.0.0.1:$REDIS_PORT/0", timeout: 100ms }
rate_limits:
  local: { key: client_ip, rate: 1000000/s, burst: 1000000, store: local }
  shared: { key: client_ip, rate: 1000000/s, burst: 1000000, store: redis }
routes:
  - { name: auth, match: { path: /auth }, upstream: nginx, auth: { providers: [bench], scopes: [read] } }
  - name: claims
    match: { path_template: "/claims/{org}" }
    upstream: nginx
    auth:
      providers: [bench]
      scopes: [read]
      claims:
        - { claim: /org, equals: "{path.org}" }
        - { claim: /realm_access/roles, contains: orders-reader }
        - { claim: /resource_access/orders-api/roles, contains_any: [viewer, editor] }
        - any_of: [{ claim: /email_verified, equals: true }, { claim: /amr, contains_any: [mfa, hwk] }]
        - not: { claim: /act, exists: true }
  - { name: introspected, match: { path: /introspected }, upstream: nginx, auth: { providers: [opaque], scopes: [read] } }
  - { name: introspect-miss, match: { path: /introspect-miss }, upstream: nginx, auth: { providers: [opaque-uncached], scopes: [read] } }
  - { name: public, match: { path: /public }, upstream: nginx, public: true }
  - { name: limited-local, match: { path: /limited-local }, upstream: nginx, public: true, rate_limits: [local] }
  - { name: limited-redis, match: { path: /limited-redis }, upstream: nginx, public: true, rate_limits: [shared] }
CONF
echo bench-introspection-secret > "$W/introspection.secret"
RUST_LOG=warn "$BIN" run -c "$W/gateway.yaml" 2>"$W/portcullis.log" & PC_PID=$!; PIDS+=($PC_PID)
# The same gateway with its access log on, in JSON as the systemd unit writes it,
# read from a pipe as journald would (every other row runs without it, as the
# peers log nothing).
sed -e "s/$PC,/$PCL,/" -e "s/$PC_ADMIN, decision: $PCD/$PCL_ADMIN/" "$W/gateway.yaml" >"$W/gateway-logged.yaml"
PORTCULLIS_LOG_FORMAT=json RUST_LOG=info "$BIN" run -c "$W/gateway-logged.yaml" 2> >(cat >/dev/null) & PCL_PID=$!; PIDS+=($PCL_PID)
# The same gateway signing an identity assertion for the upstream (docs/assertion.md):
# reused per token (PCA), and bound to each request (PCB, signed every time).
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$W/assert.pem" 2>/dev/null
for v in "$PCA $PCA_ADMIN false assertion" "$PCB $PCB_ADMIN true assertion-bound"; do
  read -r addr admin bind name <<<"$v"
  sed -e "s/$PC,/$addr,/" -e "s/$PC_ADMIN, decision: $PCD/$admin/" \
    -e "s|^upstreams:|identity: { assertion: { key_files: [assert.pem], issuer: https://bench.local/gw, bind_request: $bind } }\nupstreams:|" \
    "$W/gateway.yaml" >"$W/gateway-$name.yaml"
  RUST_LOG=warn "$BIN" run -c "$W/gateway-$name.yaml" 2>"$W/portcullis-$name.log" & PIDS+=($!)
  [[ $name == assertion ]] && PCA_PID=$! || PCB_PID=$!
done
# The same gateway with traces on (docs/operations.md, "Traces"), exporting to
# nginx as the collector: sample_ratio 0 (PCT0) and 1.0 (PCT1).
for v in "$PCT0 $PCT0_ADMIN 0 traced-ratio0" "$PCT1 $PCT1_ADMIN 1.0 traced"; do
  read -r addr admin ratio name <<<"$v"
  sed -e "s/$PC,/$addr,/" -e "s/$PC_ADMIN, decision: $PCD/$admin/" "$W/gateway.yaml" >"$W/gateway-$name.yaml"
  printf 'telemetry: { otlp_endpoint: "http://%s", sample_ratio: %s }\n' "$UP" "$ratio" >>"$W/gateway-$name.yaml"
  RUST_LOG=warn "$BIN" run -c "$W/gateway-$name.yaml" 2>"$W/portcullis-$name.log" & PIDS+=($!)
  [[ $name == traced ]] && PCT1_PID=$! || PCT0_PID=$!
done

# nginx in front of the app asking Portcullis's decision API (auth_request, the
# block of docs/behind-a-proxy.md), against nginx in front of Portcullis proxying.
mkdir -p "$W/nginx-auth"
cat > "$W/nginx-auth.conf" <<CONF
worker_processes 2;
worker_rlimit_nofile 19000;
pid $W/nginx-auth/nginx.pid;
error_log $W/nginx-auth/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $W/nginx-auth; proxy_temp_path $W/nginx-auth; fastcgi_temp_path $W/nginx-auth;
  uwsgi_temp_path $W/nginx-auth; scgi_temp_path $W/nginx-auth;
  upstream app { server $UP; keepalive 128; }
  upstream decision { server $PCD; keepalive 128; }
  upstream portcullis { server $PC; keepalive 128; }
  server {
    listen $NGA ssl http2;
    ssl_certificate $W/gateway.crt;
    ssl_certificate_key $W/gateway.key;
    location / {
      auth_request /_portcullis;
      auth_request_set \$auth_subject \$upstream_http_x_auth_subject;
      auth_request_set \$auth_scopes \$upstream_http_x_auth_scopes;
      proxy_set_header X-Auth-Subject \$auth_subject;
      proxy_set_header X-Auth-Scopes \$auth_scopes;
      proxy_set_header Authorization "";
      proxy_set_header Connection "";
      proxy_http_version 1.1;
      proxy_pass http://app;
    }
    location = /_portcullis {
      internal;
      proxy_pass http://decision;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI \$request_uri;
      proxy_set_header X-Original-Method \$request_method;
      proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }
  server {
    listen $NGP ssl http2;
    ssl_certificate $W/gateway.crt;
    ssl_certificate_key $W/gateway.key;
    location / {
      proxy_pass https://portcullis;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }
  }
}
CONF
"$NGINX" -c "$W/nginx-auth.conf" -g 'daemon off;' & NGA_PID=$!; PIDS+=($NGA_PID)

# HAProxy: TLS termination (frontend tls) and TLS + JWT checks (frontend jwt).
cat > "$W/haproxy.cfg" <<CONF
global
  nbthread 2
  maxconn 9000
  log stderr format raw local0 err
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 30s
  http-reuse always
frontend tls
  bind $HA ssl crt $W/haproxy.pem alpn h2,http/1.1
  default_backend nginx
frontend jwt
  bind $HAJ ssl crt $W/haproxy.pem alpn h2,http/1.1
  http-request deny status 401 unless { req.hdr(authorization) -m beg "Bearer " }
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request deny status 401 unless { var(txn.alg) -m str RS256 }
  http-request deny status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$W/rsa.pub") -m int 1 }
  http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('\$.iss')
  http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('\$.aud')
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request set-var(txn.scope) var(txn.bearer),jwt_payload_query('\$.scope')
  http-request set-var(txn.now) date()
  http-request deny status 401 unless { var(txn.iss) -m str https://bench.local/ }
  http-request deny status 401 unless { var(txn.aud) -m str bench }
  http-request deny status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
  http-request deny status 403 unless { var(txn.scope) -m sub read }
  http-request set-header X-Auth-Subject %[var(txn.bearer),jwt_payload_query('\$.sub')]
  http-request set-header X-Auth-Scopes %[var(txn.scope)]
  default_backend nginx
backend nginx
  server n1 $UP
CONF
"$HAPROXY" -f "$W/haproxy.cfg" -db 2>"$W/haproxy.log" & HA_PID=$!; PIDS+=($HA_PID)

for _ in $(seq 100); do
  curl -sf -o /dev/null "http://$UP/" && curl -skf -o /dev/null "https://$PC/public" && curl -skf -o /dev/null "https://$HA/" \
    && curl -skf -o /dev/null "https://$PCL/public" && curl -skf -o /dev/null "https://$PCA/public" \
    && curl -skf -o /dev/null "https://$PCB/public" \
    && curl -skf -o /dev/null "https://$PCT0/public" && curl -skf -o /dev/null "https://$PCT1/public" \
    && curl -skf -o /dev/null "https://$NG/" && curl -skf -o /dev/null "https://$PC/limited-redis" && break
  sleep 0.1
done
AUTH="Authorization: Bearer $TOKEN"
check() { local code; code=$(curl -sk -o /dev/null -w '%{http_code}' "$@"); echo "$code"; }
for probe in "http://$UP/" "https://$PC/auth" "https://$HAJ/" "https://$NG/public/big" "https://$PC/limited-redis"; do
  [[ $(check "$probe" -H "$AUTH") == 200 ]] || { echo "not answering 200: $probe" >&2; cat "$W"/*.log "$W"/nginx*/error.log >&2; exit 1; }
done
[[ $(check "https://$PC/auth") == 401 && $(check "https://$HAJ/") == 401 ]] || { echo "auth is not enforced" >&2; exit 1; }
[[ $(check "https://$NGA/auth" -H "$AUTH") == 200 && $(check "https://$NGA/auth") == 401 \
  && $(check "https://$NGP/auth" -H "$AUTH") == 200 && $(check "https://$NGP/auth") == 401 ]] \
  || { echo "nginx in front does not decide as it should" >&2; cat "$W"/nginx-auth/error.log >&2; exit 1; }
[[ $(check "https://$PC/claims/bench" -H "Authorization: Bearer $CLAIMS_TOKEN") == 200 \
  && $(check "https://$PC/claims/other" -H "Authorization: Bearer $CLAIMS_TOKEN") == 403 ]] \
  || { echo "the claims route does not decide as it should" >&2; exit 1; }
[[ $(check "https://$PC/introspected" -H "Authorization: Bearer $OPAQUE") == 200 \
  && $(check "https://$PC/introspect-miss" -H "Authorization: Bearer $OPAQUE") == 200 \
  && $(check "https://$PC/introspected") == 401 ]] \
  || { echo "the introspected routes do not decide as they should" >&2; cat "$W/portcullis.log" "$W"/nginx/error.log >&2; exit 1; }

# wrk Lua: one token, a different token per request, a 1 MiB upload.
cat > "$W/one.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA
cat > "$W/claims.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $CLAIMS_TOKEN"
LUA
cat > "$W/opaque.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $OPAQUE"
LUA
cat > "$W/opaque-many.lua" <<LUA
local tokens, i = {}, 0
for line in io.lines("$W/opaque-tokens.txt") do tokens[#tokens + 1] = line end
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", nil, { ["Authorization"] = "Bearer " .. tokens[i] })
end
LUA
cat > "$W/many.lua" <<LUA
local tokens, i = {}, 0
for line in io.lines("$W/tokens.txt") do tokens[#tokens + 1] = line end
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", nil, { ["Authorization"] = "Bearer " .. tokens[i] })
end
LUA
cat > "$W/upload.lua" <<LUA
wrk.method = "POST"
wrk.body = string.rep("x", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA

# CPU of a process and its children (nginx's workers).
cpu_ticks() {
  local t=0 p
  for p in $1 $(pgrep -P "$1" || true); do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}
CLK=$(getconf CLK_TCK)
declare -A RPS P50 P99 CPU
# name | protocol | url | mode | pid measured
# mode: "" plain GET, one / many (token per request), close (a new TLS 1.3
# connection per request), up (1 MiB POST); the url says what is fetched.
TARGETS=(
  "direct|h1|http://$UP/||"
  "haproxy-tls|h1|https://$HA/public||$HA_PID"
  "nginx-tls|h1|https://$NG/public||$NG_PID"
  "portcullis-public|h1|https://$PC/public||$PC_PID"
  "portcullis-access-log|h1|https://$PCL/public||$PCL_PID"
  "portcullis-traced-ratio0|h1|https://$PCT0/public||$PCT0_PID"
  "portcullis-traced|h1|https://$PCT1/public||$PCT1_PID"
  "portcullis-limited-local|h1|https://$PC/limited-local||$PC_PID"
  "portcullis-limited-redis|h1|https://$PC/limited-redis||$PC_PID"
  "haproxy-jwt|h1|https://$HAJ/auth|one|$HA_PID"
  "portcullis-auth|h1|https://$PC/auth|one|$PC_PID"
  "portcullis-claims|h1|https://$PC/claims/bench|claims|$PC_PID"
  "portcullis-assertion|h1|https://$PCA/auth|one|$PCA_PID"
  "portcullis-assertion-bound|h1|https://$PCB/auth|one|$PCB_PID"
  "portcullis-introspected|h1|https://$PC/introspected|opaque|$PC_PID"
  "portcullis-introspect-miss|h1|https://$PC/introspect-miss|opaque-many|$PC_PID"
  "nginx-auth-request|h1|https://$NGA/auth|one|"
  "nginx-to-portcullis|h1|https://$NGP/auth|one|"
  "haproxy-jwt-distinct|h1|https://$HAJ/auth|many|$HA_PID"
  "portcullis-auth-distinct|h1|https://$PC/auth|many|$PC_PID"
  "haproxy-handshake|h1|https://$HA/public|close|$HA_PID"
  "nginx-handshake|h1|https://$NG/public|close|$NG_PID"
  "portcullis-handshake|h1|https://$PC/public|close|$PC_PID"
  "haproxy-download|h1|https://$HA/public/big||$HA_PID"
  "nginx-download|h1|https://$NG/public/big||$NG_PID"
  "portcullis-download|h1|https://$PC/public/big||$PC_PID"
  "haproxy-upload|h1|https://$HA/public/upload|up|$HA_PID"
  "nginx-upload|h1|https://$NG/public/upload|up|$NG_PID"
  "portcullis-upload|h1|https://$PC/public/upload|up|$PC_PID"
  "haproxy-tls|h2|https://$HA/public||$HA_PID"
  "nginx-tls|h2|https://$NG/public||$NG_PID"
  "portcullis-public|h2|https://$PC/public||$PC_PID"
  "haproxy-jwt|h2|https://$HAJ/auth|one|$HA_PID"
  "portcullis-auth|h2|https://$PC/auth|one|$PC_PID"
)

run_one() {
  local name=$1 proto=$2 url=$3 mode=$4 pid=$5 out before after reqs
  [[ -n $pid ]] && before=$(cpu_ticks "$pid")
  if [[ $proto == h1 ]]; then
    local extra=() conns=$CONNS
    case $mode in
      one | many | claims | opaque | opaque-many) extra=(-s "$W/$mode.lua") ;;
      up) extra=(-s "$W/upload.lua") ;;
      close) extra=(-H "Connection: close") ;;
    esac
    [[ $url == */big || $mode == up ]] && conns=16
    out=$(wrk -t2 -c"$conns" -d"${DURATION}s" --latency "${extra[@]}" "$url")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    RPS["$proto $name"]+="$(awk '/Requests\/sec/ {print $2}' <<<"$out") "
    P50["$proto $name"]+="$(awk '$1=="50%" {print $2}' <<<"$out") "
    P99["$proto $name"]+="$(awk '$1=="99%" {print $2}' <<<"$out") "
  else
    local hdr=()
    [[ -n $mode ]] && hdr=(-H "$AUTH")
    out=$(h2load -c"$H2_CONNS" -m"$H2_STREAMS" -t2 -D "$DURATION" "${hdr[@]}" "$url" 2>&1)
    reqs=$(awk '/^requests:/ {print $8}' <<<"$out")
    RPS["$proto $name"]+="$(awk '/^finished in/ {print $4}' <<<"$out") "
    # h2load reports the mean and spread of request times, no percentiles.
    P50["$proto $name"]+="$(awk '/^time for request:/ {print $4}' <<<"$out") "
    P99["$proto $name"]+="- "
  fi
  if [[ -n $pid && ${reqs:-0} -gt 0 ]]; then
    after=$(cpu_ticks "$pid")
    CPU["$proto $name"]+="$(awk -v d=$((after - before)) -v r="$reqs" -v c="$CLK" 'BEGIN {printf "%.1f", d / c * 1e6 / r}') "
  fi
}

echo "rounds=$ROUNDS duration=${DURATION}s wrk -t2 -c$CONNS (-c16 for 1 MiB bodies), h2load -c$H2_CONNS -m$H2_STREAMS; $TOKENS distinct tokens; $(nproc) cores" >&2
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r name proto url mode pid <<<"$t"
    run_one "$name" "$proto" "$url" "$mode" "$pid"
  done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sed 's/k$/*1000/' | sort -g | awk '{a[NR]=$0} END {if (NR) print a[int((NR+1)/2)]; else print "-"}'; }
rps() { median "${RPS[$1]:-}" | sed 's/\/s$//'; }
ratio() { [[ -n ${RPS[$2]:-} ]] && awk -v a="$(rps "$1")" -v b="$(rps "$2")" 'BEGIN {printf "%.2f", a / b}' || echo "-"; }
DIRECT=$(rps "h1 direct")
printf '\n%-6s %-26s %10s %9s %9s %8s %9s %8s %10s\n' proto target "req/s" p50 p99 "/direct" "/haproxy" "/nginx" "cpu us/req"
for t in "${TARGETS[@]}"; do
  IFS='|' read -r name proto _ _ _ <<<"$t"
  key="$proto $name"
  ha="-" ng="-"
  case $name in
    portcullis-public) ha=$(ratio "$key" "$proto haproxy-tls") ng=$(ratio "$key" "$proto nginx-tls") ;;
    portcullis-auth) ha=$(ratio "$key" "$proto haproxy-jwt") ;;
    portcullis-claims | portcullis-introspected | portcullis-introspect-miss | portcullis-assertion*) ha=$(ratio "$key" "$proto haproxy-jwt") ;;
    portcullis-auth-distinct) ha=$(ratio "$key" "$proto haproxy-jwt-distinct") ;;
    portcullis-handshake | portcullis-download | portcullis-upload)
      ha=$(ratio "$key" "$proto haproxy-${name#portcullis-}") ng=$(ratio "$key" "$proto nginx-${name#portcullis-}") ;;
  esac
  r=$(rps "$key")
  echo "$key req/s by round: ${RPS[$key]:-}" >&2
  printf '%-6s %-26s %10.0f %9s %9s %8.2f %9s %8s %10s\n' "$proto" "$name" "$r" "$(median "${P50[$key]:-}")" \
    "$(median "${P99[$key]:-}")" "$(awk -v a="$r" -v b="$DIRECT" 'BEGIN {print a / b}')" "$ha" "$ng" "$(median "${CPU[$key]:-}")"
done
echo "(download and upload rows move 1 MiB per request: req/s is MiB/s)"
cpu() { median "${CPU[$1]:-}"; }
echo "rate-limit check, CPU per request over the same public route: local $(awk -v a="$(cpu 'h1 portcullis-limited-local')" -v b="$(cpu 'h1 portcullis-public')" 'BEGIN {printf "%+.1f", a - b}') us, redis $(awk -v a="$(cpu 'h1 portcullis-limited-redis')" -v b="$(cpu 'h1 portcullis-public')" 'BEGIN {printf "%+.1f", a - b}') us (plus one round trip: p50 $(median "${P50[h1 portcullis-limited-redis]}") against $(median "${P50[h1 portcullis-public]}"))"
echo "introspected token from the cache against the cached RS256 JWT: $(ratio 'h1 portcullis-introspected' 'h1 portcullis-auth')x req/s, CPU $(awk -v a="$(cpu 'h1 portcullis-introspected')" -v b="$(cpu 'h1 portcullis-auth')" 'BEGIN {printf "%+.1f", a - b}') us/request; a miss (one call to a loopback endpoint per request) $(awk -v a="$(cpu 'h1 portcullis-introspect-miss')" -v b="$(cpu 'h1 portcullis-auth')" 'BEGIN {printf "%+.1f", a - b}') us, p50 $(median "${P50[h1 portcullis-introspect-miss]}")"
echo "identity assertion, CPU per request over the same RS256 route: reused $(awk -v a="$(cpu 'h1 portcullis-assertion')" -v b="$(cpu 'h1 portcullis-auth')" 'BEGIN {printf "%+.1f", a - b}') us, signed per request (bind_request) $(awk -v a="$(cpu 'h1 portcullis-assertion-bound')" -v b="$(cpu 'h1 portcullis-auth')" 'BEGIN {printf "%+.1f", a - b}') us"
echo "behind nginx: nginx auth_request + the decision API $(rps 'h1 nginx-auth-request') req/s (p50 $(median "${P50[h1 nginx-auth-request]}")), nginx proxying to Portcullis $(rps 'h1 nginx-to-portcullis') req/s (p50 $(median "${P50[h1 nginx-to-portcullis]}")): $(ratio 'h1 nginx-auth-request' 'h1 nginx-to-portcullis')x"
echo "traces, CPU per request over the same public route: sample_ratio 0 $(awk -v a="$(cpu 'h1 portcullis-traced-ratio0')" -v b="$(cpu 'h1 portcullis-public')" 'BEGIN {printf "%+.1f", a - b}') us, 1.0 (two spans exported per request) $(awk -v a="$(cpu 'h1 portcullis-traced')" -v b="$(cpu 'h1 portcullis-public')" 'BEGIN {printf "%+.1f (%+.0f %%)", a - b, (a - b) / b * 100}') us; req/s $(ratio 'h1 portcullis-traced-ratio0' 'h1 portcullis-public')x / $(ratio 'h1 portcullis-traced' 'h1 portcullis-public')x"
echo "access log on (JSON, to a pipe), CPU per request over the same public route: $(awk -v a="$(cpu 'h1 portcullis-access-log')" -v b="$(cpu 'h1 portcullis-public')" 'BEGIN {printf "%+.1f", a - b}') us"
rss() { local t=0 p; for p in $1 $(pgrep -P "$1" || true); do t=$((t + $(awk '/VmHWM/ {print $2}' "/proc/$p/status"))); done; echo "$((t / 1024)) MB"; }
echo "peak RSS: portcullis $(rss "$PC_PID"), haproxy $(rss "$HA_PID"), nginx proxy $(rss "$NG_PID") (master + workers)"

# Memory per idle keep-alive TLS connection, each server in turn, same run.
for target in "portcullis $PC $PC_PID" "haproxy $HA $HA_PID" "nginx $NG $NG_PID"; do
  read -r name addr pid <<<"$target"
  pids="$pid $(pgrep -P "$pid" | tr '\n' ' ' || true)"
  printf '%-10s ' "$name"
  python3 bench/idle_connections.py "$addr" "${pids// /,}" "$IDLE" /public || echo "(idle-connection measurement failed)"
done
