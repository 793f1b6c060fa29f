#!/usr/bin/env bash
# sitecache.sh — origin bytes of a site cache (issue 14): N machines update
# v2 -> v3 (the Debian trees of `make corpus`) through one nginx configured
# by dist/nginx/slate-site-cache.conf in front of one `slate serve`, for
# each N in NS. The figure: bytes the origin sent (its access log, the
# Content-Length of every answer) for N machines, against what one machine
# fetched (`bytes_fetched` of its pass). The goal is at most 1.05x: the
# cache sends each pack slice to the origin once, whatever N.
#
# How the machines are made cheaply: one template machine installs v2
# straight from the origin (untimed, not counted); each measured machine is
# a copy of it (`cp -a` of its slots and state, a machine id of its own),
# runs one real `slate update` to v3 through the cache, and is removed after
# its pass (the first one's new slot is checked bit for bit with
# treedigest.py). PAR machines run at once (default 5), so concurrent
# misses of one slice meet in nginx's cache lock; at most PAR copies are on
# disk at a time (~1 GiB each). Each N starts with an empty cache.
#
# Usage:  bash bench/sitecache.sh         (as root; from anywhere)
# Env:    CORPUS_DIR  trees v2 v3        (default /var/tmp/stateless-bench/corpus)
#         NS          machine counts     (default "1 10 50")
#         PAR         machines at once   (default 5)
#         OUT         results            (default /var/tmp/slate-bench/sitecache)
#         WORK        scratch            (default $OUT/work; removed at the end
#                                         unless KEEP_WORK=1)
#         SLATE       slate binary       (default target/release/slate)
#         PORT_BASE   127.0.0.1 ports    (default 18700: origin, +1 nginx)
#
# Output: report on stdout (also $OUT/report.md); raw data in $OUT:
# runs.tsv (n machine bytes_fetched wall_s), origin-N.log, nginx-N/.
# Requires nginx (Debian's, with the slice module: scripts/setup.sh).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CORPUS_DIR=${CORPUS_DIR:-/var/tmp/stateless-bench/corpus}
NS=${NS:-1 10 50}
PAR=${PAR:-5}
OUT=${OUT:-/var/tmp/slate-bench/sitecache}
WORK=${WORK:-$OUT/work}
KEEP_WORK=${KEEP_WORK:-0}
PORT_BASE=${PORT_BASE:-18700}
SLATE=${SLATE:-$ROOT/target/release/slate}
CONF=$ROOT/dist/nginx/slate-site-cache.conf
TREEDIGEST=${SLATE_SHARED:-$ROOT/../shared}/bench/treedigest.py
[ -f "$TREEDIGEST" ] || TREEDIGEST=/work/shared/bench/treedigest.py

die() { printf 'sitecache.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf '[sitecache.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (the trees hold files owned by other users)"
for v in v2 v3; do
    [ -d "$CORPUS_DIR/$v" ] || die "tree $CORPUS_DIR/$v is missing: build it with 'make corpus'"
done
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || die "nginx is not installed (scripts/setup.sh)"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$SLATE" ] || die "no slate binary at $SLATE: cargo build --release, or set SLATE"
case $(realpath -m "$WORK")/ in
    / | /var/ | /var/tmp/ | /tmp/ | /root/ | "$ROOT"/* | "$(realpath -m "$CORPUS_DIR")"/*)
        die "WORK=$WORK is not a safe scratch directory (it is removed)" ;;
esac

ORIGIN_PORT=$PORT_BASE
CACHE_PORT=$((PORT_BASE + 1))
rmtree() { local d; for d in "$@"; do [ ! -e "$d" ] || rm -rf --one-file-system "$d"; done; }
SERVE_PID= NGINX_PID=
cleanup() {
    [ -z "$NGINX_PID" ] || { kill -TERM "$NGINX_PID" 2>/dev/null; wait "$NGINX_PID" 2>/dev/null || true; }
    [ -z "$SERVE_PID" ] || { kill -TERM "$SERVE_PID" 2>/dev/null; wait "$SERVE_PID" 2>/dev/null || true; }
    [ "$KEEP_WORK" = 1 ] || rmtree "$WORK"
}
trap cleanup EXIT
rmtree "$WORK"
mkdir -p "$OUT" "$WORK"
printf 'n\tmachine\tbytes_fetched\twall_s\n' > "$OUT/runs.tsv"

# --- the origin: v2 and v3 on channel lab ------------------------------------------------
R=$WORK/repo
"$SLATE" init --repo "$R" >/dev/null
"$SLATE" keygen --out "$WORK/key" >/dev/null 2>&1
"$SLATE" keygen --out "$WORK/fleet.key" >/dev/null 2>&1
declare -A SID
for v in v2 v3; do
    log "commit $v"
    SID[$v]=$("$SLATE" commit --repo "$R" --channel lab --sign "$WORK/key" -m "$v" "$CORPUS_DIR/$v" 2>/dev/null | head -n 1)
done
printf '[default]\nchannel = "lab"\n\n[[machine]]\nlabels = { pin = "v2" }\nchannel = "lab"\nsnapshot = "%s"\n' \
    "${SID[v2]}" > "$WORK/fleet.toml"
SLATE_LOG=info "$SLATE" serve --repo "$R" --listen "127.0.0.1:$ORIGIN_PORT" --fleet "$WORK/fleet.toml" \
    --db "$WORK/fleet.db" --fleet-key "$WORK/fleet.key" > "$WORK/serve.out" 2> "$WORK/serve.log" &
SERVE_PID=$!
for _ in $(seq 100); do grep -q '^serving ' "$WORK/serve.log" 2>/dev/null && break; sleep 0.1; done
grep -q '^serving ' "$WORK/serve.log" || die "slate serve did not start: $(tail -n 3 "$WORK/serve.log")"

agent_toml() {  # DIR SERVER_PORT MACHINE [PIN]: enrolls MACHINE, writes DIR/agent.toml
    "$SLATE" fleet enroll --force --db "$WORK/fleet.db" "$3" > "$1/token" 2>/dev/null
    cat > "$1/agent.toml" <<TOML
server = [{ url = "http://127.0.0.1:$2", token = true, token_over_http = true }]
token_file = "$1/token"
trust = ["$WORK/key.pub"]
fleet_trust = ["$WORK/fleet.key.pub"]
state_dir = "$1/state"
machine_id = "$3"
labels = { pin = "${4:-none}" }
[slots]
a = "$1/slot-a"
b = "$1/slot-b"
TOML
}

# --- the template machine: v2 in slot a, from the origin directly -------------------------
T=$WORK/template
mkdir -p "$T"
agent_toml "$T" "$ORIGIN_PORT" template v2
log "template machine: install v2 from the origin"
"$SLATE" update --config "$T/agent.toml" --json > "$WORK/template.out" 2> "$WORK/template.err" ||
    die "template install failed: $(tail -n 1 "$WORK/template.err")"
grep -q '"result":"ok"' "$WORK/template.out" || die "template install: $(tail -n 1 "$WORK/template.out")"

# --- nginx from the documented file --------------------------------------------------------
start_nginx() {  # PREFIX
    local p=$1 _
    mkdir -p "$p/cache"
    sed -e "s|server 127.0.0.1:8470;|server 127.0.0.1:$ORIGIN_PORT;|" \
        -e "s|listen 8480;|listen 127.0.0.1:$CACHE_PORT;|" \
        -e "s|/var/cache/nginx/slate |$p/cache |" "$CONF" > "$p/site.conf"
    cat > "$p/nginx.conf" <<NGX
user root;
daemon off;
worker_processes 2;
pid $p/nginx.pid;
error_log $p/error.log;
events { worker_connections 1024; }
http {
    log_format cache '\$request_method \$uri range=\$http_range status=\$status bytes=\$body_bytes_sent cache=\$upstream_cache_status';
    access_log $p/access.log cache;
    client_body_temp_path $p/body; proxy_temp_path $p/proxy; fastcgi_temp_path $p/fastcgi;
    uwsgi_temp_path $p/uwsgi; scgi_temp_path $p/scgi;
    include $p/site.conf;
}
NGX
    "$NGINX" -p "$p" -c "$p/nginx.conf" -e "$p/error.log" &
    NGINX_PID=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$CACHE_PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nginx did not start: $(tail -n 3 "$p/error.log")"
}
stop_nginx() { kill -TERM "$NGINX_PID"; wait "$NGINX_PID" 2>/dev/null || true; NGINX_PID=; }

# One machine's pass: copy the template, update to v3 through the cache.
machine() {  # N I
    local n=$1 i=$2 c=$WORK/m-$1-$2 t0 t1 b
    cp -a "$T" "$c"
    agent_toml "$c" "$CACHE_PORT" "bench-$n-$i"
    rm -rf "$c/state/cache/ranges"
    t0=$(date +%s.%N)
    "$SLATE" update --config "$c/agent.toml" --json > "$OUT/m-$n-$i.out" 2> "$OUT/m-$n-$i.err" ||
        { echo "machine $n/$i failed: $(tail -n 1 "$OUT/m-$n-$i.err")" >&2; return 1; }
    t1=$(date +%s.%N)
    grep -q '"result":"ok"' "$OUT/m-$n-$i.out" || { echo "machine $n/$i: $(tail -n 1 "$OUT/m-$n-$i.out")" >&2; return 1; }
    b=$(grep '"event":"result"' "$OUT/m-$n-$i.out" | sed -n 's/.*"bytes_fetched":\([0-9]*\).*/\1/p')
    printf '%s\t%s\t%s\t%.1f\n' "$n" "$i" "$b" "$(echo "$t1 - $t0" | bc)" >> "$OUT/runs.tsv"
    if [ "$i" = 1 ]; then
        python3 "$TREEDIGEST" "$c/slot-b" > "$WORK/got.digest"
        [ -s "$WORK/v3.digest" ] || python3 "$TREEDIGEST" "$CORPUS_DIR/v3" > "$WORK/v3.digest"
        cmp -s "$WORK/got.digest" "$WORK/v3.digest" || { echo "machine $n/1: slot b differs from v3" >&2; return 1; }
    fi
    rmtree "$c"
}

REPORT=$OUT/report.md
{
    echo "# Site cache: origin bytes, v2 -> v3 through nginx ($(date -u +%F), $(nproc) cores)"
    echo
    echo "| machines | origin bytes | bytes one machine fetched | ratio origin/one machine | origin requests | wall |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
} > "$REPORT"
ONE=
for n in $NS; do
    log "N=$n: $PAR at a time"
    rmtree "$WORK/nginx-$n"
    start_nginx "$WORK/nginx-$n"
    mark=$(wc -l < "$WORK/serve.log")
    w0=$(date +%s.%N)
    pids=() failed=0
    for i in $(seq "$n"); do
        machine "$n" "$i" & pids+=($!)
        if [ ${#pids[@]} -ge "$PAR" ]; then wait "${pids[0]}" || failed=1; pids=("${pids[@]:1}"); fi
    done
    for p in "${pids[@]}"; do wait "$p" || failed=1; done
    w1=$(date +%s.%N)
    stop_nginx
    [ "$failed" = 0 ] || die "a machine failed at N=$n (see $OUT/m-$n-*.err)"
    tail -n +"$((mark + 1))" "$WORK/serve.log" | sed 's/\x1b\[[0-9;]*m//g' | grep 'finished processing request' > "$OUT/origin-$n.log" || true
    cp "$WORK/nginx-$n/access.log" "$OUT/nginx-$n.access.log"
    obytes=$(sed -n 's/.* bytes=\([0-9]*\) .*/\1/p' "$OUT/origin-$n.log" | awk '{s+=$1} END {print s+0}')
    oreq=$(wc -l < "$OUT/origin-$n.log")
    one=$(awk -v n="$n" '$1==n && $2==1 {print $3}' "$OUT/runs.tsv")
    [ -n "$ONE" ] || ONE=$one
    ratio=$(echo "scale=3; $obytes / $ONE" | bc)
    printf '| %s | %s | %s | %s | %s | %.0f s |\n' "$n" "$obytes" "$ONE" "$ratio" "$oreq" "$(echo "$w1 - $w0" | bc)" >> "$REPORT"
    log "N=$n: origin $obytes bytes, one machine $ONE, ratio $ratio"
    rmtree "$WORK/nginx-$n"
done
echo >> "$REPORT"
echo "One machine: bytes_fetched of the first machine of the first N. Origin bytes: the Content-Length of every answer slate serve logged while the machines ran (answers without one, such as assignments, count 0: a few hundred bytes each). Wall: the whole N, including treedigest of the first machine's slot." >> "$REPORT"
cat "$REPORT"
