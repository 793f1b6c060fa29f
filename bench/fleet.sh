#!/usr/bin/env bash
# fleet.sh — load on one `slate serve` from many simulated machines
# (bench/loadgen, `slate-loadgen`; docs/scale.md, "Load").
#
# For each database in $DBS (postgres, sqlite): a fresh repository with one
# tiny signed snapshot on channel "lab", a fleet file sending every machine
# there, `slate serve --fleet-key` (signed assignments, as agents require),
# $MACHINES machines enrolled (`slate-loadgen enroll`, the store calls of
# `slate fleet enroll` in one process), then two phases:
#   steady  every machine polls every $POLL (Poisson arrivals at MACHINES/POLL
#           per second) for $STEADY: with POLL=1h and STEADY=5m, five minutes
#           of the real hourly rate (not time-compressed);
#   burst   every machine makes one pass at a random moment within $BURST
#           (a lab powering on at 8:00).
# A pass: POST /v1/fleet/assignment, then POST /v1/fleet/report (with
# FETCH=1 also GET of the snapshot's .snap and .sig), each with the
# machine's own token.
#
# PostgreSQL: Debian's server (/usr/lib/postgresql/*/bin), a new cluster in
# $WORK run as the postgres user, on 127.0.0.1 only, with its default
# durability (fsync on, synchronous_commit on) — unlike the test harness,
# which turns fsync off. Everything started here is stopped by pid at exit.
#
# Output: $RES/<db>.json (the load generator's summary), $RES/<db>.txt (its
# table), $RES/logs/. Usage: bench/fleet.sh [RESULTS_DIR]
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SLATE=${SLATE:-$ROOT/target/release/slate}
LOADGEN=${LOADGEN:-$ROOT/target/release/slate-loadgen}
MACHINES=${MACHINES:-10000}
POLL=${POLL:-1h}
STEADY=${STEADY:-5m}
BURST=${BURST:-60s}
FETCH=${FETCH:-0}
DBS=${DBS:-postgres sqlite}
DB_CONNECTIONS=${DB_CONNECTIONS:-16}
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-64}   # passes in flight (the server's --max-connections-per-client default)
read -r -a SERVE_ARGS <<< "${SERVE_ARGS:-}"   # more options for slate serve
RES=${1:-$ROOT/target/bench-fleet}
PORT=${PORT:-18470}
PG_PORT=${PG_PORT:-18471}

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -x "$SLATE" ] || die "$SLATE missing (cargo build --release --workspace)"
[ -x "$LOADGEN" ] || die "$LOADGEN missing (cargo build --release -p slate-loadgen)"
mkdir -p "$RES/logs"
WORK=$(mktemp -d /var/tmp/slate-fleet.XXXXXX)
chmod 711 "$WORK"   # the postgres user must reach its cluster inside
SERVE_PID=
PG_BIN=
PG_DATA=$WORK/pg/data

as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_stop() {
    if [ -n "$PG_BIN" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null 2>&1 || {
            pid=$(head -n 1 "$PG_DATA/postmaster.pid" 2>/dev/null || true)
            [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
        }
    fi
}
serve_stop() {
    if [ -n "$SERVE_PID" ]; then
        kill -TERM "$SERVE_PID" 2>/dev/null || true
        wait "$SERVE_PID" 2>/dev/null || true
        SERVE_PID=
    fi
}
cleanup() { serve_stop; pg_stop; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- repository: one tiny signed snapshot, every machine assigned to it ----
"$SLATE" keygen --out "$WORK/release.key" >/dev/null 2>&1
"$SLATE" keygen --out "$WORK/fleet.key" >/dev/null 2>&1
"$SLATE" init --repo "$WORK/repo" >/dev/null 2>&1
mkdir -p "$WORK/tree/etc"
echo "slate fleet benchmark" > "$WORK/tree/etc/motd"
SID=$("$SLATE" commit --repo "$WORK/repo" --channel lab --sign "$WORK/release.key" "$WORK/tree" 2>/dev/null | tail -n 1)
[[ $SID =~ ^[0-9a-f]{64}$ ]] || die "slate commit printed no snapshot id"
printf '[default]\nchannel = "lab"\n' > "$WORK/fleet.toml"

start_postgres() {
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -x "$PG_BIN/initdb" ] || die "PostgreSQL is not installed (scripts/setup.sh installs it)"
    mkdir -p "$WORK/pg"
    [ "$(id -u)" = 0 ] && chown -R postgres: "$WORK/pg"
    as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
        --no-instructions > "$RES/logs/initdb.log" 2>&1 || die "initdb failed (see $RES/logs/initdb.log)"
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$WORK/pg/server.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $PG_PORT -k $WORK/pg -c max_connections=100" start >/dev/null \
        || die "PostgreSQL did not start: $(tail -n 5 "$WORK/pg/server.log")"
    as_postgres "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
        -c "CREATE ROLE slate LOGIN" -c "CREATE DATABASE slate OWNER slate" >/dev/null
    PG_PID=$(head -n 1 "$PG_DATA/postmaster.pid")
}

start_serve() {  # DB NAME
    SLATE_LOG=warn "$SLATE" serve --repo "$WORK/repo" --listen "127.0.0.1:$PORT" --fleet "$WORK/fleet.toml" \
        --fleet-key "$WORK/fleet.key" --db "$1" --db-connections "$DB_CONNECTIONS" "${SERVE_ARGS[@]}" \
        > "$RES/logs/serve-$2.out" 2> "$RES/logs/serve-$2.log" &
    SERVE_PID=$!
    for _ in $(seq 300); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/v1/channels/lab" || true)
        [ "$code" = 200 ] && return 0
        kill -0 "$SERVE_PID" 2>/dev/null || die "slate serve exited: $(tail -n 5 "$RES/logs/serve-$2.log")"
        sleep 0.1
    done
    die "slate serve did not answer on port $PORT"
}

status=0
for db in $DBS; do
    PG_PID=
    case $db in
        postgres) start_postgres; URL="postgres://slate@127.0.0.1:$PG_PORT/slate" ;;
        sqlite) URL="$WORK/fleet.db" ;;
        *) die "unknown database $db (postgres, sqlite)" ;;
    esac
    start_serve "$URL" "$db"
    log "$db: slate serve pid $SERVE_PID${PG_PID:+, postmaster pid $PG_PID}; enrolling $MACHINES machines"
    t0=$(date +%s.%N)
    "$LOADGEN" enroll --db "$URL" --count "$MACHINES" --out "$WORK/tokens-$db" 2> "$RES/logs/enroll-$db.log"
    t1=$(date +%s.%N)
    enroll_s=$(printf "%.1f" "$(echo "$t1 - $t0" | bc)")
    log "$db: enrolled in ${enroll_s}s; steady $STEADY at $MACHINES per $POLL, then burst within $BURST"
    args=(run --server "http://127.0.0.1:$PORT" --tokens "$WORK/tokens-$db" --poll-interval "$POLL"
          --duration "$STEADY" --burst "$BURST" --max-in-flight "$MAX_IN_FLIGHT" --server-pid "$SERVE_PID" --json "$RES/$db.raw.json")
    [ -n "$PG_PID" ] && args+=(--db-pid "$PG_PID")
    [ "$FETCH" = 1 ] && args+=(--fetch)
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)   # other work on the machine skews figures
    rc=0
    "$LOADGEN" "${args[@]}" > "$RES/logs/loadgen-$db.out" 2> "$RES/logs/loadgen-$db.log" || rc=$?
    [ -s "$RES/$db.raw.json" ] || die "$db: the load generator wrote no summary (see $RES/logs/loadgen-$db.log)"
    jq --arg db "$db" --argjson enroll "$enroll_s" --arg date "$(date -u +%FT%TZ)" \
        --arg lb "$load_before" --arg la "$(cut -d' ' -f1-3 /proc/loadavg)" \
        '{database: $db, date: $date, enroll_s: $enroll, loadavg_before: $lb, loadavg_after: $la} + .' "$RES/$db.raw.json" > "$RES/$db.json"
    rm -f "$RES/$db.raw.json"
    sed -n '/^phase /,/^{/p' "$RES/logs/loadgen-$db.out" | sed '$d' > "$RES/$db.txt"
    { echo "== $db (enrolled $MACHINES in ${enroll_s}s)"; cat "$RES/$db.txt"; } >&2
    [ "$rc" = 0 ] || { log "$db: the load generator reported failed requests (exit $rc)"; status=1; }
    grep -c . "$RES/logs/serve-$db.log" >/dev/null 2>&1 && \
        log "$db: server log lines: $(wc -l < "$RES/logs/serve-$db.log")"
    serve_stop
    [ "$db" = postgres ] && { pg_stop; PG_BIN=; }
done
exit $status
