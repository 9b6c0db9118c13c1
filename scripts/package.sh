#!/usr/bin/env bash
# Builds the Debian packages: `loupe` (loupe, loupectl, the systemd unit, the default
# configuration, log rotation, man pages, completions) and `loupe-bench`, with cargo-deb,
# into target/debian/. Prints the paths of the .debs, one per line, last.
#   scripts/package.sh            # build what is missing, then package
# Needs cargo-deb and dpkg-dev (scripts/setup.sh installs them).
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -d $HOME/.cargo/bin ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
die() {
    printf 'package: ERROR: %s\n' "$*" >&2
    exit 1
}
command -v cargo-deb >/dev/null || die "cargo-deb not found: run scripts/setup.sh"

# One build of the workspace: the loupe package also carries loupectl (loupe-control),
# which cargo-deb would not build for loupe-dataplane. Then cargo-deb packages the
# binaries as built (--no-build), stripped of the release profile's line tables.
echo "package: building the release binaries" >&2
cargo build --release --workspace --bins >&2

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
docs=$target_dir/release/package-docs
rm -rf "$docs"
for binary in loupe loupectl loupe-bench; do
    "$target_dir/release/$binary" generate-docs --out "$docs/$binary" >/dev/null ||
        die "$binary generate-docs failed"
done
# Debian wants man pages gzipped (-n: no name or time stamp, so builds are reproducible);
# cargo-deb compresses only pages that are not build outputs.
gzip -9n "$docs"/*/man/*.1

out=$target_dir/debian
mkdir -p "$out"
debs=()
for package in loupe-dataplane loupe-bench; do
    echo "package: packaging $package" >&2
    deb=$(cargo deb --no-build --strip --no-dbgsym -p "$package" -o "$out" | tail -n 1) ||
        die "cargo deb -p $package failed"
    [[ -f $deb ]] || die "cargo deb -p $package did not say where the package went (said: $deb)"
    debs+=("$deb")
done
printf '%s\n' "${debs[@]}"
