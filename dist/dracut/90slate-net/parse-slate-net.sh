#!/bin/sh
# dracut cmdline hook: `boot=slate-net` makes the root slate's (see
# module-setup.sh). Kernel command line: as for initramfs-tools'
# scripts/slate-net (docs/diskless.md): slate.snapshot, slate.server,
# slate.cache, slate.fill, slate.from=disk, ip=.
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

[ "$(getarg boot=)" = slate-net ] || return 0

root=slate
rootok=1
if getarg slate.from=disk > /dev/null; then
    # Started from the cache partition's own menu: the machine may have no
    # network at all, so the root comes from the cache once the disks
    # have settled, without waiting for an interface.
    /sbin/initqueue --settled --onetime --unique --name slate-net /sbin/slateroot none slate "$NEWROOT"
else
    # dracut's network brings the interfaces up (ip=dhcp by default) and
    # calls /sbin/slateroot with the first that works; netroot.sh reads
    # root= and netroot= again from the command line, so they are put
    # there.
    netroot=slate
    mkdir -p /etc/cmdline.d
    echo "root=slate netroot=slate rd.neednet=1" > /etc/cmdline.d/90slate-net.conf
fi
# The boot waits for the root to be mounted (or for the step to fail).
echo '[ -f /run/slate/netboot/info.json ] || [ -f /run/slate/netboot/failed ]' > "$hookdir"/initqueue/finished/slate-net.sh
