#!/usr/bin/env bash
# loupe demo: put loupe in the lab wire, push 16 MiB each way over tcp/443 with the
# wire traffic tool, show both reports, check them against each other, and print
# loupe's XDP counters. Everything it creates is torn down on exit.
#
# Usage: scripts/demo.sh [--prefix P] [--bytes SIZE] [--middle loupe|bridge]
#   --middle bridge runs the same traffic through a kernel bridge instead (baseline).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

PREFIX=lpdemo-
BYTES=16MiB
MIDDLE=loupe
while (($#)); do
    case $1 in
    --prefix)
        PREFIX=${2:?}
        shift 2
        ;;
    --bytes)
        BYTES=${2:?}
        shift 2
        ;;
    --middle)
        MIDDLE=${2:?}
        shift 2
        ;;
    -h | --help)
        sed -n '2,8p' "$0"
        exit 0
        ;;
    *)
        echo "demo: unknown argument: $1" >&2
        exit 2
        ;;
    esac
done
[[ $MIDDLE == loupe || $MIDDLE == bridge ]] || {
    echo "demo: --middle must be loupe or bridge" >&2
    exit 2
}

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
BENCH=$ROOT/target/release/loupe-bench
WORK=$(mktemp -d /tmp/loupe-demo.XXXXXX)
PIN_DIR=/sys/fs/bpf/${PREFIX}loupe
LOUPE_PID=
SERVER_PID=

cleanup() {
    local rc=$?
    set +e
    for pid in $SERVER_PID $LOUPE_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            # Give it 5 s to detach XDP and exit cleanly, then insist.
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
        fi
    done
    # loupe pins its XDP links so the wire outlives the daemon: unpin to release them.
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

if [[ $MIDDLE == loupe ]]; then
    say "loupe run in $APP (lab defaults: in0/out0, inspect tcp/443)"
    mkdir -p "$WORK/state" "$WORK/log"
    # nsenter --net, not `ip netns exec`: the latter remounts /sys without bpffs, so
    # the daemon's pins (which `loupe counters` reads) would be invisible and die with
    # it. A pin dir of our own keeps clear of any other loupe on this host.
    NO_COLOR=1 nsenter --net="/run/netns/$APP" -- "$LOUPE" run --state-dir "$WORK/state" \
        --log-dir "$WORK/log" --pin-dir "$PIN_DIR" >"$WORK/loupe.out" 2>&1 &
    LOUPE_PID=$!
    # Ready once XDP is attached to both ports (bounded: 30 s).
    ready=
    for _ in $(seq 300); do
        kill -0 "$LOUPE_PID" 2>/dev/null || {
            cat "$WORK/loupe.out" >&2
            die "loupe exited during start-up"
        }
        if [[ $(ip -n "$APP" link show dev in0) == *xdp* && $(ip -n "$APP" link show dev out0) == *xdp* ]]; then
            ready=1
            break
        fi
        sleep 0.1
    done
    [[ -n $ready ]] || {
        cat "$WORK/loupe.out" >&2
        die "loupe did not attach XDP to in0 and out0 within 30 s"
    }
    echo "loupe is up (pid $LOUPE_PID)"
else
    say "kernel bridge in $APP (baseline, no loupe)"
    bash scripts/lab.sh bridge on --prefix "$PREFIX"
fi

say "wire-server on 198.18.0.2:443 in $SERVER"
ip netns exec "$SERVER" "$BENCH" wire-server --listen 198.18.0.2:443 --max-conns 1 \
    --timeout-secs 120 --report "$WORK/server.jsonl" 2>"$WORK/server.err" &
SERVER_PID=$!
for _ in $(seq 100); do
    [[ -n $(ip netns exec "$SERVER" ss -Hltn 'sport = :443') ]] && break
    sleep 0.05
done

say "wire-client: $BYTES each way to server.lab:443"
ip netns exec "$CLIENT" "$BENCH" wire-client --connect server.lab:443 --bytes "$BYTES" \
    --reply-bytes "$BYTES" --connections 1 --timeout-secs 60 --report "$WORK/client.jsonl"
wait "$SERVER_PID" || die "wire-server failed: $(cat "$WORK/server.err")"
SERVER_PID=

say "client report"
python3 -m json.tool --json-lines "$WORK/client.jsonl"
say "server report"
python3 -m json.tool --json-lines "$WORK/server.jsonl"
say "compare"
"$BENCH" wire-compare --client "$WORK/client.jsonl" --server "$WORK/server.jsonl"

if [[ $MIDDLE == loupe ]]; then
    say "loupe counters"
    "$LOUPE" counters --pin-dir "$PIN_DIR" ||
        echo "demo: 'loupe counters' failed (see above)" >&2
    say "loupe output"
    tail -n 40 "$WORK/loupe.out"
fi
say "done"
