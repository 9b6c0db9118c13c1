#!/usr/bin/env bash
# The fuzz targets of dataplane/fuzz (cargo-fuzz, nightly, libFuzzer):
#   fuzz.sh replay              build every target and run each over its seeds and its
#                               kept corpus (replay/TARGET) once: the suite's step
#   fuzz.sh run TARGET RUNS     fuzz TARGET for RUNS inputs from its seeds, its kept
#                               corpus and what earlier runs grew (corpus/TARGET)
#   fuzz.sh keep TARGET         minimise corpus/TARGET into replay/TARGET (committed)
# Seeds live as hex in seeds/TARGET/*.hex (client_hello's: src/tls/testdata/*.hex, after
# a chunking-seed byte); they are turned into files under target/seeds/TARGET first.
set -euo pipefail

cd "$(dirname "$0")/../dataplane/fuzz"
if [[ -d $HOME/.cargo/bin ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

TARGETS=(client_hello http1 hpack http2 url_rules rules config control_request frame)
# libFuzzer's input bound per target: what the target's format needs.
max_len() {
    case $1 in
        client_hello) echo 8192 ;;
        rules) echo 2048 ;;
        config) echo 16384 ;;
        *) echo 4096 ;;
    esac
}

known() {
    local t
    for t in "${TARGETS[@]}"; do
        [[ $t == "$1" ]] && return 0
    done
    echo "fuzz.sh: unknown target '$1' (known: ${TARGETS[*]})" >&2
    exit 2
}

# target/seeds/TARGET: the seeds as the target reads them.
seed_dir() {
    local target=$1 dir=target/seeds/$1 f
    rm -rf "$dir"
    mkdir -p "$dir"
    if [[ $target == client_hello ]]; then
        for f in ../src/tls/testdata/*.hex; do
            { printf '\x05'; xxd -r -p "$f"; } >"$dir/seed_$(basename "$f" .hex)"
        done
    else
        for f in seeds/"$target"/*.hex; do
            xxd -r -p "$f" >"$dir/seed_$(basename "$f" .hex)"
        done
    fi
    echo "$dir"
}

case ${1:-} in
    replay)
        cargo +nightly fuzz build
        for t in "${TARGETS[@]}"; do
            dirs=("$(seed_dir "$t")")
            [[ -d replay/$t ]] && dirs+=("replay/$t")
            echo "fuzz.sh: replaying $t over ${dirs[*]}"
            cargo +nightly fuzz run "$t" "${dirs[@]}" -- -runs=0 -max_len="$(max_len "$t")"
        done
        ;;
    run)
        [[ $# -eq 3 ]] || { echo "usage: fuzz.sh run TARGET RUNS" >&2; exit 2; }
        known "$2"
        mkdir -p "corpus/$2"
        dirs=("corpus/$2" "$(seed_dir "$2")")
        [[ -d replay/$2 ]] && dirs+=("replay/$2")
        cargo +nightly fuzz run "$2" "${dirs[@]}" -- -runs="$3" -max_len="$(max_len "$2")"
        ;;
    keep)
        [[ $# -eq 2 ]] || { echo "usage: fuzz.sh keep TARGET" >&2; exit 2; }
        known "$2"
        # cmin keeps, in place, the fewest inputs that cover what the whole corpus covers.
        cargo +nightly fuzz cmin "$2" "corpus/$2" -- -max_len="$(max_len "$2")"
        rm -rf "replay/$2"
        mkdir -p replay
        cp -r "corpus/$2" "replay/$2"
        ;;
    *)
        sed -n '2,8p' "$0" >&2
        exit 2
        ;;
esac
