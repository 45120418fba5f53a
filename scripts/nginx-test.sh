#!/usr/bin/env bash
# courier behind real nginx over wss:// (issue 14, item 6): deploy/nginx/courier.conf,
# rendered onto loopback ports, in front of a real `courier serve`, driven by the real
# client library (web/courier.js) from node. tests/ops/nginx-wss.mjs holds the checks:
#   - https: /healthz and the chat page through the proxy, /metrics refused to clients,
#     plain http redirected to https;
#   - the chat over wss: auth at the upgrade, messages both ways, acks;
#   - the client's address: clients connect from 127.0.0.2.., nginx from 127.0.0.1, and
#     courier (--trusted-proxy 127.0.0.1) must log the client's, never the proxy's nor
#     one the client wrote into X-Forwarded-For itself;
#   - heartbeats: proxy_read_timeout is cut to READ_TIMEOUT seconds; a connection that
#     never pings is cut by nginx at it, the library's connections idle 3.5 times as long
#     and stay up;
#   - `nginx -s reload` with clients connected: the old worker closes them
#     (worker_shutdown_timeout), they reconnect and sync from their cursors, and every
#     message (those sent while they were away included) is shown exactly once.
#
#   ./scripts/nginx-test.sh
#
# Installs Debian's nginx when it is missing (as root, or through sudo). nginx runs
# unprivileged (as nobody when this script runs as root) on loopback high ports, with its
# pid, logs and temp files in a temp folder; everything started here is stopped on exit.
# Only loopback traffic.
#
# Environment:
#   COURIER_BIN        the server binary (default: target/debug/courier, built if missing)
#   NGINX              the nginx binary (default: nginx on PATH, else /usr/sbin/nginx)
#   READ_TIMEOUT       nginx's proxy_read_timeout in the test, seconds (default 4)
#   NGINX_TEST_KEEP    1: keep the temp folder (configs, logs) for a look afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

started=$SECONDS
read_timeout=${READ_TIMEOUT:-4}
# Far shorter than the read timeout: the library pings every heartbeat, and courier's
# pong is what nginx must see in time.
heartbeat=500ms

step() {
    printf -- '-- nginx-test: %s (%ds)\n' "$1" "$((SECONDS - started))"
}
fail() {
    echo "nginx-test: FAILED: $*" >&2
    exit 1
}

# ---- what the test needs

find_nginx() {
    if [ -n "${NGINX:-}" ]; then
        echo "$NGINX"
    elif command -v nginx >/dev/null 2>&1; then
        command -v nginx
    elif [ -x /usr/sbin/nginx ]; then
        # Not on a non-root PATH on Debian.
        echo /usr/sbin/nginx
    fi
}
nginx_bin=$(find_nginx)
if [ -z "$nginx_bin" ]; then
    step "installing Debian's nginx"
    # Debian's package also enables (and, where an init system runs, starts) its stock
    # site on :80; this test uses none of it.
    apt_install nginx
    nginx_bin=$(find_nginx)
fi
[ -n "$nginx_bin" ] || fail "no nginx after installing it"
"$nginx_bin" -v 2>&1
command -v openssl >/dev/null 2>&1 || apt_install openssl
if ! command -v node >/dev/null 2>&1; then
    step "installing Node.js"
    apt_install nodejs
fi
echo "node $(node --version)"

if [ -z "${COURIER_BIN:-}" ]; then
    COURIER_BIN=target/debug/courier
    # scripts/test.sh has built it for `cargo test`; alone, this builds it once.
    [ -x "$COURIER_BIN" ] || cargo build --bin courier
fi

# ---- a temp folder, and everything stopped on the way out

work=$(mktemp -d "${TMPDIR:-/tmp}/courier-nginx.XXXXXX")
nginx_pid=""
courier_pid=""
cleanup() {
    local status=$?
    if [ -n "$nginx_pid" ] && alive "$nginx_pid"; then
        kill -TERM "$nginx_pid" 2>/dev/null || true
    fi
    if [ -n "$courier_pid" ] && alive "$courier_pid"; then
        kill -TERM "$courier_pid" 2>/dev/null || true
    fi
    # nginx's master takes its workers with it; both exit within a second or two.
    for _ in $(seq 100); do
        { [ -n "$nginx_pid" ] && alive "$nginx_pid"; } ||
            { [ -n "$courier_pid" ] && alive "$courier_pid"; } || break
        sleep 0.1
    done
    for pid in $nginx_pid $courier_pid; do
        if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    if [ "$status" -ne 0 ]; then
        for f in "$work/courier.log" "$work/nginx/error.log"; do
            [ -f "$f" ] || continue
            echo "---- last lines of $f"
            tail -n 40 "$f"
        done
    fi
    if [ "${NGINX_TEST_KEEP:-0}" = 1 ]; then
        echo "nginx-test: kept $work"
    else
        rm -rf "$work"
    fi
    printf 'nginx-test: %s in %ds\n' "$([ "$status" -eq 0 ] && echo ok || echo FAILED)" "$((SECONDS - started))"
}
trap cleanup EXIT

# nginx needs no privilege for loopback high ports: when this runs as root, nginx runs as
# nobody, master and workers alike, so a slip in the config cannot touch the machine.
run_nginx=()
if [ "$(id -u)" -eq 0 ]; then
    run_nginx=(setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs --)
fi
mkdir -p "$work/nginx/tmp" "$work/data"
chmod 0711 "$work"
chmod 0700 "$work/data"

# ---- certificate, secret, tokens

step "self-signed certificate for 127.0.0.1"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=courier nginx-test" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$work/nginx/key.pem" -out "$work/nginx/cert.pem" 2>/dev/null
if [ "$(id -u)" -eq 0 ]; then
    chown -R nobody:nogroup "$work/nginx"
fi

COURIER_JWT_SECRET=$(openssl rand -hex 32)
export COURIER_JWT_SECRET
for user in alice bob carol idle; do
    var="TOKEN_$(echo "$user" | tr '[:lower:]' '[:upper:]')"
    export "$var=$("$COURIER_BIN" token "$user" --ttl 1h)"
done

# ---- courier

step "courier serve --trusted-proxy 127.0.0.1 --heartbeat $heartbeat"
# The idle timeout is set far past the read timeout, so a connection that goes silent is
# cut by nginx, not by courier: that is what shows the short read timeout is in force.
COURIER_LOG=debug "$COURIER_BIN" serve --listen 127.0.0.1:0 --data "$work/data" \
    --trusted-proxy 127.0.0.1 --heartbeat "$heartbeat" --idle-timeout 60s \
    >"$work/courier.out" 2>"$work/courier.log" &
courier_pid=$!
courier_addr=""
for _ in $(seq 600); do
    courier_addr=$(sed -n 's/^listening on //p' "$work/courier.out")
    [ -n "$courier_addr" ] && break
    alive "$courier_pid" || fail "courier exited before listening: $(cat "$work/courier.log")"
    sleep 0.05
done
[ -n "$courier_addr" ] || fail "courier did not listen within 30 s"
echo "courier on $courier_addr"

# ---- nginx with the deploy config

# The deploy file, changed only where a test must differ: loopback high ports instead of
# 80/443, this certificate, courier's address, a short read timeout. Each change is
# checked to have happened, so an edit of the deploy file that the rendering no longer
# matches fails here rather than testing something else.
render() {
    local http_port=$1 https_port=$2
    sed -e "s|^\( *\)listen 80;|\1listen 127.0.0.1:$http_port;|" \
        -e "/^ *listen \[::\]:80;/d" \
        -e "s|^\( *\)listen 443 ssl;|\1listen 127.0.0.1:$https_port ssl;|" \
        -e "/^ *listen \[::\]:443 ssl;/d" \
        -e "s|^\( *ssl_certificate\)  */.*;|\1 $work/nginx/cert.pem;|" \
        -e "s|^\( *ssl_certificate_key\)  */.*;|\1 $work/nginx/key.pem;|" \
        -e "s|^\( *server \)127\.0\.0\.1:8080;|\1$courier_addr;|" \
        -e "s|^\( *proxy_read_timeout \)[0-9]*s;|\1${read_timeout}s;|" \
        -e "s|^\( *access_log\) /var/log/nginx/courier\.access\.log |\1 $work/nginx/access.log |" \
        deploy/nginx/courier.conf >"$work/nginx/courier.conf"
    local want
    for want in "listen 127.0.0.1:$http_port;" "listen 127.0.0.1:$https_port ssl;" \
        "ssl_certificate $work/nginx/cert.pem;" "ssl_certificate_key $work/nginx/key.pem;" \
        "server $courier_addr;" "proxy_read_timeout ${read_timeout}s;" \
        "access_log $work/nginx/access.log courier_notoken;"; do
        grep -qF -- "$want" "$work/nginx/courier.conf" ||
            fail "rendering deploy/nginx/courier.conf: no line became '$want'"
    done
    if grep -nE '^[^#]*(listen +(\[::\]:)?(80|443)\b|8080|letsencrypt|/var/log)' "$work/nginx/courier.conf"; then
        fail "rendering deploy/nginx/courier.conf left the lines above"
    fi
    # What nginx.conf's main context holds on a real machine, around the deploy file.
    # worker_shutdown_timeout is short so the reload's old worker closes its WebSockets
    # within the test.
    cat >"$work/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log info;
worker_shutdown_timeout 1s;
events {
    worker_connections 256;
}
http {
    access_log $work/nginx/default-access.log;
    client_body_temp_path $work/nginx/tmp/body;
    proxy_temp_path $work/nginx/tmp/proxy;
    fastcgi_temp_path $work/nginx/tmp/fastcgi;
    uwsgi_temp_path $work/nginx/tmp/uwsgi;
    scgi_temp_path $work/nginx/tmp/scgi;
    include $work/nginx/courier.conf;
}
EOF
    if [ "$(id -u)" -eq 0 ]; then
        chown -R nobody:nogroup "$work/nginx"
    fi
}

nginx_args=(-p "$work/nginx/" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log")

# Two free ports, as the kernel hands them out; another process may take one before
# nginx binds it, so a bind failure is retried with new ones.
free_ports() {
    node -e '
        const net = require("node:net");
        const take = () => new Promise((ok) => { const s = net.createServer(); s.listen(0, "127.0.0.1", () => ok(s)); });
        Promise.all([take(), take()]).then((s) => { console.log(s.map((x) => x.address().port).join(" ")); s.forEach((x) => x.close()); });'
}

step "nginx (proxy_read_timeout ${read_timeout}s, worker_shutdown_timeout 1s)"
for attempt in 1 2 3 4 5; do
    read -r http_port https_port <<<"$(free_ports)"
    render "$http_port" "$https_port"
    "${run_nginx[@]}" "$nginx_bin" "${nginx_args[@]}" -t -q || fail "nginx -t rejected the rendered config"
    rm -f "$work/nginx/nginx.pid"
    "${run_nginx[@]}" "$nginx_bin" "${nginx_args[@]}" &
    nginx_pid=$!
    # nginx writes its pid file once its sockets are bound.
    for _ in $(seq 600); do
        [ -s "$work/nginx/nginx.pid" ] && break
        alive "$nginx_pid" || break
        sleep 0.05
    done
    if [ -s "$work/nginx/nginx.pid" ] && alive "$nginx_pid"; then
        break
    fi
    if alive "$nginx_pid"; then
        fail "nginx did not start within 30 s"
    fi
    wait "$nginx_pid" || true
    nginx_pid=""
    grep -q 'Address already in use' "$work/nginx/error.log" ||
        fail "nginx did not start: $(tail -n 5 "$work/nginx/error.log")"
    echo "nginx: a port was taken (attempt $attempt), trying others"
done
[ -n "$nginx_pid" ] || fail "nginx found no free ports in 5 attempts"
echo "nginx $(cat "$work/nginx/nginx.pid") as $(ps -o user= -p "$nginx_pid"): https 127.0.0.1:$https_port, http 127.0.0.1:$http_port"

# ---- the checks

WSS_URL="wss://127.0.0.1:$https_port/ws"
HTTPS_BASE="https://127.0.0.1:$https_port"
HTTP_BASE="http://127.0.0.1:$http_port"
DIRECT_URL="ws://$courier_addr/ws"
DIRECT_BASE="http://$courier_addr"
CA_FILE="$work/nginx/cert.pem"
COURIER_LOG_FILE="$work/courier.log"
NGINX_ERROR_LOG="$work/nginx/error.log"
NGINX_ACCESS_LOG="$work/nginx/access.log"
NGINX_RELOAD=$(node -e 'console.log(JSON.stringify(process.argv.slice(1)))' -- \
    "${run_nginx[@]}" "$nginx_bin" "${nginx_args[@]}" -s reload)
READ_TIMEOUT_MS=$((read_timeout * 1000))
export WSS_URL HTTPS_BASE HTTP_BASE DIRECT_URL DIRECT_BASE CA_FILE COURIER_LOG_FILE \
    NGINX_ERROR_LOG NGINX_ACCESS_LOG NGINX_RELOAD READ_TIMEOUT_MS

step "node tests/ops/nginx-wss.mjs"
timeout --kill-after=5 180 node tests/ops/nginx-wss.mjs

# ---- courier stops cleanly with nginx still in front of it
kill -TERM "$courier_pid"
status=0
wait "$courier_pid" || status=$?
courier_pid=""
[ "$status" -eq 0 ] || fail "courier exited $status after SIGTERM"
