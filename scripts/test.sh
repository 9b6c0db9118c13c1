#!/usr/bin/env bash
# The one test command (README and .ci/run call it): installs what is missing, builds,
# checks formatting and lints, and runs the whole suite, privileged lab tests included.
# Exits non-zero on the first failing step.
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: ERROR: must run as root: the suite builds network namespaces and attaches XDP," >&2
    echo "test.sh: and its privileged tests fail rather than skip without root." >&2
    exit 1
fi

# rustup's cargo when the environment (CI) does not have it on PATH.
if [[ -d $HOME/.cargo/bin ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() {
    local name=$1
    shift
    local t0=$SECONDS
    echo "==> $name: $*"
    if ! "$@"; then
        echo "test.sh: FAILED at step '$name' ($*)" >&2
        exit 1
    fi
    echo "==> $name: ok ($((SECONDS - t0))s)"
}

step setup bash scripts/setup.sh
step build cargo build --release --workspace
step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
# Licenses and sources of every dependency (deny.toml).
step deny cargo deny check licenses sources bans
# RustSec advisories, offline, against the snapshot in third_party/advisory-db.
step advisories bash scripts/advisories.sh check
# Every fuzz target once over its seeds and its kept corpus (dataplane/fuzz/replay).
step fuzz-replay bash scripts/fuzz.sh replay
# One test at a time: the lab tests each build namespaces and move hundreds of MiB,
# and the machines have two cores.
step test cargo test --release --workspace -- --test-threads=1
echo "test.sh: all steps passed"
