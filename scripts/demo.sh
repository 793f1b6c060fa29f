#!/usr/bin/env bash
# slate's main job on an embedded default tree: build a small OS-like tree,
# commit it signed, change it, commit again, check both out, verify them
# bit for bit, and show what changed.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
slate=${SLATE:-$here/target/release/slate}
work=${DEMO_DIR:-/var/tmp/slate-demo}
rm -rf "$work"; mkdir -p "$work"
tree=$work/tree
say() { printf '\n== %s\n' "$*" >&2; }

say "building a small tree in $tree"
mkdir -p "$tree"/{etc,usr/bin,usr/lib,var/log,dev,home/user}
printf 'PRETTY_NAME="slate demo 1"\nID=slate-demo\nVERSION_ID=1\n' > "$tree/etc/os-release"
echo demo-host > "$tree/etc/hostname"
cp /bin/sh "$tree/usr/bin/sh"; chmod 4755 "$tree/usr/bin/sh"
head -c 3000000 /dev/urandom > "$tree/usr/lib/blob.bin"
ln -s ../usr/bin/sh "$tree/etc/shell-link"
ln "$tree/usr/bin/sh" "$tree/usr/bin/sh-hardlink"
mkfifo "$tree/var/log/pipe"
mknod "$tree/dev/null" c 1 3 2>/dev/null || true
truncate -s 100M "$tree/var/log/sparse.img"
printf 'data' | dd of="$tree/var/log/sparse.img" bs=1 seek=50000000 conv=notrunc status=none
setfattr -n user.demo -v "hello" "$tree/etc/hostname" 2>/dev/null || true
chown 1234:5678 "$tree/home/user"

say "slate init, keygen, commit (signed)"
"$slate" init --repo "$work/repo"
"$slate" keygen --out "$work/signing.key" >/dev/null
id1=$("$slate" commit --repo "$work/repo" --channel demo/lab --sign "$work/signing.key" -m "first" "$tree")

say "change the tree and commit again"
printf 'PRETTY_NAME="slate demo 2"\nID=slate-demo\nVERSION_ID=2\n' > "$tree/etc/os-release"
head -c 100000 /dev/urandom >> "$tree/usr/lib/blob.bin"
id2=$("$slate" commit --repo "$work/repo" --channel demo/lab --sign "$work/signing.key" -m "second" "$tree")

say "slate log demo/lab"
"$slate" log --repo "$work/repo" demo/lab
say "slate diff $id1 $id2 (what a client holding the first needs)"
"$slate" diff --repo "$work/repo" "${id1:0:12}" "${id2:0:12}"

say "slate checkout demo/lab and demo/lab~1"
"$slate" checkout --repo "$work/repo" demo/lab "$work/checkout-2"
"$slate" checkout --repo "$work/repo" demo/lab~1 "$work/checkout-1"
digest=${SLATE_SHARED:-$here/../shared}/bench/treedigest.py
if [ -f "$digest" ]; then
    python3 "$digest" "$tree" > "$work/tree.digest"
    python3 "$digest" "$work/checkout-2" > "$work/checkout.digest"
    cmp -s "$work/tree.digest" "$work/checkout.digest" && echo "checkout is bit for bit identical to the tree (treedigest)" >&2 \
        || { echo "demo: checkout differs from the tree" >&2; exit 1; }
fi

say "slate verify --trust signing.key.pub"
"$slate" verify --repo "$work/repo" --trust "$work/signing.key.pub"
say "done: repository in $work/repo"
