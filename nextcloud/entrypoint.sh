#!/usr/bin/env bash
# Entrypoint of the ycord ExApp image (Nextcloud AppAPI, HaRP deploy daemon).
#
# With HP_SHARED_KEY set, the container sits behind HaRP: ycord listens on the unix socket
# HP_EXAPP_SOCK, and frpc carries HaRP's connections to that socket. This script writes frpc's
# configuration, starts frpc in the background and runs `ycord serve` under it, forwarding
# SIGTERM/SIGINT. Without HP_SHARED_KEY (a direct-connect daemon, or a plain manual run) it just
# execs `ycord serve`, which listens on APP_HOST:APP_PORT.
#
# Usage: entrypoint.sh [--write-frpc-config-only] [ycord serve arguments...]
#   --write-frpc-config-only  write the frpc configuration and exit 0 (for tests)
#
# Environment (besides what AppAPI sets):
#   FRPC_BIN       frpc executable (default: frpc on PATH)
#   YCORD_BIN      ycord executable (default: ycord on PATH)
#   FRPC_CONFIG    where the frpc configuration goes (default: /tmp/frpc.toml)
#   FRP_CERTS_DIR  HaRP's FRP client certificates; TLS is on when it exists (default: /certs/frp)
set -euo pipefail

FRPC_BIN=${FRPC_BIN:-frpc}
YCORD_BIN=${YCORD_BIN:-ycord}
FRPC_CONFIG=${FRPC_CONFIG:-/tmp/frpc.toml}
FRP_CERTS_DIR=${FRP_CERTS_DIR:-/certs/frp}

log() {
    printf 'entrypoint: %s\n' "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# Prints $1 as a TOML basic string, quotes included. Backslash, double quote, tab, newline and
# carriage return are escaped; any other control character is refused (it cannot come from a
# sane deployment, and TOML would need \uXXXX for it).
toml_string() {
    local value=$1
    value=${value//\\/\\\\}
    value=${value//\"/\\\"}
    value=${value//$'\t'/\\t}
    value=${value//$'\n'/\\n}
    value=${value//$'\r'/\\r}
    if [[ $value == *[[:cntrl:]]* ]]; then
        return 1
    fi
    printf '"%s"' "$value"
}

# Fails, naming the variable, unless the variable called $1 is set and not empty.
require_var() {
    [[ -n ${!1:-} ]] || die "$1 is not set; it is required when HP_SHARED_KEY is set (HaRP mode)"
}

# Fails unless the variable called $1 holds a TCP port number (1-65535).
require_port() {
    require_var "$1"
    local value=${!1}
    if ! [[ $value =~ ^[0-9]{1,5}$ ]] || ((10#$value < 1 || 10#$value > 65535)); then
        die "$1 must be a port number (1-65535), got '$value'"
    fi
}

# The variable called $1 as a TOML string, or a clear error.
toml_var() {
    toml_string "${!1}" || die "$1 contains a control character"
}

write_frpc_config() {
    local var
    for var in HP_SHARED_KEY HP_FRP_ADDRESS APP_ID; do
        require_var "$var"
    done
    # AppAPI splits the daemon's "host:port" FRP address into these two variables
    # (nextcloud/app_api DockerActions::buildDeployParams), so HP_FRP_ADDRESS is a host only.
    require_port HP_FRP_PORT
    require_port APP_PORT

    local addr_toml token_toml app_id_toml sock_toml
    addr_toml=$(toml_var HP_FRP_ADDRESS) || exit 1
    token_toml=$(toml_var HP_SHARED_KEY) || exit 1
    app_id_toml=$(toml_var APP_ID) || exit 1
    sock_toml=$(toml_var HP_EXAPP_SOCK) || exit 1

    local tls
    if [[ -d $FRP_CERTS_DIR ]]; then
        local file cert key ca
        for file in client.crt client.key ca.crt; do
            [[ -r $FRP_CERTS_DIR/$file ]] || log "warning: $FRP_CERTS_DIR/$file is missing or unreadable; frpc's TLS login will fail"
        done
        cert=$(toml_string "$FRP_CERTS_DIR/client.crt") || die "FRP_CERTS_DIR contains a control character"
        key=$(toml_string "$FRP_CERTS_DIR/client.key") || die "FRP_CERTS_DIR contains a control character"
        ca=$(toml_string "$FRP_CERTS_DIR/ca.crt") || die "FRP_CERTS_DIR contains a control character"
        # serverName must be "harp.nc": the name in the server certificate HaRP generates.
        tls="transport.tls.enable = true
transport.tls.certFile = $cert
transport.tls.keyFile = $key
transport.tls.trustedCaFile = $ca
transport.tls.serverName = \"harp.nc\""
        log "TLS to HaRP with the certificates in $FRP_CERTS_DIR"
    else
        tls="transport.tls.enable = false"
        log "$FRP_CERTS_DIR does not exist: TLS to HaRP disabled"
    fi

    # The file holds the shared key: private to this user, and written whole or not at all.
    local tmp
    tmp=$(umask 077 && mktemp "$FRPC_CONFIG.XXXXXX") || die "cannot create a file next to $FRPC_CONFIG"
    cat >"$tmp" <<EOF
# Written by nextcloud/entrypoint.sh at container start; frp 0.61 configuration.
serverAddr = $addr_toml
serverPort = $((10#$HP_FRP_PORT))
# Keep retrying when HaRP is not reachable yet, instead of exiting.
loginFailExit = false

$tls

metadatas.token = $token_toml

[[proxies]]
name = $app_id_toml
type = "tcp"
remotePort = $((10#$APP_PORT))
[proxies.plugin]
type = "unix_domain_socket"
unixPath = $sock_toml
EOF
    mv -f -- "$tmp" "$FRPC_CONFIG"
    log "frpc configuration written to $FRPC_CONFIG (server $HP_FRP_ADDRESS:$HP_FRP_PORT, proxy $APP_ID -> $HP_EXAPP_SOCK)"
}

write_only=false
if [[ ${1:-} == --write-frpc-config-only ]]; then
    write_only=true
    shift
fi

if ! $write_only && [[ -n ${APP_PERSISTENT_STORAGE:-} && ! -w ${APP_PERSISTENT_STORAGE} ]]; then
    log "warning: APP_PERSISTENT_STORAGE ($APP_PERSISTENT_STORAGE) is missing or not writable by uid $(id -u)"
fi

if [[ -z ${HP_SHARED_KEY:-} ]]; then
    $write_only && die "--write-frpc-config-only needs HP_SHARED_KEY (HaRP mode)"
    exec "$YCORD_BIN" serve "$@"
fi

# ycord and frpc must agree on the socket: export the default that both assume.
export HP_EXAPP_SOCK=${HP_EXAPP_SOCK:-/tmp/exapp.sock}

write_frpc_config
$write_only && exit 0

# A socket file left in /tmp by the previous run of a restarted container is replaced by ycord
# itself when it binds.

# Supervision, the simple option: if frpc exits, ycord is stopped (SIGTERM, so it flushes) and the
# script exits 1; HaRP creates ExApp containers with restart policy "unless-stopped", so Docker
# restarts the whole container, which also rewrites this configuration (picking up certificates
# HaRP installed since). frpc itself does not exit when HaRP is unreachable (loginFailExit =
# false), so an exit means a real fault, which a restart loop inside the container would only hide;
# the healthcheck reports the container unhealthy meanwhile.
ycord_pid=
frpc_pid=
pending_signal=
forward_signal() {
    # SIGINT is forwarded as SIGTERM: bash starts background commands with SIGINT ignored, and
    # SIGTERM is the signal ycord handles with a clean shutdown.
    if [[ -n $ycord_pid ]]; then
        log "received SIG$1; stopping ycord"
        kill -TERM "$ycord_pid" 2>/dev/null || true
    else
        pending_signal=$1
    fi
}
trap 'forward_signal TERM' TERM
trap 'forward_signal INT' INT

log "starting frpc: $FRPC_BIN -c $FRPC_CONFIG"
"$FRPC_BIN" -c "$FRPC_CONFIG" &
frpc_pid=$!
log "starting ycord: $YCORD_BIN serve $*"
"$YCORD_BIN" serve "$@" &
ycord_pid=$!
if [[ -n $pending_signal ]]; then
    forward_signal "$pending_signal"
fi

frpc_failed=false
ycord_status=
waiting=("$ycord_pid" "$frpc_pid")
while [[ -z $ycord_status ]]; do
    exited=
    status=0
    wait -n -p exited "${waiting[@]}" || status=$?
    if [[ -z ${exited:-} ]]; then
        # Interrupted by a trapped signal, which the trap has already forwarded.
        continue
    fi
    if [[ $exited == "$ycord_pid" ]]; then
        ycord_status=$status
        log "ycord exited with status $status"
    else
        frpc_failed=true
        frpc_pid=
        waiting=("$ycord_pid")
        log "frpc exited with status $status; stopping ycord so that the container restarts"
        kill -TERM "$ycord_pid" 2>/dev/null || true
    fi
done

if [[ -n $frpc_pid ]]; then
    kill -TERM "$frpc_pid" 2>/dev/null || true
    wait "$frpc_pid" 2>/dev/null || true
fi

if $frpc_failed && ((ycord_status == 0)); then
    exit 1
fi
exit "$ycord_status"
