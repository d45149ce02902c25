#!/usr/bin/env bash
# Runs the load tool's four scenarios against ycord, the reference y-websocket server (npm
# @y/websocket-server 0.1.1 with YPERSISTENCE) and Hocuspocus (npm @hocuspocus/server 4.7.0
# with its SQLite extension on a file, scripts/peers/hocuspocus-server.mjs), so all three
# persist, one after the other on this machine, and writes one JSON file per run to $RESULTS
# (default ./bench-results).
#
#   scripts/bench-compare.sh            # everything
#   SCENARIOS="edit storm" scripts/bench-compare.sh
#   SERVERS="ycord hocuspocus" scripts/bench-compare.sh
#
# `ycord-hocuspocus` is ycord again, measured with Hocuspocus clients (--protocol hocuspocus,
# one socket per client at the root URL), the same clients as `hocuspocus`. The scenario
# `idle-documents` (Hocuspocus servers only, not in the default set) is
# scripts/peers/idle-documents.mjs: the stock provider with 10 documents per socket.
#
# The reference server is installed into $PEER_DIR (a temporary folder unless given);
# Hocuspocus with `npm ci` from scripts/peers/package-lock.json into scripts/peers/node_modules
# (not committed; better-sqlite3 compiles from source there, which takes a few minutes once).
#
# ycord runs with the per-IP connect rate and per-connection update rate lifted: the load
# tool opens thousands of connections from 127.0.0.1 and the replay writer sends 260k updates
# as fast as it can, which is exactly what those limits exist to refuse.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-$PWD/bench-results}
SCENARIOS=${SCENARIOS:-"idle edit storm replay"}
SERVERS=${SERVERS:-"ycord node hocuspocus ycord-hocuspocus"}
PEER_DIR=${PEER_DIR:-$(mktemp -d)}
mkdir -p "$RESULTS"

cargo build --release --locked -p ycord -p ycord-tools --bin ycord --bin ycord-bench
BIN=$PWD/target/release

HOCUSPOCUS_DIR=$PWD/scripts/peers

wants() { [[ " $SERVERS " == *" $1 "* ]]; }

if wants node && [ ! -x "$PEER_DIR/node_modules/.bin/y-websocket" ]; then
  (cd "$PEER_DIR" && npm init -y >/dev/null && npm install --no-audit --no-fund @y/websocket-server@0.1.1 yjs@13 >/dev/null)
fi
if { wants hocuspocus || wants ycord-hocuspocus; } && [ ! -d "$HOCUSPOCUS_DIR/node_modules/@hocuspocus/provider" ]; then
  (cd "$HOCUSPOCUS_DIR" && npm ci --no-audit --no-fund >/dev/null)
fi

scenario_args() {
  case $1 in
    idle) echo "idle --connections 2000 --rooms 200 --hold-secs 10" ;;
    edit) echo "edit --rooms 20 --clients 5 --hz 10 --seconds 20" ;;
    storm) echo "storm --joiners 200" ;;
    replay) echo "replay --readers 2" ;;
  esac
}

run_against() {
  local name=$1 url=$2 pid=$3 protocol=${4:-y-websocket}
  sleep 2
  for scenario in $SCENARIOS; do
    echo "== $name $scenario (load $(cut -d' ' -f1 /proc/loadavg))"
    if [ "$scenario" = idle-documents ]; then
      if [ "$protocol" = hocuspocus ]; then
        node "$HOCUSPOCUS_DIR/idle-documents.mjs" "$url" "$pid" \
          > "$RESULTS/$name-$scenario.json" 2> "$RESULTS/$name-$scenario.log" || echo "   (exit $?)"
      fi
      continue
    fi
    # shellcheck disable=SC2046
    "$BIN/ycord-bench" $(scenario_args "$scenario") --url "$url" --protocol "$protocol" \
      --server-pid "$pid" --json \
      > "$RESULTS/$name-$scenario.json" 2> "$RESULTS/$name-$scenario.log" || echo "   (exit $?)"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

data=$(mktemp -d)
if wants ycord; then
  "$BIN/ycord" --listen 127.0.0.1:18080 --data-dir "$data/ycord" \
    --max-connects-per-ip-per-sec 1000000 --max-updates-per-sec 1000000 \
    > "$RESULTS/ycord-server.log" 2>&1 &
  run_against ycord ws://127.0.0.1:18080 $!
fi

if wants ycord-hocuspocus; then
  "$BIN/ycord" --listen 127.0.0.1:18081 --data-dir "$data/ycord-hocuspocus" \
    --max-connects-per-ip-per-sec 1000000 --max-updates-per-sec 1000000 \
    > "$RESULTS/ycord-hocuspocus-server.log" 2>&1 &
  run_against ycord-hocuspocus ws://127.0.0.1:18081 $! hocuspocus
fi

if wants node; then
  HOST=127.0.0.1 PORT=11234 YPERSISTENCE="$data/node" "$PEER_DIR/node_modules/.bin/y-websocket" \
    > "$RESULTS/node-server.log" 2>&1 &
  run_against node ws://127.0.0.1:11234 $!
fi

if wants hocuspocus; then
  HOST=127.0.0.1 PORT=11235 DATABASE="$data/hocuspocus.sqlite" node "$HOCUSPOCUS_DIR/hocuspocus-server.mjs" \
    > "$RESULTS/hocuspocus-server.log" 2>&1 &
  run_against hocuspocus ws://127.0.0.1:11235 $! hocuspocus
fi

rm -rf "$data"
echo "results in $RESULTS"
