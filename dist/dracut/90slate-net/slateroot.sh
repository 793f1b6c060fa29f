#!/bin/sh
# dracut netroot handler for `root=slate` (parse-slate-net.sh): mount the
# snapshot the fleet assigns as the root, with `slate netboot root`.
# Arguments: INTERFACE (or "none") NETROOT NEWROOT.
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin

NEWROOT="${3:-/sysroot}"
# Called once per interface that comes up: the first one mounts.
[ -f /run/slate/netboot/info.json ] && exit 0
[ -f /run/slate/netboot/failed ] && exit 0
for m in fuse ext4; do
    modprobe -q "$m" 2> /dev/null
done
mkdir -p /run/slate/netboot
slate netboot root --root "$NEWROOT" > /run/slate/netboot/step.log 2>&1
rc=$?
cat /run/slate/netboot/step.log > /dev/console 2>&1
[ "$rc" = 0 ] && exit 0
if [ "$rc" = 75 ]; then
    # The fleet assigns another snapshot than this kernel's: start again
    # so that the network boot loads it.
    echo "slate: restarting in 5 seconds" > /dev/console
    sleep 5
    echo b > /proc/sysrq-trigger
fi
last=""
while IFS= read -r line; do
    [ -n "$line" ] && last="$line"
done < /run/slate/netboot/step.log
: > /run/slate/netboot/failed
echo "slate: NETWORK BOOT STOPPED: ${last#slate: error: }" > /dev/console
# With panic=N the machine restarts after N seconds (and the firmware
# tries the network again); without it, dracut's emergency shell.
delay=$(getarg panic=)
case "$delay" in
"" | 0 | *[!0-9]*) ;;
*)
    echo "slate: restarting in $delay seconds" > /dev/console
    sleep "$delay"
    echo b > /proc/sysrq-trigger
    ;;
esac
die "slate: ${last#slate: error: }"
