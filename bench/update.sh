#!/usr/bin/env bash
# update.sh — benchmark slate's network update (server `slate serve`, client
# `slate update`) against its peers, in the same run, on the Debian trees v1,
# v2, v3 built by shared/bench/corpus.sh (`make corpus`). The peers are run
# the way shared/bench/peers.sh (step_update) runs them:
#   rsync -aHAXS --numeric-ids --delete (and the same with -z) from an rsync
#         daemon, into a copy of the old tree (in place);
#   ostree pull into a bare client repository holding the old commit, from an
#         archive repository served by nginx, with loose objects
#         (--disable-static-deltas) or static deltas (--require-static-deltas),
#         then `ostree checkout` of the new commit into a new directory;
#   casync extract --seed=<the old tree> from a chunk store served by nginx,
#         into a new directory.
# and slate, served by `slate serve` and updated by `slate update`, with
# prepared deltas (`slate delta`) and without them (frames only).
#
# Steps measured: v1->v2, v2->v3, v1->v3. What each client holds before the
# measured command (prepared untimed, from scratch for every measurement):
#   rsync                   a copy of the old tree (cp -a), updated in place
#   ostree, ostree-delta    a bare repo that pulled the old commit
#   casync                  a copy of the old tree as --seed; writes a new dir
#   slate-*  (in place)     both slots hold the old version, the old version
#                           runs: the reserve slot is a copy of the running
#                           tree, updated in place (only changed entries) —
#                           the situation rsync's "copy of the old tree" is in
#   slate-*-fresh           the old version runs in slot a, slot b is empty:
#                           the whole new tree is written (like casync, or an
#                           ostree checkout into a new directory)
#   slate-*-ab (v2->v3)     A/B steady state: v2 runs in slot b, slot a still
#                           holds v1 and is updated in place
# The slate clients reach that state through real agent passes against
# servers that hold only the history up to the old version (a copy of the
# repository taken right after that version's commit), so the agent's caches
# (pack indexes, deltas) hold nothing of the new version. To get both slots
# onto the same version, the agent first writes a tiny tree (`prep` channel)
# into slot b and then the old version over it (from local data only), and
# the slot is marked good with `SLATE_BOOTED_SLOT=b slate boot-ok`.
#
# Delta preparation is timed too: `slate delta --level $DELTA_LEVEL` against
# `ostree static-delta generate`, v1->v2 in every repetition, v2->v3 and
# v1->v3 once (they take minutes; like peers.sh). The v1->v3 deltas are what
# the v1->v3 rows with deltas use (LONG_DELTAS=0 skips v2->v3/v1->v3
# generation: then only v1->v2 has deltas).
#
# Wire bytes are counted like peers.sh counts them: the loopback interface's
# tx bytes around each command (every byte in both directions, TCP/IP headers
# included) — in a private network namespace (`unshare -n`) when possible, so
# that nothing else on the machine shares the counter — plus each tool's own
# payload count: slate's `bytes_fetched` (response bodies), nginx's
# $bytes_sent sum (headers + bodies) for ostree/casync, and rsync's "Total
# bytes received". Requests: slate's JSON `requests` (content requests: range
# requests plus a delta), and every request in the server's log (slate serve
# with SLATE_LOG=info, nginx's access log); rsync has none.
#
# Every timed command runs under /usr/bin/time -v (wall, max RSS, user, sys)
# after an untimed `sync`, and is followed by a separately timed `sync` (the
# cost of making it durable). Tools are interleaved within a repetition, their
# order rotating from one repetition to the next. report_update.py prints the
# medians and the medians of the per-repetition ratios slate/peer.
#
# Usage:  bash bench/update.sh          (as root, from anywhere)
# Env:    CORPUS_DIR  trees v1 v2 v3   (default /var/tmp/stateless-bench/corpus)
#         REPS        repetitions      (default 3)
#         OUT         results          (default /var/tmp/slate-bench/update)
#         WORK        scratch          (default $OUT/work; removed at the end
#                                       unless KEEP_WORK=1)
#         SLATE       slate binary     (default: target/release/slate after
#                                       `cargo build --release`)
#         VERIFY      1 (default): check every slate result of the last
#                     repetition with shared/bench/treedigest.py (untimed)
#         LONG_DELTAS 1 (default): also generate v2->v3 and v1->v3 deltas
#         DELTA_LEVEL zstd level for `slate delta` (default 19)
#         PORT_BASE   first of the 127.0.0.1 ports used (default 18600; uses
#                     PORT_BASE .. PORT_BASE+5)
#         NETNS       auto (default: private network namespace if possible),
#                     0 to stay in the machine's namespace
#
# Output: report on stdout (also $OUT/report.md), progress on stderr, raw data
# in $OUT: timings.tsv (rep step tool what wall_s maxrss_kb user_s sys_s),
# metrics.tsv (rep step tool what key value), failures.tsv, env.tsv,
# commands.txt, logs/ (every command's stdout, stderr and time output),
# fidelity/ (treedigest diffs).
#
# Requires root; installs missing tools with apt-get: ostree casync rsync
# nginx-light time python3 iproute2.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CORPUS_DIR=${CORPUS_DIR:-/var/tmp/stateless-bench/corpus}
REPS=${REPS:-3}
OUT=${OUT:-/var/tmp/slate-bench/update}
WORK=${WORK:-$OUT/work}
VERIFY=${VERIFY:-1}
KEEP_WORK=${KEEP_WORK:-0}
LONG_DELTAS=${LONG_DELTAS:-1}
DELTA_LEVEL=${DELTA_LEVEL:-19}
PORT_BASE=${PORT_BASE:-18600}
NETNS=${NETNS:-auto}
VERSIONS=(v1 v2 v3)
STEPS=(v1-v2 v2-v3 v1-v3)
RSYNC_OPTS=(-aHAXS --numeric-ids)
TREEDIGEST=${SLATE_SHARED:-$ROOT/../shared}/bench/treedigest.py
[ -f "$TREEDIGEST" ] || TREEDIGEST=/work/shared/bench/treedigest.py

die() { printf 'update.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf '[update.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# =====================================================================================
# Stage 1 (the machine's network namespace): checks, tools, slate binary; then
# re-run this script inside a private network namespace.
# =====================================================================================
if [ "${_UPDATE_SH_STAGE:-1}" = 1 ]; then
    [[ $REPS =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer (got '$REPS')"
    [[ $PORT_BASE =~ ^[0-9]+$ ]] && [ "$PORT_BASE" -ge 1024 ] && [ "$PORT_BASE" -le 65000 ] ||
        die "PORT_BASE must be a port number between 1024 and 65000"
    [ "$(id -u)" -eq 0 ] || die "must run as root (the trees hold device nodes and files owned by other users)"
    for v in "${VERSIONS[@]}"; do
        [ -d "$CORPUS_DIR/$v" ] && [ -e "$CORPUS_DIR/$v.done" ] ||
            die "tree $CORPUS_DIR/$v is missing or incomplete: build it with 'make corpus' (or set CORPUS_DIR)"
    done
    case $(realpath -m "$WORK")/ in
        / | /var/ | /var/tmp/ | /tmp/ | /root/ | /home/ | "$(realpath -m "$CORPUS_DIR")"/* | "$ROOT"/* | "$(realpath -m "$OUT")"/)
            die "WORK=$WORK is not a safe scratch directory (it is removed before and after the run)" ;;
    esac
    case $(realpath -m "$OUT")/ in
        "$(realpath -m "$WORK")"/*) die "OUT=$OUT must not be inside WORK=$WORK (WORK is removed)" ;;
        "$(realpath -m "$CORPUS_DIR")"/* | "$ROOT"/*) die "OUT=$OUT must not be inside the corpus or the source tree" ;;
    esac

    missing=()
    for c in ostree:ostree casync:casync rsync:rsync nginx:nginx-light /usr/bin/time:time \
             python3:python3 ip:iproute2; do
        command -v "${c%%:*}" >/dev/null || missing+=("${c#*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq "${missing[@]}" >&2 ||
            { apt-get update -qq >&2 && apt-get install -y -qq "${missing[@]}" >&2; } ||
            die "could not install ${missing[*]} with apt-get"
    fi

    if [ -z "${SLATE:-}" ]; then
        SLATE=$ROOT/target/release/slate
        command -v cargo >/dev/null || [ -x "$SLATE" ] ||
            die "no cargo to build slate and no $SLATE: run 'make build' or set SLATE"
        if command -v cargo >/dev/null; then
            log "cargo build --release (set SLATE to use another binary)"
            (cd "$ROOT" && cargo build --release --quiet >&2) || die "cargo build --release failed"
        fi
    fi
    [ -x "$SLATE" ] || die "slate binary $SLATE is not executable (set SLATE)"
    export SLATE=$(realpath "$SLATE")
    export _UPDATE_SH_STAGE=2 CORPUS_DIR REPS OUT WORK VERIFY KEEP_WORK LONG_DELTAS DELTA_LEVEL PORT_BASE TREEDIGEST
    if [ "$NETNS" != 0 ] && unshare -n true 2>/dev/null; then
        export _UPDATE_SH_NETNS=private
        exec unshare -n -- "$BASH" "${BASH_SOURCE[0]}" "$@"
    fi
    [ "$NETNS" = 0 ] || log "cannot create a network namespace (unshare -n): counting on the machine's loopback"
    export _UPDATE_SH_NETNS=shared
fi

# =====================================================================================
# Stage 2: the benchmark.
# =====================================================================================
if [ "$_UPDATE_SH_NETNS" = private ]; then
    ip link set lo up || die "cannot bring up lo in the private network namespace"
fi

RES=$OUT
mkdir -p "$RES/logs" "$RES/fidelity" "$WORK"
rm -f "$RES"/logs/* "$RES"/fidelity/* "$RES/timings.tsv" "$RES/metrics.tsv" "$RES/failures.tsv" \
      "$RES/report.md" "$RES/env.tsv" "$RES/commands.txt"
printf 'rep\tstep\ttool\twhat\twall_s\tmaxrss_kb\tuser_s\tsys_s\n' > "$RES/timings.tsv"
printf 'rep\tstep\ttool\twhat\tkey\tvalue\n' > "$RES/metrics.tsv"
printf 'rep\tstep\ttool\twhat\terror\n' > "$RES/failures.tsv"

rmtree() { local d; for d in "$@"; do [ ! -e "$d" ] || rm -rf --one-file-system "$d"; done; }

HTTP_PORT=$PORT_BASE                # nginx: ostree archive repo and casync store
RSYNC_PORT=$((PORT_BASE + 1))       # rsync daemon: the corpus trees
SLATE_PORT_V1=$((PORT_BASE + 2))    # slate serve: repository as it was after v1
SLATE_PORT_V2=$((PORT_BASE + 3))    #   ... after v2
SLATE_PORT_FRAMES=$((PORT_BASE + 4))  # the full repository, no deltas
SLATE_PORT_DELTA=$((PORT_BASE + 5))   # the full repository with prepared deltas
URL=http://127.0.0.1:$HTTP_PORT

NGINX_DIR=$WORK/nginx
RSYNCD_DIR=$WORK/rsyncd
SLATE_DIR=$WORK/slate               # repositories, key, fleet files, server logs
OSTREE_REPO=$WORK/ostree-repo
OSTREE_SRC=$WORK/ostree-src
CASYNC=$WORK/casync
CLIENTS=$WORK/clients

# --- cleanup ----------------------------------------------------------------------------
CHILD=
STEP_DESC="setup"
declare -A SERVE_PID=()
stop_servers() {  # only what this script started, by pid
    local n p _
    for n in "${!SERVE_PID[@]}"; do
        p=${SERVE_PID[$n]}
        if kill -0 "$p" 2>/dev/null; then
            kill -TERM "$p" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null || true
        fi
        wait "$p" 2>/dev/null || true
        unset "SERVE_PID[$n]"
    done
    if [ -s "$NGINX_DIR/nginx.pid" ]; then
        p=$(cat "$NGINX_DIR/nginx.pid")
        kill -QUIT "$p" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null || true
        rm -f "$NGINX_DIR/nginx.pid"
    fi
    if [ -s "$RSYNCD_DIR/rsyncd.pid" ]; then
        kill -TERM "$(cat "$RSYNCD_DIR/rsyncd.pid")" 2>/dev/null || true
        rm -f "$RSYNCD_DIR/rsyncd.pid"
    fi
}
on_exit() {
    local rc=$?
    if [ -n "$CHILD" ] && kill -0 "$CHILD" 2>/dev/null; then
        kill -TERM -- "-$CHILD" 2>/dev/null || kill -TERM "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    stop_servers
    if [ "$KEEP_WORK" != 1 ] && [ -d "$WORK" ]; then rmtree "$WORK"; fi
    if [ $rc -ne 0 ]; then
        printf 'update.sh: FAILED (exit %d) during: %s\n' "$rc" "$STEP_DESC" >&2
        printf 'update.sh: logs and partial data are in %s\n' "$RES" >&2
    fi
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- measuring ------------------------------------------------------------------------------
# timed REP STEP TOOL WHAT CMD...
# Runs CMD under /usr/bin/time -v after an untimed `sync` (NO_PRESYNC=1 skips
# it), in its own process group, logs in $RES/logs/REP.STEP.TOOL.WHAT.*; one
# row in timings.tsv. Returns 1 on failure (recorded in failures.tsv) instead
# of stopping the run: the caller decides.
timed() {
    local rep=$1 step=$2 tool=$3 what=$4; shift 4
    LAST_LOG="$RES/logs/$rep.$step.$tool.$what"
    STEP_DESC="rep $rep: $step $tool $what: $*"
    [ "${NO_PRESYNC:-0}" = 1 ] || sync
    local rc=0
    setsid /usr/bin/time -v -o "$LAST_LOG.time" "$@" >"$LAST_LOG.out" 2>"$LAST_LOG.err" &
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=
    if [ $rc -ne 0 ]; then
        local msg
        msg=$(grep -v '^Command exited with non-zero status' "$LAST_LOG.err" | tail -n 1 | tr '\t' ' ')
        printf '%s\t%s\t%s\t%s\t%s\n' "$rep" "$step" "$tool" "$what" "exit $rc: $msg" >> "$RES/failures.tsv"
        log "FAILED (exit $rc): $*"
        tail -n 8 "$LAST_LOG.err" | sed 's/^/    /' >&2
        return 1
    fi
    local row
    row=$(awk -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0
                                   for (i = 1; i <= n; i++) s = s * 60 + p[i]; wall = s }
        /Maximum resident set size/ { rss = $2 }
        /User time \(seconds\)/ { usr = $2 }
        /System time \(seconds\)/ { sys = $2 }
        END { printf "%.2f\t%d\t%.2f\t%.2f", wall, rss, usr, sys }' "$LAST_LOG.time")
    printf '%s\t%s\t%s\t%s\t%s\n' "$rep" "$step" "$tool" "$what" "$row" >> "$RES/timings.tsv"
    log "rep $rep $step $tool $what: ${row%%$'\t'*} s, max RSS $(cut -f2 <<< "$row") KiB"
}
metric() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RES/metrics.tsv"; }
fail() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$RES/failures.tsv"; log "FAILED: $3 $4 rep $1: $5"; }

# rotate N WORDS...: the words rotated left by N (tool order of repetition N+1).
rotate() { local n=$(( $1 % ($# - 1) )); shift; echo "${@:n+1}" "${@:1:n}"; }

# Loopback tx bytes of this network namespace (/proc/net/dev is per namespace;
# /sys/class/net would show the namespace sysfs was mounted in).
lo_bytes() { sed -n 's/^ *lo: *//p' /proc/net/dev | awk '{print $9}'; }
nginx_lines() { wc -l < "$NGINX_DIR/access.log"; }
nginx_sum() {  # FROM_LINE -> "bytes requests non2xx delta_bytes object_bytes"
    tail -n +"$(( $1 + 1 ))" "$NGINX_DIR/access.log" |
        awk '{ b += $1; n++; if ($3 !~ /^2/) e++
               if ($6 ~ /\/(deltas|delta-indexes)\//) d += $1
               if ($6 ~ /\/objects\//) o += $1 }
             END { printf "%d %d %d %d %d", b, n, e, d, o }'
}
slate_log_lines() { wc -l < "$SLATE_DIR/serve-$1.log"; }
# slate_log_sum NAME FROM_LINE -> "requests non2xx fleet snapshots idx packs deltas other"
slate_log_sum() {
    tail -n +"$(( $2 + 1 ))" "$SLATE_DIR/serve-$1.log" | sed 's/\x1b\[[0-9;]*m//g' |
        awk '/finished processing request/ {
                 n++; u = ""; s = ""
                 for (i = 1; i <= NF; i++) { if ($i ~ /^uri=/) u = substr($i, 5); if ($i ~ /^status=/) s = substr($i, 8) }
                 if (s !~ /^2/ && s !~ /^3/) e++
                 if (u ~ /^\/v1\/fleet\//) f++
                 else if (u ~ /\.snap$|\.sig$/) sn++
                 else if (u ~ /\.idx$/) ix++
                 else if (u ~ /\.pack$/) pk++
                 else if (u ~ /\/deltas\//) dl++
                 else ot++ }
             END { printf "%d %d %d %d %d %d %d %d", n, e, f, sn, ix, pk, dl, ot }'
}
net_begin() { NET_LO0=$(lo_bytes); NET_NG0=$(nginx_lines); }
net_end() {  # REP STEP TOOL WHAT
    metric "$1" "$2" "$3" "$4" lo_bytes "$(( $(lo_bytes) - NET_LO0 ))"
    case $3 in
        ostree* | casync*)
            local -a s; read -r -a s <<< "$(nginx_sum "$NET_NG0")"
            metric "$1" "$2" "$3" "$4" payload_bytes "${s[0]}"
            metric "$1" "$2" "$3" "$4" server_requests "${s[1]}"
            metric "$1" "$2" "$3" "$4" requests "${s[1]}"
            [ "${s[2]}" -eq 0 ] || metric "$1" "$2" "$3" "$4" server_non2xx "${s[2]}"
            if [ "${3#ostree}" != "$3" ]; then
                metric "$1" "$2" "$3" "$4" http_bytes_deltas "${s[3]}"
                metric "$1" "$2" "$3" "$4" http_bytes_objects "${s[4]}"
            fi ;;
    esac
}

# --- fidelity ------------------------------------------------------------------------------------
digest_src() {  # V -> path of the cached source digest
    local d="$WORK/src-$1.digest"
    [ -s "$d" ] || python3 "$TREEDIGEST" "$CORPUS_DIR/$1" > "$d"
    echo "$d"
}
verify_tree() {  # REP TOOL STEP DIR V
    local rep=$1 tool=$2 step=$3 dir=$4 v=$5 src name
    [ "$VERIFY" = 1 ] && [ -f "$TREEDIGEST" ] || return 0
    STEP_DESC="verifying $tool $step ($dir) against $v"
    src=$(digest_src "$v")
    name="$tool.$step"
    python3 "$TREEDIGEST" "$dir" > "$WORK/$name.digest"
    if python3 "$TREEDIGEST" --diff "$src" "$WORK/$name.digest" > "$RES/fidelity/$name.txt"; then
        metric "$rep" verify "$tool" "$step" identical 1
    else
        metric "$rep" verify "$tool" "$step" identical 0
    fi
    log "treedigest $tool $step vs $v: $(tail -n 1 "$RES/fidelity/$name.txt")"
}

# =====================================================================================
# Environment, servers' data
# =====================================================================================
STEP_DESC="preparing $WORK"
rmtree "$WORK"; mkdir -p "$WORK/bin" "$SLATE_DIR" "$CLIENTS"
cp "$SLATE" "$WORK/bin/slate"          # a rebuild of target/ cannot change what is measured
SLATE_SRC=$SLATE
SLATE=$WORK/bin/slate

env_row() { printf '%s\t%s\n' "$1" "$2" >> "$RES/env.tsv"; }
pkgv() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo '?'; }
env_row date "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
env_row os "$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-?}")"
env_row kernel "$(uname -r)"
env_row nproc "$(nproc)"
env_row mem_total "$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
env_row cpu "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
env_row work_dir "$WORK"
env_row work_fs "$(findmnt -n -o FSTYPE,SOURCE -T "$WORK" 2>/dev/null | tr -s ' ' || echo '?')"
env_row corpus_dir "$CORPUS_DIR"
env_row netns "$_UPDATE_SH_NETNS"
env_row reps "$REPS"
env_row delta_level "$DELTA_LEVEL"
env_row long_deltas "$LONG_DELTAS"
env_row slate "$("$SLATE" --version), copy of $SLATE_SRC ($(date -u -r "$SLATE_SRC" '+built %Y-%m-%d %H:%M UTC'))"
env_row load_start "$(cut -d' ' -f1-3 /proc/loadavg)"
env_row ostree "$(ostree --version | awk -F"'" '/Version:/ {print $2; exit}') ($(pkgv ostree))"
env_row casync "$(casync --version 2>/dev/null | head -1) ($(pkgv casync))"
env_row rsync "$(rsync --version | head -1 | sed 's/  */ /g') ($(pkgv rsync))"
env_row nginx "$(nginx -v 2>&1 | sed 's/^nginx version: //') ($(pkgv nginx-light))"
env_row time "GNU time $(pkgv time)"
env_row python3 "$(python3 --version 2>&1)"
for v in "${VERSIONS[@]}"; do
    env_row "tree_$v" "$(du -sb "$CORPUS_DIR/$v" | cut -f1) bytes (du -sb), $(find "$CORPUS_DIR/$v" | wc -l) entries"
done

log "results in $RES, scratch in $WORK, $REPS repetitions, network namespace: $_UPDATE_SH_NETNS"

# --- slate: key, repository built v1 -> v2 -> v3, copies after v1 and v2 ---------------------------
# A tiny tree on its own channel, used only to get both slots onto one version.
STEP_DESC="slate repositories"
mkdir -p "$SLATE_DIR/prep-tree/etc"
echo "slate benchmark: placeholder tree" > "$SLATE_DIR/prep-tree/etc/README"
touch -d '2020-01-01 00:00:00 UTC' "$SLATE_DIR/prep-tree/etc/README" "$SLATE_DIR/prep-tree/etc" "$SLATE_DIR/prep-tree"
R=$SLATE_DIR/repo
"$SLATE" keygen --out "$SLATE_DIR/key" > "$RES/logs/0.setup.slate.keygen.out" 2>&1
"$SLATE" init --repo "$R" > "$RES/logs/0.setup.slate.init.out" 2>&1
declare -A SID=()
SID[x]=$("$SLATE" commit --repo "$R" --channel prep --sign "$SLATE_DIR/key" "$SLATE_DIR/prep-tree" \
         2> "$RES/logs/0.setup.slate.commit-x.err" | tail -n 1)
for v in "${VERSIONS[@]}"; do
    timed 0 setup slate "commit-$v" \
        "$SLATE" commit --repo "$R" --channel lab --sign "$SLATE_DIR/key" "$CORPUS_DIR/$v" || exit 1
    SID[$v]=$(tail -n 1 "$LAST_LOG.out")
    [[ ${SID[$v]} =~ ^[0-9a-f]{64}$ ]] || die "slate commit $v printed no snapshot id"
    metric 0 setup slate "$v" snapshot_id "${SID[$v]}"
    case $v in v1 | v2) cp -a "$R" "$SLATE_DIR/repo-after-$v" ;; esac
done
RD=$SLATE_DIR/repo-deltas
cp -a "$R" "$RD"
ver_of() {  # snapshot id -> v1/v2/v3/x (or the id)
    local k; for k in "${!SID[@]}"; do [ "${SID[$k]}" = "$1" ] && { echo "$k"; return; }; done; echo "${1:-none}"
}

# --- ostree: archive repository (v1, v2, v3 without device nodes etc., as in peers.sh) ------------
STEP_DESC="ostree repository"
ostree init --mode=archive --repo="$OSTREE_REPO"
mkdir -p "$OSTREE_SRC"
declare -A OREV=()
for v in "${VERSIONS[@]}"; do
    cp -al "$CORPUS_DIR/$v" "$OSTREE_SRC/$v" 2>/dev/null || { rmtree "$OSTREE_SRC/$v"; cp -a "$CORPUS_DIR/$v" "$OSTREE_SRC/$v"; }
    find "$OSTREE_SRC/$v" \( -type c -o -type b -o -type p -o -type s \) -printf '/%P\n' -delete > "$OSTREE_SRC/$v.removed"
    timed 0 setup ostree "commit-$v" \
        ostree commit --repo="$OSTREE_REPO" --branch=os --subject="$v" --tree=dir="$OSTREE_SRC/$v" || exit 1
    OREV[$v]=$(tail -n 1 "$LAST_LOG.out")
done
ostree summary -u --repo="$OSTREE_REPO"
rmtree "$OSTREE_SRC"

# --- casync: one chunk store, an index per version ------------------------------------------------
STEP_DESC="casync store"
mkdir -p "$CASYNC"
for v in "${VERSIONS[@]}"; do
    timed 0 setup casync "make-$v" \
        casync make --store="$CASYNC/store.castr" "$CASYNC/$v.caidx" "$CORPUS_DIR/$v" || exit 1
done

# --- commands (printed at the top of the report) -----------------------------------------------------
A="$CLIENTS/<tool>"
cat > "$RES/commands.txt" <<EOF
# Run inside a private network namespace (unshare -n; netns=$_UPDATE_SH_NETNS); every
# server listens on 127.0.0.1 only. Untimed before every timed command: sync.
# After every timed update command: a separately timed \`sync\`.
# ---- server side (untimed unless marked) ----
$SLATE keygen --out $SLATE_DIR/key
$SLATE init --repo $R
$SLATE commit --repo $R --channel prep --sign $SLATE_DIR/key $SLATE_DIR/prep-tree   # tiny tree (x)
$SLATE commit --repo $R --channel lab --sign $SLATE_DIR/key $CORPUS_DIR/V   # V = v1 v2 v3 (timed)
#   after v1 and v2: cp -a $R $SLATE_DIR/repo-after-V; at the end: cp -a $R $RD
$SLATE delta --repo $RD --level $DELTA_LEVEL --json FROM_ID TO_ID          # timed; v1->v2, v2->v3, v1->v3
ostree commit --repo=$OSTREE_REPO --branch=os --subject=V --tree=dir=<V without device nodes/fifos/sockets>
ostree static-delta generate --repo=$OSTREE_REPO --from=REV_FROM --to=REV_TO   # timed; then ostree summary -u
casync make --store=$CASYNC/store.castr $CASYNC/V.caidx $CORPUS_DIR/V
nginx (static files: $URL/ostree, $URL/casync; access log: \$bytes_sent \$status "\$request")
rsync --daemon   (module corpus = $CORPUS_DIR, read only, 127.0.0.1:$RSYNC_PORT)
SLATE_LOG=info $SLATE serve --repo $SLATE_DIR/repo-after-v1 --listen 127.0.0.1:$SLATE_PORT_V1 --fleet fleet-v1.toml --db ...   # history up to v1 (client preparation)
SLATE_LOG=info $SLATE serve --repo $SLATE_DIR/repo-after-v2 --listen 127.0.0.1:$SLATE_PORT_V2 --fleet fleet-v2.toml --db ...   # history up to v2 (client preparation)
SLATE_LOG=info $SLATE serve --repo $R --listen 127.0.0.1:$SLATE_PORT_FRAMES --fleet fleet.toml --db ...   # measured: frames only
SLATE_LOG=info $SLATE serve --repo $RD --listen 127.0.0.1:$SLATE_PORT_DELTA --fleet fleet.toml --db ...   # measured: with deltas
#   fleet files: [[machine]] rules labels = { pin = "V" } -> channel lab, snapshot = <V's id> (pinned)
# ---- clients, per measured step FROM->TO (fresh directories every time) ----
# slate: AGENT.toml = server, trust = [key.pub], state_dir, machine_id = "bench",
#        labels = { pin = "TO" }, [slots] a = $A/slot-a, b = $A/slot-b
#   preparation, in place:  update pin FROM (-> a), pin x (-> b), pin FROM (-> b, in place),
#                           SLATE_BOOTED_SLOT=b slate boot-ok   (servers with history up to FROM)
#   preparation, fresh:     update pin FROM (-> a)
#   preparation, ab:        update pin v1 (-> a), pin v2 (-> b), SLATE_BOOTED_SLOT=b slate boot-ok
$SLATE update --config AGENT.toml --json       # timed: pin TO, server with deltas or frames only
rsync ${RSYNC_OPTS[*]} [-z] --delete --stats rsync://127.0.0.1:$RSYNC_PORT/corpus/TO/ $A/tree/   # timed; $A/tree = cp -a FROM
ostree init --mode=bare --repo=$A/repo; ostree remote add --repo=$A/repo --no-gpg-verify srv $URL/ostree
ostree pull --repo=$A/repo --disable-static-deltas srv os@REV_FROM                 # untimed
ostree pull --repo=$A/repo --disable-static-deltas|--require-static-deltas srv os@REV_TO   # timed
ostree checkout --repo=$A/repo REV_TO $A/TO                                        # timed
casync extract --store=$URL/casync/store.castr --seed=$A/seed $URL/casync/TO.caidx $A/TO   # timed; $A/seed = cp -a FROM
EOF

# =====================================================================================
# Delta preparation (timed): slate delta vs ostree static-delta generate
# =====================================================================================
gen_delta() {  # REP TOOL FROM TO
    local rep=$1 tool=$2 a=$3 b=$4 step="$3-$4"
    case $tool in
        slate)
            rm -f "$RD/deltas/${SID[$a]}/${SID[$b]}.delta"
            timed "$rep" delta slate "$step" \
                "$SLATE" delta --repo "$RD" --level "$DELTA_LEVEL" --json "${SID[$a]}" "${SID[$b]}" || return 0
            metric "$rep" delta slate "$step" delta_bytes \
                "$(stat -c %s "$RD/deltas/${SID[$a]}/${SID[$b]}.delta")"
            python3 -c 'import json,sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
for k, v in d.items():
    if isinstance(v, (int, float)): print("%s\t%s" % (k, v))' "$LAST_LOG.out" |
                while IFS=$'\t' read -r k val; do metric "$rep" delta slate "$step" "json_$k" "$val"; done ;;
        ostree)
            local name="${OREV[$a]}-${OREV[$b]}"
            ostree static-delta delete --repo="$OSTREE_REPO" "$name" >/dev/null 2>&1 || true
            local before; before=$(find "$OSTREE_REPO/deltas" -name superblock 2>/dev/null | sort || true)
            timed "$rep" delta ostree "$step" \
                ostree static-delta generate --repo="$OSTREE_REPO" --from="${OREV[$a]}" --to="${OREV[$b]}" || return 0
            metric "$rep" delta ostree "$step" delta_bytes \
                "$(ostree static-delta show --repo="$OSTREE_REPO" "$name" | awk '/^Total Size:/ {print $3; exit}')"
            # On disk: parts + superblock (the delta directory).
            local dd; dd=$(comm -13 <(echo "$before") <(find "$OSTREE_REPO/deltas" -name superblock | sort) | head -n 1)
            [ -z "$dd" ] || metric "$rep" delta ostree "$step" delta_files_bytes "$(du -sb "${dd%/superblock}" | cut -f1)" ;;
    esac
}
for rep in $(seq "$REPS"); do
    for tool in $(rotate $((rep - 1)) slate ostree); do gen_delta "$rep" "$tool" v1 v2; done
    if [ "$LONG_DELTAS" = 1 ] && [ "$rep" -eq "$REPS" ]; then
        for step in v2-v3 v1-v3; do
            for tool in $(rotate $((rep - 1)) slate ostree); do gen_delta "$rep" "$tool" "${step%-*}" "${step#*-}"; done
        done
    fi
done
ostree summary -u --repo="$OSTREE_REPO"
metric 0 setup slate repo du_sb "$(du -sb "$R" | cut -f1)"
metric 0 setup slate repo-deltas du_sb "$(du -sb "$RD" | cut -f1)"
metric 0 setup ostree repo du_sb "$(du -sb "$OSTREE_REPO" | cut -f1)"
metric 0 setup casync store du_sb "$(du -sb "$CASYNC" | cut -f1)"

# =====================================================================================
# Servers (127.0.0.1 only)
# =====================================================================================
STEP_DESC="starting servers"
mkdir -p "$NGINX_DIR/tmp" "$WORK/serve" "$RSYNCD_DIR"
ln -sfn "$OSTREE_REPO" "$WORK/serve/ostree"
ln -sfn "$CASYNC" "$WORK/serve/casync"
cat > "$NGINX_DIR/nginx.conf" <<EOF
# generated by bench/update.sh: static file server for ostree and casync
user root;
daemon on;
worker_processes 1;
pid $NGINX_DIR/nginx.pid;
error_log $NGINX_DIR/error.log;
events { worker_connections 512; }
http {
    log_format bench '\$bytes_sent \$body_bytes_sent \$status \$request_length "\$request"';
    access_log $NGINX_DIR/access.log bench;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120;
    default_type application/octet-stream;
    client_body_temp_path $NGINX_DIR/tmp;
    server {
        listen 127.0.0.1:$HTTP_PORT;
        root $WORK/serve;
    }
}
EOF
touch "$NGINX_DIR/access.log"
nginx -e "$NGINX_DIR/error.log" -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf"
cat > "$RSYNCD_DIR/rsyncd.conf" <<EOF
# generated by bench/update.sh: read-only rsync daemon serving the corpus trees
pid file = $RSYNCD_DIR/rsyncd.pid
address = 127.0.0.1
port = $RSYNC_PORT
use chroot = yes
log file = $RSYNCD_DIR/rsyncd.log
[corpus]
    path = $CORPUS_DIR
    read only = yes
    uid = 0
    gid = 0
    numeric ids = yes
EOF
rsync --daemon --config="$RSYNCD_DIR/rsyncd.conf"

fleet_file() {  # OUT VERSIONS...: pins for the labels pin=x and pin=V
    local f=$1 v; shift
    { printf '[default]\nchannel = "lab"\n'
      for v in x "$@"; do
          printf '\n[[machine]]\nname = "pin-%s"\nlabels = { pin = "%s" }\nchannel = "%s"\nsnapshot = "%s"\n' \
              "$v" "$v" "$([ "$v" = x ] && echo prep || echo lab)" "${SID[$v]}"
      done; } > "$f"
}
fleet_file "$SLATE_DIR/fleet-v1.toml" v1
fleet_file "$SLATE_DIR/fleet-v2.toml" v1 v2
fleet_file "$SLATE_DIR/fleet.toml" v1 v2 v3
start_slate() {  # NAME REPO PORT FLEET
    local name=$1 repo=$2 port=$3 fleet=$4 _
    SLATE_LOG=info "$SLATE" serve --repo "$repo" --listen "127.0.0.1:$port" --fleet "$fleet" \
        --db "$SLATE_DIR/fleet-$name.db" > "$SLATE_DIR/serve-$name.out" 2> "$SLATE_DIR/serve-$name.log" &
    SERVE_PID[$name]=$!
    for _ in $(seq 100); do
        grep -q '^serving ' "$SLATE_DIR/serve-$name.log" 2>/dev/null && return 0
        kill -0 "${SERVE_PID[$name]}" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 5 "$SLATE_DIR/serve-$name.log" >&2
    die "slate serve ($name, port $port) did not start"
}
start_slate v1 "$SLATE_DIR/repo-after-v1" "$SLATE_PORT_V1" "$SLATE_DIR/fleet-v1.toml"
start_slate v2 "$SLATE_DIR/repo-after-v2" "$SLATE_PORT_V2" "$SLATE_DIR/fleet-v2.toml"
start_slate frames "$R" "$SLATE_PORT_FRAMES" "$SLATE_DIR/fleet.toml"
start_slate delta "$RD" "$SLATE_PORT_DELTA" "$SLATE_DIR/fleet.toml"
for _ in $(seq 50); do
    [ -s "$NGINX_DIR/nginx.pid" ] && [ -s "$RSYNCD_DIR/rsyncd.pid" ] && break; sleep 0.1
done
[ -s "$NGINX_DIR/nginx.pid" ] && [ -s "$RSYNCD_DIR/rsyncd.pid" ] || die "nginx or the rsync daemon did not start"
log "servers up: nginx :$HTTP_PORT, rsyncd :$RSYNC_PORT, slate :$SLATE_PORT_V1 :$SLATE_PORT_V2 :$SLATE_PORT_FRAMES :$SLATE_PORT_DELTA"

# =====================================================================================
# Clients
# =====================================================================================
declare -A SERVER_PORT=([v1]=$SLATE_PORT_V1 [v2]=$SLATE_PORT_V2 [frames]=$SLATE_PORT_FRAMES [delta]=$SLATE_PORT_DELTA)
agent_cfg() {  # CLIENT_DIR SERVER PIN -> path of the AGENT.toml
    local c=$1 srv=$2 pin=$3 f="$1/agent-$2-$3.toml"
    cat > "$f" <<EOF
server = "http://127.0.0.1:${SERVER_PORT[$srv]}"
trust = ["$SLATE_DIR/key.pub"]
state_dir = "$c/state"
machine_id = "bench"
labels = { pin = "$pin" }
[slots]
a = "$c/slot-a"
b = "$c/slot-b"
EOF
    echo "$f"
}
# An untimed agent pass (client preparation). Returns 1 on failure.
prep_pass() {  # REP LABEL CLIENT_DIR SERVER PIN
    local rep=$1 label=$2 c=$3 srv=$4 pin=$5 lg
    lg="$RES/logs/$rep.prep.$label.$srv-$pin"
    STEP_DESC="rep $rep: preparing $label: update pin $pin from server $srv"
    if ! "$SLATE" update --config "$(agent_cfg "$c" "$srv" "$pin")" --json > "$lg.out" 2> "$lg.err"; then
        fail "$rep" prep "$label" "$srv-$pin" "$(tail -n 1 "$lg.err" | tr '\t' ' ')"
        return 1
    fi
    grep -q '"result":"ok"' "$lg.out" || { fail "$rep" prep "$label" "$srv-$pin" "$(tail -n 1 "$lg.out")"; return 1; }
}
boot_ok() {  # REP LABEL CLIENT_DIR SLOT
    local lg="$RES/logs/$1.prep.$2.boot-ok-$4"
    SLATE_BOOTED_SLOT=$4 "$SLATE" boot-ok --config "$(agent_cfg "$3" v1 x)" > "$lg.out" 2> "$lg.err" ||
        { fail "$1" prep "$2" "boot-ok-$4" "$(tail -n 1 "$lg.err")"; return 1; }
}
# What the client holds before the measured pass, as metrics.
slot_state() {  # REP STEP TOOL CLIENT_DIR
    local rep=$1 step=$2 tool=$3 c=$4 st
    st=$("$SLATE" status --config "$(agent_cfg "$c" v1 x)" --json 2>/dev/null) || return 0
    python3 -c 'import json,sys
s = json.loads(sys.argv[1])
print("active\t%s" % s.get("active"))
for n in ("a", "b"):
    print("slot_%s\t%s" % (n, s["slots"][n].get("snapshot") or "empty"))' "$st" |
    while IFS=$'\t' read -r k val; do
        case $k in slot_*) val=$(ver_of "$val") ;; esac
        [ "$val" != "none" ] || val=empty
        metric "$rep" update "$tool" "$step" "before_$k" "$val"
    done
}

# measure_slate REP STEP TOOL: prepare a client (untimed), run the measured pass.
measure_slate() {
    local rep=$1 step=$2 tool=$3 from=${2%-*} to=${2#*-} mode srv c sl
    srv=delta; [ "${tool#slate-frames}" = "$tool" ] || srv=frames
    case $tool in *-fresh) mode=fresh ;; *-ab) mode=ab ;; *) mode=inplace ;; esac
    c=$CLIENTS/$tool; rmtree "$c"; mkdir -p "$c"
    case $mode in
        inplace)
            prep_pass "$rep" "$tool.$step" "$c" "$from" "$from" &&
            prep_pass "$rep" "$tool.$step" "$c" "$from" x &&
            prep_pass "$rep" "$tool.$step" "$c" "$from" "$from" &&
            boot_ok "$rep" "$tool.$step" "$c" b || { rmtree "$c"; return 0; } ;;
        fresh)
            prep_pass "$rep" "$tool.$step" "$c" "$from" "$from" || { rmtree "$c"; return 0; } ;;
        ab)
            prep_pass "$rep" "$tool.$step" "$c" v1 v1 &&
            prep_pass "$rep" "$tool.$step" "$c" v2 v2 &&
            boot_ok "$rep" "$tool.$step" "$c" b || { rmtree "$c"; return 0; } ;;
    esac
    slot_state "$rep" "$step" "$tool" "$c"
    local cfg n0; cfg=$(agent_cfg "$c" "$srv" "$to")
    n0=$(slate_log_lines "$srv")
    net_begin
    if timed "$rep" update "$tool" "$step" "$SLATE" update --config "$cfg" --json; then
        net_end "$rep" update "$tool" "$step"
        local -a s; read -r -a s <<< "$(slate_log_sum "$srv" "$n0")"
        metric "$rep" update "$tool" "$step" server_requests "${s[0]}"
        metric "$rep" update "$tool" "$step" server_non2xx "${s[1]}"
        metric "$rep" update "$tool" "$step" server_req_fleet "${s[2]}"
        metric "$rep" update "$tool" "$step" server_req_snapshots "${s[3]}"
        metric "$rep" update "$tool" "$step" server_req_idx "${s[4]}"
        metric "$rep" update "$tool" "$step" server_req_packs "${s[5]}"
        metric "$rep" update "$tool" "$step" server_req_deltas "${s[6]}"
        metric "$rep" update "$tool" "$step" server_req_other "${s[7]}"
        python3 -c 'import json,sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
def walk(p, v):
    if isinstance(v, dict):
        for k, x in v.items(): walk(p + k + ".", x)
    elif v is not None:
        print("%s\t%s" % (p[:-1], v))
walk("", d)' "$LAST_LOG.out" | while IFS=$'\t' read -r k val; do
            case $k in
                bytes_fetched) metric "$rep" update "$tool" "$step" payload_bytes "$val" ;;
                requests) metric "$rep" update "$tool" "$step" requests "$val" ;;
            esac
            metric "$rep" update "$tool" "$step" "json_$k" "$val"
        done
        NO_PRESYNC=1 timed "$rep" update "$tool" "$step:sync" sync || true
        if grep -q '"result":"ok"' "$RES/logs/$rep.update.$tool.$step.out"; then
            sl=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]).get("slot") or "")' \
                 "$RES/logs/$rep.update.$tool.$step.out")
            [ "$rep" -ne "$REPS" ] || [ -z "$sl" ] || verify_tree "$rep" "$tool" "$step" "$c/slot-$sl" "$to"
        else
            fail "$rep" update "$tool" "$step" "result not ok: $(tail -n 1 "$RES/logs/$rep.update.$tool.$step.out")"
        fi
    fi
    STEP_DESC="rep $rep: removing $c"; rmtree "$c"
}

measure_rsync() {  # REP STEP TOOL (rsync | rsync-z)
    local rep=$1 step=$2 tool=$3 from=${2%-*} to=${2#*-} c=$CLIENTS/$3 z=()
    [ "$tool" = rsync-z ] && z=(-z)
    rmtree "$c"; mkdir -p "$c"
    STEP_DESC="rep $rep: $tool $step: cp -a $from"
    cp -a "$CORPUS_DIR/$from" "$c/tree"
    net_begin
    if timed "$rep" update "$tool" "$step" rsync "${RSYNC_OPTS[@]}" "${z[@]}" --delete --stats \
            "rsync://127.0.0.1:$RSYNC_PORT/corpus/$to/" "$c/tree/"; then
        net_end "$rep" update "$tool" "$step"
        local k key val
        for k in "Total bytes received" "Total bytes sent" "Literal data" "Matched data" \
                 "Number of regular files transferred"; do
            key=$(echo "$k" | tr 'A-Z ' 'a-z_')
            val=$(grep -m1 "^$k:" "$LAST_LOG.out" | sed 's/^[^:]*: *//; s/ .*//; s/,//g')
            metric "$rep" update "$tool" "$step" "rsync_$key" "$val"
            [ "$k" != "Total bytes received" ] || metric "$rep" update "$tool" "$step" payload_bytes "$val"
        done
        NO_PRESYNC=1 timed "$rep" update "$tool" "$step:sync" sync || true
    fi
    STEP_DESC="rep $rep: removing $c"; rmtree "$c"
}

measure_ostree() {  # REP STEP TOOL (ostree | ostree-delta)
    local rep=$1 step=$2 tool=$3 from=${2%-*} to=${2#*-} c=$CLIENTS/$3 dopt=(--disable-static-deltas)
    [ "$tool" = ostree-delta ] && dopt=(--require-static-deltas)
    rmtree "$c"; mkdir -p "$c"
    STEP_DESC="rep $rep: $tool $step: client repository with $from"
    ostree init --mode=bare --repo="$c/repo"
    ostree remote add --repo="$c/repo" --no-gpg-verify srv "$URL/ostree"
    if ! ostree pull --repo="$c/repo" --disable-static-deltas srv "os@${OREV[$from]}" \
            > "$RES/logs/$rep.prep.$tool.$step.out" 2>&1; then
        fail "$rep" prep "$tool" "$step" "ostree pull of $from failed"; rmtree "$c"; return 0
    fi
    net_begin
    if timed "$rep" update "$tool" "$step" ostree pull --repo="$c/repo" "${dopt[@]}" srv "os@${OREV[$to]}"; then
        net_end "$rep" update "$tool" "$step"
        timed "$rep" update "$tool" "$step:checkout" ostree checkout --repo="$c/repo" "${OREV[$to]}" "$c/$to" &&
            NO_PRESYNC=1 timed "$rep" update "$tool" "$step:sync" sync || true
    fi
    STEP_DESC="rep $rep: removing $c"; rmtree "$c"
}

measure_casync() {  # REP STEP TOOL
    local rep=$1 step=$2 tool=$3 from=${2%-*} to=${2#*-} c=$CLIENTS/$3
    rmtree "$c"; mkdir -p "$c"
    STEP_DESC="rep $rep: $tool $step: cp -a $from (seed)"
    cp -a "$CORPUS_DIR/$from" "$c/seed"
    net_begin
    if timed "$rep" update "$tool" "$step" casync extract --store="$URL/casync/store.castr" --seed="$c/seed" \
            "$URL/casync/$to.caidx" "$c/$to"; then
        net_end "$rep" update "$tool" "$step"
        NO_PRESYNC=1 timed "$rep" update "$tool" "$step:sync" sync || true
    fi
    STEP_DESC="rep $rep: removing $c"; rmtree "$c"
}

# Warm the page cache once (untimed).
STEP_DESC="warming the page cache"
log "reading the trees once (page cache warm-up)"
for v in "${VERSIONS[@]}"; do find "$CORPUS_DIR/$v" -type f -print0 | xargs -0 -r cat > /dev/null; done

for rep in $(seq "$REPS"); do
    for step in "${STEPS[@]}"; do
        tools=(slate-delta slate-frames rsync rsync-z ostree ostree-delta casync slate-delta-fresh slate-frames-fresh)
        [ "$step" != v2-v3 ] || tools+=(slate-delta-ab slate-frames-ab)
        for tool in $(rotate $((rep - 1)) "${tools[@]}"); do
            # Without LONG_DELTAS only v1->v2 has an OSTree static delta.
            [ "$tool" != ostree-delta ] || [ "$step" = v1-v2 ] || [ "$LONG_DELTAS" = 1 ] || continue
            case $tool in
                slate-*) measure_slate "$rep" "$step" "$tool" ;;
                rsync*) measure_rsync "$rep" "$step" "$tool" ;;
                ostree*) measure_ostree "$rep" "$step" "$tool" ;;
                casync) measure_casync "$rep" "$step" "$tool" ;;
            esac
        done
    done
done

STEP_DESC="stopping servers"
stop_servers
env_row load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
STEP_DESC="writing the report"
python3 "$HERE/report_update.py" "$RES" | tee "$RES/report.md"
STEP_DESC="done"
log "done: $RES/report.md, timings.tsv, metrics.tsv, failures.tsv, logs/"
