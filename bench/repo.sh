#!/usr/bin/env bash
# repo.sh — benchmark slate's repository against its peers, in the same run,
# on the Debian trees v1, v2, v3 built by shared/bench/corpus.sh
# (`make corpus`). The peers are measured the way shared/bench/peers.sh
# measures them: OSTree (archive repo), casync (one chunk store) and cp -a.
#
# Each repetition, with the tools interleaved (their order rotates from one
# repetition to the next):
#   commit    v1 into an empty repository, then v2 and v3 incrementally:
#             `slate commit`, `casync make`, `ostree commit`; the repository
#             size (du -sb and du -sk, hard links counted once) after each;
#   checkout  v3 into an empty directory, synced to disk: `slate checkout`
#             (which syncs by itself), and `cp -a` / `casync extract` /
#             `ostree checkout`, each followed by a separately timed `sync`.
#             Before each one: `sync`, remove the previous destination, `sync`.
# Every timed command runs under /usr/bin/time -v (wall, max RSS, user, sys)
# after an untimed `sync`. report.py prints the medians and the medians of
# the per-repetition ratios slate/peer (same-run ratios, as the machine is
# noisy) as a Markdown table, with the project's goals.
#
# Usage:  bash bench/repo.sh            (from the repo root; or `make bench`)
# Env:    CORPUS_DIR  trees v1 v2 v3   (default /var/tmp/stateless-bench/corpus)
#         REPS        repetitions       (default 3)
#         OUT         results directory (default /var/tmp/slate-bench)
#         SLATE       slate binary      (default: target/release/slate, built
#                                        with `cargo build --release` first)
#         WORK        scratch directory for repositories and checkouts
#                     (default $OUT/work; removed at the end unless KEEP_WORK=1)
#         VERIFY      1 (default): after the last checkout, compare slate's v3
#                     checkout with the source using shared/bench/treedigest.py
#                     when it is available (untimed); 0 to skip
#
# Output: the report on stdout (also $OUT/report.md), progress on stderr, and
# raw data in $OUT: timings.tsv (rep step tool what wall_s maxrss_kb user_s
# sys_s), metrics.tsv (rep step tool what key value), env.tsv, logs/ (every
# timed command's stdout, stderr and /usr/bin/time output).
#
# Requires root (the trees hold device nodes and files of other owners) and
# installs missing peers with apt-get: ostree, casync, time, python3.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CORPUS_DIR=${CORPUS_DIR:-/var/tmp/stateless-bench/corpus}
REPS=${REPS:-3}
OUT=${OUT:-/var/tmp/slate-bench}
WORK=${WORK:-$OUT/work}
VERIFY=${VERIFY:-1}
KEEP_WORK=${KEEP_WORK:-0}
VERSIONS=(v1 v2 v3)
CHANNEL=bench

die() { printf 'repo.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf '[repo.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# --- checks ----------------------------------------------------------------------
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer (got '$REPS')"
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
esac

# --- peers and tools (installed like peers.sh does) -------------------------------------
missing=()
for c in ostree:ostree casync:casync /usr/bin/time:time python3:python3; do
    command -v "${c%%:*}" >/dev/null || missing+=("${c#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${missing[@]}" >&2 ||
        { apt-get update -qq >&2 && apt-get install -y -qq "${missing[@]}" >&2; } ||
        die "could not install ${missing[*]} with apt-get"
fi

# --- slate ---------------------------------------------------------------------------
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
SLATE_SRC=$(realpath "$SLATE")

# --- state, cleanup ------------------------------------------------------------------
RES=$OUT
mkdir -p "$RES/logs" "$WORK"
rm -f "$RES"/logs/* "$RES/timings.tsv" "$RES/metrics.tsv" "$RES/report.md"
printf 'rep\tstep\ttool\twhat\twall_s\tmaxrss_kb\tuser_s\tsys_s\n' > "$RES/timings.tsv"
printf 'rep\tstep\ttool\twhat\tkey\tvalue\n' > "$RES/metrics.tsv"

# Remove directory trees, never crossing into another file system.
rmtree() { local d; for d in "$@"; do [ ! -e "$d" ] || rm -rf --one-file-system "$d"; done; }

CHILD=
STEP_DESC="setup"
on_exit() {
    local rc=$?
    if [ -n "$CHILD" ] && kill -0 "$CHILD" 2>/dev/null; then
        # The timed command runs in its own process group (setsid): end that
        # group, i.e. /usr/bin/time and the tool it runs, and nothing else.
        kill -TERM -- "-$CHILD" 2>/dev/null || kill -TERM "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    if [ "$KEEP_WORK" != 1 ] && [ -d "$WORK" ]; then rmtree "$WORK"; fi
    if [ $rc -ne 0 ]; then
        printf 'repo.sh: FAILED (exit %d) during: %s\n' "$rc" "$STEP_DESC" >&2
        printf 'repo.sh: logs and partial data are in %s\n' "$RES" >&2
    fi
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# timed REP STEP TOOL WHAT CMD...
# Runs CMD under /usr/bin/time -v, after an untimed `sync` (NO_PRESYNC=1 skips
# it: used to time the `sync` that follows a command). stdout/stderr/time
# output go to $RES/logs/REP.STEP.TOOL.WHAT.{out,err,time}; one row goes to
# timings.tsv. The command runs as a background job in its own process group
# (setsid, which does not fork here) that we wait for, so that an interrupt
# ends exactly it and its children (by their process group id).
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
        printf 'repo.sh: command failed (exit %d): %s\n' "$rc" "$*" >&2
        printf 'repo.sh: last lines of its stderr (%s.err):\n' "$LAST_LOG" >&2
        tail -n 8 "$LAST_LOG.err" | sed 's/^/    /' >&2
        exit 1
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

# size REP TOOL WHAT DIR...: apparent bytes (du -sb) and disk usage (du -sk) of
# a repository; du counts hard-linked inodes once.
size() {
    local rep=$1 tool=$2 what=$3; shift 3
    metric "$rep" size "$tool" "$what" du_sb_bytes "$(du -scb "$@" | tail -1 | cut -f1)"
    metric "$rep" size "$tool" "$what" du_sk_kib "$(du -sck "$@" | tail -1 | cut -f1)"
    metric "$rep" size "$tool" "$what" files "$(find "$@" -type f | wc -l)"
}

# rotate N WORDS...: the words rotated left by N (tool order of repetition N+1).
rotate() { local n=$(( $1 % ($# - 1) )); shift; echo "${@:n+1}" "${@:1:n}"; }

# Fresh scratch space. The run uses a copy of the slate binary, so that a
# rebuild of target/ during the run cannot change what is measured.
STEP_DESC="preparing $WORK"
rmtree "$WORK"; mkdir -p "$WORK/bin"
cp "$SLATE_SRC" "$WORK/bin/slate"
SLATE=$WORK/bin/slate

# --- environment and commands (printed at the top of the report) --------------------------
SLATE_REPO=$WORK/slate-repo
CASYNC=$WORK/casync
OSTREE_REPO=$WORK/ostree-repo
OSTREE_SRC=$WORK/ostree-src
CO=$WORK/checkout

WORK_FS=$(findmnt -n -o FSTYPE,SOURCE -T "$WORK" 2>/dev/null | tr -s ' ' || df -T "$WORK" | awk 'NR==2 {print $2, $1}')
CORPUS_FS=$(findmnt -n -o FSTYPE,SOURCE -T "$CORPUS_DIR" 2>/dev/null | tr -s ' ' || true)
env_row() { printf '%s\t%s\n' "$1" "$2" >> "$RES/env.tsv"; }
: > "$RES/env.tsv"
env_row date "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
env_row os "$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-?}")"
env_row kernel "$(uname -r)"
env_row nproc "$(nproc)"
env_row mem_total "$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
env_row cpu "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
env_row work_dir "$WORK"
env_row work_fs "$WORK_FS"
env_row corpus_dir "$CORPUS_DIR"
env_row corpus_fs "$CORPUS_FS"
env_row reps "$REPS"
env_row slate "$("$SLATE" --version), copy of $SLATE_SRC ($(date -u -r "$SLATE_SRC" '+built %Y-%m-%d %H:%M UTC'))"
env_row load_start "$(cut -d' ' -f1-3 /proc/loadavg)"
env_row ostree "$(ostree --version | awk -F"'" '/Version:/ {print $2; exit}') ($(dpkg-query -W -f '${Version}' ostree 2>/dev/null || echo '?'))"
env_row casync "$(casync --version 2>/dev/null | head -1) ($(dpkg-query -W -f '${Version}' casync 2>/dev/null || echo '?'))"
env_row cp "$(cp --version | head -1)"
env_row time "GNU time $(dpkg-query -W -f '${Version}' time 2>/dev/null || echo '?')"
env_row python3 "$(python3 --version 2>&1)"
for v in "${VERSIONS[@]}"; do
    env_row "tree_$v" "$(du -sb "$CORPUS_DIR/$v" | cut -f1) bytes (du -sb), $(find "$CORPUS_DIR/$v" | wc -l) entries"
done
cat > "$RES/commands.txt" <<EOF
# untimed, before every timed command (and, for checkouts, also: rm -rf DEST; sync)
sync
# per repetition, fresh repositories (untimed)
$SLATE init --repo $SLATE_REPO
ostree init --mode=archive --repo=$OSTREE_REPO
rm -rf $CASYNC && mkdir -p $CASYNC
# commit, for V in v1 v2 v3 (timed, each under /usr/bin/time -v)
$SLATE commit --repo $SLATE_REPO --channel $CHANNEL $CORPUS_DIR/V
casync make --store=$CASYNC/store.castr $CASYNC/V.caidx $CORPUS_DIR/V
ostree commit --repo=$OSTREE_REPO --branch=$CHANNEL --subject=V --tree=dir=$OSTREE_SRC/V
#   ($OSTREE_SRC/V = cp -al of V without its device nodes/fifos/sockets, which ostree cannot commit)
# repository size after each version (du counts hard links once)
du -scb DIRS; du -sck DIRS     # slate: $SLATE_REPO; casync: $CASYNC (store + indexes); ostree: $OSTREE_REPO
# checkout of v3 into an empty directory (timed)
$SLATE checkout --repo $SLATE_REPO <v3 snapshot id> $CO/slate     # syncs by itself
cp -a $CORPUS_DIR/v3 $CO/cp                                         # then: sync (timed)
casync extract --store=$CASYNC/store.castr $CASYNC/v3.caidx $CO/casync   # then: sync (timed)
ostree checkout --repo=$OSTREE_REPO <v3 commit> $CO/ostree          # then: sync (timed)
EOF

# --- run -----------------------------------------------------------------------------
log "results in $RES, scratch in $WORK ($WORK_FS), $REPS repetitions"

# OSTree cannot commit device nodes, fifos or sockets: it gets a hard-linked
# copy of each tree without them (as in peers.sh). A plain copy if the corpus
# is on another file system.
STEP_DESC="preparing ostree's source trees"
mkdir -p "$OSTREE_SRC"
for v in "${VERSIONS[@]}"; do
    cp -al "$CORPUS_DIR/$v" "$OSTREE_SRC/$v" 2>/dev/null || { rmtree "$OSTREE_SRC/$v"; cp -a "$CORPUS_DIR/$v" "$OSTREE_SRC/$v"; }
    find "$OSTREE_SRC/$v" \( -type c -o -type b -o -type p -o -type s \) -printf '/%P\n' -delete > "$OSTREE_SRC/$v.removed"
    metric 0 prep ostree "$v" removed_special_files "$(wc -l < "$OSTREE_SRC/$v.removed")"
done

# Warm the page cache once (untimed), so that the first tool of the first
# repetition does not pay for reading the trees from disk.
STEP_DESC="warming the page cache"
log "reading the trees once (page cache warm-up)"
for v in "${VERSIONS[@]}"; do
    find "$CORPUS_DIR/$v" -type f -print0 | xargs -0 -r cat > /dev/null
done

for rep in $(seq "$REPS"); do
    # Fresh, empty repositories.
    STEP_DESC="rep $rep: creating empty repositories"
    rmtree "$SLATE_REPO" "$CASYNC" "$OSTREE_REPO" "$CO"
    "$SLATE" init --repo "$SLATE_REPO" > "$RES/logs/$rep.init.slate.out" 2>&1
    ostree init --mode=archive --repo="$OSTREE_REPO"
    mkdir -p "$CASYNC" "$CO"

    for v in "${VERSIONS[@]}"; do
        for tool in $(rotate $((rep - 1)) slate casync ostree); do
            case $tool in
                slate)
                    timed "$rep" commit slate "$v" \
                        "$SLATE" commit --repo "$SLATE_REPO" --channel "$CHANNEL" "$CORPUS_DIR/$v"
                    tail -n 1 "$LAST_LOG.out" > "$WORK/slate-id-$v"
                    size "$rep" slate "after-$v" "$SLATE_REPO" ;;
                casync)
                    timed "$rep" commit casync "$v" \
                        casync make --store="$CASYNC/store.castr" "$CASYNC/$v.caidx" "$CORPUS_DIR/$v"
                    size "$rep" casync "after-$v" "$CASYNC" ;;
                ostree)
                    timed "$rep" commit ostree "$v" \
                        ostree commit --repo="$OSTREE_REPO" --branch="$CHANNEL" --subject="$v" --tree=dir="$OSTREE_SRC/$v"
                    tail -n 1 "$LAST_LOG.out" > "$WORK/ostree-rev-$v"
                    size "$rep" ostree "after-$v" "$OSTREE_REPO" ;;
            esac
        done
    done

    # Checkout of v3 into an empty directory, synced to disk.
    for tool in $(rotate $((rep - 1)) cp slate casync ostree); do
        dest=$CO/$tool
        STEP_DESC="rep $rep: preparing checkout $tool (sync, rm -rf $dest, sync)"
        sync; rmtree "$dest"; sync
        case $tool in
            slate)  cmd=("$SLATE" checkout --repo "$SLATE_REPO" "$(cat "$WORK/slate-id-v3")" "$dest") ;;
            cp)     cmd=(cp -a "$CORPUS_DIR/v3" "$dest") ;;
            casync) cmd=(casync extract --store="$CASYNC/store.castr" "$CASYNC/v3.caidx" "$dest") ;;
            ostree) cmd=(ostree checkout --repo="$OSTREE_REPO" "$(cat "$WORK/ostree-rev-v3")" "$dest") ;;
        esac
        timed "$rep" checkout "$tool" v3 "${cmd[@]}"
        # The sync that makes it durable (for slate, which synced already, it
        # shows what is left: about nothing).
        NO_PRESYNC=1 timed "$rep" checkout "$tool" sync-v3 sync
        # Keep the destinations of the last repetition for VERIFY; otherwise
        # free the space before the next tool.
        [ "$rep" -eq "$REPS" ] || { STEP_DESC="rep $rep: removing $dest"; rmtree "$dest"; }
    done
done

if [ "$VERIFY" = 1 ]; then
    TREEDIGEST=${SLATE_SHARED:-$ROOT/../shared}/bench/treedigest.py
    if [ -f "$TREEDIGEST" ]; then
        STEP_DESC="verifying slate's v3 checkout with treedigest.py"
        log "verifying slate's v3 checkout against the source (treedigest.py, untimed)"
        python3 "$TREEDIGEST" "$CORPUS_DIR/v3" > "$RES/v3.src.digest"
        python3 "$TREEDIGEST" "$CO/slate" > "$RES/v3.slate.digest"
        if python3 "$TREEDIGEST" --diff "$RES/v3.src.digest" "$RES/v3.slate.digest" > "$RES/v3.slate.fidelity.txt"; then
            metric 0 verify slate v3 identical 1
        else
            metric 0 verify slate v3 identical 0
        fi
        log "treedigest: $(tail -n 1 "$RES/v3.slate.fidelity.txt")"
    else
        log "VERIFY: $TREEDIGEST not found, skipped"
    fi
fi

env_row load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
STEP_DESC="writing the report"
python3 "$HERE/report.py" "$RES" | tee "$RES/report.md"
STEP_DESC="done"
log "done: $RES/report.md, timings.tsv, metrics.tsv, logs/"
