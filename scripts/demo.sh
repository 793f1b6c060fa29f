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

say "slate serve on 127.0.0.1, and a client with two slots"
printf '[default]\nchannel = "demo/lab"\n' > "$work/fleet.toml"
# The online fleet key signs assignments; signing.key (offline) signs snapshots.
"$slate" keygen --out "$work/fleet.key" >/dev/null
# Every machine has its own token for the fleet API; the administrator has one
# for `slate fleet status`.
"$slate" fleet enroll --force --repo "$work/repo" demo-client > "$work/demo-client.token"
"$slate" fleet admin-token --force "$work/admin.token" >/dev/null
"$slate" serve --repo "$work/repo" --listen 127.0.0.1:0 --fleet "$work/fleet.toml" \
    --fleet-key "$work/fleet.key" --admin-token-file "$work/admin.token" 2> "$work/serve.log" &
server_pid=$!
trap 'kill $server_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q "serving" "$work/serve.log" 2>/dev/null && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$work/serve.log" | head -1)
[ -n "$url" ] || { cat "$work/serve.log" >&2; exit 1; }
cat > "$work/agent.toml" <<EOT
# Plain http on the loopback address only: the token may cross it.
server = [{ url = "$url", token = true, token_over_http = true }]
token_file = "$work/demo-client.token"
trust = ["$work/signing.key.pub"]
fleet_trust = ["$work/fleet.key.pub"]
state_dir = "$work/client/state"
machine_id = "demo-client"
bootloader = "grub"
boot_dir = "$work/client/boot"
[slots]
a = "$work/client/slot-a"
b = "$work/client/slot-b"
EOT
say "slate update: the first pass installs the head into slot a"
"$slate" update --config "$work/agent.toml"

say "a third version, a delta for clients on the second, and the next pass"
echo "update 3" > "$tree/etc/motd"
"$slate" commit --repo "$work/repo" --channel demo/lab --sign "$work/signing.key" -m "third" "$tree" >/dev/null
"$slate" delta --repo "$work/repo" demo/lab~1 demo/lab
"$slate" update --config "$work/agent.toml"
say "slate status (slot b boots next, on trial) and slate fleet status"
"$slate" status --config "$work/agent.toml"
"$slate" fleet status --server "$url" --token-file "$work/admin.token"
if [ -f "$digest" ]; then
    python3 "$digest" "$work/client/slot-b" > "$work/slot.digest"
    python3 "$digest" "$tree" > "$work/tree.digest"
    cmp -s "$work/slot.digest" "$work/tree.digest" && echo "slot b is bit for bit the committed tree (treedigest)" >&2 \
        || { echo "demo: slot b differs from the tree" >&2; exit 1; }
fi
say "done: repository in $work/repo, client in $work/client"
