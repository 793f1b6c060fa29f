#!/usr/bin/env bash
# Regenerate the seed corpus under fuzz/corpus/ (committed; run this only
# when a format changes). Builds a tiny repository with the slate binary:
# two snapshots of a small tree (files, a hard link, a symlink, a sparse
# file, an empty directory), signed, with a delta between them; then
# `slate-fuzz --make-seeds` takes the objects out of it and adds the seeds
# made with the encoders. Usage: fuzz/make-seeds.sh [SLATE] [SLATE_FUZZ]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
slate=${1:-$here/../target/release/slate}
fuzzbin=${2:-${SLATE_FUZZ_TARGET:-/var/tmp/slate-fuzz/target}/release/slate-fuzz}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

tree=$work/tree
mkdir -p "$tree/etc/app" "$tree/usr/bin" "$tree/var/empty"
printf 'name = "lab"\nport = 8080\n' >"$tree/etc/app/app.conf"
printf 'seed file\n' >"$tree/etc/hostname"
head -c 3000 /dev/zero | tr '\0' 'x' >"$tree/usr/bin/tool"
chmod 755 "$tree/usr/bin/tool"
ln "$tree/usr/bin/tool" "$tree/usr/bin/tool-link"
ln -s app/app.conf "$tree/etc/conf"
truncate -s 1M "$tree/var/sparse"
printf 'data' | dd of="$tree/var/sparse" bs=1 seek=500000 conv=notrunc status=none

"$slate" init --repo "$work/repo" >/dev/null
"$slate" keygen --out "$work/key" >/dev/null
a=$("$slate" commit --repo "$work/repo" --channel seeds/main --sign "$work/key" -m first --meta kernel=vmlinuz "$tree")
printf 'port = 9090\n' >>"$tree/etc/app/app.conf"
printf 'a new file\n' >"$tree/etc/new"
b=$("$slate" commit --repo "$work/repo" --channel seeds/main --sign "$work/key" -m second "$tree")
"$slate" delta --repo "$work/repo" --level 3 "$a" "$b" >/dev/null

rm -rf "$here/corpus"
"$fuzzbin" --make-seeds "$work/repo" "$here/corpus"
cp "$here/../dist/state/"*.toml "$here/corpus/state_policy/" 2>/dev/null || {
    mkdir -p "$here/corpus/state_policy"
    cp "$here/../dist/state/"*.toml "$here/corpus/state_policy/"
}
du -sh "$here/corpus"
