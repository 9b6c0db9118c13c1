#!/usr/bin/env bash
# The loupe lab: three network namespaces wired as a virtual wire.
#
#   ${P}client eth0 198.18.0.1/24 ── in0 [${P}app] out0 ── eth0 198.18.0.2-9/24 ${P}server
#
# in0/out0 carry no addresses: loupe (or, for a baseline, a kernel bridge) joins them.
# Without either, client and server cannot reach each other.
#
# With --queues N > 1 every veth has N queues, and the client's and server's eth0 send
# each connection on the queue a NIC's symmetric RSS would give it (`loupe-bench
# lab-steer`, a tc egress program pinned under /sys/fs/bpf/<prefix>lab-steer/): both
# legs of a session reach in0 and out0 on the same queue, hence one loupe worker. It
# needs a built loupe-bench: $LOUPE_BENCH, else target/release or target/debug.
#
# Usage: lab.sh up     [--queues N] [--mtu M] [--prefix P]
#        lab.sh down   [--prefix P]
#        lab.sh status [--prefix P]
#        lab.sh bridge on|off [--prefix P]
set -euo pipefail

PREFIX=lp-
QUEUES=1
MTU=1500
CLIENT_ADDR=198.18.0.1
SERVER_ADDRS=(198.18.0.2 198.18.0.3 198.18.0.4 198.18.0.5 198.18.0.6 198.18.0.7 198.18.0.8 198.18.0.9)

die() {
    printf 'lab: ERROR: %s\n' "$*" >&2
    exit 1
}
log() { printf 'lab: %s\n' "$*"; }
usage() {
    cat >&2 <<EOF
usage: lab.sh up     [--queues N] [--mtu M] [--prefix P]
       lab.sh down   [--prefix P]
       lab.sh status [--prefix P]
       lab.sh bridge on|off [--prefix P]
EOF
    exit 2
}

cmd=${1:-}
[[ -n $cmd ]] || usage
shift
sub=
if [[ $cmd == bridge ]]; then
    sub=${1:-}
    [[ $sub == on || $sub == off ]] || usage
    shift
fi
while (($#)); do
    case $1 in
    --prefix)
        PREFIX=${2:?--prefix needs a value}
        shift 2
        ;;
    --queues)
        QUEUES=${2:?--queues needs a value}
        shift 2
        ;;
    --mtu)
        MTU=${2:?--mtu needs a value}
        shift 2
        ;;
    -h | --help) usage ;;
    *) die "unknown argument: $1" ;;
    esac
done
[[ $QUEUES =~ ^[1-9][0-9]*$ ]] || die "--queues must be a positive integer, got '$QUEUES'"
[[ $MTU =~ ^[0-9]+$ ]] && ((MTU >= 1280 && MTU <= 9000)) || die "--mtu must be 1280 to 9000, got '$MTU'"
[[ $PREFIX =~ ^[A-Za-z0-9_.-]*$ ]] || die "--prefix may only contain letters, digits, '.', '_' and '-'"

CLIENT=${PREFIX}client
APP=${PREFIX}app
SERVER=${PREFIX}server
STEER_PINS=/sys/fs/bpf/${PREFIX}lab-steer

[[ $(id -u) -eq 0 ]] || die "must run as root (creates network namespaces)"
command -v ip >/dev/null || die "ip (iproute2) not found: run scripts/setup.sh"

ns_exists() { [[ -e /run/netns/$1 ]]; }
link_exists() { ip -n "$1" link show "$2" >/dev/null 2>&1; }

# Current queue count of a veth end, or empty.
queues_of() {
    ip -n "$1" -d link show "$2" 2>/dev/null | sed -n 's/.*numrxqueues \([0-9]*\).*/\1/p' | head -n1 || true
}

# A veth pair is created with each end directly in its namespace, so nothing ever
# appears in the root namespace and parallel labs cannot collide on names.
make_pair() { # make_pair APP_PORT PEER_NS
    local port=$1 peer=$2 have
    have=$(queues_of "$APP" "$port")
    if [[ -n $have && $have != "$QUEUES" ]]; then
        log "$APP/$port has $have queues, want $QUEUES: recreating"
        ip -n "$APP" link del "$port"
    fi
    if ! link_exists "$APP" "$port" || ! link_exists "$peer" eth0; then
        ip -n "$APP" link del "$port" 2>/dev/null || true
        ip -n "$peer" link del eth0 2>/dev/null || true
        ip link add "$port" netns "$APP" numtxqueues "$QUEUES" numrxqueues "$QUEUES" type veth \
            peer name eth0 netns "$peer" numtxqueues "$QUEUES" numrxqueues "$QUEUES"
    fi
}

# Settings on the client/server ends that XDP on the app ports depends on.
tune_end() { # tune_end NS
    local ns=$1 was_up=
    [[ $(ip -n "$ns" link show dev eth0) =~ [\<,]UP[,\>] ]] && was_up=1
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    # A frame with a partial (offloaded) checksum cannot be XDP-redirected: checksum in
    # software, which also turns off TSO so every frame is at most one MTU.
    ip netns exec "$ns" ethtool -K eth0 tx off >/dev/null
    # Frames XDP_REDIRECTed into in0/out0 are delivered to this end's NAPI; a veth has
    # NAPI only with GRO on (or an XDP program attached). The kernel marks the app port
    # as a redirect target (xdp_features NDO_XMIT) only when GRO goes on while this end
    # is UP: set while down, NAPI comes up at open but redirects into the port still
    # fail (counted as rx drops on the app port). So: up first, then a GRO off->on
    # transition, unless an earlier `up` already did exactly that.
    if [[ -z $was_up || $(ip netns exec "$ns" ethtool -k eth0) != *$'\n'"generic-receive-offload: on"* ]]; then
        ip netns exec "$ns" ethtool -K eth0 gro off >/dev/null
        ip netns exec "$ns" ethtool -K eth0 gro on >/dev/null
    fi
}

# The loupe-bench binary that attaches the lab's flow steering.
bench_binary() {
    local root candidate
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    for candidate in "${LOUPE_BENCH:-}" "$root/target/release/loupe-bench" "$root/target/debug/loupe-bench"; do
        if [[ -n $candidate && -x $candidate ]]; then
            echo "$candidate"
            return
        fi
    done
    die "--queues $QUEUES needs loupe-bench to steer flows (build it: cargo build --release -p loupe-bench, or set LOUPE_BENCH)"
}

# Symmetric steering on the client's and server's ends (see the header), or none.
steer_ends() {
    rm -rf "$STEER_PINS"
    ((QUEUES > 1)) || return 0
    local bench ns
    bench=$(bench_binary)
    mkdir -p "$STEER_PINS"
    for ns in "$CLIENT" "$SERVER"; do
        # XPS would pick the TX queue from the sending CPU, over the steering.
        if ip netns exec "$ns" sh -c 'cat /sys/class/net/eth0/queues/tx-*/xps_cpus /sys/class/net/eth0/queues/tx-*/xps_rxqs 2>/dev/null' |
            grep -q '[1-9a-fA-F]'; then
            die "$ns/eth0 has an XPS map (queues/tx-*/xps_cpus or xps_rxqs); it would override the flow steering"
        fi
        # Not under `ip netns exec`: its private mount namespace would take the pins along.
        "$bench" lab-steer --netns "$ns" --iface eth0 --queues "$QUEUES" --pin-dir "$STEER_PINS/${ns#"$PREFIX"}" ||
            die "attaching the flow steering to $ns/eth0 failed: $bench lab-steer --netns $ns --iface eth0 --queues $QUEUES"
    done
}

lab_up() {
    command -v ethtool >/dev/null || die "ethtool not found: run scripts/setup.sh"
    local ns
    for ns in "$CLIENT" "$APP" "$SERVER"; do
        ns_exists "$ns" || ip netns add "$ns"
    done
    make_pair in0 "$CLIENT"
    make_pair out0 "$SERVER"
    # Every end of the wire alike (a lab kept from an earlier `up` takes the new MTU).
    ip -n "$APP" link set in0 mtu "$MTU"
    ip -n "$APP" link set out0 mtu "$MTU"
    ip -n "$CLIENT" link set eth0 mtu "$MTU"
    ip -n "$SERVER" link set eth0 mtu "$MTU"

    ip -n "$APP" link set lo up
    # The wire ports carry no addresses, not even IPv6 link-local ones: otherwise the
    # app namespace itself would talk (DAD, router solicitations) on the wire.
    ip -n "$APP" link set in0 addrgenmode none
    ip -n "$APP" link set out0 addrgenmode none
    ip -n "$APP" link set in0 up
    ip -n "$APP" link set out0 up

    tune_end "$CLIENT"
    tune_end "$SERVER"
    steer_ends
    ip -n "$CLIENT" addr replace "$CLIENT_ADDR/24" dev eth0
    local a
    for a in "${SERVER_ADDRS[@]}"; do
        ip -n "$SERVER" addr replace "$a/24" dev eth0
    done

    # Names for the client: `ip netns exec` bind-mounts this over /etc/hosts.
    mkdir -p "/etc/netns/$CLIENT"
    {
        echo "127.0.0.1 localhost"
        echo "$CLIENT_ADDR client.lab"
        echo "${SERVER_ADDRS[0]} server.lab"
        local i=1
        for a in "${SERVER_ADDRS[@]}"; do
            echo "$a s$i.lab"
            i=$((i + 1))
        done
    } >"/etc/netns/$CLIENT/hosts.tmp"
    mv "/etc/netns/$CLIENT/hosts.tmp" "/etc/netns/$CLIENT/hosts"

    local steering=
    ((QUEUES > 1)) && steering=", connections steered by a symmetric hash"
    log "up: $CLIENT ($CLIENT_ADDR) -- in0 [$APP] out0 -- $SERVER (${SERVER_ADDRS[0]}-${SERVER_ADDRS[-1]}), $QUEUES queue(s)$steering"
}

lab_down() {
    local ns
    # Deleting a namespace destroys its veth ends and with them their peers.
    for ns in "$CLIENT" "$APP" "$SERVER"; do
        if ns_exists "$ns"; then
            ip netns del "$ns" || die "could not delete namespace $ns (a process still inside?)"
        fi
        rm -rf "/etc/netns/$ns"
    done
    rm -rf "$STEER_PINS"
    log "down: $PREFIX lab removed"
}

lab_bridge() {
    ns_exists "$APP" || die "no lab with prefix '$PREFIX': run lab.sh up first"
    if [[ $sub == on ]]; then
        if ! link_exists "$APP" br0; then
            # STP off and no forward delay: ports forward as soon as they are enslaved.
            ip -n "$APP" link add br0 type bridge stp_state 0 forward_delay 0
        fi
        ip -n "$APP" link set in0 master br0
        ip -n "$APP" link set out0 master br0
        ip -n "$APP" link set br0 up
        log "bridge on: in0 <-> out0 through a kernel bridge in $APP"
    else
        if link_exists "$APP" br0; then
            ip -n "$APP" link del br0
        fi
        log "bridge off"
    fi
}

lab_status() {
    local ns rc=0
    for ns in "$CLIENT" "$APP" "$SERVER"; do
        if ns_exists "$ns"; then
            echo "== $ns"
            ip -n "$ns" -br addr show
            ip -n "$ns" -d link show 2>/dev/null | grep -o 'prog/xdp[^ ]* id [0-9]*' | sed 's/^/   xdp: /' || true
        else
            echo "== $ns: absent"
            rc=1
        fi
    done
    [[ -f /etc/netns/$CLIENT/hosts ]] && echo "== /etc/netns/$CLIENT/hosts present"
    [[ -d $STEER_PINS ]] && echo "== flow steering pinned under $STEER_PINS"
    return $rc
}

case $cmd in
up) lab_up ;;
down) lab_down ;;
status) lab_status ;;
bridge) lab_bridge ;;
*) usage ;;
esac
