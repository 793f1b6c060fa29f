#!/bin/sh
# dracut pre-pivot hook: the read-only root and its declared state, set up
# on $NEWROOT before switch_root. The same steps as initramfs-tools'
# init-bottom/slate (fallback to the last policy that worked with the slot,
# a count of failed boots, rescue mode); kernel command line:
# slate.state=DEV, slate.nostate.
type getarg >/dev/null 2>&1 || . /lib/dracut-lib.sh

getargbool 0 slate.nostate && return 0
[ -f "$NEWROOT/etc/slate/state.toml" ] || [ -f /run/slate/netboot/state-policy.toml ] || return 0
STATE_DEV=$(getarg slate.state=)
[ -n "$STATE_DEV" ] || STATE_DEV=/dev/disk/by-partlabel/slate-state
SLOT=$(getarg slate.slot=)
# A network boot (90slate-net mounted the root): the state store is the
# cache partition's store/, or RAM; the fleet's signed policy, if it sent
# one, wins over the tree's.
NETBOOT=""
if [ -f /run/slate/netboot/info.json ]; then
    NETBOOT=1
    STATE_DEV=ram
    [ -f /run/slate/netboot/state-dev ] && read -r STATE_DEV < /run/slate/netboot/state-dev
fi

# Warnings go to the console and to /run/slate/warnings (kept across
# switch_root): `slate boot-ok` reports them to the fleet.
mkdir -p /run/slate
: > /run/slate/warnings
slate_warn() {
    warn "slate: $1"
    echo "$1" >> /run/slate/warnings
}

STATE_ARGS=""
CONFIG=""
POLICY_FILE="$NEWROOT/etc/slate/state.toml"
KEPT=""
if [ "$STATE_DEV" = ram ]; then
    # A diskless machine: its local and backup paths are kept in RAM,
    # like everything else.
    mkdir -p /run/slate-state
    mount -t tmpfs -o mode=0755 slate-state /run/slate-state
    STATE_ARGS="--state-dir /run/slate-state/store"
    KEPT=/run/slate-state/store/local
elif [ "$STATE_DEV" != none ]; then
    mkdir -p /run/slate-state
    if mount -t ext4 "$STATE_DEV" /run/slate-state; then
        STATE_ARGS="--state-dir /run/slate-state/store"
        KEPT=/run/slate-state/store/local
        if [ -s "$KEPT/etc/slate/agent.toml" ]; then
            CONFIG="--config $KEPT/etc/slate/agent.toml"
            [ -f "$KEPT/var/lib/slate/token" ] && CONFIG="$CONFIG --token-file $KEPT/var/lib/slate/token"
        fi
        [ -f "$KEPT/var/lib/slate/state-policy.toml" ] && POLICY_FILE="$KEPT/var/lib/slate/state-policy.toml"
    else
        slate_warn "cannot mount the state partition $STATE_DEV; local state is not available this boot"
    fi
fi
if [ -n "$NETBOOT" ]; then
    CONFIG="--config /run/slate/netboot/agent.toml"
    [ -f /run/slate/netboot/state-policy.toml ] && POLICY_FILE=/run/slate/netboot/state-policy.toml
    # The booted system's /etc/slate/agent.toml (slate's own `local`
    # state) is the one this boot wrote.
    if [ -n "$KEPT" ] && mkdir -p "$KEPT/etc/slate"; then
        cat /run/slate/netboot/agent.toml > "$KEPT/etc/slate/agent.toml"
    fi
fi
if [ -z "$CONFIG" ] && [ -f "$NEWROOT/etc/slate/agent.toml" ]; then
    CONFIG="--config $NEWROOT/etc/slate/agent.toml"
fi
AGENT_TOML="${CONFIG#--config }"
AGENT_TOML="${AGENT_TOML%% *}"
# Stop a boot that cannot succeed: with panic=N on the kernel command line
# the machine restarts after N seconds (spending one of the slot's boot
# tries), else dracut's emergency shell.
slate_fail() {
    warn "slate: $1"
    delay=$(getarg panic=)
    case "$delay" in
    "" | 0 | *[!0-9]*) die "slate: $1" ;;
    esac
    echo "slate: restarting in $delay seconds"
    sleep "$delay"
    echo b > /proc/sysrq-trigger
    die "slate: $1"
}

apply_state() {
    # shellcheck disable=SC2086
    slate state apply --root "$NEWROOT" $STATE_ARGS --policy "$1" $CONFIG --warnings-file /run/slate/warnings
}

FAILS=""
[ -n "$KEPT" ] && FAILS="$KEPT/var/lib/slate/boot-failures-${SLOT:-x}"
TRIES=""
if [ -f "$AGENT_TOML" ]; then
    while IFS=' =' read -r k v _; do
        [ "$k" = boot_tries ] && [ -z "$TRIES" ] && TRIES="$v"
    done < "$AGENT_TOML"
fi
case "$TRIES" in "" | *[!0-9]*) TRIES=3 ;; esac
GOOD=""
[ -n "$KEPT" ] && GOOD="$KEPT/var/lib/slate/good-policy-${SLOT:-x}.toml"

if apply_state "$POLICY_FILE"; then
    cat "$POLICY_FILE" > /run/slate/state-policy.toml 2>/dev/null
    [ -n "$FAILS" ] && [ -f "$FAILS" ] && echo 0 > "$FAILS"
elif [ -f "$GOOD" ] && apply_state "$GOOD"; then
    warn "slate: the state policy $POLICY_FILE failed on slot ${SLOT:-?}; booted with the last policy that worked with this slot ($GOOD)"
    echo "the state policy failed at boot on slot ${SLOT:-?}; fell back to the last policy that worked with it" > /run/slate/policy-fallback
    cat "$GOOD" > /run/slate/state-policy.toml 2>/dev/null
    [ -n "$FAILS" ] && [ -f "$FAILS" ] && echo 0 > "$FAILS"
else
    n=99
    if [ -n "$FAILS" ]; then
        n=$(cat "$FAILS" 2>/dev/null)
        case "$n" in "" | *[!0-9]*) n=0 ;; esac
        n=$((n + 1))
        if mkdir -p "${FAILS%/*}" && echo "$n" > "$FAILS"; then sync; else n=99; fi
    fi
    # A network boot has no other slot to fall back to: restarting would
    # only repeat the failure.
    [ -n "$NETBOOT" ] && n=99
    if [ "$n" -le "$TRIES" ]; then
        slate_fail "the declared state could not be set up (failure $n of $TRIES on slot ${SLOT:-?}; boot with slate.nostate to skip)"
    fi
    warn "slate: the declared state failed on $n boots in a row of slot ${SLOT:-?} (99: not countable): not restarting again"
    warn "slate: RESCUE MODE: starting the read-only root without its declared state (docs/boot.md); see the errors above"
    echo "the declared state failed on every try on slot ${SLOT:-?}; booted in rescue mode" > /run/slate/rescue
    cat > /run/slate/rescue.toml <<'RESCUE'
version = 1
[[path]]
path = "/tmp"
state = "ram"
seed = "none"
[[path]]
path = "/var/tmp"
state = "ram"
seed = "none"
[[path]]
path = "/var/log"
state = "ram"
seed = "dirs"
[[path]]
path = "/var/cache"
state = "ram"
[[path]]
path = "/var/lib/systemd"
state = "ram"
[[path]]
path = "/var/lib/dhcp"
state = "ram"
[[path]]
path = "/root"
state = "ram"
RESCUE
    apply_state /run/slate/rescue.toml || STATE_ARGS="" apply_state /run/slate/rescue.toml \
        || warn "slate: even the rescue state failed; the root stays as it is"
fi
umount -l /run/slate-state 2>/dev/null
init=$(getarg init=)
[ -n "$init" ] || init=/sbin/init
if ! chroot "$NEWROOT" test -x "$init" 2>/dev/null; then
    slate_fail "the new root has no $init: this slot cannot start"
fi
return 0
