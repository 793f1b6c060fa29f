#!/usr/bin/env bash
# mount.sh — the on-demand filesystem `slate mount` beside its peers (issue 12),
# on the corpus's v3 Debian tree (761 MB, 15,106 entries), in the same run.
#
# Systems (every local byte of each lives on one loop-mounted ext4 image,
# $W/disk.img, attached with direct I/O so that the file system and the disk
# path are the same kind for all of them; it also holds what the servers
# serve):
#   native  cp -a of v3 on that ext4 file system.
#   slate   `slate mount lab MNT --server URL --trust KEY.pub --cache DIR
#           --status FILE` of a signed commit of v3 served by `slate serve`,
#           started without --background as a child of this script (&),
#           like every peer's daemon; "complete cache" = a cache filled beforehand by `slate
#           cache fill` (untimed); "empty cache" = a --cache directory that
#           does not exist yet. Skipped, with a note, when this build's
#           `slate mount --help` fails.
#   sqfs    the hand-built peer: nginx serves v3.squashfs (mksquashfs v3,
#           -comp $SQUASH_COMP); httpdirfs mounts the directory over HTTP
#           (--no-range-check: its range probe fails on nginx 1.22);
#           squashfuse_ll mounts the image file from it. "Complete cache" =
#           httpdirfs --cache with a cache dir that already holds the whole
#           image (read through once beforehand, untimed).
#   casync  `casync mount` of v3.caidx (casync make, default chunking and
#           features); "complete cache" = its chunk store on the local disk
#           (--store=DIR), "over HTTP" = the same store served by nginx
#           (--store=http://...).
#
# Measured, each in a fresh mount session (new daemons; the page cache is
# dropped with `sync; echo 3 > /proc/sys/vm/drop_caches` before mounting, so
# mount and command both start cold; the timed command runs as soon as the
# mount is up; mount time is reported apart). Native has no mount: the page
# cache is dropped before its command.
#   walk   `find MNT -printf '%s %m %U %G %T@\n'` (an lstat of every entry),
#          cold, then again at once with the page cache kept (warm).
#   read   `xargs -0 cat >/dev/null` of every regular file, in one fixed order
#          (the native tree's `find -type f` sorted by path, the same list for
#          every system), cold, then again warm; MB/s = bytes of those files
#          (a hard-linked file counted once per name) / wall time.
#   boot   over HTTP with an empty cache: `cat` of the files a v3 boot reads
#          (bench/mount_bootfiles.py, rules in its header: the ELF closure of
#          systemd, journald, udevd, logind, the early helpers and generators,
#          agetty, login, bash, mount, sshd; PAM and NSS modules; /etc less
#          apt/cron/X11/...; unit files; tmpfiles/sysctl/sysusers/udev rules,
#          hwdb.bin; os-release; kmod index files; C.utf8 locale; terminfo
#          linux). Printed: how many and their size; the reference is the sum
#          of those files compressed one by one with `zstd -3`. Native: the
#          same files read cold from the local disk (time only).
#   walk and read over HTTP with an empty cache (as above, fresh cache).
# Bytes fetched are counted on the server side: every client request goes
# through nginx (static files for sqfs and casync; a reverse proxy in front
# of `slate serve` for slate) whose access log records $bytes_sent (headers
# and bodies); all requests logged from the start of the mount to the end of
# the unmount are counted. For slate, the status file's fetched_bytes and
# requests are recorded too. Daemon memory: VmHWM from /proc/PID/status of
# every daemon of a mount (slate mount's process; httpdirfs and
# squashfuse_ll; casync and its casync-http helper) just before unmounting;
# the report gives the largest, over all sessions. slate's status file is
# read then too (1.2 s after the command: it is rewritten at most once a
# second).
# Repetitions: REPS; in each, the systems run in an order that rotates from
# one repetition to the next. The report (bench/mount_report.py) prints the
# medians and the median of the per-repetition ratios slate/native and
# slate/peer (same-run ratios: the machine is noisy), with the issue's goals,
# on stdout and in $W/results.md.
#
# Usage:  bash bench/mount.sh            (as root)
# Env:    CORPUS_DIR    the corpus          (default /var/tmp/stateless-bench/corpus)
#         REPS          repetitions         (default 3)
#         W             work dir            (default /var/tmp/slate-mount-bench; emptied
#                                            at the start; the disk image and the
#                                            servers' data are removed at the end
#                                            unless KEEP=1)
#         SLATE         slate binary        (default target/release/slate; copied
#                                            into $W/bin before use)
#         SYSTEMS       which to run        (default "native slate sqfs casync")
#         HTTP          1 (default): also the over-HTTP sessions; 0 skips them
#         VERIFY        1 (default): after the last repetition, treedigest.py of
#                       each mount (complete cache) against native v3 (untimed)
#         SQUASH_COMP   mksquashfs compressor (default zstd, its default level)
#         HTTPDIRFS_SEG httpdirfs --dl-seg-size in MB (default: unset, httpdirfs's 8)
#         DISK_SIZE     size of the ext4 image (default 6G, sparse)
#         PORT_BASE     127.0.0.1 ports PORT_BASE..PORT_BASE+2 (default 18700)
#         CASYNC_REPS   repetitions casync takes part in (default 1: its walks
#                       and reads take minutes; its ratios then come from the
#                       first repetition only)
#         SMALL_CACHE   slate's --cache-size for one more over-HTTP read of every
#                       file, in the first repetition (default 64M; empty: skipped),
#                       for the daemon's memory with a cache smaller than the data
#         OP_TIMEOUT    seconds one timed command may take (default 900); one
#                       that takes longer is stopped and reported as failed
#
# Requires root, /dev/fuse; installs what is missing with apt-get: httpdirfs
# squashfuse casync fuse3 nginx-light squashfs-tools zstd binutils e2fsprogs.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CORPUS_DIR=${CORPUS_DIR:-/var/tmp/stateless-bench/corpus}
REPS=${REPS:-3}
W=${W:-/var/tmp/slate-mount-bench}
SLATE=${SLATE:-$ROOT/target/release/slate}
SYSTEMS=${SYSTEMS:-native slate sqfs casync}
HTTP=${HTTP:-1}
VERIFY=${VERIFY:-1}
KEEP=${KEEP:-0}
SQUASH_COMP=${SQUASH_COMP:-zstd}
HTTPDIRFS_SEG=${HTTPDIRFS_SEG:-}
DISK_SIZE=${DISK_SIZE:-6G}
PORT_BASE=${PORT_BASE:-18700}
CASYNC_REPS=${CASYNC_REPS:-1}
SMALL_CACHE=${SMALL_CACHE-64M}
OP_TIMEOUT=${OP_TIMEOUT:-900}
TREEDIGEST=${SLATE_SHARED:-$ROOT/../shared}/bench/treedigest.py
[ -f "$TREEDIGEST" ] || TREEDIGEST=/work/shared/bench/treedigest.py
CHANNEL=lab

die() { printf 'mount.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf '[mount.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer (got '$REPS')"
[[ $CASYNC_REPS =~ ^[0-9]+$ ]] || die "CASYNC_REPS must be a number (got '$CASYNC_REPS')"
[ "$(id -u)" -eq 0 ] || die "run as root (loop devices, FUSE mounts, drop_caches)"
[ -f "$CORPUS_DIR/v3.done" ] || die "no corpus in $CORPUS_DIR (make corpus)"
[ -c /dev/fuse ] || die "no /dev/fuse"
case $(realpath -m "$W")/ in
    / | /var/ | /var/tmp/ | /tmp/ | /root/ | /home/ | "$(realpath -m "$CORPUS_DIR")"/* | "$ROOT"/*)
        die "W=$W is not a safe scratch directory (it is emptied)" ;;
esac

missing=()
for c in httpdirfs:httpdirfs squashfuse_ll:squashfuse casync:casync fusermount3:fuse3 nginx:nginx-light \
         mksquashfs:squashfs-tools zstd:zstd objdump:binutils mkfs.ext4:e2fsprogs python3:python3; do
    command -v "${c%%:*}" >/dev/null || missing+=("${c#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
        { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; } ||
        die "could not install ${missing[*]}"
fi

has() { case " $SYSTEMS " in *" $1 "*) return 0 ;; esac; return 1; }
HAVE_SLATE=0
SLATE_NOTE=
if has slate; then
    if [ ! -x "$SLATE" ]; then
        SLATE_NOTE="no slate binary at $SLATE"
    elif ! "$SLATE" mount --help >/dev/null 2>&1; then
        SLATE_NOTE="this build of slate has no \`slate mount\` ($SLATE)"
    else
        HAVE_SLATE=1
    fi
    if [ "$HAVE_SLATE" = 0 ]; then
        log "slate side skipped: $SLATE_NOTE"
        SYSTEMS=$(tr ' ' '\n' <<< "$SYSTEMS" | grep -vx slate | tr '\n' ' ')
    fi
fi
read -r -a SYS <<< "$SYSTEMS"

# ---- cleanup: only what this script started or mounted ----------------------------------
DISK=$W/disk
LOOP=
NGINX_PID_FILE=$W/nginx/nginx.pid
SERVE_PID=
declare -A DAEMON=()       # name -> pid of a FUSE daemon of the current session
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
cleanup() {
    local rc=$? n
    set +e
    umount_under "$W/mnt"
    for n in "${!DAEMON[@]}"; do stop_pid "${DAEMON[$n]}"; done
    [ -n "$SERVE_PID" ] && stop_pid "$SERVE_PID"
    if [ -s "$NGINX_PID_FILE" ]; then stop_pid "$(cat "$NGINX_PID_FILE")"; rm -f "$NGINX_PID_FILE"; fi
    if mountpoint -q "$DISK" 2>/dev/null; then umount "$DISK" 2>/dev/null || umount -l "$DISK"; fi
    [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
    [ "$KEEP" = 1 ] || rm -f "$W/disk.img"
    [ $rc -eq 0 ] || printf 'mount.sh: FAILED (exit %d); logs in %s\n' "$rc" "$W/logs" >&2
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- work dir, disk -----------------------------------------------------------------------
umount_under "$W"
rm -rf --one-file-system "$W"
mkdir -p "$W/bin" "$W/logs" "$W/mnt" "$DISK" "$W/nginx/tmp"
if [ "$HAVE_SLATE" = 1 ]; then cp "$SLATE" "$W/bin/slate"; SLATE_SRC=$SLATE; SLATE=$W/bin/slate; fi
truncate -s "$DISK_SIZE" "$W/disk.img"
mkfs.ext4 -q -F "$W/disk.img"
LOOP=$(losetup --find --show --direct-io=on "$W/disk.img" 2>/dev/null) ||
    LOOP=$(losetup --find --show "$W/disk.img")
mount "$LOOP" "$DISK"
DIO=$(cat "/sys/block/${LOOP#/dev/}/loop/dio" 2>/dev/null || echo '?')

RUNS=$W/runs.tsv
printf 'rep\tsystem\tsession\tkey\tvalue\n' > "$RUNS"
rec() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RUNS"; }
env_rec() { rec 0 env setup "$1" "$2"; }
pkgv() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo '?'; }
now() { echo "$EPOCHREALTIME"; }
since() { awk -v t="$1" -v n="$EPOCHREALTIME" 'BEGIN{printf "%.3f", n - t}'; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

env_rec date "$(date -u '+%Y-%m-%d %H:%M UTC')"
env_rec machine "$(nproc) cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/^MemTotal:/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r)"
env_rec disk "ext4 image on $(findmnt -n -o FSTYPE -T "$W") ($(findmnt -n -o SOURCE -T "$W")), loop direct I/O=$DIO"
env_rec load_start "$(cut -d' ' -f1-3 /proc/loadavg)"
env_rec versions "httpdirfs $(pkgv httpdirfs), squashfuse $(pkgv squashfuse), casync $(pkgv casync), fuse3 $(pkgv fuse3), nginx $(pkgv nginx-light), squashfs-tools $(pkgv squashfs-tools)"
[ "$HAVE_SLATE" = 1 ] && env_rec slate "$("$SLATE" --version 2>/dev/null | head -1), copy of $SLATE_SRC (built $(date -u -r "$SLATE_SRC" '+%Y-%m-%d %H:%M UTC'))"
[ -n "$SLATE_NOTE" ] && env_rec slate_note "$SLATE_NOTE"
env_rec reps "$REPS"
env_rec systems "${SYS[*]}"
env_rec casync_reps "$CASYNC_REPS"
env_rec small_cache "$SMALL_CACHE"
log "work dir $W, disk $LOOP (direct I/O $DIO), systems: ${SYS[*]}, $REPS repetitions"

# ---- data: native tree, squashfs image, casync store, slate repository ---------------------
V3=$CORPUS_DIR/v3
NATIVE=$DISK/native
SRV=$DISK/srv
mkdir -p "$SRV/sq" "$SRV/casync" "$DISK/cache"
log "native: cp -a v3"
cp -a "$V3" "$NATIVE"
env_rec tree "$(du -sb "$V3" | cut -f1) bytes (du -sb), $(find "$V3" | wc -l) entries"
# The read list: every regular file, sorted, relative to the root.
(cd "$NATIVE" && find . -type f -printf '%P\0' | LC_ALL=C sort -z) > "$W/files.z"
READ_BYTES=$(cd "$NATIVE" && xargs -0 stat -c %s -- < "$W/files.z" | awk '{s += $1} END {print s}')
env_rec read_files "$(tr -cd '\0' < "$W/files.z" | wc -c)"
env_rec read_bytes "$READ_BYTES"

# The boot list, and its zstd -3 size file by file.
python3 "$HERE/mount_bootfiles.py" "$V3" > "$W/bootfiles.txt" 2> "$W/logs/bootfiles.err" ||
    { cat "$W/logs/bootfiles.err" >&2; die "mount_bootfiles.py failed"; }
BOOT_FILES=$(wc -l < "$W/bootfiles.txt")
BOOT_BYTES=$(cd "$V3" && xargs -d '\n' stat -c %s -- < "$W/bootfiles.txt" | awk '{s += $1} END {print s}')
BOOT_ZSTD=$(cd "$V3" && while IFS= read -r f; do zstd -3 -q -c -- "$f" | wc -c; done < "$W/bootfiles.txt" |
            awk '{s += $1} END {print s}')
env_rec boot_files "$BOOT_FILES"
env_rec boot_bytes "$BOOT_BYTES"
env_rec boot_zstd3_bytes "$BOOT_ZSTD"
log "boot list: $BOOT_FILES files, $BOOT_BYTES bytes, $BOOT_ZSTD bytes compressed with zstd -3 file by file"

if has sqfs; then
    log "sqfs: mksquashfs v3 -comp $SQUASH_COMP"
    t=$(now)
    mksquashfs "$V3" "$SRV/sq/v3.squashfs" -comp "$SQUASH_COMP" -noappend -quiet -no-progress \
        > "$W/logs/mksquashfs.log" 2>&1 || { tail "$W/logs/mksquashfs.log" >&2; die "mksquashfs failed"; }
    env_rec sqfs_build "$(since "$t") s, $(stat -c %s "$SRV/sq/v3.squashfs") bytes (-comp $SQUASH_COMP)"
fi
if has casync; then
    log "casync: casync make"
    t=$(now)
    casync make --store="$SRV/casync/store.castr" "$SRV/casync/v3.caidx" "$V3" > "$W/logs/casync-make.log" 2>&1 ||
        { tail "$W/logs/casync-make.log" >&2; die "casync make failed"; }
    env_rec casync_build "$(since "$t") s, store $(du -sb "$SRV/casync/store.castr" | cut -f1) bytes, index $(stat -c %s "$SRV/casync/v3.caidx") bytes"
fi
if [ "$HAVE_SLATE" = 1 ]; then
    log "slate: init, keygen, commit v3"
    {
        "$SLATE" init --repo "$SRV/slate-repo"
        "$SLATE" keygen --out "$W/key"
        "$SLATE" commit --repo "$SRV/slate-repo" --channel "$CHANNEL" --sign "$W/key" "$V3"
    } > "$W/logs/slate-setup.log" 2>&1 || { tail "$W/logs/slate-setup.log" >&2; die "slate setup failed"; }
    env_rec slate_repo "$(du -sb "$SRV/slate-repo" | cut -f1) bytes"
fi

# ---- servers (127.0.0.1 only) --------------------------------------------------------------
HTTP_PORT=$PORT_BASE            # nginx: squashfs image, casync store
PROXY_PORT=$((PORT_BASE + 1))   # nginx: reverse proxy in front of slate serve
SERVE_PORT=$((PORT_BASE + 2))   # slate serve
URL=http://127.0.0.1:$HTTP_PORT
SLATE_URL=http://127.0.0.1:$PROXY_PORT
cat > "$W/nginx/nginx.conf" <<EOF
# generated by bench/mount.sh
user root;
daemon on;
worker_processes 1;
pid $NGINX_PID_FILE;
error_log $W/nginx/error.log;
events { worker_connections 512; }
http {
    log_format bench '\$server_port \$bytes_sent \$status "\$request"';
    access_log $W/nginx/access.log bench;
    sendfile on;
    keepalive_requests 1000000;
    keepalive_timeout 120;
    default_type application/octet-stream;
    client_body_temp_path $W/nginx/tmp;
    proxy_temp_path $W/nginx/tmp;
    server {
        listen 127.0.0.1:$HTTP_PORT;
        root $SRV;
        autoindex on;
    }
    upstream slate { server 127.0.0.1:$SERVE_PORT; keepalive 16; }
    server {
        listen 127.0.0.1:$PROXY_PORT;
        location / {
            proxy_pass http://slate;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }
    }
}
EOF
touch "$W/nginx/access.log"
nginx -e "$W/nginx/error.log" -p "$W/nginx" -c "$W/nginx/nginx.conf"
for _ in $(seq 50); do [ -s "$NGINX_PID_FILE" ] && break; sleep 0.1; done
[ -s "$NGINX_PID_FILE" ] || die "nginx did not start"
if [ "$HAVE_SLATE" = 1 ]; then
    SLATE_LOG=info "$SLATE" serve --repo "$SRV/slate-repo" --listen "127.0.0.1:$SERVE_PORT" \
        > "$W/logs/serve.out" 2> "$W/logs/serve.log" &
    SERVE_PID=$!
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$SERVE_PORT/" 2>/dev/null && break
        kill -0 "$SERVE_PID" 2>/dev/null || { tail "$W/logs/serve.log" >&2; die "slate serve exited"; }
        sleep 0.1
    done
fi

# Server-side bytes: the access log's lines from line FROM on -> "bytes requests non2xx".
log_lines() { wc -l < "$W/nginx/access.log"; }
log_sum() {
    tail -n +"$(($1 + 1))" "$W/nginx/access.log" |
        awk '{ b += $2; n++; if ($3 !~ /^2/) e++ } END { printf "%d %d %d", b, n, e }'
}

# ---- mounting -------------------------------------------------------------------------------
MNT=$W/mnt/fs            # where the measured file system is
HMNT=$W/mnt/http         # httpdirfs's mount under squashfuse_ll
mkdir -p "$MNT" "$HMNT"
STATUS=$W/slate-status.json
status_get() { python3 -c 'import json,sys
try: d = json.load(open(sys.argv[1]))
except Exception: d = {}
v = d.get(sys.argv[2], "")
print(v if v is not None else "")' "$STATUS" "$1" 2>/dev/null || true; }
is_mounted() { findmnt -rn -o TARGET | grep -qxF "$(realpath -m "$1")"; }
wait_mounted() {  # DIR PID...: until DIR is a mount point (up to 120 s); 1 if a daemon died
    local d=$1 _ p; shift
    for _ in $(seq 1200); do
        mountpoint -q "$d" && return 0
        for p in "$@"; do kill -0 "$p" 2>/dev/null || return 1; done
        sleep 0.1
    done
    return 1
}
# mount_fs SYSTEM MODE: MODE cache = complete local cache, http = empty cache over HTTP.
# Sets FS (the root to measure) and DAEMON[]; returns 1 on failure.
mount_fs() {
    local sys=$1 mode=$2 lg="$W/logs/$SESSION"
    DAEMON=()
    case $sys in
        native) FS=$NATIVE; return 0 ;;
        slate)
            local cache=$DISK/cache/slate
            [ "$mode" = http ] && { cache=$DISK/cache/slate-empty; rm -rf "$cache"; }
            rm -f "$STATUS"
            "$SLATE" mount "$CHANNEL" "$MNT" --server "$SLATE_URL" --trust "$W/key.pub" --cache "$cache" \
                --status "$STATUS" "${SLATE_EXTRA[@]}" > "$lg.mount.out" 2> "$lg.mount.err" &
            DAEMON[slate]=$!
            wait_mounted "$MNT" "${DAEMON[slate]}" || return 1 ;;
        sqfs)
            local cache=$DISK/cache/httpdirfs opts=(--no-range-check)
            [ "$mode" = http ] && { cache=$DISK/cache/httpdirfs-empty; rm -rf "$cache"; mkdir -p "$cache"; }
            opts+=(--cache --cache-location "$cache")
            [ -n "$HTTPDIRFS_SEG" ] && opts+=(--dl-seg-size "$HTTPDIRFS_SEG")
            httpdirfs -f "${opts[@]}" "$URL/sq/" "$HMNT" > "$lg.httpdirfs.log" 2>&1 &
            DAEMON[httpdirfs]=$!
            wait_mounted "$HMNT" "${DAEMON[httpdirfs]}" || return 1
            squashfuse_ll -f "$HMNT/v3.squashfs" "$MNT" > "$lg.squashfuse.log" 2>&1 &
            DAEMON[squashfuse]=$!
            wait_mounted "$MNT" "${DAEMON[squashfuse]}" || return 1 ;;
        casync)
            local store=$SRV/casync/store.castr index=$SRV/casync/v3.caidx
            [ "$mode" = http ] && { store=$URL/casync/store.castr; index=$URL/casync/v3.caidx; }
            casync mount --store="$store" "$index" "$MNT" > "$lg.casync.log" 2>&1 &
            DAEMON[casync]=$!
            wait_mounted "$MNT" "${DAEMON[casync]}" || return 1 ;;
    esac
    FS=$MNT
}
# The daemons' peak RSS (KiB), summed over a mount's processes (casync's
# protocol helper included), before unmounting.
daemon_hwm() {
    local p c sum=0 v
    for p in "${DAEMON[@]}"; do
        for c in "$p" $(cat /proc/"$p"/task/*/children 2>/dev/null); do
            v=$(awk '/^VmHWM:/ {print $2}' "/proc/$c/status" 2>/dev/null || true)
            sum=$((sum + ${v:-0}))
        done
    done
    echo "$sum"
}
umount_fs() {
    local sys=$1 n
    [ "$sys" = native ] && return 0
    # (a FUSE mount whose daemon died is still in the mount table, though
    # mountpoint(1) cannot stat it)
    is_mounted "$MNT" && { umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true; }
    is_mounted "$HMNT" && { umount "$HMNT" 2>/dev/null || umount -l "$HMNT" 2>/dev/null || true; }
    for n in "${!DAEMON[@]}"; do
        for _ in $(seq 100); do kill -0 "${DAEMON[$n]}" 2>/dev/null || break; sleep 0.1; done
        stop_pid "${DAEMON[$n]}"
        wait "${DAEMON[$n]}" 2>/dev/null || true
    done
    DAEMON=()
}

# ---- the timed commands ------------------------------------------------------------------------
# The commands, run by `timeout $OP_TIMEOUT bash -c CMD _ ROOT LIST`.
declare -A OP=(
    [walk]='find "$1" -printf "%s %m %U %G %T@\n" | wc -l'
    [read]='cd "$1" && xargs -0 cat -- < "$2" > /dev/null'
    [boot]='cd "$1" && xargs -d "\n" cat -- < "$2" > /dev/null'
)
declare -A OP_LIST=([walk]=/dev/null [read]=$W/files.z [boot]=$W/bootfiles.txt)
# timed_op REP SYSTEM SESSION KEY OP: runs OP on $FS, records KEY (seconds) and
# KEY_rc (124: over OP_TIMEOUT); a walk also records the entries it saw.
timed_op() {
    local rep=$1 sys=$2 s=$3 key=$4 op=$5 t rc=0 out lg="$W/logs/$SESSION.$4"
    t=$(now)
    out=$(timeout -k 10 "$OP_TIMEOUT" bash -c "${OP[$op]}" _ "$FS" "${OP_LIST[$op]}" 2> "$lg.err") || rc=$?
    rec "$rep" "$sys" "$s" "$key" "$(since "$t")"
    rec "$rep" "$sys" "$s" "${key}_rc" "$rc"
    [ "$op" = walk ] && rec "$rep" "$sys" "$s" "${key}_entries" "$out"
    [ $rc -eq 0 ] || log "$SESSION $key: exit $rc ($(tail -n 1 "$lg.err"))"
    return 0
}
# session REP SYSTEM NAME MODE OPS...: drop caches, mount, run each OP (key:op),
# record peak RSS, unmount; server-side bytes over the whole session.
session() {
    local rep=$1 sys=$2 name=$3 mode=$4 kv t l0 s; shift 4
    SESSION="$rep.$sys.$name"
    s=$SESSION
    drop_caches
    l0=$(log_lines)
    t=$(now)
    if ! mount_fs "$sys" "$mode"; then
        log "$s: mount failed (logs $W/logs/$s.*)"
        rec "$rep" "$sys" "$name" mount_failed 1
        umount_fs "$sys"
        return 0
    fi
    [ "$sys" = native ] || rec "$rep" "$sys" "$name" mount_s "$(since "$t")"
    for kv in "$@"; do timed_op "$rep" "$sys" "$name" "${kv%%:*}" "${kv#*:}"; done
    # (slate rewrites its status file at most once a second)
    [ "$sys" = slate ] && sleep 1.2
    [ "$sys" = native ] || rec "$rep" "$sys" "$name" hwm_kb "$(daemon_hwm)"
    if [ "$sys" = slate ]; then
        local k
        for k in pid fetched_bytes requests cached_bytes total_bytes cache_bytes state last_error; do
            rec "$rep" "$sys" "$name" "status_$k" "$(status_get "$k")"
        done
    fi
    umount_fs "$sys"
    local -a b; read -r -a b <<< "$(log_sum "$l0")"
    rec "$rep" "$sys" "$name" server_bytes "${b[0]}"
    rec "$rep" "$sys" "$name" server_requests "${b[1]}"
    rec "$rep" "$sys" "$name" server_non2xx "${b[2]:-0}"
    log "$s: $(awk -F'\t' -v r="$rep" -v y="$sys" -v n="$name" '$1 == r && $2 == y && $3 == n && $4 !~ /_rc$/ {printf "%s=%s ", $4, $5}' "$RUNS")"
}

# ---- complete caches (untimed preparation; bytes recorded) ----------------------------------------
if has sqfs; then
    log "sqfs: filling httpdirfs's cache (whole image read through it once)"
    l0=$(log_lines); t=$(now)
    opts=(--no-range-check --cache --cache-location "$DISK/cache/httpdirfs")
    [ -n "$HTTPDIRFS_SEG" ] && opts+=(--dl-seg-size "$HTTPDIRFS_SEG")
    mkdir -p "$DISK/cache/httpdirfs"
    httpdirfs -f "${opts[@]}" "$URL/sq/" "$HMNT" > "$W/logs/fill.httpdirfs.log" 2>&1 &
    DAEMON[httpdirfs]=$!
    wait_mounted "$HMNT" "${DAEMON[httpdirfs]}" || die "httpdirfs did not mount (see $W/logs/fill.httpdirfs.log)"
    cat "$HMNT/v3.squashfs" > /dev/null
    umount_fs sqfs
    read -r -a b <<< "$(log_sum "$l0")"
    rec 0 sqfs fill seconds "$(since "$t")"
    rec 0 sqfs fill server_bytes "${b[0]}"
    rec 0 sqfs fill cache_bytes "$(du -sb "$DISK/cache/httpdirfs" | cut -f1)"
fi
if has slate; then
    log "slate: slate cache fill"
    l0=$(log_lines); t=$(now)
    "$SLATE" cache fill "$CHANNEL" --cache "$DISK/cache/slate" --server "$SLATE_URL" --trust "$W/key.pub" \
        > "$W/logs/fill.slate.out" 2> "$W/logs/fill.slate.err" || { tail "$W/logs/fill.slate.err" >&2; die "slate cache fill failed"; }
    read -r -a b <<< "$(log_sum "$l0")"
    rec 0 slate fill seconds "$(since "$t")"
    rec 0 slate fill server_bytes "${b[0]}"
    rec 0 slate fill cache_bytes "$(du -sb "$DISK/cache/slate" | cut -f1)"
    "$SLATE" cache status --cache "$DISK/cache/slate" --json > "$W/logs/fill.slate.status" 2>&1 || true
fi
has casync && rec 0 casync fill cache_bytes "$(du -sb "$SRV/casync" | cut -f1)"
has native && rec 0 native fill cache_bytes "$(du -sb "$NATIVE" | cut -f1)"

SLATE_EXTRA=()
# ---- repetitions ----------------------------------------------------------------------------------
rotate() { local n=$(($1 % ($# - 1))); shift; echo "${@:n+1}" "${@:1:n}"; }
for rep in $(seq "$REPS"); do
    order=$(rotate $((rep - 1)) "${SYS[@]}")
    log "repetition $rep: $order"
    for sys in $order; do
        [ "$sys" = casync ] && [ "$rep" -gt "$CASYNC_REPS" ] && continue
        session "$rep" "$sys" walk cache walk_cold:walk walk_warm:walk
        session "$rep" "$sys" read cache read_cold:read read_warm:read
    done
    if [ "$HTTP" = 1 ]; then
        for sys in $order; do
            [ "$sys" = casync ] && [ "$rep" -gt "$CASYNC_REPS" ] && continue
            session "$rep" "$sys" boot http boot:boot
            [ "$sys" = native ] && continue
            session "$rep" "$sys" hwalk http walk:walk
            session "$rep" "$sys" hread http read:read
        done
        # slate's memory with a cache much smaller than what is read (first
        # repetition only): every file read over HTTP through a bounded cache.
        if [ "$rep" = 1 ] && has slate && [ -n "$SMALL_CACHE" ]; then
            SLATE_EXTRA=(--cache-size "$SMALL_CACHE")
            session "$rep" slate hsmall http read:read
            SLATE_EXTRA=()
        fi
    fi
done
env_rec load_end "$(cut -d' ' -f1-3 /proc/loadavg)"

# ---- fidelity (untimed): each mount against the native tree ----------------------------------------
if [ "$VERIFY" = 1 ] && [ -f "$TREEDIGEST" ]; then
    python3 "$TREEDIGEST" "$NATIVE" > "$W/native.digest"
    for sys in "${SYS[@]}"; do
        [ "$sys" = native ] && continue
        SESSION="verify.$sys"
        mount_fs "$sys" cache || { log "verify $sys: mount failed"; umount_fs "$sys"; continue; }
        python3 "$TREEDIGEST" "$FS" > "$W/$sys.digest" 2> "$W/logs/verify.$sys.err" || true
        umount_fs "$sys"
        python3 "$TREEDIGEST" --diff "$W/native.digest" "$W/$sys.digest" > "$W/verify-$sys.txt" 2>&1 || true
        sum=$(awk '/^differs:/ {sub(/^differs: /, ""); s = s (s ? "; " : "") $0} END {print s}' "$W/verify-$sys.txt")
        rec 0 "$sys" verify summary "$(tail -n 1 "$W/verify-$sys.txt" | tr '\t' ' ')${sum:+ ($sum)}"
        log "treedigest $sys vs native: $(tail -n 1 "$W/verify-$sys.txt")"
    done
fi

python3 "$HERE/mount_report.py" "$RUNS" | tee "$W/results.md"
