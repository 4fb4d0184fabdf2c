#!/usr/bin/env bash
# Prometheus (2.42) and Alertmanager (0.25) from Debian's packages, run as plain processes
# for imgov development and CI, no Docker, no system service.
#
# Usage: infra/prometheus/prometheus.sh {install|start|stop|restart|status|reset}
#
#   install  apt-get install Debian's `prometheus` (prometheus, promtool) and
#            `prometheus-alertmanager` (prometheus-alertmanager, amtool) when missing
#            (root or sudo). Never leaves the packages' system services running.
#   start    install if missing, render the configuration into the state dirs, start
#            Alertmanager then Prometheus bound to 127.0.0.1, wait for both /-/ready.
#            When they already run: re-render the configurations, and reload the one
#            whose configuration (or shipped rule files) changed since it loaded it.
#   stop     SIGTERM, then SIGKILL after IMGOV_PROMETHEUS_STOP_TIMEOUT s. Idempotent.
#   restart  stop + start; data is kept
#   status   running/stopped, pid, port, readiness, RSS of both. Exit 0 when both run,
#            3 otherwise.
#   reset    stop and delete both state dirs (data, rendered configuration, targets)
#
# Fixed locations (the Makefile and tests/integration/prometheus_service.py rely on
# them), relative to the repository root, whatever the current directory:
#   .imgov/services/prometheus/{prometheus.yml,prometheus.pid,data/,targets/,rules.d/}
#       targets/<job>.json  file_sd target lists (imgov-worker, imgov-gateway,
#                           imgov-alerts), seeded from infra/prometheus/targets/ when
#                           missing and never overwritten: add targets there
#       rules.d/*.yml       extra rule files (tests), read besides infra/prometheus/rules/
#   .imgov/services/alertmanager/{alertmanager.yml,alertmanager.pid,data/}
#   .imgov/logs/prometheus/{prometheus.log,alertmanager.log,install.log}
#
# Environment:
#   IMGOV_PROMETHEUS_PORT             Prometheus HTTP port   (default 19090)
#   IMGOV_ALERTMANAGER_PORT           Alertmanager HTTP port (default 19094)
#   IMGOV_PROMETHEUS_SCRAPE_INTERVAL  scrape interval of the rendered copy (default 1s;
#                                     infra/prometheus/prometheus.yml says 15s)
#   IMGOV_PROMETHEUS_EVAL_INTERVAL    rule evaluation interval (default 1s)
#   IMGOV_PROMETHEUS_RETENTION        TSDB retention (default 2d)
#   IMGOV_PROMETHEUS_RESEND_DELAY     how often firing alerts are re-sent to Alertmanager
#                                     (default 1s; Prometheus's own default is 1m). A
#                                     reload leaves Prometheus without Alertmanager for up
#                                     to 5 s, and an alert that fires then is dropped until
#                                     it is re-sent; Alertmanager also resolves an alert 4
#                                     resend delays after Prometheus stops sending it.
#   IMGOV_PROMETHEUS_START_TIMEOUT    seconds to wait for readiness (default 30)
#   IMGOV_PROMETHEUS_STOP_TIMEOUT     seconds before SIGKILL        (default 20)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
PROM_STATE="$ROOT/.imgov/services/prometheus"
AM_STATE="$ROOT/.imgov/services/alertmanager"
PROM_CONFIG="$PROM_STATE/prometheus.yml"
AM_CONFIG="$AM_STATE/alertmanager.yml"
PROM_PIDFILE="$PROM_STATE/prometheus.pid"
AM_PIDFILE="$AM_STATE/alertmanager.pid"
LOGS="$ROOT/.imgov/logs/prometheus"
LOCKFILE="$ROOT/.imgov/services/prometheus.lock"

PROM_PORT="${IMGOV_PROMETHEUS_PORT:-19090}"
AM_PORT="${IMGOV_ALERTMANAGER_PORT:-19094}"
SCRAPE_INTERVAL="${IMGOV_PROMETHEUS_SCRAPE_INTERVAL:-1s}"
EVAL_INTERVAL="${IMGOV_PROMETHEUS_EVAL_INTERVAL:-1s}"
RETENTION="${IMGOV_PROMETHEUS_RETENTION:-2d}"
RESEND_DELAY="${IMGOV_PROMETHEUS_RESEND_DELAY:-1s}"
START_TIMEOUT="${IMGOV_PROMETHEUS_START_TIMEOUT:-30}"
STOP_TIMEOUT="${IMGOV_PROMETHEUS_STOP_TIMEOUT:-20}"
HOST=127.0.0.1
JOBS=(imgov-worker imgov-gateway imgov-alerts)

PROMETHEUS_BIN=/usr/bin/prometheus
PROMTOOL_BIN=/usr/bin/promtool
ALERTMANAGER_BIN=/usr/bin/prometheus-alertmanager
AMTOOL_BIN=/usr/bin/amtool

log() { printf 'prometheus: %s\n' "$*"; }
die() { printf 'prometheus: error: %s\n' "$*" >&2; exit 1; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# --- processes ---------------------------------------------------------------------

# Alive and not a zombie: PID 1 on some CI machines does not reap orphans, and a zombie
# still answers `kill -0`.
pid_alive() {
    local pid="$1" state
    [[ -r "/proc/$pid/status" ]] || return 1
    state="$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
    [[ -n "$state" && "$state" != "Z" && "$state" != "X" ]]
}

# The pid in pid file $1 if it is a live process started by this script for this
# repository, i.e. whose command line names config file $2 (guards against a recycled
# pid).
service_pid() {
    local pidfile="$1" config="$2" pid
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    pid_alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -F -- "--config.file=$config " || return 1
    echo "$pid"
}
prometheus_pid() { service_pid "$PROM_PIDFILE" "$PROM_CONFIG"; }
alertmanager_pid() { service_pid "$AM_PIDFILE" "$AM_CONFIG"; }

# The port a running process listens on, from its --web.listen-address argument.
listen_port() {
    tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null |
        sed -n "s|^--web.listen-address=$HOST:\([0-9]*\)$|\1|p"
}

port_open() {
    # shellcheck disable=SC2016  # $1/$2 are expanded by the inner bash
    timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$HOST" "$1" 2>/dev/null
}

# HTTP status code of `$1 http://127.0.0.1:$2$3` (000 when nothing answers).
http_code() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 -X "$1" "http://$HOST:$2$3" 2>/dev/null ||
        true
}

ready() { [[ "$(http_code GET "$1" /-/ready)" == 200 ]]; }

rss_mib() {
    awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo "?"
}

# Returns 0 when the process exited after SIGTERM, 1 when it needed SIGKILL.
kill_and_wait() {
    local pid="$1" timeout_s="$2" deadline
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(( $(now_ms) + timeout_s * 1000 ))
    while pid_alive "$pid" && (( $(now_ms) < deadline )); do
        sleep 0.05
    done
    if pid_alive "$pid"; then
        log "pid $pid still alive after ${timeout_s}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while pid_alive "$pid"; do sleep 0.05; done
        return 1
    fi
}

# --- install -----------------------------------------------------------------------

installed() {
    [[ -x "$PROMETHEUS_BIN" && -x "$PROMTOOL_BIN" && -x "$ALERTMANAGER_BIN" && -x "$AMTOOL_BIN" ]]
}

# The postinst scripts enable the system services and try to start them (with the
# Debian configuration, on 0.0.0.0:9090/9093/9094). We never want them: stop whatever
# they started, and disable them where systemd runs.
stop_system_services() {
    local name pidfile pid
    for name in prometheus prometheus-alertmanager; do
        if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
            systemctl disable --now "$name" >/dev/null 2>&1 || true
        fi
        case "$name" in
            prometheus) pidfile=/run/prometheus/prometheus.pid ;;
            *) pidfile=/run/prometheus/prometheus-alertmanager.pid ;;
        esac
        pid="$(cat "$pidfile" 2>/dev/null || true)"
        if [[ "$pid" =~ ^[0-9]+$ ]] && pid_alive "$pid"; then
            log "stopping the Debian $name service (pid $pid) started by the package"
            "/etc/init.d/$name" stop >/dev/null 2>&1 || kill_and_wait "$pid" 10 || true
        fi
    done
}

cmd_install() {
    if installed; then
        log "installed: $("$PROMETHEUS_BIN" --version 2>&1 | head -n 1)"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "prometheus is missing and there is no apt-get"
    local sudo=""
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "installing prometheus needs root (or sudo)"
        sudo="sudo"
    fi
    mkdir -p "$LOGS"
    local t0 rc=0 added_policy=0 apt_log="$LOGS/install.log"
    t0="$(now_ms)"
    # policy-rc.d exit 101 = "action forbidden": invoke-rc.d in the postinst then does
    # not start the services. Only add one if none exists (a container's own is kept),
    # and remove only the one we added, so other packages are not affected later.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
        # shellcheck disable=SC2064  # expand $sudo now
        trap "$sudo rm -f /usr/sbin/policy-rc.d" EXIT
    fi
    log "installing Debian's prometheus and prometheus-alertmanager (apt-get, once; log: $apt_log)"
    # No recommends: they would add the node exporter, a third system service. The lock
    # timeout: `make -j` may run another apt-get (infra/dicom/install.sh) at the same time.
    # A stale (or never fetched) package index makes the install fail: refresh it once
    # and retry.
    local apt=($sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300
        install -y -q --no-install-recommends prometheus prometheus-alertmanager)
    {
        "${apt[@]}" || { $sudo apt-get update -qq && "${apt[@]}"; }
    } >"$apt_log" 2>&1 || rc=$?
    if (( added_policy )); then
        $sudo rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
    if (( rc != 0 )); then
        tail -n 30 "$apt_log" >&2
        die "apt-get install prometheus prometheus-alertmanager failed (exit $rc)"
    fi
    stop_system_services
    installed || die "apt-get finished but $PROMETHEUS_BIN, $PROMTOOL_BIN, $ALERTMANAGER_BIN or $AMTOOL_BIN is missing"
    log "installed prometheus $(dpkg-query -W -f='${Version}' prometheus 2>/dev/null)," \
        "alertmanager $(dpkg-query -W -f='${Version}' prometheus-alertmanager 2>/dev/null)" \
        "in $(( $(now_ms) - t0 )) ms"
}

# --- configuration -----------------------------------------------------------------

# Escapes $1 for the replacement side of a sed s||| command.
sed_escape() { printf '%s' "$1" | sed -e 's/[\\&|]/\\&/g'; }

# Writes the Prometheus configuration to $1: the shipped file with the dev intervals, the
# Alertmanager port, the shipped rules by absolute path plus rules.d/. Target files stay
# relative, so they resolve to the state dir's targets/.
render_prometheus_config() {
    local out="$1" rules extra
    rules="$(sed_escape "$SCRIPT_DIR/rules/*.yml")"
    extra="$(sed_escape "$PROM_STATE/rules.d/*.yml")"
    sed -e "s|^\(  scrape_interval:\) 15s$|\1 $SCRAPE_INTERVAL|" \
        -e "s|^\(  evaluation_interval:\) 15s$|\1 $EVAL_INTERVAL|" \
        -e "s|^\(  scrape_timeout:\) 10s$|\1 $SCRAPE_INTERVAL|" \
        -e "s|^\(  *- \)rules/\*\.yml$|\1$rules\n\1$extra|" \
        -e "s|^\(  *- \)127\.0\.0\.1:19094$|\1$HOST:$AM_PORT|" \
        "$SCRIPT_DIR/prometheus.yml" >"$out"
    # The substitutions are tied to the shipped file's lines: catch a drift loudly.
    grep -q -F -- "- $SCRIPT_DIR/rules/*.yml" "$out" &&
        grep -q -F -- "- $HOST:$AM_PORT" "$out" &&
        grep -q -F -- "evaluation_interval: $EVAL_INTERVAL" "$out" ||
        die "could not render $SCRIPT_DIR/prometheus.yml (a line the script rewrites changed)"
}

# Seeds the file_sd files that do not exist yet; existing ones (targets added by a user
# or a test) are kept.
seed_targets() {
    local job
    mkdir -p "$PROM_STATE/targets" "$PROM_STATE/rules.d"
    for job in "${JOBS[@]}"; do
        if [[ ! -f "$PROM_STATE/targets/$job.json" ]]; then
            cp "$SCRIPT_DIR/targets/$job.json" "$PROM_STATE/targets/$job.json"
        fi
    done
}

# Renders both configurations, checks them, and moves them in place.
render_configs() {
    mkdir -p "$PROM_STATE/data" "$AM_STATE/data" "$LOGS"
    seed_targets
    local tmp="$PROM_CONFIG.tmp.$$" out
    render_prometheus_config "$tmp"
    if ! out="$("$PROMTOOL_BIN" check config "$tmp" 2>&1)"; then
        rm -f "$tmp"
        printf '%s\n' "$out" >&2
        die "promtool check config failed on the rendered configuration"
    fi
    mv "$tmp" "$PROM_CONFIG"
    if ! out="$("$AMTOOL_BIN" check-config "$SCRIPT_DIR/alertmanager.yml" 2>&1)"; then
        printf '%s\n' "$out" >&2
        die "amtool check-config failed on $SCRIPT_DIR/alertmanager.yml"
    fi
    cp "$SCRIPT_DIR/alertmanager.yml" "$AM_CONFIG.tmp.$$"
    mv "$AM_CONFIG.tmp.$$" "$AM_CONFIG"
}

# What a running process has loaded: a digest of its configuration (Prometheus: and
# of the shipped rule files; rules.d/ is the tests', which reload it themselves).
# Recorded at start and reload, so that an unchanged `start` reloads nothing: each
# Prometheus 2.42 reload restarts service discovery, and alerts that fire in the
# following seconds find no Alertmanager (see --rules.alert.resend-delay).
prometheus_digest() { cat "$PROM_CONFIG" "$SCRIPT_DIR"/rules/*.yml | sha256sum | cut -d' ' -f1; }
alertmanager_digest() { sha256sum "$AM_CONFIG" | cut -d' ' -f1; }

# Reloads service $1 (port $2) when its digest (function $3) differs from the one
# recorded in file $4.
reload_if_changed() {
    local name="$1" port="$2" digest_fn="$3" loaded="$4" digest
    digest="$("$digest_fn")"
    if [[ "$(cat "$loaded" 2>/dev/null || true)" == "$digest" ]]; then
        return 0
    fi
    [[ "$(http_code POST "$port" /-/reload)" == 200 ]] ||
        die "$name refused to reload its configuration (log: $LOGS/$name.log)"
    echo "$digest" >"$loaded"
    log "$name reloaded its changed configuration"
}

# --- start -------------------------------------------------------------------------

# Starts "$@" in the background with its pid written to $1, output appended to $2.
spawn() {
    local pidfile="$1" logfile="$2"
    shift 2
    rm -f "$pidfile"
    printf '\n===== %s start: %s\n' "$(date -Is)" "$*" >>"$logfile"
    # setsid: the server must outlive the shell, pytest or make that started it and must
    # not receive their Ctrl-C. bash -c writes its own pid, then execs the server, so the
    # pid file holds the server's pid. 9>&-: the server must not inherit the lock.
    # shellcheck disable=SC2016
    (cd "$(dirname "$pidfile")" &&
        exec setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" \
            </dev/null >>"$logfile" 2>&1 9>&-) &
    local deadline=$(( $(now_ms) + 5000 ))
    until [[ -s "$pidfile" ]] || (( $(now_ms) > deadline )); do sleep 0.02; done
    [[ "$(cat "$pidfile" 2>/dev/null)" =~ ^[0-9]+$ ]] || die "$1 was not written: $* did not start"
}

# Waits for /-/ready of the process with pid $2 on port $3; $1 names it, $4 is its log.
wait_ready() {
    local name="$1" pid="$2" port="$3" logfile="$4" deadline
    deadline=$(( $(now_ms) + START_TIMEOUT * 1000 ))
    until ready "$port"; do
        if ! pid_alive "$pid"; then
            tail -n 25 "$logfile" >&2 || true
            die "$name (pid $pid) exited during start-up (log: $logfile)"
        fi
        if (( $(now_ms) >= deadline )); then
            tail -n 25 "$logfile" >&2 || true
            kill_and_wait "$pid" 5 || true
            die "$name not ready on $HOST:$port after ${START_TIMEOUT}s; stopped it (log: $logfile)"
        fi
        sleep 0.05
    done
}

# Dies when a running process listens on another port than the one asked for.
check_port() {
    local name="$1" pid="$2" want="$3" have
    have="$(listen_port "$pid")"
    if [[ -n "$have" && "$have" != "$want" ]]; then
        die "$name of this checkout already runs on port $have (pid $pid); run $0 stop first"
    fi
}

# Before anything is rendered or started: each port is free, or held by the process of
# this checkout that asked for it.
preflight() {
    local pid
    if pid="$(alertmanager_pid)"; then
        check_port alertmanager "$pid" "$AM_PORT"
    elif port_open "$AM_PORT"; then
        die "port $AM_PORT is in use by another process (not started by $0)"
    fi
    if pid="$(prometheus_pid)"; then
        check_port prometheus "$pid" "$PROM_PORT"
    elif port_open "$PROM_PORT"; then
        die "port $PROM_PORT is in use by another process (not started by $0)"
    fi
}

start_alertmanager() {
    local pid
    if pid="$(alertmanager_pid)"; then
        if ! ready "$AM_PORT"; then
            log "alertmanager pid $pid is starting; waiting for it"
        fi
    else
        # --cluster.listen-address= (empty): no gossip port, a single instance.
        spawn "$AM_PIDFILE" "$LOGS/alertmanager.log" "$ALERTMANAGER_BIN" \
            "--config.file=$AM_CONFIG" \
            "--storage.path=$AM_STATE/data" \
            "--web.listen-address=$HOST:$AM_PORT" \
            "--cluster.listen-address=" \
            "--log.level=info"
        alertmanager_digest >"$AM_STATE/loaded.sha256"
        pid="$(cat "$AM_PIDFILE")"
        log "started alertmanager pid $pid on $HOST:$AM_PORT"
    fi
    wait_ready alertmanager "$pid" "$AM_PORT" "$LOGS/alertmanager.log"
    reload_if_changed alertmanager "$AM_PORT" alertmanager_digest "$AM_STATE/loaded.sha256"
}

start_prometheus() {
    local pid
    if pid="$(prometheus_pid)"; then
        if ! ready "$PROM_PORT"; then
            log "prometheus pid $pid is starting; waiting for it"
        fi
        wait_ready prometheus "$pid" "$PROM_PORT" "$LOGS/prometheus.log"
        reload_if_changed prometheus "$PROM_PORT" prometheus_digest "$PROM_STATE/loaded.sha256"
        return 0
    fi
    spawn "$PROM_PIDFILE" "$LOGS/prometheus.log" "$PROMETHEUS_BIN" \
        "--config.file=$PROM_CONFIG" \
        "--storage.tsdb.path=$PROM_STATE/data" \
        "--storage.tsdb.retention.time=$RETENTION" \
        "--web.listen-address=$HOST:$PROM_PORT" \
        "--web.enable-lifecycle" \
        "--rules.alert.resend-delay=$RESEND_DELAY" \
        "--log.level=info"
    pid="$(cat "$PROM_PIDFILE")"
    log "started prometheus pid $pid on $HOST:$PROM_PORT"
    wait_ready prometheus "$pid" "$PROM_PORT" "$LOGS/prometheus.log"
    prometheus_digest >"$PROM_STATE/loaded.sha256"
}

cmd_start() {
    installed || cmd_install
    local t0
    t0="$(now_ms)"
    preflight
    render_configs
    start_alertmanager
    start_prometheus
    log "ready in $(( $(now_ms) - t0 )) ms: prometheus http://$HOST:$PROM_PORT" \
        "(pid $(prometheus_pid)), alertmanager http://$HOST:$AM_PORT (pid $(alertmanager_pid))"
}

# --- stop / status / reset ---------------------------------------------------------

stop_one() {
    local name="$1" pidfile="$2" config="$3" pid t0
    if ! pid="$(service_pid "$pidfile" "$config")"; then
        rm -f "$pidfile"
        log "$name not running"
        return 0
    fi
    t0="$(now_ms)"
    kill_and_wait "$pid" "$STOP_TIMEOUT" || true
    rm -f "$pidfile"
    log "stopped $name pid $pid in $(( $(now_ms) - t0 )) ms"
}

cmd_stop() {
    # Prometheus first: it would otherwise log failed alert posts while it shuts down.
    stop_one prometheus "$PROM_PIDFILE" "$PROM_CONFIG"
    stop_one alertmanager "$AM_PIDFILE" "$AM_CONFIG"
}

status_one() {
    local name="$1" pid="$2" port="$3" state="$4"
    if [[ -n "$pid" ]]; then
        port="$(listen_port "$pid")"
        local answering=no
        ready "$port" && answering=yes
        printf '%s: running\n  pid: %s\n  url: http://%s:%s (ready: %s)\n  rss_mib: %s\n  state: %s\n' \
            "$name" "$pid" "$HOST" "$port" "$answering" "$(rss_mib "$pid")" "$state"
    else
        printf '%s: stopped\n  url: http://%s:%s\n  state: %s\n' "$name" "$HOST" "$port" "$state"
    fi
}

cmd_status() {
    local ppid apid
    ppid="$(prometheus_pid || true)"
    apid="$(alertmanager_pid || true)"
    status_one prometheus "$ppid" "$PROM_PORT" "$PROM_STATE"
    status_one alertmanager "$apid" "$AM_PORT" "$AM_STATE"
    [[ -n "$ppid" && -n "$apid" ]] || return 3
}

cmd_reset() {
    cmd_stop
    rm -rf "$PROM_STATE" "$AM_STATE"
    log "deleted $PROM_STATE and $AM_STATE"
}

# --- main --------------------------------------------------------------------------

with_lock() {
    # Two test sessions or a Makefile and a test may start/stop at the same time.
    mkdir -p "$(dirname "$LOCKFILE")"
    exec 9>"$LOCKFILE"
    flock -w 300 9 || die "could not lock $LOCKFILE"
    "$@"
}

main() {
    case "${1:-}" in
        install) with_lock cmd_install ;;
        start) with_lock cmd_start ;;
        stop) with_lock cmd_stop ;;
        restart) with_lock cmd_stop && cmd_start ;;
        status) cmd_status ;;
        reset) with_lock cmd_reset ;;
        *)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
            exit 64
            ;;
    esac
}

main "$@"
