#!/usr/bin/env bash
# Run Debian's ClickHouse server (18.16) as a plain process for imgov dev and CI.
#
# Usage: infra/clickhouse/clickhouse.sh {install|start|stop|status|reset}
#
#   install  apt-get install clickhouse-server + clickhouse-client if no server binary
#            is present (needs root). Never leaves the Debian system service running.
#   start    install if missing, render config.xml into the state dir, start the server
#            in the background, wait until `SELECT 1` answers, create database `imgov`.
#            Exits 0 at once if it is already running.
#   stop     SIGTERM, wait, then SIGKILL. Idempotent.
#   status   running/stopped, PID, ports, RSS. Exit 0 if running, 3 if stopped.
#   reset    stop and delete the state dir (all data).
#
# Layout (fixed, other scripts rely on it), relative to the repo root:
#   .imgov/services/clickhouse/   rendered config, PID file, data/, tmp/, ...
#   .imgov/logs/clickhouse/       server.log, server.err.log, stdout.log
#
# Environment:
#   IMGOV_CLICKHOUSE_PORT           native TCP port (default 19000)
#   IMGOV_CLICKHOUSE_HTTP_PORT      HTTP port (default 18123)
#   IMGOV_CLICKHOUSE_STATE_DIR      state dir instead of .imgov/services/clickhouse (a private
#                                   server, e.g. tests/integration/test_clickhouse_tls.py, which
#                                   adds its own config.d/ overlay there before `start`)
#   IMGOV_CLICKHOUSE_LOG_DIR        log dir instead of .imgov/logs/clickhouse
#   IMGOV_CLICKHOUSE_START_TIMEOUT  seconds to wait for readiness (default 30)
#   IMGOV_CLICKHOUSE_STOP_TIMEOUT   seconds to wait after SIGTERM (default 30)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
STATE_DIR="${IMGOV_CLICKHOUSE_STATE_DIR:-$REPO_ROOT/.imgov/services/clickhouse}"
LOG_DIR="${IMGOV_CLICKHOUSE_LOG_DIR:-$REPO_ROOT/.imgov/logs/clickhouse}"
PID_FILE="$STATE_DIR/clickhouse.pid"
RENDERED_CONFIG="$STATE_DIR/config.xml"
# Not copied: the server reloads users.xml when it changes, and 18.16 writes its
# preprocessed copies under <path>/preprocessed_configs/, not beside the source.
USERS_XML="$SCRIPT_DIR/users.xml"

TCP_PORT="${IMGOV_CLICKHOUSE_PORT:-19000}"
HTTP_PORT="${IMGOV_CLICKHOUSE_HTTP_PORT:-18123}"
START_TIMEOUT="${IMGOV_CLICKHOUSE_START_TIMEOUT:-30}"
STOP_TIMEOUT="${IMGOV_CLICKHOUSE_STOP_TIMEOUT:-30}"
HOST=127.0.0.1

log() { printf '[clickhouse] %s\n' "$*"; }
die() { printf '[clickhouse] ERROR: %s\n' "$*" >&2; exit 1; }
now_ms() { date +%s%3N; }

# Prints the command that runs the server, or nothing. Debian's 18.16 ships
# /usr/sbin/clickhouse-server; upstream packages ship one `clickhouse` multi-call binary.
server_cmd() {
    local candidate
    for candidate in /usr/sbin/clickhouse-server /usr/bin/clickhouse-server; do
        if [[ -x "$candidate" ]]; then echo "$candidate"; return; fi
    done
    if [[ -x /usr/bin/clickhouse ]]; then echo "/usr/bin/clickhouse server"; fi
}

client_cmd() {
    if [[ -x /usr/bin/clickhouse-client ]]; then echo /usr/bin/clickhouse-client
    elif [[ -x /usr/bin/clickhouse ]]; then echo "/usr/bin/clickhouse client"
    fi
}

# Runs one statement as the admin user `default` over the native port.
run_sql() {
    local client
    client="$(client_cmd)"
    [[ -n "$client" ]] || die "no clickhouse client binary found; run '$0 install'"
    # shellcheck disable=SC2086  # $client may be "binary subcommand"
    $client --host "$HOST" --port "$TCP_PORT" --user default --query "$1"
}

# True when the HTTP port answers `SELECT 1` with "1". Uses bash's /dev/tcp so that
# readiness does not depend on curl or on the client binary's start-up time.
answers_select_1() {
    local out
    # shellcheck disable=SC2016  # $1/$2 are expanded by the inner bash
    out="$(timeout 2 bash -c '
        exec 3<>"/dev/tcp/$1/$2" &&
            printf "GET /?query=SELECT%%201 HTTP/1.0\r\n\r\n" >&3 &&
            cat <&3
    ' _ "$HOST" "$HTTP_PORT" 2>/dev/null)" || return 1
    [[ "$(tail -n 1 <<<"$out")" == "1" ]]
}

# Prints the PID from the PID file if that process is alive and is our server (the PID
# may have been reused by an unrelated process after a crash or a reboot).
running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$RENDERED_CONFIG" || return 1
    echo "$pid"
}

# Makes TCP_PORT/HTTP_PORT those of the running server (from its rendered config), so
# status/start talk to the right ports even when the environment asks for others.
adopt_running_ports() {
    local tcp http
    tcp="$(sed -n 's|.*<tcp_port>\([0-9]*\)</tcp_port>.*|\1|p' "$RENDERED_CONFIG" 2>/dev/null)"
    http="$(sed -n 's|.*<http_port>\([0-9]*\)</http_port>.*|\1|p' "$RENDERED_CONFIG" 2>/dev/null)"
    if [[ -n "$tcp" && -n "$http" && ("$tcp" != "$TCP_PORT" || "$http" != "$HTTP_PORT") ]]; then
        log "note: the running server uses native $tcp, HTTP $http (not $TCP_PORT, $HTTP_PORT)"
        TCP_PORT="$tcp"
        HTTP_PORT="$http"
    fi
}

# Serialises start/stop/reset between concurrent callers (two `make up` at once).
# The server must not inherit the lock's descriptor (see 9>&- where it is spawned).
take_lock() {
    mkdir -p "$(dirname "$STATE_DIR")"
    exec 9>"$(dirname "$STATE_DIR")/clickhouse.lock"
    flock -w 120 9 || die "another clickhouse.sh holds $(dirname "$STATE_DIR")/clickhouse.lock"
}

port_in_use() {
    # shellcheck disable=SC2016  # $1/$2 are expanded by the inner bash
    timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$HOST" "$1" 2>/dev/null
}

# Error-log size when this start began: only what the server wrote since is shown.
ERR_LOG_OFFSET=0

# Prints the errors logged since ERR_LOG_OFFSET without stack-trace frames (18.16 logs a
# full trace for every failed query), then the tail of the server's stdout/stderr.
show_error_log() {
    local err="$LOG_DIR/server.err.log" out="$LOG_DIR/stdout.log"
    if [[ -s "$err" ]]; then
        echo "---- $err (since this start, without stack frames) ----" >&2
        tail -c "+$((ERR_LOG_OFFSET + 1))" "$err" | grep -vE '^[0-9]+\. |^$' | tail -n 20 >&2 || true
    fi
    if [[ -s "$out" ]]; then
        echo "---- tail of $out ----" >&2
        tail -n 5 "$out" >&2
    fi
}

# The Debian postinst enables and tries to start the system service. We never want it:
# it would hold the default ports 9000/8123 and /var/lib/clickhouse.
stop_system_service() {
    local pid_file=/var/run/clickhouse-server.pid pid
    if [[ -f "$pid_file" ]]; then
        pid="$(cat "$pid_file" 2>/dev/null || true)"
        if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
            log "stopping the Debian system service (PID $pid) started by the package"
            if [[ -x /etc/init.d/clickhouse-server ]]; then
                /etc/init.d/clickhouse-server stop >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
            else
                kill "$pid" 2>/dev/null || true
            fi
        fi
    fi
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        systemctl disable --now clickhouse-server >/dev/null 2>&1 || true
    fi
}

cmd_install() {
    if [[ -n "$(server_cmd)" && -n "$(client_cmd)" ]]; then
        log "already installed: $(server_cmd)"
        return 0
    fi
    [[ "$(id -u)" == 0 ]] || die "installing needs root (apt-get); run as root or install clickhouse-server"
    local t0 added_policy=0
    t0="$(now_ms)"
    # policy-rc.d exit 101 = "action forbidden": the postinst then does not start the
    # service (there is no init system here anyway). Only add it if none exists, and
    # remove only the one we added.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    mkdir -p "$LOG_DIR"
    local rc=0 apt_log="$LOG_DIR/install.log"
    log "installing clickhouse-server and clickhouse-client with apt-get (log: $apt_log)"
    {
        apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                clickhouse-server clickhouse-client
    } >"$apt_log" 2>&1 || rc=$?
    if ((added_policy)); then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
    if ((rc != 0)); then
        tail -n 30 "$apt_log" >&2
        die "apt-get install clickhouse-server clickhouse-client failed (exit $rc)"
    fi
    stop_system_service
    [[ -n "$(server_cmd)" ]] || die "installed, but no clickhouse server binary found"
    log "installed $(dpkg-query -W -f='${Version}' clickhouse-server 2>/dev/null) in $(($(now_ms) - t0)) ms"
}

render_config() {
    mkdir -p "$STATE_DIR"/{data,tmp,user_files,format_schemas} "$LOG_DIR"
    sed -e "s|@TCP_PORT@|$TCP_PORT|g" \
        -e "s|@HTTP_PORT@|$HTTP_PORT|g" \
        -e "s|@STATE_DIR@|$STATE_DIR|g" \
        -e "s|@LOG_DIR@|$LOG_DIR|g" \
        -e "s|@USERS_XML@|$USERS_XML|g" \
        "$SCRIPT_DIR/config.xml" >"$RENDERED_CONFIG.tmp"
    mv "$RENDERED_CONFIG.tmp" "$RENDERED_CONFIG"
}

cmd_start() {
    local pid
    take_lock
    if pid="$(running_pid)"; then
        adopt_running_ports
        if answers_select_1; then
            log "already running (PID $pid, native $TCP_PORT, HTTP $HTTP_PORT)"
            return 0
        fi
        # Alive but not answering: most likely still starting up; wait below.
        log "PID $pid is alive but not answering yet; waiting"
    else
        [[ -n "$(server_cmd)" ]] || cmd_install
        local port
        for port in "$TCP_PORT" "$HTTP_PORT"; do
            if port_in_use "$port"; then
                die "port $port on $HOST is already in use by another process"
            fi
        done
        render_config
        ERR_LOG_OFFSET="$(stat -c %s "$LOG_DIR/server.err.log" 2>/dev/null || echo 0)"
        local server
        server="$(server_cmd)"
        # setsid: the server must outlive the shell (and the terminal) that started it.
        # 18.16 runs fine as root; data files are then owned by root.
        # shellcheck disable=SC2086  # $server may be "binary subcommand"
        (cd "$STATE_DIR" && exec setsid $server --config-file="$RENDERED_CONFIG" \
            </dev/null >>"$LOG_DIR/stdout.log" 2>&1 9>&-) &
        pid=$!
        echo "$pid" >"$PID_FILE"
        log "started PID $pid (native $TCP_PORT, HTTP $HTTP_PORT, state $STATE_DIR)"
    fi

    local t0 deadline
    t0="$(now_ms)"
    deadline=$((t0 + START_TIMEOUT * 1000))
    until answers_select_1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            show_error_log
            die "server exited during start-up"
        fi
        if (($(now_ms) >= deadline)); then
            show_error_log
            die "server did not answer SELECT 1 within ${START_TIMEOUT}s (PID $pid still alive)"
        fi
        sleep 0.05
    done
    log "ready in $(($(now_ms) - t0)) ms"
    run_sql "CREATE DATABASE IF NOT EXISTS imgov" || {
        show_error_log
        die "could not create database imgov"
    }
}

cmd_stop() {
    local pid
    take_lock
    if ! pid="$(running_pid)"; then
        rm -f "$PID_FILE"
        log "not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$(($(now_ms) + STOP_TIMEOUT * 1000))
    while kill -0 "$pid" 2>/dev/null; do
        if (($(now_ms) >= deadline)); then
            log "PID $pid still alive after ${STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
            break
        fi
        sleep 0.1
    done
    rm -f "$PID_FILE"
    log "stopped (PID $pid)"
}

cmd_status() {
    local pid
    if pid="$(running_pid)"; then
        adopt_running_ports >/dev/null
        local rss_kb
        rss_kb="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)"
        local ready=no
        if answers_select_1; then ready=yes; fi
        printf 'running pid=%s native=%s:%s http=%s:%s ready=%s rss_mib=%s state=%s\n' \
            "$pid" "$HOST" "$TCP_PORT" "$HOST" "$HTTP_PORT" "$ready" \
            "$(awk -v kb="${rss_kb:-0}" 'BEGIN {printf "%.1f", kb / 1024}')" "$STATE_DIR"
        return 0
    fi
    printf 'stopped native=%s:%s http=%s:%s state=%s\n' \
        "$HOST" "$TCP_PORT" "$HOST" "$HTTP_PORT" "$STATE_DIR"
    return 3
}

cmd_reset() {
    cmd_stop
    rm -rf "$STATE_DIR"
    log "deleted $STATE_DIR"
}

main() {
    case "${1:-}" in
        install) cmd_install ;;
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        reset) cmd_reset ;;
        *)
            echo "usage: $0 {install|start|stop|status|reset}" >&2
            exit 2
            ;;
    esac
}

main "$@"
