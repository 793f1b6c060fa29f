#!/usr/bin/env bash
# Build (or reuse) the Debian test corpus: v1, v2, v3, the edge tree and
# v3-dracut (below), cached under $CORPUS_DIR (default /var/tmp/stateless-bench/corpus), with
# ../shared/bench/corpus.sh. The mirrors come from this machine's apt
# sources, deb822 or one-line style.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
script=${SLATE_SHARED:-$here/../shared}/bench/corpus.sh
[ -f "$script" ] || { echo "corpus: $script not found (set SLATE_SHARED to the shared/ folder)" >&2; exit 1; }
uris() {
    { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' || true
      grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' || true; }
}
: "${MIRROR:=$(uris | grep -E '/debian/?$' | head -1 || true)}"
: "${SECURITY_MIRROR:=$(uris | grep -E 'debian-security/?$' | head -1 || true)}"
: "${MIRROR:=http://deb.debian.org/debian}"
: "${SECURITY_MIRROR:=http://deb.debian.org/debian-security}"
export MIRROR SECURITY_MIRROR
bash "$script"

# v3-dracut: a copy of v3 whose initramfs is made by dracut instead of
# initramfs-tools (dracut, its network modules, and dbus, without which
# Debian's dracut cannot build its default image on a systemd tree), for
# the boot tests of dracut trees. Built in v3-dracut.tmp and renamed when
# complete, like the shared script's trees.
CORPUS_DIR=${CORPUS_DIR:-/var/tmp/stateless-bench/corpus}
if [ ! -e "$CORPUS_DIR/v3-dracut.done" ]; then
    echo "corpus: building v3-dracut (v3 + dracut dracut-network dbus)" >&2
    t="$CORPUS_DIR/v3-dracut.tmp"
    for d in "$t" "$CORPUS_DIR/v3-dracut"; do
        [ -e "$d" ] && rm -rf --one-file-system "$d"
    done
    cp -a "$CORPUS_DIR/v3" "$t"
    cp "$t/etc/resolv.conf" "$t/etc/resolv.conf.corpus" 2>/dev/null || true
    cat /etc/resolv.conf > "$t/etc/resolv.conf"
    printf '#!/bin/sh\nexit 101\n' > "$t/usr/sbin/policy-rc.d"
    chmod 755 "$t/usr/sbin/policy-rc.d"
    # A private mount namespace: nothing mounted for the chroot outlives it.
    unshare -m --propagation private sh -ec '
        mount -t proc proc "$0/proc"; mount -t sysfs sys "$0/sys"; mount --rbind /dev "$0/dev"
        mount -t tmpfs tmpfs "$0/run"; mount -t tmpfs tmpfs "$0/tmp"
        chroot "$0" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
            DEBIAN_FRONTEND=noninteractive sh -ec "apt-get update -q && apt-get install -y -q \
            --no-install-recommends dracut dracut-network dbus && apt-get clean"' "$t" \
        > "$CORPUS_DIR/v3-dracut.apt.log" 2>&1 \
        || { tail -20 "$CORPUS_DIR/v3-dracut.apt.log" >&2; exit 1; }
    rm -f "$t/usr/sbin/policy-rc.d"
    if [ -f "$t/etc/resolv.conf.corpus" ]; then mv "$t/etc/resolv.conf.corpus" "$t/etc/resolv.conf"; fi
    [ -x "$t/usr/bin/dracut" ] && [ ! -e "$t/usr/sbin/update-initramfs" ] \
        || { echo "corpus: v3-dracut has no dracut, or still initramfs-tools" >&2; exit 1; }
    mv "$t" "$CORPUS_DIR/v3-dracut" && touch "$CORPUS_DIR/v3-dracut.done"
fi
