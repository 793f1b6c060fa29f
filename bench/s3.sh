#!/usr/bin/env bash
# s3.sh — `slate commit` of the corpus tree v3 into an empty repository on an
# S3 server beside the same commit into an empty local directory, in the same
# run: wall time, and the requests slate-s3 sent, by kind (it logs them when
# the run ends, SLATE_LOG=slate_s3=info).
#
# The S3 server is moto (scripts/setup.sh installs it in /var/tmp/slate-moto;
# SLATE_MOTO_SERVER names another), on 127.0.0.1, fresh for each repetition.
# moto keeps every object in the memory of one Python process: the times are
# an upper bound of what a real store on the same machine costs, the request
# counts are what any S3 server would see.
#
# Usage:  bash bench/s3.sh                   (from the repo root)
# Env:    CORPUS_DIR  trees                  (default /var/tmp/stateless-bench/corpus)
#         REPS        repetitions            (default 2)
#         OUT         results directory      (default /var/tmp/slate-bench-s3)
#         SLATE       slate binary           (default target/release/slate)
# Output: a Markdown table on stdout (also $OUT/report.md); raw data in
#         $OUT/timings.tsv (rep where wall_s) and $OUT/logs/.
set -euo pipefail

CORPUS_DIR=${CORPUS_DIR:-/var/tmp/stateless-bench/corpus}
REPS=${REPS:-2}
OUT=${OUT:-/var/tmp/slate-bench-s3}
SLATE=${SLATE:-$PWD/target/release/slate}
MOTO=${SLATE_MOTO_SERVER:-/var/tmp/slate-moto/bin/moto_server}
TREE=$CORPUS_DIR/v3

[ -d "$TREE" ] || { echo "s3.sh: no corpus tree $TREE (make corpus)" >&2; exit 1; }
[ -x "$SLATE" ] || { echo "s3.sh: no slate binary $SLATE (cargo build --release)" >&2; exit 1; }
[ -x "$MOTO" ] || { echo "s3.sh: no moto server $MOTO (scripts/setup.sh)" >&2; exit 1; }

mkdir -p "$OUT/logs"
WORK=$(mktemp -d "$OUT/work.XXXXXX")
MOTO_PID=
cleanup() {
  if [ -n "$MOTO_PID" ]; then kill "$MOTO_PID" 2>/dev/null || true; wait "$MOTO_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

start_moto() {
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$MOTO" -H 127.0.0.1 -p "$PORT" >"$OUT/logs/moto.log" 2>&1 &
  MOTO_PID=$!
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null "http://127.0.0.1:$PORT/" && break
    sleep 0.1
  done
  curl -sf -X PUT -o /dev/null "http://127.0.0.1:$PORT/bench"
}

stop_moto() {
  kill "$MOTO_PID"; wait "$MOTO_PID" 2>/dev/null || true; MOTO_PID=
}

# wall seconds of a command, its stderr kept in $2
timed() {
  local log=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >"$log.out" 2>"$log.err"
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.2f}')"
}

printf 'rep\twhere\twall_s\n' >"$OUT/timings.tsv"
for rep in $(seq 1 "$REPS"); do
  echo "rep $rep: local directory" >&2
  sync
  "$SLATE" init --repo "$WORK/local" 2>/dev/null
  t=$(timed "$OUT/logs/local-$rep" "$SLATE" commit --repo "$WORK/local" --channel bench/v3 "$TREE")
  printf '%s\tlocal\t%s\n' "$rep" "$t" >>"$OUT/timings.tsv"
  du -sb "$WORK/local" | cut -f1 >"$OUT/logs/local-$rep.size"
  rm -rf "$WORK/local"

  echo "rep $rep: S3 (moto)" >&2
  start_moto
  export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
  "$SLATE" init --repo s3://bench/repo 2>/dev/null
  sync
  t=$(SLATE_LOG=slate_s3=info timed "$OUT/logs/s3-$rep" "$SLATE" commit --repo s3://bench/repo --channel bench/v3 "$TREE")
  printf '%s\ts3\t%s\n' "$rep" "$t" >>"$OUT/timings.tsv"
  stop_moto
done

python3 - "$OUT" "$REPS" <<'EOF' | tee "$OUT/report.md"
import sys, statistics, re, pathlib
out, reps = pathlib.Path(sys.argv[1]), int(sys.argv[2])
rows = [l.split('\t') for l in (out / 'timings.tsv').read_text().splitlines()[1:]]
t = {(int(r), w): float(s) for r, w, s in rows}
local = [t[(r, 'local')] for r in range(1, reps + 1)]
s3 = [t[(r, 's3')] for r in range(1, reps + 1)]
ratio = [t[(r, 's3')] / t[(r, 'local')] for r in range(1, reps + 1)]
req = ''
for r in range(1, reps + 1):
    for line in (out / 'logs' / f's3-{r}.err').read_text().splitlines():
        m = re.search(r'(\d+ requests \(.*\))', line)
        if m:
            req = m.group(1)
size = (out / 'logs' / 'local-1.size').read_text().strip()
print('| commit of v3 into an empty repository | wall (median) | runs | requests (last run) |')
print('| --- | --- | --- | --- |')
print(f'| local directory | {statistics.median(local):.1f} s | {", ".join(f"{x:.1f}" for x in local)} | none |')
print(f'| S3 (moto on 127.0.0.1) | {statistics.median(s3):.1f} s | {", ".join(f"{x:.1f}" for x in s3)} | {req} |')
print()
print(f'S3 / local, median of same-run ratios: {statistics.median(ratio):.2f}x; repository {int(size) / 2**20:.0f} MiB.')
EOF
