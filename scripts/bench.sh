#!/usr/bin/env bash
# The bench: every mode × every workload in a lab of its own, report to bench/results/.
#   scripts/bench.sh            full run (3 repetitions; the 1 GiB object)
#   scripts/bench.sh --quick    one repetition, short durations (under 10 minutes)
# Extra arguments go to `loupe-bench run` (e.g. --modes direct,loupe-decrypt).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $EUID -ne 0 ]]; then
    echo "bench.sh: needs root (namespaces, XDP)" >&2
    exit 1
fi
scripts/setup.sh
cargo build --release --workspace
mkdir -p bench/results
exec target/release/loupe-bench run --out bench/results "$@"
