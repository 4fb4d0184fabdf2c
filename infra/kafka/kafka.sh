#!/usr/bin/env bash
# Single-node Apache Kafka 4.1 broker (KRaft) for development and CI, from Maven Central
# jars, no Docker.
#
# Usage: infra/kafka/kafka.sh {fetch|start|stop|restart|status|reset|tools}
#
#   fetch    copy the broker jars into infra/kafka/libs (Maven; a no-op when up to date)
#   start    fetch if needed, format the data dir once, start the broker, wait until a
#            client metadata request succeeds; a no-op when already running
#   stop     SIGTERM, then SIGKILL after IMGOV_KAFKA_STOP_TIMEOUT s; a no-op when stopped
#   restart  stop + start; data is kept
#   status   running/stopped, pid, ports (the secure listener too), resident memory
#            (always exits 0)
#   reset    stop and delete the state dir (data, rendered config, CA, passwords); logs
#            are kept
#   tools    apt-get install Debian's kcat (the third-party client of the security
#            tests) if it is missing; needs root or sudo
#
# Listeners, all on 127.0.0.1: PLAINTEXT on IMGOV_KAFKA_PORT (clients, inter-broker), the
# KRaft controller (PLAINTEXT) on IMGOV_KAFKA_CONTROLLER_PORT, and SASL_SSL on
# IMGOV_KAFKA_SASL_PORT: TLS with a broker certificate for 127.0.0.1 and localhost, then
# SASL SCRAM-SHA-512 or PLAIN as user `imgov` (server.properties.template +
# sasl_ssl.properties.template). `start` generates, once per state dir, with openssl:
#   tls/ca.pem               the self-signed CA clients trust (IMGOV_KAFKA_SSL_CAFILE)
#   tls/ca.key, tls/broker-keystore.pem   CA and broker keys (mode 600)
#   users/imgov.password     the test user's password (mode 600), for SCRAM and PLAIN
#   client-sasl-ssl.env      IMGOV_KAFKA_* settings of a SCRAM-SHA-512 client (no secret
#                            inside: it names the password file)
# The SCRAM credential is added at the first format (`StorageTool format --add-scram`),
# or, for a data dir formatted before, with ConfigCommand over the PLAINTEXT listener
# once the broker is ready (recorded in users/scram.cluster). No ACLs: any
# authenticated user may do anything, as on the PLAINTEXT listener.
#
# Locations (the Makefile and the test fixtures rely on the defaults), relative to the
# repository root, whatever the current directory:
#   .imgov/services/kafka/{data/,server.properties,kafka.pid,cluster.id,tls/,users/,
#                          client-sasl-ssl.env}       (IMGOV_KAFKA_STATE_DIR)
#   .imgov/logs/kafka/{server.log,state-change.log,stdout.log,format.log,fetch.log}
#                                                     (IMGOV_KAFKA_LOG_DIR)
# A second broker of the same checkout (other ports, other state and log dirs) can run
# beside the first: its lock is <state dir>.lock.
#
# Environment:
#   IMGOV_KAFKA_PORT             broker port           (default 19092)
#   IMGOV_KAFKA_CONTROLLER_PORT  KRaft controller port (default 19093)
#   IMGOV_KAFKA_SASL_PORT        SASL_SSL listener port (default 19096)
#   IMGOV_KAFKA_STATE_DIR        state dir  (default .imgov/services/kafka)
#   IMGOV_KAFKA_LOG_DIR          log dir    (default .imgov/logs/kafka)
#   IMGOV_KAFKA_HEAP             JVM -Xmx              (default 512m)
#   IMGOV_KAFKA_HEAP_MIN         JVM -Xms              (default 256m)
#   IMGOV_KAFKA_START_TIMEOUT    seconds to wait for readiness (default 60)
#   IMGOV_KAFKA_STOP_TIMEOUT     seconds before SIGKILL        (default 30)
#   IMGOV_KAFKA_FETCH_TIMEOUT    seconds for the Maven download (default 600)
#   IMGOV_KAFKA_JVM_OPTS         extra JVM options, appended (word-split)
#   IMGOV_KAFKA_CDS              1 (default): class-data-sharing archive, see cds_opts
set -euo pipefail

KAFKA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$KAFKA_DIR/../.." && pwd)"
LIBS="$KAFKA_DIR/libs"
STATE="$(realpath -m "${IMGOV_KAFKA_STATE_DIR:-$ROOT/.imgov/services/kafka}")"
DATA="$STATE/data"
PROPS="$STATE/server.properties"
PIDFILE="$STATE/kafka.pid"
LOGS="$(realpath -m "${IMGOV_KAFKA_LOG_DIR:-$ROOT/.imgov/logs/kafka}")"
LOCKFILE="$STATE.lock"
TLS_DIR="$STATE/tls"
USERS_DIR="$STATE/users"
SASL_USER="imgov"
SASL_PASSWORD_FILE="$USERS_DIR/$SASL_USER.password"
SCRAM_MARKER="$USERS_DIR/scram.cluster"
CLIENT_ENV="$STATE/client-sasl-ssl.env"

PORT="${IMGOV_KAFKA_PORT:-19092}"
CONTROLLER_PORT="${IMGOV_KAFKA_CONTROLLER_PORT:-19093}"
SASL_PORT="${IMGOV_KAFKA_SASL_PORT:-19096}"
HEAP="${IMGOV_KAFKA_HEAP:-512m}"
HEAP_MIN="${IMGOV_KAFKA_HEAP_MIN:-256m}"
START_TIMEOUT="${IMGOV_KAFKA_START_TIMEOUT:-60}"
STOP_TIMEOUT="${IMGOV_KAFKA_STOP_TIMEOUT:-30}"
FETCH_TIMEOUT="${IMGOV_KAFKA_FETCH_TIMEOUT:-600}"
read -r -a EXTRA_JVM_OPTS <<<"${IMGOV_KAFKA_JVM_OPTS:-}"
BOOTSTRAP="127.0.0.1:$PORT"

log() { printf 'kafka: %s\n' "$*"; }
die() { printf 'kafka: error: %s\n' "$*" >&2; exit 1; }
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

# The pid in the pid file, if it is a live broker started by this script for this
# repository (guards against a recycled pid).
broker_pid() {
    local pid
    [[ -f "$PIDFILE" ]] || return 1
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    pid_alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -F "kafka.Kafka $PROPS" || return 1
    echo "$pid"
}

# The ports of the running broker, from the rendered config it was started with.
running_port() {
    sed -n 's|^advertised.listeners=PLAINTEXT://127.0.0.1:\([0-9]*\).*$|\1|p' "$PROPS"
}
running_sasl_port() {
    sed -n 's|^advertised.listeners=.*SASL_SSL://127.0.0.1:\([0-9]*\).*$|\1|p' "$PROPS"
}
running_controller_port() {
    sed -n 's|^controller.quorum.voters=1@127.0.0.1:\([0-9]*\)$|\1|p' "$PROPS"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

rss_mib() {
    awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo "?"
}

# --- fetch -------------------------------------------------------------------------

pom_digest() { sha256sum "$KAFKA_DIR/pom.xml" | cut -d' ' -f1; }

libs_current() {
    compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null &&
        [[ -f "$LIBS/.pom.sha256" && "$(cat "$LIBS/.pom.sha256")" == "$(pom_digest)" ]]
}

cmd_fetch() {
    if libs_current; then
        return 0
    fi
    if broker_pid >/dev/null; then
        die "pom.xml changed but the broker is running on its jars; run: $0 stop && $0 fetch"
    fi
    command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
    command -v java >/dev/null || die "java not found (Java 17+ needed)"
    mkdir -p "$LOGS"
    # Copy into a fresh folder and swap it in, so that jars dropped from the pom (for
    # example a wrong slf4j binding) do not linger on the class path. The folder is under
    # the git-ignored .imgov/ (same file system, so the swap is a rename).
    local tmp="$ROOT/.imgov/tmp/kafka-libs.$$" t0
    rm -rf "$tmp"
    mkdir -p "$(dirname "$tmp")"
    # shellcheck disable=SC2064  # expand now: $tmp is local
    trap "rm -rf '$tmp'" EXIT
    t0="$(now_ms)"
    log "fetching broker jars with Maven (first time: a few minutes)..."
    if ! timeout "$FETCH_TIMEOUT" mvn -q -B -Dstyle.color=never -f "$KAFKA_DIR/pom.xml" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
        >"$LOGS/fetch.log" 2>&1; then
        rm -rf "$tmp"
        # Maven 3.8 prints colour resets even with -B: strip escape sequences.
        tail -n 40 "$LOGS/fetch.log" | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
        die "maven failed to fetch the broker jars (full output: $LOGS/fetch.log)"
    fi
    compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || {
        rm -rf "$tmp"
        die "maven succeeded but no kafka_2.13 jar was copied"
    }
    pom_digest >"$tmp/.pom.sha256"
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    local jars=("$LIBS"/*.jar)
    log "fetched ${#jars[@]} jars in $(( $(now_ms) - t0 )) ms"
}

# --- start -------------------------------------------------------------------------

# The base template without its listener lines, then the secure listener's fragment
# (which sets them again with SASL_SSL added). Mode 600: it holds the PLAIN password.
render_properties() {
    local text password
    password="$(<"$SASL_PASSWORD_FILE")"
    text="$(grep -v -E '^(listeners|advertised\.listeners|listener\.security\.protocol\.map)=' \
        "$KAFKA_DIR/server.properties.template")"
    text+=$'\n\n'"$(<"$KAFKA_DIR/sasl_ssl.properties.template")"
    # Quoted replacements: bash 5.2 would otherwise expand '&' in them.
    text="${text//@DATA_DIR@/"$DATA"}"
    text="${text//@BROKER_PORT@/"$PORT"}"
    text="${text//@CONTROLLER_PORT@/"$CONTROLLER_PORT"}"
    text="${text//@SASL_PORT@/"$SASL_PORT"}"
    text="${text//@TLS_DIR@/"$TLS_DIR"}"
    text="${text//@SASL_USER@/"$SASL_USER"}"
    text="${text//@SASL_PASSWORD@/"$password"}"
    (umask 077 && printf '%s\n' "$text" >"$PROPS.tmp")
    mv "$PROPS.tmp" "$PROPS"
    # What a client of the secure listener sets; the password stays in its file.
    printf '%s\n' "IMGOV_KAFKA_BOOTSTRAP=127.0.0.1:$SASL_PORT" \
        "IMGOV_KAFKA_SECURITY_PROTOCOL=SASL_SSL" "IMGOV_KAFKA_SSL_CAFILE=$TLS_DIR/ca.pem" \
        "IMGOV_KAFKA_SASL_MECHANISM=SCRAM-SHA-512" "IMGOV_KAFKA_SASL_USERNAME=$SASL_USER" \
        "IMGOV_KAFKA_SASL_PASSWORD_FILE=$SASL_PASSWORD_FILE" >"$CLIENT_ENV.tmp"
    mv "$CLIENT_ENV.tmp" "$CLIENT_ENV"
}

# --- secure listener: CA, broker certificate, test user ------------------------------

# Once per state dir: a self-signed CA (10 years) and a broker certificate it signs, for
# IP 127.0.0.1 and DNS localhost (clients check the host name against these). Kafka reads
# the broker's key and chain from one PEM file (ssl.keystore.type=PEM, PKCS#8 key).
ensure_tls() {
    if [[ -s "$TLS_DIR/ca.pem" && -s "$TLS_DIR/broker-keystore.pem" ]]; then
        return 0
    fi
    command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
    local tmp="$TLS_DIR.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    chmod 700 "$tmp"
    if ! (
        cd "$tmp" &&
            openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
                -keyout ca.key -out ca.pem -subj "/CN=imgov development Kafka CA" \
                -addext "basicConstraints=critical,CA:TRUE" \
                -addext "keyUsage=critical,keyCertSign,cRLSign" &&
            openssl req -newkey rsa:2048 -nodes -sha256 -keyout broker.key -out broker.csr \
                -subj "/CN=localhost" &&
            printf '%s\n' "basicConstraints=CA:FALSE" \
                "keyUsage=critical,digitalSignature,keyEncipherment" \
                "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" \
                "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer" >broker.ext &&
            openssl x509 -req -sha256 -days 3650 -in broker.csr -CA ca.pem -CAkey ca.key \
                -CAcreateserial -extfile broker.ext -out broker.pem &&
            cat broker.key broker.pem ca.pem >broker-keystore.pem &&
            chmod 600 ca.key broker.key broker-keystore.pem && chmod 644 ca.pem broker.pem &&
            rm -f broker.csr broker.ext ca.srl
    ) >"$LOGS/tls.log" 2>&1; then
        cat "$LOGS/tls.log" >&2
        rm -rf "$tmp"
        die "could not generate the CA and broker certificate (openssl)"
    fi
    rm -rf "$TLS_DIR"
    mv "$tmp" "$TLS_DIR"
    chmod 755 "$TLS_DIR"
    log "generated a CA and a broker certificate in $TLS_DIR"
}

# Once per state dir: the test user's password (alphanumeric: it goes into the JAAS line
# and the SCRAM config unquoted).
ensure_password() {
    [[ -s "$SASL_PASSWORD_FILE" ]] && return 0
    mkdir -p "$USERS_DIR"
    chmod 700 "$USERS_DIR"
    local password=""
    while (( ${#password} < 24 )); do
        password+="$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
    done
    (umask 077 && printf '%s\n' "${password:0:24}" >"$SASL_PASSWORD_FILE.tmp")
    mv "$SASL_PASSWORD_FILE.tmp" "$SASL_PASSWORD_FILE"
    log "generated the password of SASL user $SASL_USER in $SASL_PASSWORD_FILE"
}

# A data dir formatted before the secure listener existed has no SCRAM credential: add it
# through the PLAINTEXT listener (the admin API; the broker must be ready). Recorded per
# cluster id, so it happens once per data dir.
ensure_scram_user() {
    local id
    id="$(cat "$STATE/cluster.id" 2>/dev/null || echo unknown)"
    [[ -f "$SCRAM_MARKER" && "$(cat "$SCRAM_MARKER")" == "$id" ]] && return 0
    if ! java -Xmx128m "${LOG4J_OPTS[@]}" -cp "$LIBS/*" kafka.admin.ConfigCommand \
        --bootstrap-server "$BOOTSTRAP" --alter --entity-type users --entity-name "$SASL_USER" \
        --add-config "SCRAM-SHA-512=[password=$(<"$SASL_PASSWORD_FILE")]" \
        >"$LOGS/scram.log" 2>&1; then
        cat "$LOGS/scram.log" >&2
        die "could not add the SCRAM-SHA-512 credential of $SASL_USER"
    fi
    echo "$id" >"$SCRAM_MARKER"
    log "added the SCRAM-SHA-512 credential of $SASL_USER"
}

new_cluster_id() {
    # 16 random bytes, base64url without padding = Kafka's Uuid text form (22 chars).
    # A leading '-' would be read as an option by some tools: draw again.
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)"
        [[ "$id" != -* ]] && { echo "$id"; return; }
    done
}

# Application class-data sharing (JDK 13+): the first broker run records the classes it
# loaded when it exits (written to kafka-broker.jsa.tmp, renamed by a clean `stop`); later
# starts map libs/kafka-broker.jsa instead of parsing ~10k classes from jars. Measured on
# 2 idle vCPUs: time-to-ready ~5-6 s -> ~3.5 s, idle RSS ~20-30 MiB lower; the first stop
# takes ~5 s longer (the dump). VerifySharedSpaces checksums the archive: without it a
# damaged archive crashes JDK 17 (SIGSEGV) instead of being ignored. An archive the JVM
# refuses (new jars, other JDK, damage) is deleted after start, so the next run records
# a fresh one. IMGOV_KAFKA_CDS=0 turns all of this off.
CDS_ARCHIVE="$LIBS/kafka-broker.jsa"
cds_opts() {
    if [[ "${IMGOV_KAFKA_CDS:-1}" != 1 ]]; then
        return 0
    fi
    if [[ -s "$CDS_ARCHIVE" ]]; then
        printf '%s\n' "-XX:SharedArchiveFile=$CDS_ARCHIVE" "-XX:+VerifySharedSpaces"
    else
        # -Xlog: the dump lists every class it cannot archive as a warning.
        printf '%s\n' "-XX:ArchiveClassesAtExit=$CDS_ARCHIVE.tmp" "-XX:+VerifySharedSpaces" \
            "-Xlog:cds=error,cds+dynamic=error"
    fi
}

# After a clean exit the recorded archive is complete: put it in place. After a SIGKILL
# it may be partial: drop it.
cds_finish_dump() {
    local clean_exit="$1"
    [[ -f "$CDS_ARCHIVE.tmp" ]] || return 0
    if [[ "$clean_exit" == 1 && -s "$CDS_ARCHIVE.tmp" ]]; then
        mv -f "$CDS_ARCHIVE.tmp" "$CDS_ARCHIVE"
    else
        rm -f "$CDS_ARCHIVE.tmp"
    fi
}

cds_drop_if_refused() {
    if grep -q 'Unable to use shared archive' "$LOGS/stdout.log" 2>/dev/null; then
        rm -f "$CDS_ARCHIVE"
        log "the JVM refused $CDS_ARCHIVE (see stdout.log); deleted, the next run records a new one"
    fi
}

LOG4J_OPTS=("-Dlog4j2.configurationFile=$KAFKA_DIR/log4j2.xml" "-Dkafka.logs.dir=$LOGS")

format_once() {
    if [[ -f "$DATA/meta.properties" ]]; then
        return 0
    fi
    # Half-formatted leftovers (an interrupted format) would make format refuse.
    rm -rf "$DATA"
    local id
    id="$(new_cluster_id)"
    echo "$id" >"$STATE/cluster.id"
    if ! java -Xmx256m "${LOG4J_OPTS[@]}" -cp "$LIBS/*" kafka.tools.StorageTool format \
        --cluster-id="$id" -c "$PROPS" \
        --add-scram "SCRAM-SHA-512=[name=$SASL_USER,password=$(<"$SASL_PASSWORD_FILE")]" \
        >"$LOGS/format.log" 2>&1; then
        cat "$LOGS/format.log" >&2
        die "formatting $DATA failed"
    fi
    echo "$id" >"$SCRAM_MARKER"
    log "formatted $DATA (cluster id $id, SCRAM-SHA-512 user $SASL_USER)"
}

# Waits for a metadata answer; prefers the project's virtualenv (no JVM start-up cost),
# falls back to kafka-clients from libs/.
wait_ready() {
    local pid="$1" py="$ROOT/.venv/bin/python"
    if [[ -x "$py" ]] && "$py" -c 'import kafka' 2>/dev/null; then
        "$py" "$KAFKA_DIR/wait_ready.py" "$BOOTSTRAP" "$START_TIMEOUT" "$pid"
    else
        java -Xmx128m -Dlog4j2.level=ERROR -cp "$LIBS/*" "$KAFKA_DIR/WaitReady.java" \
            "$BOOTSTRAP" "$START_TIMEOUT" "$pid"
    fi
}

# Shows what this start attempt logged: stdout.log is rewritten by each start, server.log
# is appended to, so only the part after byte $1 (its size before the start) is shown.
show_log_tail() {
    local server_log_offset="$1"
    if [[ -s "$LOGS/stdout.log" ]]; then
        printf '\n----- last lines of %s -----\n' "$LOGS/stdout.log" >&2
        tail -n 40 "$LOGS/stdout.log" >&2
    fi
    if [[ -s "$LOGS/server.log" ]] && (( $(stat -c %s "$LOGS/server.log") > server_log_offset )); then
        printf '\n----- last lines of %s (this start) -----\n' "$LOGS/server.log" >&2
        tail -c "+$(( server_log_offset + 1 ))" "$LOGS/server.log" | tail -n 40 >&2
    fi
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

cmd_start() {
    cmd_fetch
    local pid t0 rc log_offset=0
    if pid="$(broker_pid)"; then
        local port
        port="$(running_port)"
        if [[ "$port" != "$PORT" ]]; then
            die "a broker of this checkout already runs on port $port (pid $pid); run $0 stop first"
        fi
        if port_open "$PORT"; then
            log "already running (pid $pid, $BOOTSTRAP)"
            if [[ -z "$(running_sasl_port)" ]]; then
                log "it was started without the SASL_SSL listener; run $0 restart to add it"
            fi
            return 0
        fi
        log "pid $pid is starting; waiting for it"
        t0="$(now_ms)"
    else
        rm -f "$PIDFILE"
        if port_open "$PORT"; then
            die "port $PORT is in use by another process (not started by $0)"
        fi
        if port_open "$CONTROLLER_PORT"; then
            die "controller port $CONTROLLER_PORT is in use by another process"
        fi
        if port_open "$SASL_PORT"; then
            die "SASL_SSL port $SASL_PORT is in use by another process"
        fi
        mkdir -p "$STATE" "$LOGS"
        ensure_password
        ensure_tls
        render_properties
        format_once

        [[ -f "$LOGS/server.log" ]] && log_offset="$(stat -c %s "$LOGS/server.log")"
        local cds=()
        mapfile -t cds < <(cds_opts)
        t0="$(now_ms)"
        # setsid: the broker must outlive the shell, pytest or make that started it and
        # must not receive their Ctrl-C. bash -c writes its own pid, then execs java, so
        # the pid file holds the JVM's pid whatever setsid does about forking.
        # 9>&-: the JVM must not inherit the lock held by this script.
        # shellcheck disable=SC2016
        setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" \
            java -Xmx"$HEAP" -Xms"$HEAP_MIN" -server \
            -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
            -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
            -XX:ErrorFile="$LOGS/hs_err_pid%p.log" \
            -Djava.awt.headless=true "${LOG4J_OPTS[@]}" "${cds[@]}" "${EXTRA_JVM_OPTS[@]}" \
            -cp "$LIBS/*" kafka.Kafka "$PROPS" \
            </dev/null >"$LOGS/stdout.log" 2>&1 9>&- &
        local deadline=$(( $(now_ms) + 5000 ))
        until [[ -s "$PIDFILE" ]] || (( $(now_ms) > deadline )); do sleep 0.02; done
        pid="$(cat "$PIDFILE" 2>/dev/null || true)"
        [[ "$pid" =~ ^[0-9]+$ ]] || die "broker did not start (no pid file)"
        log "started pid $pid, waiting up to ${START_TIMEOUT}s for $BOOTSTRAP"
    fi

    rc=0
    wait_ready "$pid" || rc=$?
    if (( rc != 0 )); then
        show_log_tail "$log_offset"
        if pid_alive "$pid"; then
            kill_and_wait "$pid" 10 || true
        fi
        rm -f "$PIDFILE"
        cds_finish_dump 0
        if [[ "$rc" == 2 && -f "$CDS_ARCHIVE" ]]; then
            # Cheap insurance: if the archive was the cause, the next start runs without.
            rm -f "$CDS_ARCHIVE"
            log "deleted the class-data archive $CDS_ARCHIVE in case it was the cause"
        fi
        case "$rc" in
            2) die "broker process $pid exited during start-up (logs in $LOGS)" ;;
            *) die "broker not ready after ${START_TIMEOUT}s; stopped it (logs in $LOGS)" ;;
        esac
    fi
    cds_drop_if_refused
    if [[ -n "$(running_sasl_port)" ]]; then
        ensure_scram_user
    fi
    if grep -q 'NOP) logger' "$LOGS/stdout.log" 2>/dev/null; then
        log "WARNING: slf4j found no binding; the broker is not logging (see infra/kafka/pom.xml)" >&2
    fi
    log "ready on $BOOTSTRAP in $(( $(now_ms) - t0 )) ms (pid $pid, RSS $(rss_mib "$pid") MiB)"
}

# --- stop / status / reset ---------------------------------------------------------

cmd_stop() {
    local pid t0
    if ! pid="$(broker_pid)"; then
        rm -f "$PIDFILE"
        log "not running"
        return 0
    fi
    t0="$(now_ms)"
    local clean=1
    kill_and_wait "$pid" "$STOP_TIMEOUT" || clean=0
    rm -f "$PIDFILE"
    cds_finish_dump "$clean"
    log "stopped pid $pid in $(( $(now_ms) - t0 )) ms"
}

cmd_status() {
    local pid
    if pid="$(broker_pid)"; then
        # Report the port it was started with, whatever this shell's environment says.
        PORT="$(running_port)" && BOOTSTRAP="127.0.0.1:$PORT"
        CONTROLLER_PORT="$(running_controller_port)"
        local answering="no"
        port_open "$PORT" && answering="yes"
        printf 'kafka: running\n  pid: %s\n  bootstrap: %s (accepting connections: %s)\n' \
            "$pid" "$BOOTSTRAP" "$answering"
        printf '  controller: 127.0.0.1:%s\n' "$CONTROLLER_PORT"
        local sasl_port
        sasl_port="$(running_sasl_port)"
        if [[ -n "$sasl_port" ]]; then
            answering="no"
            port_open "$sasl_port" && answering="yes"
            printf '  secure: SASL_SSL 127.0.0.1:%s (SCRAM-SHA-512, PLAIN; accepting connections: %s)\n' \
                "$sasl_port" "$answering"
            printf '    ca: %s\n    user: %s (password in %s)\n    client settings: %s\n' \
                "$TLS_DIR/ca.pem" "$SASL_USER" "$SASL_PASSWORD_FILE" "$CLIENT_ENV"
        else
            printf '  secure: none (started without the SASL_SSL listener; restart to add it)\n'
        fi
        printf '  rss_mib: %s\n  data: %s\n  logs: %s\n' "$(rss_mib "$pid")" "$DATA" "$LOGS"
    else
        printf 'kafka: stopped\n  bootstrap: %s\n  secure: SASL_SSL 127.0.0.1:%s\n  data: %s\n' \
            "$BOOTSTRAP" "$SASL_PORT" "$DATA"
    fi
}

cmd_tools() {
    if command -v kcat >/dev/null || command -v kafkacat >/dev/null; then
        return 0
    fi
    command -v apt-get >/dev/null || die "no kcat on PATH and no apt-get to install it"
    local sudo=""
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null || die "installing kcat needs root (or sudo)"
        sudo="sudo"
    fi
    log "installing Debian's kcat (apt-get, once)"
    export DEBIAN_FRONTEND=noninteractive
    # A stale (or never fetched) package index makes the install fail: refresh, retry.
    if ! $sudo apt-get install -y -q --no-install-recommends kcat >/dev/null 2>&1; then
        $sudo apt-get update -qq
        $sudo apt-get install -y -q --no-install-recommends kcat >/dev/null
    fi
    command -v kcat >/dev/null || die "apt-get finished but no kcat is on PATH"
}

cmd_reset() {
    cmd_stop
    rm -rf "$STATE"
    log "deleted $STATE"
}

# --- main --------------------------------------------------------------------------

with_lock() {
    # Two test sessions or a Makefile and a test may start/stop at the same time.
    mkdir -p "$(dirname "$LOCKFILE")"
    exec 9>"$LOCKFILE"
    flock -w $(( FETCH_TIMEOUT + START_TIMEOUT + STOP_TIMEOUT )) 9 || die "could not lock $LOCKFILE"
    "$@"
}

main() {
    case "${1:-}" in
        fetch) with_lock cmd_fetch ;;
        start) with_lock cmd_start ;;
        stop) with_lock cmd_stop ;;
        restart) with_lock cmd_stop && cmd_start ;;
        status) cmd_status ;;
        reset) with_lock cmd_reset ;;
        tools) cmd_tools ;;
        *)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
            exit 64
            ;;
    esac
}

main "$@"
