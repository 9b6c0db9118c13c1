#!/usr/bin/env bash
# loupe demo: a real HTTPS server (nginx, certificate from a lab origin CA) behind loupe
# in the lab wire. curl in the client namespace trusts only loupe's decryption CA and
# fetches a page and a 4 MiB file (checked by SHA-256); the demo prints the certificate
# the client saw (issued by the decryption CA, with the origin's names) and one session a
# client refuses (it trusts only the origin CA). Then what loupe is for, each step as
# the operator types it: a self-signed server blocked with its verify error and fixed
# live with one `loupectl trust fetch --accept`; a server that speaks only a SHA-1 suite
# diagnosed and fixed with one `loupectl profile set`; a URL rule answering 403; a
# Suricata rule's alert in eve.json. Last the decryption-log records and the counters.
# Everything it creates is torn down on exit.
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
LOUPECTL=$ROOT/target/release/loupectl
WORK=$(mktemp -d /tmp/loupe-demo.XXXXXX)
PIN_DIR=/sys/fs/bpf/${PREFIX}loupe
PKI=$WORK/pki
LOUPE_PID=
NGINX_PID=
PEER_PIDS=
# loupectl finds the daemon's socket here (its --socket default).
export LOUPE_SOCKET=$WORK/control.sock

# The operator's commands, and the client's, printed as typed and then run.
operator() {
    printf '\n  # loupectl %s\n' "$*"
    "$LOUPECTL" "$@"
}
client() {
    printf '\n  client$ %s\n' "$*"
    ip netns exec "$CLIENT" "$@"
}

cleanup() {
    local rc=$?
    set +e
    for pid in $PEER_PIDS $NGINX_PID $LOUPE_PID; do
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

say "loupe run in $APP (in0/out0, decrypt tcp/443), trusting the origin CA, one URL rule, one Suricata rule"
mkdir -p "$WORK/state" "$WORK/log"
cat >"$WORK/demo.rules" <<'RULES'
alert http $HOME_NET any -> $EXTERNAL_NET any (msg:"DEMO request for a secret"; flow:established,to_server; http.uri; content:"/secret"; startswith; classtype:policy-violation; sid:1000001; rev:1;)
RULES
cat >"$WORK/loupe.toml" <<TOML
[control]
socket = "$WORK/control.sock"

[inspection]
rules = ["$WORK/demo.rules"]

[inspection.vars]
HOME_NET = "[198.18.0.1/32]"

[[url_rule]]
name = "no-admin"
path = ["/admin/"]
action = "block"
TOML
cat "$WORK/loupe.toml" "$WORK/demo.rules"
# nsenter --net, not `ip netns exec`: the latter remounts /sys without bpffs, and the
# daemon's pinned XDP links would die with it.
NO_COLOR=1 nsenter --net="/run/netns/$APP" -- "$LOUPE" run --config "$WORK/loupe.toml" --state-dir "$WORK/state" \
    --log-dir "$WORK/log" --pin-dir "$PIN_DIR" --trust-ca "$PKI/origin-ca.crt" >"$WORK/loupe.out" 2>&1 &
LOUPE_PID=$!
# Ready once it serves: it writes its counters after registering its AF_XDP sockets,
# and answers on its control socket.
for _ in $(seq 300); do
    kill -0 "$LOUPE_PID" 2>/dev/null || {
        cat "$WORK/loupe.out" >&2
        die "loupe exited during start-up"
    }
    [[ -f $WORK/state/counters.json ]] && "$LOUPECTL" status >/dev/null 2>&1 && break
    sleep 0.1
done
"$LOUPECTL" status >/dev/null 2>&1 || die "loupe did not come up within 30 s"
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

# A server with a self-signed certificate, and one that speaks only a SHA-1 suite.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 20 \
    -keyout "$PKI/self-signed.key" -out "$PKI/self-signed.crt" -subj "/CN=s2.lab" \
    -addext subjectAltName=DNS:s2.lab,IP:198.18.0.3 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout "$PKI/sha1.key" -out "$PKI/sha1.csr" -subj "/CN=s7.lab" 2>/dev/null
printf 'subjectAltName=DNS:s7.lab,IP:198.18.0.8\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$PKI/sha1.cnf"
openssl x509 -req -in "$PKI/sha1.csr" -CA "$PKI/origin-ca.crt" -CAkey "$PKI/origin-ca.key" \
    -CAcreateserial -days 20 -extfile "$PKI/sha1.cnf" -out "$PKI/sha1.crt" 2>/dev/null
start_peer() { # ADDRESS ARGS...: openssl s_server in the server namespace, until it listens
    local address=$1
    shift
    ip netns exec "$SERVER" openssl s_server -accept "$address:443" -www -quiet "$@" >"$WORK/s_server-$address.out" 2>&1 &
    PEER_PIDS="$PEER_PIDS $!"
    for _ in $(seq 100); do
        ip netns exec "$SERVER" ss -Hltn "src $address:443" | grep -q . && return
        sleep 0.1
    done
    die "openssl s_server on $address did not listen"
}
wait_line() { # FILE TEXT: until a line of FILE holds TEXT (loupe writes its logs behind the traffic)
    for _ in $(seq 50); do
        grep -qF "$2" "$1" 2>/dev/null && return
        sleep 0.1
    done
    die "nothing with $2 in $1 after 5 s"
}
wait_record() { # SNI: until the decryption log has a record of a session to it
    wait_line "$WORK/log/decryption.jsonl" "\"sni\":\"$1\""
}
start_peer 198.18.0.3 -cert "$PKI/self-signed.crt" -key "$PKI/self-signed.key"
start_peer 198.18.0.8 -cert "$PKI/sha1.crt" -key "$PKI/sha1.key" -cipher ECDHE-RSA-AES128-SHA -no_tls1_3

say "a self-signed server (s2.lab) is blocked, the log says why, one command trusts it"
client curl -sS -o /dev/null --max-time 10 --cacert "$WORK/decryption-ca.pem" https://s2.lab/ || true
wait_record s2.lab
operator log tail --errors --sni s2.lab -n 1
"$LOUPECTL" log tail --errors --sni s2.lab -n 1 | grep -q "self signed certificate (code 18, depth 0)" ||
    die "the log does not name the self-signed certificate"
# loupe has no DNS: the server is given by address, its name as the SNI.
operator trust fetch 198.18.0.3 --sni s2.lab --accept
client curl -sS --max-time 10 --cacert "$WORK/decryption-ca.pem" https://s2.lab/ -o /dev/null \
    -w 'HTTP status %{http_code}: decrypted and inspected\n'

say "a server that speaks only a SHA-1 suite (s7.lab): diagnosed, fixed with one profile change"
client curl -sS -o /dev/null --max-time 10 --cacert "$WORK/decryption-ca.pem" https://s7.lab/ || true
wait_record s7.lab
operator log tail --errors --sni s7.lab -n 1
# The record says why, and what would fix it.
printf '\n  # loupectl log tail --errors --sni s7.lab -n 1 --json | jq -r .diagnosis,.remedy\n'
"$LOUPECTL" log tail --errors --sni s7.lab -n 1 --json | jq -r .diagnosis,.remedy
operator profile set default allow_sha1=true ciphers+=ECDHE-RSA-AES128-SHA
client curl -sS --max-time 10 --cacert "$WORK/decryption-ca.pem" https://s7.lab/ -o /dev/null \
    -w 'HTTP status %{http_code}: decrypted and inspected\n'

say "a URL rule answers 403 inside the decrypted session"
client curl -sS --max-time 10 --cacert "$WORK/decryption-ca.pem" https://server.lab/admin/users \
    -o /dev/null -w 'HTTP status %{http_code}\n'
wait_line "$WORK/log/eve.json" '"url":"/admin/users"'
operator log tail --http --errors -n 1

say "a Suricata rule alerts, in eve.json as Suricata writes it"
client curl -sS --max-time 10 --cacert "$WORK/decryption-ca.pem" https://server.lab/secret/plans \
    -o /dev/null -w 'HTTP status %{http_code}\n'
wait_line "$WORK/log/eve.json" '"event_type":"alert"'
printf '\n  # grep %s %s | python3 -m json.tool\n' "'\"event_type\":\"alert\"'" "$WORK/log/eve.json"
grep -m1 '"event_type":"alert"' "$WORK/log/eve.json" | python3 -m json.tool ||
    die "no alert in eve.json"

sleep 1.2 # the counters file is rewritten every second
say "decryption log ($WORK/log/decryption.jsonl)"
python3 "$ROOT/scripts/show-records.py" "$WORK/log/decryption.jsonl"

say "counters ($WORK/state/counters.json)"
python3 -m json.tool "$WORK/state/counters.json"
say "done"
