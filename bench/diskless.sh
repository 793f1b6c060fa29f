#!/usr/bin/env bash
# diskless.sh — machines that boot from the network (issue 13) beside a
# local-disk boot and beside Debian live-boot's whole-squashfs-over-HTTP
# way, on the corpus's v3 Debian tree, in the same run.
#
# One tree: a copy of v3 with a marker unit (below), `slate prepare TREE
# --trust key.pub --fleet-trust fleet.key.pub` (the lean network-boot
# initramfs with both keys), committed signed to channel lab of a repository
# that `slate serve --fleet FLEET.toml --fleet-key fleet.key` offers on
# 127.0.0.1. Every guest runs under qemu with software emulation (q35
# -nodefaults, 1 vCPU, 1 GiB, like the boot tests) and one network card on
# qemu's user network with restrict=on: it reaches nothing but
# 10.0.2.100:80, which qemu forwards (guestfwd, `nc 127.0.0.1 PORT`) to an
# nginx on 127.0.0.1 that proxies to `slate serve` (and serves the live-boot
# files itself). nginx's access log (time, bytes sent with headers, request)
# is where bytes and requests are counted: every request the guest made
# from the start of qemu to the marker line.
#
# Systems (each boot a fresh qemu; all on the same snapshot):
#   local     `slate install --disk IMG --size 6G --slot-size 2G --firmware
#             bios --config TEMPLATE` (A/B; made again before each boot, so
#             every boot is a first one), booted from its virtio disk.
#   diskless  no disk; qemu's iPXE ROM gets http://10.0.2.100/v1/boot/ipxe
#             from DHCP, then the kernel and lean initramfs from slate serve;
#             the root is `slate mount` with its cache in RAM. The
#             snapshot's boot profile is moved out of the repository for
#             these boots.
#   profile   the same with the snapshot's signed boot profile in the
#             repository. The profile is recorded once, untimed, by a
#             diskless boot with `slate.record` on the kernel command line
#             (FLEET.toml's [netboot] kernel_cmdline, for that boot only):
#             its marker waits 12 s past the marker line (the daemon writes
#             the profile every 10 s), then prints the profile (gzip,
#             base64) on the marker port; `slate profile sign` attaches it.
#             So the profile holds what that boot read up to about 12 s
#             after its marker.
#   cached    a disk made by `slate install --mode cached --disk IMG --size
#             3G --firmware bios`, filled once beforehand by a network boot
#             whose marker waits for the fill to complete (untimed); then
#             network boots with that complete cache (iPXE still loads the
#             kernel and initramfs from the server).
#   offline   the same disk, the forward leading to a port where nothing
#             listens: iPXE gives up, the firmware boots the disk's cached
#             kernel (`slate.from=disk`), the root from the cache alone.
#   live      Debian's way: another copy of v3 with the same marker, with
#             live-boot, live-boot-initramfs-tools and busybox installed
#             (apt-get in a chroot, in a private mount namespace, as
#             bench/live.sh does) and its initramfs regenerated;
#             `mksquashfs -comp xz` of it served by nginx; qemu's iPXE loads
#             an iPXE script naming its kernel and initrd with `boot=live
#             components fetch=http://10.0.2.100/live/filesystem.squashfs`:
#             live-boot downloads the whole image into RAM, then mounts it.
# The marker unit (After=multi-user.target) prints on the second serial
# port (ttyS1) `SLATE-MARKER uptime=... mode=...` with, from the mount
# daemon's status file, fetched_bytes and requests, the daemon's VmRSS, the
# RAM cache's use (df of /run/slate/netboot/ram) and MemTotal and
# MemTotal - MemAvailable; the script stops qemu as soon as that line is
# there (network-booted machines do not power off by themselves yet,
# docs/diskless.md, Limits). On a machine with a cache partition the marker
# script then waits for the cache to be complete, runs `sync` and prints
# SLATE-FILL; the script cuts the power only after that line (untimed): the
# cache's files are renamed into place without a sync, and a power cut right
# after they were written leaves a cache that the next boot finds
# incomplete (seen in the first run: the offline boot then refused to start
# and the online one fetched a pack again).
# Per boot: wall time from starting qemu to the marker line, the guest's
# uptime at the marker, and from nginx's log: root-filesystem bytes and
# requests (/v1/repo/... and the pack list /v1/packs: snapshot record,
# manifest, pack indexes, profile, pack ranges; live: the squashfs), the kernel's and initramfs's
# bytes, everything else (iPXE scripts, the assignment, ...).
# Repetitions: REPS; in each the systems run one after the other, the order
# rotating from one repetition to the next. Prints a Markdown table of
# medians and ratios to the local-disk boot (same run), with the issue's
# goals, and writes it to $W/results.md.
#
# Usage:  bash bench/diskless.sh            (as root, after `make build corpus`)
# Env:    REPS          repetitions          (default 2)
#         SYSTEMS       which to run         (default "local diskless profile cached offline live")
#         W             work dir             (default /var/tmp/slate-diskless-bench; emptied)
#         SLATE         slate binary         (default target/release/slate; copied into $W)
#         SLATE_CORPUS  the corpus           (default /var/tmp/stateless-bench/corpus)
#         BOOT_TIMEOUT  seconds per boot     (default 600)
#         PORT_BASE     127.0.0.1 ports PORT_BASE..PORT_BASE+2 (default 18800: nginx,
#                       slate serve, a port where nothing listens)
#         KEEP=1        keep the disk images, trees and repository
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
SLATE=${SLATE:-$ROOT/target/release/slate}
CORPUS=${SLATE_CORPUS:-/var/tmp/stateless-bench/corpus}
REPS=${REPS:-2}
SYSTEMS=${SYSTEMS:-local diskless profile cached offline live}
W=${W:-/var/tmp/slate-diskless-bench}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-600}
PORT_BASE=${PORT_BASE:-18800}
KEEP=${KEEP:-0}
NICE=(nice -n 10)

die() { printf 'diskless.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf '[diskless.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer (got '$REPS')"
[ "$(id -u)" -eq 0 ] || die "run as root (loop devices, chroot, qemu)"
[ -x "$SLATE" ] || die "build first (make build)"
[ -f "$CORPUS/v3.done" ] || die "no corpus in $CORPUS (make corpus)"
case $(realpath -m "$W")/ in
    / | /var/ | /var/tmp/ | /tmp/ | /root/ | /home/ | "$(realpath -m "$CORPUS")"/* | "$ROOT"/*)
        die "W=$W is not a safe scratch directory (it is emptied)" ;;
esac
read -r -a SYS <<< "$SYSTEMS"
has() { case " $SYSTEMS " in *" $1 "*) return 0 ;; esac; return 1; }

missing=()
for pair in nginx:nginx-light nc:netcat-openbsd qemu-system-x86_64:qemu-system-x86 sgdisk:gdisk \
            mksquashfs:squashfs-tools /usr/lib/grub/i386-pc/boot.img:grub-pc-bin mkfs.ext4:e2fsprogs \
            python3:python3; do
    what=${pair%%:*}
    if [ "${what#/}" != "$what" ]; then [ -e "$what" ] || missing+=("${pair#*:}")
    else command -v "$what" >/dev/null 2>&1 || missing+=("${pair#*:}"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
        { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; } ||
        die "could not install ${missing[*]}"
fi

# ---- cleanup: only what this script started, mounted or attached ------------------------
QEMU_PID=
SERVE_PID=
NGINX_PID_FILE=$W/nginx/nginx.pid
stop_pid() {  # PID: TERM, wait up to 5 s, then KILL
    local p=$1 _
    kill -0 "$p" 2>/dev/null || return 0
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
}
umount_under() {  # every mount below DIR, deepest first
    local m
    findmnt -rn -o TARGET | awk -v d="$(realpath -m "$1")/" 'index($0 "/", d) == 1' | sort -r |
        while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
}
detach_loops() {  # loop devices backed by a file under $W
    local dev file
    losetup -n -O NAME,BACK-FILE 2>/dev/null | while read -r dev file; do
        case $file in "$(realpath -m "$W")"/*) losetup -d "$dev" 2>/dev/null || true ;; esac
    done
}
cleanup() {
    local rc=$?
    set +e
    [ -n "$QEMU_PID" ] && stop_pid "$QEMU_PID"
    [ -n "$SERVE_PID" ] && stop_pid "$SERVE_PID"
    if [ -s "$NGINX_PID_FILE" ]; then stop_pid "$(cat "$NGINX_PID_FILE")"; rm -f "$NGINX_PID_FILE"; fi
    umount_under "$W"
    detach_loops
    [ "$KEEP" = 1 ] || rm -rf --one-file-system "$W"/*.img "$W/tree" "$W/live.tree"
    [ $rc -eq 0 ] || printf 'diskless.sh: FAILED (exit %d); logs in %s\n' "$rc" "$W/logs" >&2
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

umount_under "$W"
detach_loops
rm -rf --one-file-system "$W"
mkdir -p "$W/bin" "$W/logs" "$W/boots" "$W/srv/live" "$W/nginx/tmp"
cp "$SLATE" "$W/bin/slate"
SLATE_SRC=$SLATE
SLATE=$W/bin/slate

NGINX_PORT=$PORT_BASE
SERVE_PORT=$((PORT_BASE + 1))
DEAD_PORT=$((PORT_BASE + 2))
for p in $NGINX_PORT $SERVE_PORT $DEAD_PORT; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p on 127.0.0.1 is in use (PORT_BASE)"; fi
done

ENV=$W/env.txt
env_rec() { printf '%s: %s\n' "$1" "$2" >> "$ENV"; }
pkgv() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo '?'; }
since() { awk -v t="$1" -v n="$EPOCHREALTIME" 'BEGIN{printf "%.1f", n - t}'; }
env_rec date "$(date -u '+%Y-%m-%d %H:%M UTC')"
env_rec machine "$(nproc) cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/^MemTotal:/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r)"
env_rec versions "qemu $(pkgv qemu-system-x86), nginx $(pkgv nginx-light), squashfs-tools $(pkgv squashfs-tools)"
env_rec slate "$("$SLATE" --version | head -1), copy of $SLATE_SRC (built $(date -u -r "$SLATE_SRC" '+%Y-%m-%d %H:%M UTC'))"
env_rec load_start "$(cut -d' ' -f1-3 /proc/loadavg)"
env_rec reps "$REPS"
env_rec systems "${SYS[*]}"
log "work dir $W, systems: ${SYS[*]}, $REPS repetitions"

# add_marker TREE: the marker script and unit, enabled for multi-user.target.
add_marker() {
    mkdir -p "$1/usr/local/sbin" "$1/etc/systemd/system/multi-user.target.wants"
    cat > "$1/usr/local/sbin/slate-bench-marker" <<'MARK'
#!/bin/sh
# slate's diskless benchmark (bench/diskless.sh): one line on ttyS1 at
# multi-user.target; a recording boot then prints its boot profile, a cached
# boot that is still filling waits for its fill.
read -r up _ < /proc/uptime
exec 3>/dev/ttyS1
echo >&3
say() { echo "$*" >&3; }
info=/run/slate/netboot/info.json
field() { sed -n "s/.*\"$1\": *\"\{0,1\}\([^\",}]*\)\"\{0,1\}.*/\1/p" "$2" 2>/dev/null | head -n1; }
mode=none; status=/nonexistent
if [ -f $info ]; then mode=$(field mode $info); status=$(field status_file $info); fi
daemon=$(ps -eo pid=,args= | awk '$2 == "@slate-mount" {print $1; exit}')
rss=$(awk '/VmRSS/ {print $2}' "/proc/${daemon:-0}/status" 2>/dev/null)
ramcache=$(df -k --output=used /run/slate/netboot/ram 2>/dev/null | tail -n1 | tr -d ' ')
total=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
used=$(awk '/^MemTotal:/ {t = $2} /^MemAvailable:/ {a = $2} END {print t - a}' /proc/meminfo)
say "SLATE-MARKER uptime=$up mode=${mode:-none} offline=$(field offline $info) from=$(field booted_from $info) fetched=$(field fetched_bytes "$status") requests=$(field requests "$status") daemon_kib=${rss:-0} ram_cache_kib=${ramcache:-0} mem_kib=$total used_kib=$used"
if grep -qw slate.record /proc/cmdline; then
    sleep 12
    p=$(find /run/slate/netboot -name boot.profile 2>/dev/null | head -n1)
    say "SLATE-PROFILE $(gzip -c "$p" | base64 -w0)"
fi
if [ "$mode" = cached ]; then
    n=0
    while [ $n -lt 1500 ]; do
        [ "$(field complete "$status")" = true ] && [ -f /run/slate/netboot/disk/boot/slate.cfg ] && break
        sleep 2; n=$((n + 2))
    done
    # What the fill wrote reaches the disk before the bench cuts the power.
    sync
    say "SLATE-FILL complete=$(field complete "$status") cached=$(field cached_bytes "$status") total=$(field total_bytes "$status") fetched=$(field fetched_bytes "$status") seconds=$n"
fi
say "SLATE-DONE"
systemctl poweroff
MARK
    chmod 755 "$1/usr/local/sbin/slate-bench-marker"
    bench_marker_unit "$1" "slate diskless benchmark marker"
}


# ---- slate: prepare, repository, fleet --------------------------------------------------
log "slate: keys, prepare, init, commit"
TREE=$W/tree
REPO=$W/repo
cp -a "$CORPUS/v3" "$TREE"
add_marker "$TREE"
"$SLATE" keygen --out "$W/key" > "$W/logs/keygen.log" 2>&1
"$SLATE" keygen --out "$W/fleet.key" >> "$W/logs/keygen.log" 2>&1
t=$EPOCHREALTIME
"${NICE[@]}" "$SLATE" prepare "$TREE" --trust "$W/key.pub" --fleet-trust "$W/fleet.key.pub" > "$W/logs/prepare.log" 2>&1 ||
    { tail "$W/logs/prepare.log" >&2; die "slate prepare failed"; }
env_rec slate_prepare "$(since "$t") s"
KVER=$(basename "$(ls "$TREE"/boot/vmlinuz-*)"); KVER=${KVER#vmlinuz-}
env_rec boot_files "kernel $(stat -c %s "$TREE/boot/vmlinuz-$KVER") bytes, lean initramfs $(stat -c %s "$TREE/boot/slate-netboot.img-$KVER") bytes, the tree's own initramfs $(stat -c %s "$TREE/boot/initrd.img-$KVER") bytes"
{
    "$SLATE" init --repo "$REPO"
    "$SLATE" commit --repo "$REPO" --channel lab --sign "$W/key" "$TREE" > "$W/snapshot"
    "$SLATE" fleet enroll --repo "$REPO" vm1 > "$W/token"
} > "$W/logs/slate-setup.log" 2>&1 || { tail "$W/logs/slate-setup.log" >&2; die "slate setup failed"; }
SNAP=$(tail -n1 "$W/snapshot")
env_rec snapshot "$SNAP"
CMDLINE="console=ttyS0,115200 panic=10 no_timer_check"
fleet_toml() {  # EXTRA: FLEET.toml with EXTRA on the network boot's command line
    printf '[default]\nchannel = "lab"\n[netboot]\nkernel_cmdline = "%s%s"\n' "$CMDLINE" "$1" > "$W/FLEET.toml.new"
    mv "$W/FLEET.toml.new" "$W/FLEET.toml"
}
fleet_toml ""
cat > "$W/template.toml" <<TOML
server = [{ url = "http://127.0.0.1:$NGINX_PORT", token = true, token_over_http = true },
          { url = "http://10.0.2.100", token = true, token_over_http = true }]
trust = ["$W/key.pub"]
fleet_trust = ["$W/fleet.key.pub"]
state_dir = "/unused"
machine_id = "vm1"
token_file = "$W/token"
kernel_cmdline = "console=ttyS0,115200 ip=dhcp no_timer_check"
[slots]
a = "/unused/a"
b = "/unused/b"
TOML

# ---- Debian live-boot: live-boot in a copy of v3, squashfs, iPXE script ----------------------
if has live; then
    log "live: live-boot in a copy of v3 (apt-get in a chroot), update-initramfs"
    L=$W/live.tree
    cp -a "$CORPUS/v3" "$L"
    add_marker "$L"
    cp -a "$L/etc/resolv.conf" "$W/resolv.conf.tree" 2>/dev/null || true
    rm -f "$L/etc/resolv.conf"; cp /etc/resolv.conf "$L/etc/resolv.conf"
    t=$EPOCHREALTIME
    in_chroot "$L" '
      export DEBIAN_FRONTEND=noninteractive
      apt-get -o Acquire::Check-Valid-Until=false update -qq
      apt-get install -y -qq --no-install-recommends live-boot live-boot-initramfs-tools busybox
      apt-get clean
      update-initramfs -u -k all' > "$W/logs/live-prepare.log" 2>&1 ||
        { tail "$W/logs/live-prepare.log" >&2; die "installing live-boot failed"; }
    rm -f "$L/etc/resolv.conf"
    if [ -e "$W/resolv.conf.tree" ] || [ -L "$W/resolv.conf.tree" ]; then mv "$W/resolv.conf.tree" "$L/etc/resolv.conf"; fi
    env_rec live_prepare "$(since "$t") s, live-boot $(chroot "$L" dpkg-query -W -f '${Version}' live-boot)"
    cp "$L/boot/vmlinuz-$KVER" "$W/srv/live/vmlinuz"
    cp "$L/boot/initrd.img-$KVER" "$W/srv/live/initrd.img"
    log "live: mksquashfs -comp xz"
    t=$EPOCHREALTIME
    "${NICE[@]}" mksquashfs "$L" "$W/srv/live/filesystem.squashfs" -comp xz -noappend -quiet -no-progress \
        > "$W/logs/mksquashfs.log" 2>&1 || { tail "$W/logs/mksquashfs.log" >&2; die "mksquashfs failed"; }
    env_rec live_squashfs "$(since "$t") s, $(stat -c %s "$W/srv/live/filesystem.squashfs") bytes (xz); kernel $(stat -c %s "$W/srv/live/vmlinuz"), initrd $(stat -c %s "$W/srv/live/initrd.img") bytes"
    cat > "$W/srv/live/boot.ipxe" <<IPXE
#!ipxe
kernel http://10.0.2.100/live/vmlinuz initrd=initrd.img boot=live components fetch=http://10.0.2.100/live/filesystem.squashfs $CMDLINE
initrd http://10.0.2.100/live/initrd.img
boot
IPXE
    [ "$KEEP" = 1 ] || rm -rf --one-file-system "$L"
fi

# ---- servers (127.0.0.1 only) ------------------------------------------------------------
# nginx: the guests' only server; /live/ from disk, the rest proxied to slate serve (the
# Host header passed on: slate serve writes the URL it was reached by into its iPXE script).
cat > "$W/nginx/nginx.conf" <<EOF
# generated by bench/diskless.sh
user root;
daemon on;
worker_processes 1;
pid $NGINX_PID_FILE;
error_log $W/nginx/error.log;
events { worker_connections 512; }
http {
    log_format bench '\$msec \$bytes_sent \$status "\$request" "\$http_range"';
    access_log $W/nginx/access.log bench;
    sendfile on;
    keepalive_requests 1000000;
    keepalive_timeout 120;
    default_type application/octet-stream;
    client_body_temp_path $W/nginx/tmp;
    proxy_temp_path $W/nginx/tmp;
    upstream slate { server 127.0.0.1:$SERVE_PORT; keepalive 16; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location /live/ { root $W/srv; }
        location / {
            proxy_pass http://slate;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600;
        }
    }
}
EOF
touch "$W/nginx/access.log"
nginx -e "$W/nginx/error.log" -p "$W/nginx" -c "$W/nginx/nginx.conf"
for _ in $(seq 50); do [ -s "$NGINX_PID_FILE" ] && break; sleep 0.1; done
[ -s "$NGINX_PID_FILE" ] || die "nginx did not start"
SLATE_LOG=info NO_COLOR=1 "$SLATE" serve --repo "$REPO" --fleet "$W/FLEET.toml" --fleet-key "$W/fleet.key" \
    --listen "127.0.0.1:$SERVE_PORT" > "$W/logs/serve.out" 2> "$W/logs/serve.log" &
SERVE_PID=$!
for _ in $(seq 100); do
    grep -q '^serving' "$W/logs/serve.log" 2>/dev/null && break
    kill -0 "$SERVE_PID" 2>/dev/null || { tail "$W/logs/serve.log" >&2; die "slate serve exited"; }
    sleep 0.1
done
grep -q '^serving' "$W/logs/serve.log" || die "slate serve did not start"

# ---- boots -------------------------------------------------------------------------------
# netdev PORT [BOOTFILE]: the restricted user network whose only way out is 127.0.0.1:PORT.
netdev() {
    local n="user,id=n0,restrict=on"
    [ -n "${2:-}" ] && n+=",bootfile=$2"
    echo "$n,guestfwd=tcp:10.0.2.100:80-cmd:nc 127.0.0.1 $1"
}
# boot SYSTEM REP [UNTIL]: one boot; waits for the marker line (or UNTIL, a tag the
# marker script prints later), stops qemu, appends a line to boots.tsv (rep > 0).
boot() {
    local sys=$1 rep=$2 until=${3:-SLATE-MARKER} args=() t0 t1=none wall=none base
    base=$W/boots/$sys-$rep
    : > "$base.console"; : > "$base.markers"
    case $sys in
        local)
            args=(-drive "file=$W/local.img,format=raw,if=none,id=d0" -device virtio-blk-pci,drive=d0,addr=0x2
                  -netdev "$(netdev "$NGINX_PORT")" -device virtio-net-pci,netdev=n0,addr=0x3) ;;
        diskless | profile | record)
            args=(-netdev "$(netdev "$NGINX_PORT" http://10.0.2.100/v1/boot/ipxe)"
                  -device virtio-net-pci,netdev=n0,addr=0x3,bootindex=0) ;;
        cached | fill | offline)
            local port=$NGINX_PORT
            [ "$sys" = offline ] && port=$DEAD_PORT
            args=(-drive "file=$W/cached.img,format=raw,if=none,id=d0" -device virtio-blk-pci,drive=d0,addr=0x2,bootindex=1
                  -netdev "$(netdev "$port" http://10.0.2.100/v1/boot/ipxe)"
                  -device virtio-net-pci,netdev=n0,addr=0x3,bootindex=0) ;;
        live)
            args=(-netdev "$(netdev "$NGINX_PORT" http://10.0.2.100/live/boot.ipxe)"
                  -device virtio-net-pci,netdev=n0,addr=0x3,bootindex=0) ;;
    esac
    t0=$EPOCHREALTIME
    "${NICE[@]}" qemu-system-x86_64 -machine q35 -nodefaults -accel tcg -smp 1 -m 1024 -no-reboot \
        -display none -monitor none -serial "file:$base.console" -serial "file:$base.markers" \
        "${args[@]}" 2>> "$W/logs/qemu.log" &
    QEMU_PID=$!
    while :; do
        if grep -aq "$until" "$base.markers"; then
            t1=$EPOCHREALTIME
            break
        fi
        kill -0 "$QEMU_PID" 2>/dev/null || break
        [ "$(since "$t0" | cut -d. -f1)" -lt "$BOOT_TIMEOUT" ] || break
        sleep 0.2
    done
    # A machine with a cache partition: the power is cut only once its fill
    # is complete and synced (untimed), so that the next boot finds it whole.
    case $sys in cached | offline)
        if [ "$t1" != none ]; then
            for _ in $(seq 1500); do
                grep -aq SLATE-FILL "$base.markers" && break
                kill -0 "$QEMU_PID" 2>/dev/null || break
                sleep 0.2
            done
        fi ;;
    esac
    stop_pid "$QEMU_PID"
    wait "$QEMU_PID" 2>/dev/null || true
    QEMU_PID=
    if [ "$t1" = none ]; then
        log "$sys (rep $rep): no $until; console tail:"
        tail -n 15 "$base.console" | sed 's/^/    /' >&2
    else
        wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b - a}')
    fi
    # nginx's lines of this boot: logged between qemu's start and the marker.
    awk -v a="$t0" -v b="${t1/none/0}" '$1 >= a && $1 <= b' "$W/nginx/access.log" > "$base.requests"
    [ "$rep" -gt 0 ] || return 0
    local m k v
    m=$(grep -a 'SLATE-MARKER' "$base.markers" | head -n1 | tr -d '\r' || true)
    declare -A f=()
    for kv in $m; do k=${kv%%=*}; v=${kv#*=}; [ "$k" = "$kv" ] || f[$k]=$v; done
    local sums
    sums=$(awk '
        { split($0, q, "\""); split(q[2], r, " "); u = r[2]; b = $2 }
        u ~ /^\/v1\/repo\// || u ~ /^\/v1\/packs/ || u ~ /^\/live\/filesystem\.squashfs/ { rb += b; rn++; next }
        u ~ /^\/v1\/boot\/[0-9a-f]+\/kernel/ || u == "/live/vmlinuz" { kb += b; next }
        u ~ /^\/v1\/boot\/[0-9a-f]+\/initrd/ || u == "/live/initrd.img" { ib += b; next }
        { ob += b; on++ }
        END { printf "%d %d %d %d %d %d", rb, rn, kb, ib, ob, on }' "$base.requests")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sys" "$rep" "$wall" "${f[uptime]:-none}" \
        "$(tr ' ' '\t' <<< "$sums")" "${f[fetched]:-}" "${f[requests]:-}" \
        "${f[daemon_kib]:-0}/${f[ram_cache_kib]:-0}/${f[mem_kib]:-0}/${f[used_kib]:-0}" >> "$W/boots.tsv"
    log "$sys (rep $rep): marker after $wall s (uptime ${f[uptime]:-none} s); root $(awk '{printf "%.1f MB in %d requests", $1 / 1e6, $2}' <<< "$sums"); mode ${f[mode]:-?} from ${f[from]:-?}"
}

profile_files() { ls "$REPO/snapshots/${SNAP:0:2}/$SNAP".profile* 2>/dev/null || true; }
profile_off() { local f; for f in $(profile_files); do mv "$f" "$W/profile-aside/"; done; }
profile_on() { local f; for f in "$W"/profile-aside/*; do [ -e "$f" ] && mv "$f" "$REPO/snapshots/${SNAP:0:2}/"; done; return 0; }
mkdir -p "$W/profile-aside"

install_local() {
    rm -f "$W/local.img"
    "$SLATE" install --disk "$W/local.img" --size 6G --slot-size 2G --firmware bios --config "$W/template.toml" \
        >> "$W/logs/install.log" 2>&1 || { tail "$W/logs/install.log" >&2; die "slate install failed"; }
}

# Untimed: the boot profile, recorded by a diskless boot.
if has profile; then
    log "profile: a diskless boot with slate.record (untimed)"
    fleet_toml " slate.record"; sleep 3
    boot record 0 SLATE-PROFILE
    fleet_toml ""; sleep 3
    sed -n 's/.*SLATE-PROFILE \([A-Za-z0-9+/=]*\).*/\1/p' "$W/boots/record-0.markers" | head -n1 | base64 -d | gunzip > "$W/boot.profile" ||
        die "the recording boot printed no profile (see $W/boots/record-0.*)"
    [ -s "$W/boot.profile" ] || die "the recorded profile is empty"
    env_rec profile "$(($(wc -l < "$W/boot.profile") - 1)) lines recorded"
    "$SLATE" profile sign "$W/boot.profile" --repo "$REPO" --sign "$W/key" > "$W/logs/profile-sign.log" 2>&1 ||
        { cat "$W/logs/profile-sign.log" >&2; die "slate profile sign failed"; }
fi
# Untimed: the cache partition, filled by a network boot.
if has cached || has offline; then
    log "cached: slate install --mode cached, a filling boot (untimed)"
    profile_off
    "$SLATE" install --mode cached --disk "$W/cached.img" --size 3G --firmware bios \
        > "$W/logs/install-cached.log" 2>&1 || { tail "$W/logs/install-cached.log" >&2; die "slate install --mode cached failed"; }
    boot fill 0 SLATE-FILL
    grep -aq 'SLATE-FILL complete=true' "$W/boots/fill-0.markers" ||
        die "the cache did not fill (see $W/boots/fill-0.*)"
    env_rec cache_fill "$(grep -a -o 'SLATE-FILL.*' "$W/boots/fill-0.markers" | head -n1 | tr -d '\r')"
fi

: > "$W/boots.tsv"
for rep in $(seq "$REPS"); do
    n=${#SYS[@]}
    for i in $(seq 0 $((n - 1))); do
        sys=${SYS[$(((i + rep - 1) % n))]}
        case $sys in
            local) install_local ;;
            profile) profile_on ;;
            *) profile_off ;;
        esac
        boot "$sys" "$rep"
    done
done
profile_on
env_rec load_end "$(cut -d' ' -f1-3 /proc/loadavg)"

# ---- results -----------------------------------------------------------------------------
python3 - "$W" "$REPS" <<'PY'
import statistics, sys
w, reps = sys.argv[1], int(sys.argv[2])
cols = "sys rep wall up rb rn kb ib ob on fetched requests mem".split()
rows = []
for line in open(f"{w}/boots.tsv"):
    rows.append(dict(zip(cols, line.rstrip("\n").split("\t"))))
order = [s for s in "local diskless profile cached offline live".split() if any(r["sys"] == s for r in rows)]
names = {
    "local": "local disk (`slate install`, A/B)",
    "diskless": "diskless, no profile",
    "profile": "diskless, signed boot profile",
    "cached": "cached, complete cache partition, server reachable",
    "offline": "cached, complete cache, no server",
    "live": "Debian live-boot `fetch=` (squashfs xz over HTTP)",
}
def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
def med(sys_, key, f=lambda x: x):
    v = [num(r[key]) for r in rows if r["sys"] == sys_ and num(r["wall"]) is not None]
    v = [f(x) for x in v if x is not None]
    return statistics.median(v) if v else None
def fmt(v, spec=".1f", unit=""):
    return "n/a" if v is None else f"{v:{spec}}{unit}"
def mem(r):
    d, c, t, u = (float(x) for x in r["mem"].split("/"))
    return d, c, t, u
# Ratios per repetition (same run), then their median.
def ratio(sys_, ref="local"):
    out = []
    for rep in range(1, reps + 1):
        a = [num(r["wall"]) for r in rows if r["sys"] == sys_ and r["rep"] == str(rep)]
        b = [num(r["wall"]) for r in rows if r["sys"] == ref and r["rep"] == str(rep)]
        if a and b and a[0] and b[0]:
            out.append(a[0] / b[0])
    return statistics.median(out) if out else None
lines = []
lines.append(f"| system | qemu start to marker (median of {reps}) | / local disk | guest uptime at marker | root fs fetched to marker | root fs requests | kernel + initramfs | other requests | daemon RSS + RAM cache | guest memory used |")
lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for s in order:
    rs = [r for r in rows if r["sys"] == s and num(r["wall"]) is not None]
    fails = sum(1 for r in rows if r["sys"] == s) - len(rs)
    wall = med(s, "wall"); up = med(s, "up")
    rb = med(s, "rb"); rn = med(s, "rn"); kb = med(s, "kb"); ib = med(s, "ib"); on = med(s, "on")
    dm = statistics.median([mem(r)[0] + mem(r)[1] for r in rs]) if rs else None
    tot = statistics.median([mem(r)[2] for r in rs]) if rs else None
    used = statistics.median([mem(r)[3] for r in rs]) if rs else None
    daemon = "—" if not dm else f"{dm / 1024:.0f} MiB ({100 * dm / tot:.0f}% of {tot / 1024:.0f} MiB)"
    dfetch = med(s, "fetched"); dreq = med(s, "requests")
    rootcol = "—" if not rb else f"{rb / 1e6:.1f} MB"
    if dfetch is not None:
        rootcol += f" (daemon: {dfetch / 1e6:.1f} MB)"
    reqcol = "—" if not rn else f"{rn:.0f}"
    if dreq is not None:
        reqcol += f" (daemon: {dreq:.0f})"
    kcol = "—" if not kb else f"{kb / 1e6:.1f} + {ib / 1e6:.1f} MB"
    ratio_s = "1" if s == "local" else fmt(ratio(s), ".2f")
    failed = f" ({fails} failed)" if fails else ""
    lines.append(f"| {names[s]}{failed} | {fmt(wall, '.1f', ' s')} | {ratio_s} | {fmt(up, '.1f', ' s')} | {rootcol} | {reqcol} | {kcol} | {fmt(on, '.0f')} | {daemon} | {fmt(used and used / 1024, '.0f', ' MiB')} |")
lines.append("")
lines.append("Per boot (wall s, uptime s, root bytes, root requests):")
lines.append("")
for r in rows:
    lines.append(f"- {r['sys']} rep {r['rep']}: {r['wall']} s, uptime {r['up']} s, root {int(r['rb'])/1e6:.1f} MB in {r['rn']} requests, kernel {int(r['kb'])/1e6:.1f} MB, initrd {int(r['ib'])/1e6:.1f} MB, daemon status fetched={r['fetched'] or '-'} requests={r['requests'] or '-'}, mem {r['mem']} KiB (daemon/ram cache/total/used)")
lines.append("")
goals = []
def goal(text, ok):
    goals.append(f"- {text}: {'n/a' if ok is None else ('met' if ok else 'NOT met')}")
rbp = med("profile", "rb"); rbd = med("diskless", "rb")
goal(f"root bytes to the marker with a profile at most 25 MB ({fmt(rbp and rbp / 1e6)} MB)", None if rbp is None else rbp <= 25e6)
goal(f"root bytes without a profile at most 60 MB ({fmt(rbd and rbd / 1e6)} MB)", None if rbd is None else rbd <= 60e6)
for s in ("diskless", "profile"):
    n = med(s, "rn")
    goal(f"requests to the marker at most 100, {s} ({fmt(n, '.0f')})", None if n is None else n <= 100)
for s in ("diskless", "profile"):
    x = ratio(s)
    goal(f"time to the marker at most 1.3x the local disk, {s} ({fmt(x, '.2f')}x)", None if x is None else x <= 1.3)
x = ratio("cached")
goal(f"time to the marker at most 1.1x with a complete cache, cached ({fmt(x, '.2f')}x)", None if x is None else x <= 1.1)
x = ratio("offline")
if x is not None:
    goal(f"the same, offline ({x:.2f}x)", x <= 1.1)
for s in ("diskless", "profile"):
    rs = [r for r in rows if r["sys"] == s and num(r["wall"]) is not None]
    if rs:
        worst = max((mem(r)[0] + mem(r)[1]) / mem(r)[2] for r in rs)
        goal(f"daemon + RAM cache under 25% of RAM, {s} (at most {100 * worst:.0f}%)", worst < 0.25)
lines.append("Goals (issue 13):")
lines.append("")
lines.extend(goals)
text = "\n".join(lines) + "\n"
open(f"{w}/results.md", "w").write(text)
print(text)
PY
echo
cat "$ENV"
