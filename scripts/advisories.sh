#!/usr/bin/env bash
# RustSec advisories (vulnerable, unsound, unmaintained or yanked-for-cause crates) in the
# dependency tree, checked offline against the snapshot in third_party/advisory-db: these
# machines reach package registries only, and the database lives on GitHub.
#
#   scripts/advisories.sh check    # cargo deny check advisories (scripts/test.sh runs this)
#   scripts/advisories.sh update   # replace the snapshot with GitHub's current database
#
# cargo-deny opens its database as a git clone of the database's URL, at
# <db-path>/advisory-db-<hash of the URL>, and judges its age by the clone's last commit:
# `check` makes that clone under target/ from the snapshot, as one commit dated as the
# snapshot, so deny.toml's maximum-db-staleness fails the check once the copy is too old.
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -d $HOME/.cargo/bin ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
die() {
    printf 'advisories: ERROR: %s\n' "$*" >&2
    exit 1
}

SNAPSHOT=third_party/advisory-db
# Where cargo-deny 0.20 looks for https://github.com/RustSec/advisory-db (its default).
DB_NAME=advisory-db-3157b0e258782691

snapshot_field() {
    sed -n "s/^$1=//p" "$SNAPSHOT/SNAPSHOT"
}

check() {
    local commit date dbs db
    commit=$(snapshot_field commit)
    date=$(snapshot_field date)
    [[ -n $commit && -n $date ]] || die "$SNAPSHOT/SNAPSHOT names no commit or date"
    dbs=$(realpath -m "${CARGO_TARGET_DIR:-target}/advisory-dbs")
    db=$dbs/$DB_NAME
    rm -rf "$db"
    mkdir -p "$db"
    cp -r "$SNAPSHOT/crates" "$SNAPSHOT/rust" "$db/"
    git -C "$db" init -q
    git -C "$db" add -A
    GIT_AUTHOR_DATE=$date GIT_COMMITTER_DATE=$date \
        git -C "$db" -c user.name=loupe -c user.email=loupe@localhost commit -q -m "RustSec advisory-db $commit"
    echo "advisories: RustSec advisory-db $commit ($date)"
    LOUPE_ADVISORY_DBS=$dbs cargo deny --offline check advisories
}

update() {
    local tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    git clone -q --depth 1 https://github.com/rustsec/advisory-db "$tmp/db" ||
        die "cannot clone the advisory database from GitHub"
    rm -rf "$SNAPSHOT/crates" "$SNAPSHOT/rust"
    cp -r "$tmp/db/crates" "$tmp/db/rust" "$tmp/db/LICENSE.txt" "$SNAPSHOT/"
    sed -i "s/^commit=.*/commit=$(git -C "$tmp/db" rev-parse HEAD)/; s/^date=.*/date=$(git -C "$tmp/db" show -s --format=%cI HEAD)/" \
        "$SNAPSHOT/SNAPSHOT"
    echo "advisories: snapshot updated to $(snapshot_field commit) ($(snapshot_field date))"
}

case ${1:-check} in
check) check ;;
update) update ;;
*)
    echo "usage: scripts/advisories.sh [check|update]" >&2
    exit 2
    ;;
esac
