#!/usr/bin/env bash
# What ycord costs in ExApp mode, measured beside plain mode in the same run with the same stock
# y-websocket clients: server RSS growth per idle file connection (room included), and the
# WebDAV SEARCHes sent to Nextcloud at connect and per recheck round.
#   usage: scripts/exapp/footprint.sh [ROOMS] [PER_ROOM]   (default 250 x 2)
# Needs a release build (cargo build --release), python3, node and npm.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -d scripts/exapp/node_modules ] || (cd scripts/exapp && npm ci --no-audit --no-fund)
rooms=${1:-250}
per_room=${2:-2}
connections=$((rooms * per_room))
recheck=10
dir=$(mktemp -d)
nc_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 scripts/exapp/nextcloud-standin.py "$nc_port" &
standin=$!
ycord=
clients=
trap 'kill $standin $ycord $clients 2>/dev/null || true; rm -rf "$dir"' EXIT
searches() { curl -s "http://127.0.0.1:$nc_port/count"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$ycord/status"; }

# measure MODE: starts ycord (exapp or plain), connects the clients, prints its figures.
measure() {
    local mode=$1 secret=- log="$dir/$1.log"
    local -a env=(YCORD_LISTEN=127.0.0.1:0 "YCORD_DATA_DIR=$dir/$mode-data" YCORD_MAX_CONNECTS_PER_IP_PER_SEC=100000)
    if [ "$mode" = exapp ]; then
        secret=footprint
        env+=(APP_ID=ycord "APP_SECRET=$secret" "NEXTCLOUD_URL=http://127.0.0.1:$nc_port" "YCORD_ACL_RECHECK_SECS=$recheck")
    fi
    env "${env[@]}" target/release/ycord >"$log" 2>&1 &
    ycord=$!
    for _ in $(seq 100); do grep -q 'listen=' "$log" && break; sleep 0.1; done
    local addr path=""
    addr=$(grep -o 'listen=[0-9.:]*' "$log" | head -1 | cut -d= -f2)
    [ "$mode" = exapp ] && path=/ws
    sleep 1
    local before searched after
    before=$(rss)
    searched=$(searches)
    rm -f "$dir/hold" && mkfifo "$dir/hold"
    node scripts/exapp/idle.mjs "ws://$addr$path" "$secret" "$rooms" "$per_room" <"$dir/hold" >"$dir/clients" 2>/dev/null &
    clients=$!
    exec 3>"$dir/hold"
    for _ in $(seq 600); do
        grep -q SYNCED "$dir/clients" && break
        kill -0 "$clients" 2>/dev/null || break
        sleep 0.1
    done
    grep -q SYNCED "$dir/clients" || { cat "$dir/clients" "$log" >&2; exit 1; }
    sleep 2
    after=$(rss)
    echo "$mode: $(cat "$dir/clients"); RSS $before KiB at start, $after KiB with them: $(( (after - before) * 1024 / connections )) bytes per connection"
    if [ "$mode" = exapp ]; then
        local at_connect
        at_connect=$(( $(searches) - searched ))
        sleep $((recheck + 1))
        echo "exapp: SEARCHes at connect $at_connect, in one recheck round $(( $(searches) - searched - at_connect ))"
    fi
    exec 3>&-
    wait "$clients" || true
    kill -TERM "$ycord"
    wait "$ycord" || true
}

echo "$connections connections in $rooms file rooms, one Nextcloud user per connection"
measure plain
measure exapp
