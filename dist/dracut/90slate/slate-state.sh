#!/bin/sh
# dracut pre-pivot hook: the read-only root and its declared state, set up
# on $NEWROOT before switch_root. The same steps as initramfs-tools'
# init-bottom/slate; kernel command line: slate.state=DEV, slate.nostate.
type getarg >/dev/null 2>&1 || . /lib/dracut-lib.sh

getargbool 0 slate.nostate && return 0
[ -f "$NEWROOT/etc/slate/state.toml" ] || return 0
STATE_DEV=$(getarg slate.state=)
[ -n "$STATE_DEV" ] || STATE_DEV=/dev/disk/by-partlabel/slate-state

STATE_ARGS=""
CONFIG=""
if [ "$STATE_DEV" != none ]; then
    mkdir -p /run/slate-state
    if mount -t ext4 "$STATE_DEV" /run/slate-state; then
        STATE_ARGS="--state-dir /run/slate-state/store"
        KEPT=/run/slate-state/store/local
        if [ -f "$KEPT/etc/slate/agent.toml" ]; then
            CONFIG="--config $KEPT/etc/slate/agent.toml"
            [ -f "$KEPT/var/lib/slate/token" ] && CONFIG="$CONFIG --token-file $KEPT/var/lib/slate/token"
        fi
        [ -f "$KEPT/var/lib/slate/state-policy.toml" ] && STATE_ARGS="$STATE_ARGS --policy $KEPT/var/lib/slate/state-policy.toml"
    else
        warn "slate: cannot mount the state partition $STATE_DEV; local state is not available this boot"
    fi
fi
if [ -z "$CONFIG" ] && [ -f "$NEWROOT/etc/slate/agent.toml" ]; then
    CONFIG="--config $NEWROOT/etc/slate/agent.toml"
fi
# Stop a boot that cannot succeed: with panic=N on the kernel command line
# the machine restarts after N seconds (spending one of the slot's boot
# tries), else dracut's emergency shell.
slate_fail() {
    warn "slate: $1"
    delay=$(getarg panic=)
    case "$delay" in
    "" | 0 | *[!0-9]*) die "slate: $1" ;;
    esac
    sleep "$delay"
    echo b > /proc/sysrq-trigger
    die "slate: $1"
}

# shellcheck disable=SC2086
slate state apply --root "$NEWROOT" $STATE_ARGS $CONFIG \
    || slate_fail "the declared state could not be set up (boot with slate.nostate to skip)"
umount -l /run/slate-state 2>/dev/null
init=$(getarg init=)
[ -n "$init" ] || init=/sbin/init
if ! chroot "$NEWROOT" test -x "$init" 2>/dev/null; then
    slate_fail "the new root has no $init: this slot cannot start"
fi
return 0
