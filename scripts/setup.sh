#!/usr/bin/env bash
# Installs what a fresh Debian 12 host lacks to build and test loupe.
# Idempotent: every step checks first and only acts when something is missing.
# Non-interactive (CI=true, no stdin).
set -euo pipefail

log() { printf 'setup: %s\n' "$*"; }
die() {
    printf 'setup: ERROR: %s\n' "$*" >&2
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, mounts bpffs); try: sudo $0"

export DEBIAN_FRONTEND=noninteractive

# Packages: the build (clang/LLVM 22 for bpf-linker and aya; libhyperscan-dev for the
# signature prefilter, linked to Debian's libhs), the lab (iproute2, ethtool, ping),
# end-to-end peers (nginx, curl, openssl), diagnosis (tshark, perf, bpftool, jq for the
# demo's record queries), the bench's comparison interceptors (sslsplit, squid-openssl
# for ssl-bump, nftables for their redirect, util-linux's prlimit), xxd for the fuzz seeds, and the
# Debian packaging and its checks (scripts/package.sh, bench/tests/package.rs): dpkg-dev
# (cargo-deb's dpkg-shlibdeps), lintian, systemd-analyze, logrotate, man; tmux, the
# terminal bench/tests/top.rs runs `loupectl top` in and reads the screen of; prometheus
# (the server and promtool) that bench/tests/metrics.rs scrapes loupe with.
PACKAGES=(
    clang llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev cmake pkg-config libhyperscan-dev
    iproute2 ethtool iputils-ping nginx curl openssl ca-certificates tshark linux-perf bpftool python3 jq
    sslsplit squid-openssl nftables util-linux python3-venv testssl.sh nghttp2-client xxd
    dpkg-dev lintian systemd logrotate man-db tmux prometheus
)

missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    if [[ $status != "install ok installed" ]]; then
        missing+=("$p")
    fi
done

if ((${#missing[@]})); then
    log "installing missing packages: ${missing[*]}"
    command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian 12 only"
    # tshark's package asks whether non-root users may capture: answer it up front.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update </dev/null || die "apt-get update failed (is a Debian mirror reachable?)"
    apt-get install -y --no-install-recommends "${missing[@]}" </dev/null ||
        die "apt-get install failed for: ${missing[*]} (llvm-22-dev needs a Debian 12 source that carries LLVM 22)"
else
    log "packages: all present"
fi

# nginx is only used as a test origin started by the tests themselves; the Debian
# package starts a system instance on :80 which we neither need nor want.
if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then
    log "stopping the system nginx service (tests run their own instances)"
    systemctl stop nginx || true
fi

# squid likewise: the bench starts its own instance in the lab; the Debian package
# enables and starts a system proxy on :3128. sslsplit ships no service.
if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    if systemctl is-enabled --quiet squid 2>/dev/null || systemctl is-active --quiet squid 2>/dev/null; then
        log "stopping and disabling the system squid service (the bench runs its own)"
        systemctl disable --now squid </dev/null || true
    fi
elif [[ -x /etc/init.d/squid ]] && /etc/init.d/squid status >/dev/null 2>&1; then
    log "stopping the system squid (the bench runs its own)"
    /etc/init.d/squid stop </dev/null || true
fi

# prometheus likewise: the metrics test runs its own server in the lab; the package
# enables a system one on :9090.
if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    if systemctl is-enabled --quiet prometheus 2>/dev/null || systemctl is-active --quiet prometheus 2>/dev/null; then
        log "stopping and disabling the system prometheus service (the metrics test runs its own)"
        systemctl disable --now prometheus </dev/null || true
    fi
elif [[ -x /etc/init.d/prometheus ]] && /etc/init.d/prometheus status >/dev/null 2>&1; then
    log "stopping the system prometheus (the metrics test runs its own)"
    /etc/init.d/prometheus stop </dev/null || true
fi

# Rust toolchain: the machine provides rustup; the eBPF crate needs nightly + rust-src.
if ! command -v cargo >/dev/null && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v rustup >/dev/null || die "rustup not found: install the Rust toolchain (rustup) first"
command -v cargo >/dev/null || die "cargo not found on PATH"

# (Outputs captured before matching: `cmd | grep -q` under pipefail can fail on SIGPIPE.)
toolchains=$(rustup toolchain list)
if ! grep -q '^nightly' <<<"$toolchains"; then
    log "installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal </dev/null || die "rustup could not install nightly"
fi
nightly_components=$(rustup component list --toolchain nightly --installed 2>/dev/null || true)
if ! grep -q '^rust-src' <<<"$nightly_components"; then
    log "adding rust-src to nightly"
    rustup component add rust-src --toolchain nightly </dev/null || die "rustup could not add rust-src to nightly"
else
    log "nightly rust-src: present"
fi
components=$(rustup component list --installed 2>/dev/null || true)
for comp in rustfmt clippy; do
    if ! grep -q "^$comp" <<<"$components"; then
        log "adding $comp to the default toolchain"
        rustup component add "$comp" </dev/null || die "rustup could not add $comp"
    fi
done

# bpf-linker links the XDP program; built against the system LLVM 22.
if ! command -v bpf-linker >/dev/null; then
    log "building bpf-linker against LLVM 22 (takes a few minutes)"
    PATH=/usr/lib/llvm-22/bin:$PATH LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
        cargo install bpf-linker --no-default-features --features llvm-22 </dev/null ||
        die "cargo install bpf-linker failed (needs llvm-22-dev, libpolly-22-dev, libzstd-dev, zlib1g-dev)"
else
    log "bpf-linker: present"
fi

# cargo-deny checks the dependency tree's licenses and sources (deny.toml, a suite step).
if ! command -v cargo-deny >/dev/null; then
    log "installing cargo-deny (takes a few minutes)"
    cargo install cargo-deny --version 0.20.2 --locked </dev/null || die "cargo install cargo-deny failed"
else
    log "cargo-deny: present"
fi

# cargo-deb builds the Debian packages (scripts/package.sh, a suite test).
if ! command -v cargo-deb >/dev/null; then
    log "installing cargo-deb (takes a few minutes)"
    cargo install cargo-deb --version 3.8.0 --locked </dev/null || die "cargo install cargo-deb failed"
else
    log "cargo-deb: present"
fi

# cargo-fuzz builds and replays the fuzz targets (scripts/fuzz.sh replay, a suite step).
if ! command -v cargo-fuzz >/dev/null; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --version 0.13.2 --locked </dev/null || die "cargo install cargo-fuzz failed"
else
    log "cargo-fuzz: present"
fi

# bpffs: aya pins maps there.
if ! mountpoint -q /sys/fs/bpf; then
    log "mounting bpffs at /sys/fs/bpf"
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf || die "could not mount bpffs at /sys/fs/bpf"
else
    log "bpffs: mounted"
fi

# The lab's post-quantum TLS peers (bench/tests/tls_peer.py) need an OpenSSL that speaks
# X25519MLKEM768 (3.5 or newer); Debian 12's is 3.0, the `cryptography` wheel bundles a
# newer one. Pinned, in a venv of the checkout's own. The same venv carries the
# `websockets` library: the inspection test's WebSocket client and server
# (bench/tests/ws_peer.py).
repo=$(cd "$(dirname "$0")/.." && pwd)
tls_peer_venv=$repo/target/tls-peer-venv
if ! "$tls_peer_venv/bin/python" -c 'import OpenSSL, cryptography, websockets' 2>/dev/null; then
    log "making the TLS peer venv (pyOpenSSL on the cryptography wheel's OpenSSL) in $tls_peer_venv"
    rm -rf "$tls_peer_venv"
    /usr/bin/python3 -m venv "$tls_peer_venv" </dev/null || die "python3 -m venv failed (package python3-venv)"
    "$tls_peer_venv/bin/pip" install --quiet cryptography==50.0.2 pyopenssl==26.4.0 websockets==15.0.1 </dev/null ||
        die "pip could not install cryptography, pyopenssl and websockets into $tls_peer_venv"
else
    log "TLS peer venv: present"
fi

# The bench's third comparison peer, mitmproxy, from PyPI in a venv of its own (its
# dependencies pin versions the TLS peer venv's do not). The version is the bench's
# MITMPROXY_VERSION (bench/src/peers.rs), which makes the same venv when it is missing.
mitmproxy_version=11.0.2
mitmproxy_venv=$repo/target/mitmproxy-venv
if ! "$mitmproxy_venv/bin/mitmdump" --version 2>/dev/null | grep -q "Mitmproxy: $mitmproxy_version"; then
    log "making the mitmproxy $mitmproxy_version venv in $mitmproxy_venv"
    rm -rf "$mitmproxy_venv"
    /usr/bin/python3 -m venv "$mitmproxy_venv" </dev/null || die "python3 -m venv failed (package python3-venv)"
    "$mitmproxy_venv/bin/pip" install --quiet "mitmproxy==$mitmproxy_version" </dev/null ||
        die "pip could not install mitmproxy $mitmproxy_version into $mitmproxy_venv"
else
    log "mitmproxy venv: present"
fi

log "done"
