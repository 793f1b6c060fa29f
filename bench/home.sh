#!/usr/bin/env bash
# home.sh — benchmark `slate home` beside restic (Debian's package) on the
# same home-like tree of about 1 GB, in the same run:
#   doc/     a copy of /usr/share/doc
#   src/     git clones with their history (pyenv when present, and this
#            repository), and a copy of the cargo registry's sources
#   mail/    ~80,000 small text files (a maildir), generated deterministically
#   bin/     300 MB from /dev/urandom (incompressible)
# Each repetition, with the tools' order alternating: a first backup into an
# empty repository, a backup with nothing changed, the repository size
# (du -sb), and a restore of the latest snapshot into an empty directory
# (slate syncs the file system at its end, restic does not) followed by a
# separately timed `sync`; the goal compares restore + sync. Both tools read their passphrase from the environment
# (restic: scrypt; slate: Argon2id 64 MiB) and write to a local directory.
# Every timed command runs under /usr/bin/time -v after an untimed sync.
#
# Usage:  bash bench/home.sh          (root; builds nothing: run
#                                      `cargo build --release -p slate-cli` first)
# Env:    REPS (3)  OUT (/var/tmp/slate-home-bench)  SLATE (target/release/slate)
#         TREE (/var/tmp/slate-home-bench-tree, kept between runs)
#         TREE_ONLY=1: build the tree and stop
# Output: the report on stdout and in $OUT/report.md; raw timings in $OUT/timings.tsv.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
REPS=${REPS:-3}
OUT=${OUT:-/var/tmp/slate-home-bench}
TREE=${TREE:-/var/tmp/slate-home-bench-tree}
SLATE=${SLATE:-$ROOT/target/release/slate}
WORK=$OUT/work
export RESTIC_PASSWORD=bench-passphrase SLATE_PASSPHRASE=bench-passphrase

die() { printf 'home.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf '[home.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
[ "${TREE_ONLY:-0}" = 1 ] || [ -x "$SLATE" ] || die "$SLATE is missing: run cargo build --release -p slate-cli"
for tool in restic /usr/bin/time git python3; do
    command -v "$tool" >/dev/null || {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic time git python3 >/dev/null
        break
    }
done

build_tree() {
    [ -e "$TREE/.done" ] && return
    log "building the tree in $TREE"
    rm -rf "$TREE"
    mkdir -p "$TREE"/{doc,src,mail,bin}
    cp -a /usr/share/doc/. "$TREE/doc/"
    [ -d /root/.pyenv/.git ] && git clone -q /root/.pyenv "$TREE/src/pyenv"
    git clone -q "$ROOT" "$TREE/src/slate"
    [ -d "$HOME/.cargo/registry/src" ] && cp -a "$HOME/.cargo/registry/src" "$TREE/src/cargo-registry"
    python3 - "$TREE/mail" <<'PY'
import os, random, sys
root = sys.argv[1]
rnd = random.Random(42)
words = open('/usr/share/dict/words').read().split() if os.path.exists('/usr/share/dict/words') else \
    [''.join(rnd.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rnd.randint(2, 10))) for _ in range(5000)]
for d in range(200):
    dd = os.path.join(root, f"folder-{d:03}", "cur")
    os.makedirs(dd)
    for i in range(400):
        n = rnd.randint(200, 4000)
        body = []
        size = 0
        while size < n:
            w = rnd.choice(words)
            body.append(w)
            size += len(w) + 1
        with open(os.path.join(dd, f"{d}.{i}.mail:2,S"), "w") as f:
            f.write(f"From: someone{rnd.randint(0, 999)}@example.org\nSubject: {' '.join(body[:6])}\n\n")
            f.write(' '.join(body))
PY
    for i in 1 2 3; do head -c 100M /dev/urandom > "$TREE/bin/blob-$i.bin"; done
    touch "$TREE/.done"
}

# run STEP TOOL REP CMD...: time CMD under /usr/bin/time -v, append to timings.tsv
run() {
    local step=$1 tool=$2 rep=$3; shift 3
    sync
    local log="$OUT/logs/$rep-$step-$tool"
    if ! /usr/bin/time -v -o "$log.time" "$@" >"$log.out" 2>"$log.err"; then
        cat "$log.err" >&2
        die "$tool $step failed (logs in $log.*)"
    fi
    local wall rss
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$log.time")
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log.time")
    printf '%s\t%s\t%s\t%s\t%s\n' "$rep" "$step" "$tool" "$wall" "$rss" >>"$OUT/timings.tsv"
    log "rep $rep $step $tool: ${wall}s, ${rss} kB"
}

bench_restic() {
    local rep=$1 repo=$WORK/restic-repo dest=$WORK/restic-restore
    rm -rf "$repo" "$dest"
    restic init -q --repository-version 2 --repo "$repo" >/dev/null
    run first restic "$rep" restic backup -q --repo "$repo" "$TREE"
    run unchanged restic "$rep" restic backup -q --repo "$repo" "$TREE"
    printf '%s\tsize\trestic\t%s\t0\n' "$rep" "$(du -sb "$repo" | cut -f1)" >>"$OUT/timings.tsv"
    run restore restic "$rep" restic restore -q --repo "$repo" latest --target "$dest"
    run sync restic "$rep" sync
    rm -rf "$repo" "$dest"
}

bench_slate() {
    local rep=$1 repo=$WORK/slate-repo dest=$WORK/slate-restore state=$WORK/slate-state
    rm -rf "$repo" "$dest" "$state"
    local common=(--repo-dir "$repo" --state-dir "$state" --user bench)
    "$SLATE" home init "${common[@]}" 2>/dev/null
    run first slate "$rep" "$SLATE" home backup "${common[@]}" "$TREE"
    run unchanged slate "$rep" "$SLATE" home backup "${common[@]}" "$TREE"
    printf '%s\tsize\tslate\t%s\t0\n' "$rep" "$(du -sb "$repo" | cut -f1)" >>"$OUT/timings.tsv"
    run restore slate "$rep" "$SLATE" home restore "${common[@]}" --allow-privileged --target "$dest" latest
    run sync slate "$rep" sync
    if [ "$rep" = 1 ] && [ -f "$ROOT/../shared/bench/treedigest.py" ]; then
        log "checking the restored tree with treedigest (untimed)"
        a=$(python3 "$ROOT/../shared/bench/treedigest.py" "$TREE" | tail -1)
        b=$(python3 "$ROOT/../shared/bench/treedigest.py" "$dest/${TREE#/}" | tail -1)
        [ "$a" = "$b" ] || die "slate's restore differs from the tree: $a vs $b"
        log "restore identical: $a"
    fi
    rm -rf "$repo" "$dest" "$state"
}

build_tree
[ "${TREE_ONLY:-0}" = 1 ] && exit 0
rm -rf "$WORK" "$OUT/logs" "$OUT/timings.tsv"
mkdir -p "$WORK" "$OUT/logs"
files=$(find "$TREE" -type f | wc -l)
bytes=$(du -sb "$TREE" | cut -f1)
log "tree: $files files, $bytes bytes"
for rep in $(seq 1 "$REPS"); do
    if [ $((rep % 2)) = 1 ]; then bench_slate "$rep"; bench_restic "$rep"; else bench_restic "$rep"; bench_slate "$rep"; fi
done
python3 "$HERE/home_report.py" "$OUT/timings.tsv" "$files" "$bytes" "$(restic version | cut -d' ' -f2)" | tee "$OUT/report.md"
rm -rf "$WORK"
