#!/usr/bin/env bash
# Load benchmark: Portcullis against HAProxy (TLS only, and TLS + jwt_verify),
# all in front of the same nginx upstream on loopback. Prints one table.
#
#   bench/run.sh           full run (3 alternating rounds, 10 s each; under 10 minutes)
#   bench/run.sh --quick   1 round, 3 s each, for use while developing
#
# Loopback only. Installs wrk, h2load (nghttp2-client), nginx and haproxy from Debian
# when missing. Needs root for apt-get only.
set -euo pipefail
cd "$(dirname "$0")/.."

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
ROUNDS=3 DURATION=10 CONNS=64 H2_CONNS=16 H2_STREAMS=4 TOKENS=10000
if [[ "${1:-}" == "--quick" ]]; then ROUNDS=1 DURATION=3; fi

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
if ((${#need[@]})); then
  echo "installing ${need[*]}" >&2
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

UP=127.0.0.1:18080 PC=127.0.0.1:18443 PC_ADMIN=127.0.0.1:19901 HA=127.0.0.1:18444 HAJ=127.0.0.1:18445

# Keys, certificate, tokens.
"$BIN" certs --out "$W" --host localhost --host 127.0.0.1 >/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$W/rsa.key" 2>/dev/null
openssl pkey -in "$W/rsa.key" -pubout -out "$W/rsa.pub"
cat "$W/gateway.crt" "$W/gateway.key" > "$W/haproxy.pem"
mint() { "$BIN" token --alg RS256 --key "$W/rsa.key" --iss https://bench.local/ --aud bench --sub bench-user --scope "read write" --ttl 2h "$@"; }
TOKEN=$(mint)
mint --count "$TOKENS" > "$W/tokens.txt"

# nginx: the upstream, a 64-byte answer.
mkdir -p "$W/nginx"
cat > "$W/nginx.conf" <<CONF
worker_processes 1;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $W/nginx; proxy_temp_path $W/nginx; fastcgi_temp_path $W/nginx;
  uwsgi_temp_path $W/nginx; scgi_temp_path $W/nginx;
  server {
    listen $UP;
    location / { default_type text/plain; return 200 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n"; }
  }
}
CONF
"$NGINX" -c "$W/nginx.conf" -g 'daemon off;' & PIDS+=($!)

# Portcullis: the same RS256 checks HAProxy does below, plus identity headers.
cat > "$W/gateway.yaml" <<CONF
listen: { https: $PC, admin: $PC_ADMIN }
tls: { cert: gateway.crt, key: gateway.key }
limits: { max_connections: 20000 }
providers:
  bench:
    issuer: https://bench.local/
    audiences: [bench]
    public_key_file: rsa.pub
    algorithms: [RS256]
upstreams:
  nginx: { targets: ["http://$UP"] }
routes:
  - { name: auth, match: { path: /auth }, upstream: nginx, auth: { scopes: [read] } }
  - { name: public, match: { path: /public }, upstream: nginx, public: true }
CONF
RUST_LOG=warn "$BIN" run -c "$W/gateway.yaml" 2>"$W/portcullis.log" & PC_PID=$!; PIDS+=($PC_PID)

# HAProxy: TLS termination (frontend tls) and TLS + JWT checks (frontend jwt).
cat > "$W/haproxy.cfg" <<CONF
global
  nbthread 2
  maxconn 8000
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
  curl -sf -o /dev/null "http://$UP/" && curl -skf -o /dev/null "https://$PC/public" && curl -skf -o /dev/null "https://$HA/" && break
  sleep 0.1
done
AUTH="Authorization: Bearer $TOKEN"
check() { local code; code=$(curl -sk -o /dev/null -w '%{http_code}' "$@"); echo "$code"; }
[[ $(check "http://$UP/") == 200 && $(check "https://$PC/auth" -H "$AUTH") == 200 && $(check "https://$HAJ/" -H "$AUTH") == 200 ]] \
  || { echo "a server is not answering 200: nginx $(check "http://$UP/") portcullis $(check "https://$PC/auth" -H "$AUTH") haproxy $(check "https://$HAJ/" -H "$AUTH")" >&2; cat "$W"/*.log >&2; exit 1; }
[[ $(check "https://$PC/auth") == 401 && $(check "https://$HAJ/") == 401 ]] || { echo "auth is not enforced" >&2; exit 1; }

# wrk Lua: one token, or a different token per request.
cat > "$W/one.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA
cat > "$W/many.lua" <<LUA
local tokens, i = {}, 0
for line in io.lines("$W/tokens.txt") do tokens[#tokens + 1] = line end
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", nil, { ["Authorization"] = "Bearer " .. tokens[i] })
end
LUA

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CLK=$(getconf CLK_TCK)
declare -A RPS P50 P99 CPU
# name | protocol | url | lua or token | pid measured
TARGETS_H1=(
  "direct|h1|http://$UP/||"
  "haproxy-tls|h1|https://$HA/||$HA_PID"
  "haproxy-jwt|h1|https://$HAJ/|one|$HA_PID"
  "haproxy-jwt-distinct|h1|https://$HAJ/|many|$HA_PID"
  "portcullis-public|h1|https://$PC/public||$PC_PID"
  "portcullis-auth|h1|https://$PC/auth|one|$PC_PID"
  "portcullis-auth-distinct|h1|https://$PC/auth|many|$PC_PID"
)
TARGETS_H2=(
  "haproxy-tls|h2|https://$HA/||$HA_PID"
  "haproxy-jwt|h2|https://$HAJ/|one|$HA_PID"
  "portcullis-public|h2|https://$PC/public||$PC_PID"
  "portcullis-auth|h2|https://$PC/auth|one|$PC_PID"
)

run_one() {
  local name=$1 proto=$2 url=$3 auth=$4 pid=$5 out before after reqs
  [[ -n $pid ]] && before=$(cpu_ticks "$pid")
  if [[ $proto == h1 ]]; then
    local lua=()
    [[ -n $auth ]] && lua=(-s "$W/$auth.lua")
    out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "${lua[@]}" "$url")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    RPS["$proto $name"]+="$(awk '/Requests\/sec/ {print $2}' <<<"$out") "
    P50["$proto $name"]+="$(awk '$1=="50%" {print $2}' <<<"$out") "
    P99["$proto $name"]+="$(awk '$1=="99%" {print $2}' <<<"$out") "
  else
    local hdr=()
    [[ -n $auth ]] && hdr=(-H "$AUTH")
    out=$(h2load -c"$H2_CONNS" -m"$H2_STREAMS" -t2 -D "$DURATION" "${hdr[@]}" "$url" 2>&1)
    reqs=$(awk '/^requests:/ {print $8}' <<<"$out")
    RPS["$proto $name"]+="$(awk '/^finished in/ {print $4}' <<<"$out") "
    P50["$proto $name"]+="- "
    P99["$proto $name"]+="- "
  fi
  if [[ -n $pid && ${reqs:-0} -gt 0 ]]; then
    after=$(cpu_ticks "$pid")
    CPU["$proto $name"]+="$(awk -v d=$((after - before)) -v r="$reqs" -v c="$CLK" 'BEGIN {printf "%.1f", d / c * 1e6 / r}') "
  fi
}

echo "rounds=$ROUNDS duration=${DURATION}s wrk -t2 -c$CONNS, h2load -c$H2_CONNS -m$H2_STREAMS; $(nproc) cores" >&2
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  for t in "${TARGETS_H1[@]}" "${TARGETS_H2[@]}"; do
    IFS='|' read -r name proto url auth pid <<<"$t"
    run_one "$name" "$proto" "$url" "$auth" "$pid"
  done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sed 's/k$/*1000/' | sort -g | awk '{a[NR]=$0} END {if (NR) print a[int((NR+1)/2)]; else print "-"}'; }
rps() { median "${RPS[$1]:-}" | sed 's/\/s$//'; }
DIRECT=$(rps "h1 direct")
printf '\n%-6s %-26s %10s %9s %9s %9s %11s %10s\n' proto target "req/s" p50 p99 "/direct" "/haproxy" "cpu us/req"
for t in "${TARGETS_H1[@]}" "${TARGETS_H2[@]}"; do
  IFS='|' read -r name proto _ _ _ <<<"$t"
  key="$proto $name"
  r=$(rps "$key")
  case $name in
    portcullis-public) ref="$proto haproxy-tls" ;;
    portcullis-auth) ref="$proto haproxy-jwt" ;;
    portcullis-auth-distinct) ref="$proto haproxy-jwt-distinct" ;;
    *) ref="" ;;
  esac
  vs_ha="-"
  [[ -n $ref ]] && vs_ha=$(awk -v a="$r" -v b="$(rps "$ref")" 'BEGIN {printf "%.2f", a / b}')
  printf '%-6s %-26s %10.0f %9s %9s %9.2f %11s %10s\n' "$proto" "$name" "$r" "$(median "${P50[$key]:-}")" \
    "$(median "${P99[$key]:-}")" "$(awk -v a="$r" -v b="$DIRECT" 'BEGIN {print a / b}')" "$vs_ha" "$(median "${CPU[$key]:-}")"
done
printf '\nportcullis vs haproxy-tls (no auth) with full auth: h1 %.2f\n' \
  "$(awk -v a="$(rps 'h1 portcullis-auth')" -v b="$(rps 'h1 haproxy-tls')" 'BEGIN {print a / b}')"
echo "portcullis peak RSS: $(awk '/VmHWM/ {print $2, $3}' "/proc/$PC_PID/status"); haproxy: $(awk '/VmHWM/ {print $2, $3}' "/proc/$HA_PID/status")"
echo "portcullis upstream connections open now: $(ss -tnH state established "( dport = :${UP##*:} )" 2>/dev/null | grep -c . || true) (pooled; nginx sees them as keep-alive)"
IDLE=$(( $(ulimit -n) > 12000 ? 10000 : $(ulimit -n) / 2 ))
echo "portcullis idle RSS and with $IDLE idle keep-alive clients:"
python3 bench/idle_connections.py "$PC" "$PC_PID" "$IDLE" /public || echo "(idle-connection measurement failed)"
