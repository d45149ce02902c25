#!/usr/bin/env bash
# `replay` on sled and on the PostgreSQL store, alternating, with the release binaries
# (cargo build --release --workspace --bins); PostgreSQL on 127.0.0.1:5432, database test,
# user root with trust auth. Prints the bench's figures per run. See BENCHMARKS.md.
cd "$(dirname "$0")/.." || exit 1
for store in sled pg sled pg; do
  d=$(mktemp -d)
  if [ $store = sled ]; then extra=(--data-dir "$d/data"); else
    psql -q -h 127.0.0.1 -U root -d test -c "DROP SCHEMA IF EXISTS ycord_bench_replay CASCADE" >/dev/null 2>&1
    extra=(--store "postgres://root@127.0.0.1:5432/test?schema=ycord_bench_replay"); fi
  target/release/ycord --listen 127.0.0.1:18610 --max-connects-per-ip-per-sec 1000000 --max-updates-per-sec 1000000 "${extra[@]}" > "$d/log" 2>&1 &
  pid=$!
  sleep 1.5
  out=$(timeout 300 target/release/ycord-bench replay --url ws://127.0.0.1:18610 --server-pid $pid 2>&1 | grep -E "updates/s|server CPU|result" | tr -s ' ' | tr '\n' ' ')
  echo "$store: $out"
  kill -TERM $pid; wait $pid
  rm -rf "$d"
done
psql -q -h 127.0.0.1 -U root -d test -c "DROP SCHEMA IF EXISTS ycord_bench_replay CASCADE" >/dev/null 2>&1
