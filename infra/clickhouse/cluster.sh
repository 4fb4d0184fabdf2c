#!/usr/bin/env bash
# ClickHouse cluster mode for imgov: one ZooKeeper and two ClickHouse 18.16 servers
# (ch1, ch2) as plain processes on 127.0.0.1. See DESIGN.md section 9 "Cluster mode".
#
# Usage: infra/clickhouse/cluster.sh COMMAND
#
#   start            fetch the ZooKeeper jars if needed, start ZooKeeper, ch1 and ch2, wait
#                    until each answers, create database `imgov` on both. Idempotent:
#                    whatever already runs is left alone.
#   stop             stop ch2, ch1 (SIGTERM, wait, SIGKILL), then ZooKeeper. Idempotent.
#   status           one line per process. Exit 0 if all three run, 3 otherwise.
#   kill N           SIGKILL ClickHouse node N (1 or 2) by PID; no clean shutdown (fault tests).
#   restart N        stop node N if it runs (SIGTERM), start it, wait until it answers.
#   pid N            print node N's PID (exit 3 if it is not running).
#   zookeeper-stop   stop ZooKeeper only (SIGTERM, wait): replicated tables turn read-only.
#   zookeeper-start  start ZooKeeper only and wait until it serves.
#   zookeeper-pid    print ZooKeeper's PID (exit 3 if it is not running).
#   fetch            copy the ZooKeeper jars into infra/zookeeper/libs (Maven; no-op if current).
#   reset            stop everything and delete .imgov/cluster/{ch1,ch2,zookeeper} (all data).
#
# Fixed layout (the cluster contract; tests and other scripts rely on it):
#   ZooKeeper  client 127.0.0.1:19181, admin server off, data .imgov/cluster/zookeeper/
#   ch1        native 19011, HTTP 18131, interserver 19012, state .imgov/cluster/ch1/
#   ch2        native 19021, HTTP 18132, interserver 19022, state .imgov/cluster/ch2/
#   logs       .imgov/logs/cluster/{zookeeper,ch1,ch2}.log (+ ch1.err.log, ch1.stdout.log ...)
# Each node's config = infra/clickhouse/config.xml (the single-node config, rendered with
# the node's ports and paths) + config.d/cluster.xml rendered from infra/clickhouse/cluster.xml
# (remote_servers imgov_replicated / imgov_sharded, macros, zookeeper, distributed_ddl).
# Users: infra/clickhouse/users.xml on both nodes (default admin, imgov writer, compliance).
#
# Environment:
#   IMGOV_CLUSTER_START_TIMEOUT  seconds to wait for each process to be ready (default 60)
#   IMGOV_CLUSTER_STOP_TIMEOUT   seconds to wait after SIGTERM (default 30)
#   IMGOV_CLUSTER_FETCH_TIMEOUT  seconds for the Maven fetch (default 600)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
CLUSTER_DIR="$REPO_ROOT/.imgov/cluster"
LOG_DIR="$REPO_ROOT/.imgov/logs/cluster"
USERS_XML="$SCRIPT_DIR/users.xml"
ZK_SRC="$REPO_ROOT/infra/zookeeper"
ZK_LIBS="$ZK_SRC/libs"
ZK_DIR="$CLUSTER_DIR/zookeeper"
ZK_CFG="$ZK_DIR/zoo.cfg"
ZK_PID_FILE="$ZK_DIR/zookeeper.pid"

HOST=127.0.0.1
ZK_PORT=19181
START_TIMEOUT="${IMGOV_CLUSTER_START_TIMEOUT:-60}"
STOP_TIMEOUT="${IMGOV_CLUSTER_STOP_TIMEOUT:-30}"
FETCH_TIMEOUT="${IMGOV_CLUSTER_FETCH_TIMEOUT:-600}"

# Node N: native, HTTP, interserver port, sharded-shard macro.
node_tcp() { case "$1" in 1) echo 19011 ;; 2) echo 19021 ;; esac; }
node_http() { case "$1" in 1) echo 18131 ;; 2) echo 18132 ;; esac; }
node_interserver() { case "$1" in 1) echo 19012 ;; 2) echo 19022 ;; esac; }
node_dir() { echo "$CLUSTER_DIR/ch$1"; }
node_config() { echo "$CLUSTER_DIR/ch$1/config.xml"; }
node_pid_file() { echo "$CLUSTER_DIR/ch$1/clickhouse.pid"; }

log() { printf '[ch-cluster] %s\n' "$*"; }
die() { printf '[ch-cluster] ERROR: %s\n' "$*" >&2; exit 1; }
now_ms() { date +%s%3N; }

check_node() {
    [[ "${1:-}" == 1 || "${1:-}" == 2 ]] || die "node must be 1 or 2 (got '${1:-}')"
}

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

port_in_use() {
    # shellcheck disable=SC2016  # $1/$2 are expanded by the inner bash
    timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$HOST" "$1" 2>/dev/null
}

# Serialises start/stop/restart/reset between concurrent callers. Spawned servers must not
# inherit the lock's descriptor (9>&- where they are started).
take_lock() {
    mkdir -p "$CLUSTER_DIR"
    exec 9>"$CLUSTER_DIR/cluster.lock"
    flock -w 180 9 || die "another cluster.sh holds $CLUSTER_DIR/cluster.lock"
}

# --- ZooKeeper ---------------------------------------------------------------------

zk_pom_digest() { sha256sum "$ZK_SRC/pom.xml" | cut -d' ' -f1; }

zk_libs_current() {
    compgen -G "$ZK_LIBS/zookeeper-3.*.jar" >/dev/null &&
        [[ -f "$ZK_LIBS/.pom.sha256" && "$(cat "$ZK_LIBS/.pom.sha256")" == "$(zk_pom_digest)" ]]
}

cmd_fetch() {
    zk_libs_current && return 0
    if zk_pid >/dev/null; then
        die "infra/zookeeper/pom.xml changed but ZooKeeper runs on its jars; run: $0 zookeeper-stop && $0 fetch"
    fi
    command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
    command -v java >/dev/null || die "java not found (Java 11+ needed)"
    mkdir -p "$LOG_DIR"
    # Fresh folder swapped in by rename, so that jars dropped from the pom do not linger.
    local tmp="$REPO_ROOT/.imgov/tmp/zookeeper-libs.$$" t0
    rm -rf "$tmp"
    mkdir -p "$(dirname "$tmp")"
    t0="$(now_ms)"
    log "fetching ZooKeeper jars with Maven..."
    if ! timeout "$FETCH_TIMEOUT" mvn -q -B -Dstyle.color=never -f "$ZK_SRC/pom.xml" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
        >"$LOG_DIR/zookeeper-fetch.log" 2>&1; then
        rm -rf "$tmp"
        tail -n 40 "$LOG_DIR/zookeeper-fetch.log" | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
        die "maven failed to fetch the ZooKeeper jars (full output: $LOG_DIR/zookeeper-fetch.log)"
    fi
    compgen -G "$tmp/zookeeper-3.*.jar" >/dev/null || {
        rm -rf "$tmp"
        die "maven succeeded but no zookeeper jar was copied"
    }
    zk_pom_digest >"$tmp/.pom.sha256"
    rm -rf "$ZK_LIBS"
    mv "$tmp" "$ZK_LIBS"
    local jars=("$ZK_LIBS"/*.jar)
    log "fetched ${#jars[@]} ZooKeeper jars in $(($(now_ms) - t0)) ms"
}

# PID of our ZooKeeper (alive, and its command line names our zoo.cfg), or fail.
zk_pid() {
    [[ -f "$ZK_PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$ZK_PID_FILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$ZK_CFG" || return 1
    echo "$pid"
}

# True when ZooKeeper serves requests: the `srvr` four-letter word (the only one
# whitelisted by default, and the one that says "Mode:" only when the server is serving).
zk_serving() {
    local out
    # shellcheck disable=SC2016  # $1/$2 are expanded by the inner bash
    out="$(timeout 2 bash -c '
        exec 3<>"/dev/tcp/$1/$2" && printf "srvr" >&3 && cat <&3
    ' _ "$HOST" "$ZK_PORT" 2>/dev/null)" || return 1
    grep -q '^Mode: standalone' <<<"$out"
}

zk_render_config() {
    mkdir -p "$ZK_DIR/data" "$LOG_DIR"
    cat >"$ZK_CFG.tmp" <<EOF
# Rendered by infra/clickhouse/cluster.sh; edits are overwritten at the next start.
# Standalone (one server): enough for two ClickHouse replicas on one machine; what
# replication needs from it is the coordination, not ZooKeeper's own fault tolerance.
tickTime=2000
dataDir=$ZK_DIR/data
clientPort=$ZK_PORT
clientPortAddress=$HOST
maxClientCnxns=200
# The admin server would listen on 8080 on every interface.
admin.enableServer=false
4lw.commands.whitelist=srvr,ruok,mntr,stat
autopurge.snapRetainCount=3
autopurge.purgeInterval=1
EOF
    mv "$ZK_CFG.tmp" "$ZK_CFG"
}

zk_start() {
    local pid
    if pid="$(zk_pid)"; then
        if zk_serving; then
            log "zookeeper already running (PID $pid, port $ZK_PORT)"
            return 0
        fi
        log "zookeeper PID $pid is alive but not serving yet; waiting"
    else
        cmd_fetch
        port_in_use "$ZK_PORT" && die "port $ZK_PORT on $HOST is already in use by another process"
        zk_render_config
        (cd "$ZK_DIR" && exec setsid java -Xms64m -Xmx256m -XX:+UseSerialGC \
            -Dzookeeper.log.file="$LOG_DIR/zookeeper.log" \
            -Dlogback.configurationFile="$ZK_SRC/logback.xml" \
            -Dzookeeper.admin.enableServer=false \
            -cp "$ZK_LIBS/*" org.apache.zookeeper.server.quorum.QuorumPeerMain "$ZK_CFG" \
            </dev/null >>"$LOG_DIR/zookeeper.stdout.log" 2>&1 9>&-) &
        pid=$!
        echo "$pid" >"$ZK_PID_FILE"
        log "zookeeper started PID $pid (port $ZK_PORT, data $ZK_DIR)"
    fi
    local t0 deadline
    t0="$(now_ms)"
    deadline=$((t0 + START_TIMEOUT * 1000))
    until zk_serving; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$ZK_PID_FILE"
            tail -n 20 "$LOG_DIR/zookeeper.log" "$LOG_DIR/zookeeper.stdout.log" >&2 2>/dev/null || true
            die "zookeeper exited during start-up"
        fi
        if (($(now_ms) >= deadline)); then
            tail -n 20 "$LOG_DIR/zookeeper.log" >&2 2>/dev/null || true
            die "zookeeper did not serve within ${START_TIMEOUT}s (PID $pid still alive)"
        fi
        sleep 0.1
    done
    log "zookeeper ready in $(($(now_ms) - t0)) ms"
}

# SIGTERM (or SIGKILL after STOP_TIMEOUT) of PID; $2 names it in the log.
stop_pid() {
    local pid="$1" name="$2" deadline
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(($(now_ms) + STOP_TIMEOUT * 1000))
    while kill -0 "$pid" 2>/dev/null; do
        if (($(now_ms) >= deadline)); then
            log "$name PID $pid still alive after ${STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
            break
        fi
        sleep 0.1
    done
}

zk_stop() {
    local pid
    if ! pid="$(zk_pid)"; then
        rm -f "$ZK_PID_FILE"
        log "zookeeper not running"
        return 0
    fi
    stop_pid "$pid" zookeeper
    rm -f "$ZK_PID_FILE"
    log "zookeeper stopped (PID $pid)"
}

# --- ClickHouse nodes ---------------------------------------------------------------

# PID of node N if alive and running our rendered config, or fail.
node_pid() {
    local pid_file pid
    pid_file="$(node_pid_file "$1")"
    [[ -f "$pid_file" ]] || return 1
    pid="$(cat "$pid_file" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$(node_config "$1")" || return 1
    echo "$pid"
}

# True when node N's HTTP port answers `SELECT 1` with "1" (bash /dev/tcp, like clickhouse.sh).
node_answers() {
    local out
    # shellcheck disable=SC2016  # $1/$2 are expanded by the inner bash
    out="$(timeout 2 bash -c '
        exec 3<>"/dev/tcp/$1/$2" &&
            printf "GET /?query=SELECT%%201 HTTP/1.0\r\n\r\n" >&3 &&
            cat <&3
    ' _ "$HOST" "$(node_http "$1")" 2>/dev/null)" || return 1
    [[ "$(tail -n 1 <<<"$out")" == "1" ]]
}

node_render_config() {
    local n="$1" dir
    dir="$(node_dir "$n")"
    mkdir -p "$dir"/{data,tmp,user_files,format_schemas,config.d} "$LOG_DIR"
    # The single-node template, with this node's ports and paths (its <logger> paths are
    # replaced by the overlay; @LOG_DIR@ still has to be something valid).
    sed -e "s|@TCP_PORT@|$(node_tcp "$n")|g" \
        -e "s|@HTTP_PORT@|$(node_http "$n")|g" \
        -e "s|@STATE_DIR@|$dir|g" \
        -e "s|@LOG_DIR@|$LOG_DIR|g" \
        -e "s|@USERS_XML@|$USERS_XML|g" \
        "$SCRIPT_DIR/config.xml" >"$dir/config.xml.tmp"
    sed -e "s|@NODE@|ch$n|g" \
        -e "s|@INTERSERVER_PORT@|$(node_interserver "$n")|g" \
        -e "s|@SHARDED_SHARD@|0$n|g" \
        -e "s|@LOG_DIR@|$LOG_DIR|g" \
        -e "s|@ZK_PORT@|$ZK_PORT|g" \
        -e "s|@CH1_PORT@|$(node_tcp 1)|g" \
        -e "s|@CH2_PORT@|$(node_tcp 2)|g" \
        "$SCRIPT_DIR/cluster.xml" >"$dir/config.d/cluster.xml.tmp"
    mv "$dir/config.d/cluster.xml.tmp" "$dir/config.d/cluster.xml"
    mv "$dir/config.xml.tmp" "$dir/config.xml"
}

# Errors node N logged since its error log had OFFSET bytes, without stack frames.
node_show_errors() {
    local n="$1" offset="${2:-0}" err="$LOG_DIR/ch$1.err.log" out="$LOG_DIR/ch$1.stdout.log"
    if [[ -s "$err" ]]; then
        echo "---- $err (since this start, without stack frames) ----" >&2
        tail -c "+$((offset + 1))" "$err" | grep -vE '^[0-9]+\. |^$' | tail -n 20 >&2 || true
    fi
    if [[ -s "$out" ]]; then
        echo "---- tail of $out ----" >&2
        tail -n 5 "$out" >&2
    fi
}

# Spawns node N if it is not running. Prints nothing; waiting is node_wait's job, so
# that both nodes start up in parallel.
node_spawn() {
    local n="$1" pid dir server port
    if pid="$(node_pid "$n")"; then
        return 0
    fi
    server="$(server_cmd)"
    [[ -n "$server" ]] || die "no clickhouse server binary; run infra/clickhouse/clickhouse.sh install"
    for port in "$(node_tcp "$n")" "$(node_http "$n")" "$(node_interserver "$n")"; do
        port_in_use "$port" && die "port $port on $HOST (ch$n) is already in use by another process"
    done
    node_render_config "$n"
    dir="$(node_dir "$n")"
    stat -c %s "$LOG_DIR/ch$n.err.log" 2>/dev/null >"$dir/err_offset" || echo 0 >"$dir/err_offset"
    # shellcheck disable=SC2086  # $server may be "binary subcommand"
    (cd "$dir" && exec setsid $server --config-file="$(node_config "$n")" \
        </dev/null >>"$LOG_DIR/ch$n.stdout.log" 2>&1 9>&-) &
    pid=$!
    echo "$pid" >"$(node_pid_file "$n")"
    log "ch$n started PID $pid (native $(node_tcp "$n"), HTTP $(node_http "$n"), interserver $(node_interserver "$n"))"
}

node_wait() {
    local n="$1" pid t0 deadline offset
    pid="$(cat "$(node_pid_file "$n")" 2>/dev/null || true)"
    offset="$(cat "$(node_dir "$n")/err_offset" 2>/dev/null || echo 0)"
    t0="$(now_ms)"
    deadline=$((t0 + START_TIMEOUT * 1000))
    until node_answers "$n"; do
        if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$(node_pid_file "$n")"
            node_show_errors "$n" "$offset"
            die "ch$n exited during start-up"
        fi
        if (($(now_ms) >= deadline)); then
            node_show_errors "$n" "$offset"
            die "ch$n did not answer SELECT 1 within ${START_TIMEOUT}s (PID $pid still alive)"
        fi
        sleep 0.05
    done
    log "ch$n ready in $(($(now_ms) - t0)) ms (PID $pid)"
    # Plain, not ON CLUSTER: must work while ZooKeeper is down (restart during a ZK outage).
    local client
    client="$(client_cmd)"
    [[ -n "$client" ]] || die "no clickhouse client binary found"
    # shellcheck disable=SC2086  # $client may be "binary subcommand"
    $client --host "$HOST" --port "$(node_tcp "$n")" --user default \
        --query "CREATE DATABASE IF NOT EXISTS imgov" || {
        node_show_errors "$n" "$offset"
        die "could not create database imgov on ch$n"
    }
}

node_stop() {
    local n="$1" pid
    if ! pid="$(node_pid "$n")"; then
        rm -f "$(node_pid_file "$n")"
        log "ch$n not running"
        return 0
    fi
    stop_pid "$pid" "ch$n"
    rm -f "$(node_pid_file "$n")"
    log "ch$n stopped (PID $pid)"
}

# --- commands ------------------------------------------------------------------------

cmd_start() {
    take_lock
    zk_start
    node_spawn 1
    node_spawn 2
    node_wait 1
    node_wait 2
}

cmd_stop() {
    take_lock
    node_stop 2
    node_stop 1
    zk_stop
}

cmd_status() {
    local rc=0 pid n ready
    if pid="$(zk_pid)"; then
        ready=no
        if zk_serving; then ready=yes; fi
        printf 'zookeeper running pid=%s client=%s:%s serving=%s data=%s\n' \
            "$pid" "$HOST" "$ZK_PORT" "$ready" "$ZK_DIR"
    else
        printf 'zookeeper stopped client=%s:%s data=%s\n' "$HOST" "$ZK_PORT" "$ZK_DIR"
        rc=3
    fi
    for n in 1 2; do
        if pid="$(node_pid "$n")"; then
            ready=no
            if node_answers "$n"; then ready=yes; fi
            printf 'ch%s running pid=%s native=%s:%s http=%s:%s interserver=%s ready=%s state=%s\n' \
                "$n" "$pid" "$HOST" "$(node_tcp "$n")" "$HOST" "$(node_http "$n")" \
                "$(node_interserver "$n")" "$ready" "$(node_dir "$n")"
        else
            printf 'ch%s stopped native=%s:%s http=%s:%s state=%s\n' \
                "$n" "$HOST" "$(node_tcp "$n")" "$HOST" "$(node_http "$n")" "$(node_dir "$n")"
            rc=3
        fi
    done
    return "$rc"
}

cmd_kill() {
    check_node "${1:-}"
    local pid
    pid="$(node_pid "$1")" || die "ch$1 is not running"
    kill -KILL "$pid"
    # Wait until it is gone, so that the caller's next step sees the node down.
    while kill -0 "$pid" 2>/dev/null; do sleep 0.02; done
    rm -f "$(node_pid_file "$1")"
    log "ch$1 killed (SIGKILL, PID $pid)"
}

cmd_restart() {
    check_node "${1:-}"
    take_lock
    node_stop "$1"
    node_spawn "$1"
    node_wait "$1"
}

cmd_pid() {
    check_node "${1:-}"
    node_pid "$1" || exit 3
}

cmd_reset() {
    cmd_stop
    rm -rf "$CLUSTER_DIR/ch1" "$CLUSTER_DIR/ch2" "$ZK_DIR"
    log "deleted $CLUSTER_DIR/{ch1,ch2,zookeeper}"
}

main() {
    case "${1:-}" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        kill) cmd_kill "${2:-}" ;;
        restart) cmd_restart "${2:-}" ;;
        pid) cmd_pid "${2:-}" ;;
        zookeeper-start) take_lock; zk_start ;;
        zookeeper-stop) take_lock; zk_stop ;;
        zookeeper-pid) zk_pid || exit 3 ;;
        fetch) cmd_fetch ;;
        reset) cmd_reset ;;
        *)
            echo "usage: $0 {start|stop|status|kill N|restart N|pid N|zookeeper-start|zookeeper-stop|zookeeper-pid|fetch|reset}" >&2
            exit 2
            ;;
    esac
}

main "$@"
