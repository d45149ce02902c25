#!/usr/bin/env bash
# HEALTHCHECK of the ycord ExApp image: healthy only when ycord answers GET /heartbeat and, in
# HaRP mode (HP_SHARED_KEY set), an frpc process is running, since without frpc HaRP cannot
# reach ycord at all.
#   HaRP mode:   ycord listens on the unix socket HP_EXAPP_SOCK (default /tmp/exapp.sock).
#   otherwise:   ycord listens on APP_HOST:APP_PORT.
# FRPC_BIN may name another frpc executable, as for entrypoint.sh; its file name is looked for.
set -euo pipefail

# True when a process whose command name is $1 runs. Reads /proc directly, so the image needs no
# procps; the kernel keeps the first 15 characters of the name.
process_running() {
    local want=${1:0:15} comm name
    for comm in /proc/[0-9]*/comm; do
        name=
        read -r name <"$comm" 2>/dev/null || continue
        if [[ $name == "$want" ]]; then
            return 0
        fi
    done
    return 1
}

if [[ -n ${HP_SHARED_KEY:-} ]]; then
    frpc=${FRPC_BIN:-frpc}
    frpc=${frpc##*/}
    if ! process_running "$frpc"; then
        echo "healthcheck: $frpc is not running: HaRP cannot reach ycord" >&2
        exit 1
    fi
    exec curl -fsS --max-time 3 -o /dev/null \
        --unix-socket "${HP_EXAPP_SOCK:-/tmp/exapp.sock}" http://localhost/heartbeat
fi

if [[ -z ${APP_PORT:-} ]]; then
    echo "healthcheck: APP_PORT is not set" >&2
    exit 1
fi
host=${APP_HOST:-127.0.0.1}
# A wildcard listen address is reached on loopback; an IPv6 literal needs brackets in a URL.
case $host in
    0.0.0.0) host=127.0.0.1 ;;
    :: | "[::]") host="[::1]" ;;
    \[*) ;;
    *:*) host="[$host]" ;;
esac
exec curl -fsS --max-time 3 -o /dev/null "http://$host:$APP_PORT/heartbeat"
