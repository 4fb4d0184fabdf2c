#!/usr/bin/env bash
# Local three-broker Apache Kafka 4.1 cluster (KRaft; each node a combined broker +
# controller) for the cluster fault tests and `make cluster-up`: the same Maven jars as
# the single-node broker (infra/kafka/libs, fetched by `kafka.sh fetch`), no Docker.
#
# Usage: infra/kafka/cluster.sh {start|stop|status|kill N|restart N|pid N|reset}
#
#   start      fetch the jars if needed, format each node's storage once (one shared
#              cluster id), start the nodes that are not running, wait until every node
#              answers a metadata request listing three unfenced brokers and the
#              metadata quorum has a leader; a no-op when all three are up
#   stop       SIGTERM every node at once (SIGKILL after IMGOV_KAFKA_STOP_TIMEOUT s);
#              data is kept; a no-op when stopped
#   status     per node: running/stopped, pid, ports, resident memory; the quorum
#              leader when a node answers (always exits 0)
#   kill N     SIGKILL node N (1..3) by its pid, for the fault tests; no controlled
#              shutdown, no leadership hand-over: the others notice by missed heartbeats
#   restart N  start node N again (stopping it first if it runs) and wait until it
#              answers metadata and is back in the ISR of every partition it replicates
#   pid N      print node N's pid (exit 1 when it is not running)
#   reset      stop and delete every node's state (data, rendered config, cluster id)
#
# Nodes 1..3 on 127.0.0.1 (the cluster contract, infra/cluster/cluster.env):
#   node N: clients (PLAINTEXT, also inter-broker) 19N92, controller 19N93
#   bootstrap 127.0.0.1:19192,127.0.0.1:19292,127.0.0.1:19392
# Broker defaults (cluster.properties.template): replication factor 3,
# min.insync.replicas 2, internal topics RF 3 / min ISR 2, no unclean leader election.
#
# Locations, relative to the repository root whatever the current directory:
#   .imgov/cluster/kafka-N/{data/,server.properties,kafka.pid}   (IMGOV_KAFKA_CLUSTER_DIR)
#   .imgov/cluster/kafka.cluster.id                              the shared cluster id
#   .imgov/logs/cluster/kafka-N.log  broker log, JVM output, format output
#                                                        (IMGOV_KAFKA_CLUSTER_LOG_DIR)
#
# Environment:
#   IMGOV_KAFKA_CLUSTER_HEAP     JVM -Xmx of each node   (default 384m)
#   IMGOV_KAFKA_START_TIMEOUT    seconds to wait for readiness (default 60)
#   IMGOV_KAFKA_STOP_TIMEOUT     seconds before SIGKILL        (default 30)
#   IMGOV_KAFKA_JVM_OPTS         extra JVM options, appended (word-split)
#   IMGOV_KAFKA_CDS              1 (default): map the single-node broker's class-data
#                                archive (libs/kafka-broker.jsa) when it exists
set -euo pipefail

KAFKA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$KAFKA_DIR/../.." && pwd)"
LIBS="$KAFKA_DIR/libs"
CLUSTER="$(realpath -m "${IMGOV_KAFKA_CLUSTER_DIR:-$ROOT/.imgov/cluster}")"
LOGS="$(realpath -m "${IMGOV_KAFKA_CLUSTER_LOG_DIR:-$ROOT/.imgov/logs/cluster}")"
CLUSTER_ID_FILE="$CLUSTER/kafka.cluster.id"
LOCKFILE="$CLUSTER/kafka.lock"

NODES=(1 2 3)
HEAP="${IMGOV_KAFKA_CLUSTER_HEAP:-384m}"
START_TIMEOUT="${IMGOV_KAFKA_START_TIMEOUT:-60}"
STOP_TIMEOUT="${IMGOV_KAFKA_STOP_TIMEOUT:-30}"
read -r -a EXTRA_JVM_OPTS <<<"${IMGOV_KAFKA_JVM_OPTS:-}"
VOTERS="1@127.0.0.1:19193,2@127.0.0.1:19293,3@127.0.0.1:19393"
BOOTSTRAP="127.0.0.1:19192,127.0.0.1:19292,127.0.0.1:19392"
LOG4J_OPTS=("-Dlog4j2.configurationFile=$KAFKA_DIR/log4j2-cluster.xml")

log() { printf 'kafka-cluster: %s\n' "$*"; }
die() { printf 'kafka-cluster: error: %s\n' "$*" >&2; exit 1; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

broker_port() { echo "19${1}92"; }
controller_port() { echo "19${1}93"; }
node_dir() { echo "$CLUSTER/kafka-$1"; }
node_props() { echo "$CLUSTER/kafka-$1/server.properties"; }
node_pidfile() { echo "$CLUSTER/kafka-$1/kafka.pid"; }
node_data() { echo "$CLUSTER/kafka-$1/data"; }
node_log() { echo "$LOGS/kafka-$1.log"; }

check_node() {
    [[ "${1:-}" =~ ^[123]$ ]] || die "node must be 1, 2 or 3 (got '${1:-}')"
}

# --- processes (as kafka.sh) -----------------------------------------------------------

pid_alive() {
    local pid="$1" state
    [[ -r "/proc/$pid/status" ]] || return 1
    state="$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
    [[ -n "$state" && "$state" != "Z" && "$state" != "X" ]]
}

# The pid in node N's pid file, if it is a live broker started by this script with that
# node's config (guards against a recycled pid).
node_pid() {
    local pidfile pid
    pidfile="$(node_pidfile "$1")"
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    pid_alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -F "kafka.Kafka $(node_props "$1")" || return 1
    echo "$pid"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

rss_mib() {
    awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo "?"
}

# Returns 0 when the process exited after SIGTERM, 1 when it needed SIGKILL.
kill_and_wait() {
    local pid="$1" timeout_s="$2" deadline
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(( $(now_ms) + timeout_s * 1000 ))
    while pid_alive "$pid" && (( $(now_ms) < deadline )); do
        sleep 0.1
    done
    if pid_alive "$pid"; then
        log "pid $pid still alive after ${timeout_s}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while pid_alive "$pid"; do sleep 0.1; done
        return 1
    fi
}

# --- storage -----------------------------------------------------------------------------

new_cluster_id() {
    # Kafka's Uuid text form (22 chars of base64url); not starting with '-' (an option).
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)"
        [[ "$id" != -* ]] && { echo "$id"; return; }
    done
}

render_properties() {
    local n="$1" text
    text="$(<"$KAFKA_DIR/cluster.properties.template")"
    # Quoted replacements: bash 5.2 would otherwise expand '&' in them.
    text="${text//@NODE_ID@/"$n"}"
    text="${text//@VOTERS@/"$VOTERS"}"
    text="${text//@BROKER_PORT@/"$(broker_port "$n")"}"
    text="${text//@CONTROLLER_PORT@/"$(controller_port "$n")"}"
    text="${text//@DATA_DIR@/"$(node_data "$n")"}"
    printf '%s\n' "$text" >"$(node_props "$n").tmp"
    mv "$(node_props "$n").tmp" "$(node_props "$n")"
}

# The cluster id every node is formatted with; a node formatted with another one (a
# leftover of an earlier cluster) would never join: refuse with the fix.
ensure_cluster_id() {
    if [[ ! -s "$CLUSTER_ID_FILE" ]]; then
        local n
        for n in "${NODES[@]}"; do
            if [[ -f "$(node_data "$n")/meta.properties" ]]; then
                die "node $n is formatted but $CLUSTER_ID_FILE is missing; run $0 reset"
            fi
        done
        new_cluster_id >"$CLUSTER_ID_FILE"
    fi
    cat "$CLUSTER_ID_FILE"
}

# Formats the nodes given whose data dir is not formatted yet, in parallel (each format
# is a JVM start).
format_nodes() {
    local id="$1" n pids=() todo=()
    shift
    for n in "$@"; do
        local meta
        meta="$(node_data "$n")/meta.properties"
        if [[ -f "$meta" ]]; then
            grep -q -x "cluster.id=$id" "$meta" ||
                die "node $n was formatted for another cluster (see $meta); run $0 reset"
            continue
        fi
        # Half-formatted leftovers (an interrupted format) would make format refuse.
        rm -rf "$(node_data "$n")"
        todo+=("$n")
        java -Xmx128m -XX:TieredStopAtLevel=1 "${LOG4J_OPTS[@]}" \
            -Dimgov.log.file="$(node_log "$n")" -cp "$LIBS/*" kafka.tools.StorageTool \
            format --cluster-id="$id" -c "$(node_props "$n")" >>"$(node_log "$n")" 2>&1 &
        pids+=($!)
    done
    local i
    for i in "${!pids[@]}"; do
        if ! wait "${pids[$i]}"; then
            tail -n 20 "$(node_log "${todo[$i]}")" >&2
            die "formatting node ${todo[$i]} failed (log: $(node_log "${todo[$i]}"))"
        fi
    done
    (( ${#todo[@]} == 0 )) || log "formatted node(s) ${todo[*]} (cluster id $id)"
}

# --- start -------------------------------------------------------------------------------

# The single-node broker's class-data archive, read-only: mapping it saves each node
# ~1-2 s of class loading on start (the class path is the same). This script never
# writes or deletes it (kafka.sh owns it); a JVM that refuses it just loads from jars.
cds_opts() {
    if [[ "${IMGOV_KAFKA_CDS:-1}" == 1 && -s "$LIBS/kafka-broker.jsa" ]]; then
        printf '%s\n' "-XX:SharedArchiveFile=$LIBS/kafka-broker.jsa" "-Xlog:cds=off" \
            "-Xlog:cds+dynamic=off"
    fi
}

launch_node() {
    local n="$1" pidfile cds=()
    pidfile="$(node_pidfile "$n")"
    mapfile -t cds < <(cds_opts)
    rm -f "$pidfile"
    printf '\n===== %s cluster.sh: starting node %s =====\n' "$(date -Is)" "$n" >>"$(node_log "$n")"
    # As kafka.sh: setsid so the node outlives the shell, pytest or make that started it;
    # bash -c writes its own pid then execs java; 9>&- keeps the lock out of the JVM.
    # shellcheck disable=SC2016
    setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" \
        java -Xmx"$HEAP" -Xms128m -server \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
        -XX:ErrorFile="$LOGS/hs_err_kafka-${n}_pid%p.log" \
        -Djava.awt.headless=true "${LOG4J_OPTS[@]}" -Dimgov.log.file="$(node_log "$n")" \
        "${cds[@]}" "${EXTRA_JVM_OPTS[@]}" \
        -cp "$LIBS/*" kafka.Kafka "$(node_props "$n")" \
        </dev/null >>"$(node_log "$n")" 2>&1 9>&- &
    local deadline=$(( $(now_ms) + 5000 ))
    until [[ -s "$pidfile" ]] || (( $(now_ms) > deadline )); do sleep 0.02; done
    [[ "$(cat "$pidfile" 2>/dev/null || true)" =~ ^[0-9]+$ ]] || die "node $n did not start (no pid file)"
}

# Waits until node N answers metadata listing three unfenced brokers and a quorum leader
# (plus, with "isr", until it is in the ISR of every partition it replicates). The
# project's virtualenv does it (no JVM start-up); without it, WaitReady.java checks the
# metadata answer only.
wait_node() {
    local n="$1" pid="$2" mode="${3:-}" py="$ROOT/.venv/bin/python" address
    address="127.0.0.1:$(broker_port "$n")"
    if [[ -x "$py" ]] && "$py" -c 'import kafka' 2>/dev/null; then
        local extra=()
        [[ "$mode" == isr ]] && extra=(--in-isr "$n")
        "$py" "$KAFKA_DIR/wait_ready.py" --brokers 3 --quorum "${extra[@]}" \
            "$address" "$START_TIMEOUT" "$pid"
    else
        java -Xmx128m -Dlog4j2.level=ERROR -cp "$LIBS/*" "$KAFKA_DIR/WaitReady.java" \
            "$address" "$START_TIMEOUT" "$pid"
    fi
}

# Waits for the given nodes in parallel; on failure shows their logs' tails and dies.
wait_nodes() {
    local mode="$1" n pids=() rcs=() waiters=()
    shift
    for n in "$@"; do
        local pid
        pid="$(cat "$(node_pidfile "$n")" 2>/dev/null || echo 0)"
        pids+=("$pid")
        wait_node "$n" "$pid" "$mode" &
        waiters+=($!)
    done
    local i failed=()
    for i in "${!waiters[@]}"; do
        local rc=0
        wait "${waiters[$i]}" || rc=$?
        rcs+=("$rc")
        (( rc == 0 )) || failed+=("$i")
    done
    (( ${#failed[@]} == 0 )) && return 0
    for i in "${failed[@]}"; do
        n="${@:i+1:1}"
        printf '\n----- last lines of %s -----\n' "$(node_log "$n")" >&2
        tail -n 30 "$(node_log "$n")" >&2 || true
        case "${rcs[$i]}" in
            2) log "node $n (pid ${pids[$i]}) exited during start-up" >&2 ;;
            *) log "node $n (pid ${pids[$i]}) not ready after ${START_TIMEOUT}s" >&2 ;;
        esac
    done
    die "the cluster did not become ready; nodes left running (status: $0 status; stop: $0 stop)"
}

# Starts the given nodes (those not running), then waits for them.
start_nodes() {
    local mode="$1" n id t0 started=()
    shift
    "$KAFKA_DIR/kafka.sh" fetch
    mkdir -p "$CLUSTER" "$LOGS"
    t0="$(now_ms)"
    local down=()
    for n in "$@"; do
        node_pid "$n" >/dev/null || down+=("$n")
    done
    if (( ${#down[@]} > 0 )); then
        for n in "${down[@]}"; do
            if port_open "$(broker_port "$n")" || port_open "$(controller_port "$n")"; then
                die "port $(broker_port "$n") or $(controller_port "$n") of node $n is in use by another process (not started by $0)"
            fi
            mkdir -p "$(node_dir "$n")"
            render_properties "$n"
        done
        id="$(ensure_cluster_id)"
        format_nodes "$id" "${down[@]}"
        for n in "${down[@]}"; do
            launch_node "$n"
            started+=("$n:$(cat "$(node_pidfile "$n")")")
        done
        log "started node(s) ${started[*]} (node:pid), waiting up to ${START_TIMEOUT}s"
    fi
    wait_nodes "$mode" "$@"
    local summary=()
    for n in "$@"; do
        local pid
        pid="$(node_pid "$n")" || die "node $n is not running"
        summary+=("$n:127.0.0.1:$(broker_port "$n") pid $pid RSS $(rss_mib "$pid") MiB")
    done
    if (( ${#started[@]} == 0 )); then
        log "already running"
    else
        log "ready in $(( $(now_ms) - t0 )) ms"
    fi
    printf '  node %s\n' "${summary[@]}"
}

cmd_start() {
    start_nodes ready "${NODES[@]}"
    log "bootstrap: $BOOTSTRAP"
}

cmd_restart() {
    local n="$1" pid
    check_node "$n"
    if pid="$(node_pid "$n")"; then
        kill_and_wait "$pid" "$STOP_TIMEOUT" || true
        rm -f "$(node_pidfile "$n")"
        log "stopped node $n (pid $pid)"
    fi
    # Another node may have been killed too: restart only waits for node N, and for it
    # to be back in every ISR it belongs to (it fetched what it missed).
    start_nodes isr "$n"
}

# --- stop / kill / status / reset --------------------------------------------------------

cmd_stop() {
    local n pid t0 running=() waiters=()
    t0="$(now_ms)"
    for n in "${NODES[@]}"; do
        if pid="$(node_pid "$n")"; then
            running+=("$n:$pid")
            # All at once: stopped one after the other, the last node would wait for a
            # controller quorum that is gone to acknowledge its controlled shutdown.
            kill_and_wait "$pid" "$STOP_TIMEOUT" &
            waiters+=($!)
        fi
        rm -f "$(node_pidfile "$n")" 2>/dev/null || true
    done
    if (( ${#running[@]} == 0 )); then
        log "not running"
        return 0
    fi
    local w
    for w in "${waiters[@]}"; do wait "$w" || true; done
    log "stopped node(s) ${running[*]} (node:pid) in $(( $(now_ms) - t0 )) ms"
}

cmd_kill() {
    local n="$1" pid
    check_node "$n"
    pid="$(node_pid "$n")" || die "node $n is not running"
    kill -KILL "$pid"
    while pid_alive "$pid"; do sleep 0.02; done
    rm -f "$(node_pidfile "$n")"
    printf '\n===== %s cluster.sh: node %s (pid %s) killed with SIGKILL =====\n' \
        "$(date -Is)" "$n" "$pid" >>"$(node_log "$n")"
    log "killed node $n (pid $pid) with SIGKILL"
}

cmd_pid() {
    check_node "$1"
    node_pid "$1" || exit 1
}

# The quorum leader as a node answering on $1 sees it ("?" when none answers).
quorum_leader() {
    local py="$ROOT/.venv/bin/python"
    [[ -x "$py" ]] || { echo "?"; return; }
    "$py" - "$1" <<'PY' 2>/dev/null || echo "?"
import logging, sys
from kafka.admin import KafkaAdminClient
logging.disable(logging.CRITICAL)
admin = KafkaAdminClient(bootstrap_servers=sys.argv[1], request_timeout_ms=3000,
                         bootstrap_timeout_ms=3000)
try:
    quorum = admin.describe_metadata_quorum()
    print(quorum["topics"][0]["partitions"][0]["leader_id"])
finally:
    admin.close()
PY
}

cmd_status() {
    local n pid any=""
    printf 'kafka cluster (bootstrap %s)\n' "$BOOTSTRAP"
    for n in "${NODES[@]}"; do
        if pid="$(node_pid "$n")"; then
            local answering="no"
            port_open "$(broker_port "$n")" && answering="yes" && any="127.0.0.1:$(broker_port "$n")"
            printf '  node %s: running, pid %s, client 127.0.0.1:%s (accepting connections: %s), controller 127.0.0.1:%s, rss_mib %s\n' \
                "$n" "$pid" "$(broker_port "$n")" "$answering" "$(controller_port "$n")" "$(rss_mib "$pid")"
        else
            printf '  node %s: stopped (client 127.0.0.1:%s, controller 127.0.0.1:%s)\n' \
                "$n" "$(broker_port "$n")" "$(controller_port "$n")"
        fi
    done
    if [[ -n "$any" ]]; then
        printf '  quorum leader: node %s\n' "$(quorum_leader "$any")"
    fi
    printf '  data: %s/kafka-N\n  logs: %s/kafka-N.log\n' "$CLUSTER" "$LOGS"
}

cmd_reset() {
    cmd_stop
    local n
    for n in "${NODES[@]}"; do rm -rf "$(node_dir "$n")"; done
    rm -f "$CLUSTER_ID_FILE"
    log "deleted the state of nodes ${NODES[*]}"
}

# --- main --------------------------------------------------------------------------------

with_lock() {
    # A test and a Makefile target may start, kill or stop at the same time.
    mkdir -p "$CLUSTER"
    exec 9>"$LOCKFILE"
    flock -w $(( 600 + START_TIMEOUT + STOP_TIMEOUT )) 9 || die "could not lock $LOCKFILE"
    "$@"
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 64
}

main() {
    case "${1:-}" in
        start) with_lock cmd_start ;;
        stop) with_lock cmd_stop ;;
        status) cmd_status ;;
        kill) [[ $# == 2 ]] || usage; with_lock cmd_kill "$2" ;;
        restart) [[ $# == 2 ]] || usage; with_lock cmd_restart "$2" ;;
        pid) [[ $# == 2 ]] || usage; cmd_pid "$2" ;;
        reset) with_lock cmd_reset ;;
        *) usage ;;
    esac
}

main "$@"
