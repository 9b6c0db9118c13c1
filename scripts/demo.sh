#!/usr/bin/env bash
# loupe demo: a real HTTPS server (nginx, certificate from a lab origin CA) behind loupe
# in the lab wire. curl in the client namespace trusts only loupe's decryption CA and
# fetches a page and a 4 MiB file (checked by SHA-256); the demo prints the certificate
# the client saw (issued by the decryption CA, with the origin's names), one session a
# client refuses (it trusts only the origin CA), the decryption-log records, and the
# counters. Everything it creates is torn down on exit.
#
# Usage: scripts/demo.sh [--prefix P]
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

PREFIX=lpdemo-
while (($#)); do
    case $1 in
    --prefix)
        PREFIX=${2:?}
        shift 2
        ;;
    -h | --help)
        sed -n '2,9p' "$0"
        exit 0
        ;;
    *)
        echo "demo: unknown argument: $1" >&2
        exit 2
        ;;
    esac
done

if [[ -t 1 ]]; then
    say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    say() { printf '\n== %s\n' "$*"; }
fi
die() {
    printf 'demo: ERROR: %s\n' "$*" >&2
    exit 1
}
[[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces, XDP)"
[[ -d $HOME/.cargo/bin ]] && export PATH="$HOME/.cargo/bin:$PATH"

CLIENT=${PREFIX}client
APP=${PREFIX}app
SERVER=${PREFIX}server
LOUPE=$ROOT/target/release/loupe
WORK=$(mktemp -d /tmp/loupe-demo.XXXXXX)
PIN_DIR=/sys/fs/bpf/${PREFIX}loupe
PKI=$WORK/pki
LOUPE_PID=
NGINX_PID=

cleanup() {
    local rc=$?
    set +e
    for pid in $NGINX_PID $LOUPE_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
        fi
    done
    # loupe pins its XDP links so the wire outlives the daemon: detach to release them.
    "$LOUPE" detach --pin-dir "$PIN_DIR" >/dev/null 2>&1
    rm -rf "$PIN_DIR"
    bash "$ROOT/scripts/lab.sh" down --prefix "$PREFIX" >/dev/null
    if ((rc != 0)); then
        echo "demo: failed; logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "setup"
bash scripts/setup.sh

say "build"
cargo build --release --workspace

say "lab up ($PREFIX)"
bash scripts/lab.sh up --prefix "$PREFIX"

say "lab origin CA and server certificate (server.lab, 198.18.0.2)"
mkdir -p "$PKI"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout "$PKI/origin-ca.key" -out "$PKI/origin-ca.crt" -subj "/CN=loupe lab origin CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$PKI/server.key" \
    -out "$PKI/server.csr" -subj "/CN=server.lab" 2>/dev/null
printf 'subjectAltName=DNS:server.lab,IP:198.18.0.2\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    >"$PKI/ext.cnf"
openssl x509 -req -in "$PKI/server.csr" -CA "$PKI/origin-ca.crt" -CAkey "$PKI/origin-ca.key" \
    -CAcreateserial -days 20 -extfile "$PKI/ext.cnf" -out "$PKI/server.crt" 2>/dev/null
openssl x509 -in "$PKI/server.crt" -noout -subject -issuer

say "nginx (HTTPS, HTTP/2) on 198.18.0.2:443 in $SERVER"
mkdir -p "$WORK/www" "$WORK/nginx"
echo "hello through loupe" >"$WORK/www/index.html"
head -c 4M /dev/urandom >"$WORK/www/blob.bin"
{
    echo "daemon off; master_process off; worker_processes 1; pid $WORK/nginx/nginx.pid;"
    echo "error_log $WORK/nginx/error.log; events { worker_connections 64; }"
    echo "http { access_log off; client_body_temp_path $WORK/nginx/body;"
    echo "  server { listen 198.18.0.2:443 ssl http2; ssl_protocols TLSv1.2 TLSv1.3;"
    echo "    ssl_certificate $PKI/server.crt; ssl_certificate_key $PKI/server.key;"
    echo "    root $WORK/www; location / { } } }"
} >"$WORK/nginx/nginx.conf"
ip netns exec "$SERVER" nginx -c "$WORK/nginx/nginx.conf" &
NGINX_PID=$!

say "loupe run in $APP (lab defaults: in0/out0, decrypt tcp/443), trusting the origin CA"
mkdir -p "$WORK/state" "$WORK/log"
# nsenter --net, not `ip netns exec`: the latter remounts /sys without bpffs, and the
# daemon's pinned XDP links would die with it.
NO_COLOR=1 nsenter --net="/run/netns/$APP" -- "$LOUPE" run --state-dir "$WORK/state" --log-dir "$WORK/log" \
    --pin-dir "$PIN_DIR" --trust-ca "$PKI/origin-ca.crt" >"$WORK/loupe.out" 2>&1 &
LOUPE_PID=$!
# Ready once it serves: it writes its counters after registering its AF_XDP sockets.
for _ in $(seq 300); do
    kill -0 "$LOUPE_PID" 2>/dev/null || {
        cat "$WORK/loupe.out" >&2
        die "loupe exited during start-up"
    }
    [[ -f $WORK/state/counters.json ]] && break
    sleep 0.1
done
[[ -f $WORK/state/counters.json ]] || die "loupe did not come up within 30 s"
"$LOUPE" ca show --state-dir "$WORK/state" >"$WORK/decryption-ca.pem"
echo "decryption CA (what clients are told to trust):"
openssl x509 -in "$WORK/decryption-ca.pem" -noout -subject -fingerprint -sha256

say "curl from $CLIENT, trusting only the decryption CA"
ip netns exec "$CLIENT" curl -sS --max-time 10 --cacert "$WORK/decryption-ca.pem" https://server.lab/ \
    -w '(HTTP %{http_version}, status %{http_code})\n'
ip netns exec "$CLIENT" curl -sS --max-time 30 --cacert "$WORK/decryption-ca.pem" \
    https://server.lab/blob.bin -o "$WORK/blob.got"
want=$(sha256sum <"$WORK/www/blob.bin" | cut -d' ' -f1)
got=$(sha256sum <"$WORK/blob.got" | cut -d' ' -f1)
echo "4 MiB file: sent $want"
echo "            got  $got"
[[ $want == "$got" ]] || die "the file changed on the way"

say "the certificate the client saw"
echo | ip netns exec "$CLIENT" openssl s_client -connect 198.18.0.2:443 -servername server.lab \
    -CAfile "$WORK/decryption-ca.pem" 2>/dev/null | openssl x509 -noout -subject -issuer -ext subjectAltName

say "a client that trusts only the origin CA refuses loupe's certificate"
ip netns exec "$CLIENT" curl -sS --max-time 10 --cacert "$PKI/origin-ca.crt" https://server.lab/ || true

sleep 1.2 # the counters file is rewritten every second
say "decryption log ($WORK/log/decryption.jsonl)"
python3 "$ROOT/scripts/show-records.py" "$WORK/log/decryption.jsonl"

say "counters ($WORK/state/counters.json)"
python3 -m json.tool "$WORK/state/counters.json"
say "done"
