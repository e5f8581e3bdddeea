#!/usr/bin/env bash
# The peers the delivery tests talk to, on loopback:
#   mosquitto        at $AMR_TEST_MQTT        (default 127.0.0.1:1883; MQTT broker)
#   victoria-metrics at $AMR_TEST_INFLUX_URL  (default http://127.0.0.1:8428; InfluxDB v2
#                                              write API on /api/v2/write, queryable)
# tests/servicefixtures.py reads the same two variables, so one setting moves both.
# It also installs Debian's chromium (when /usr/bin/chromium is missing), the browser the web
# console's tests drive; that is a package, not a service, so `stop` leaves it installed.
#
#   ensure-services.sh start [RECORD]   start whichever does not answer (installing the
#                                       Debian package first when missing and we are root),
#                                       wait for both (bounded); append what it started
#                                       (name and pid) to RECORD when given
#   ensure-services.sh stop RECORD      stop what a `start RECORD` started, nothing else
#
# `make test` starts with a record and stops after pytest, so it leaves running only what
# was running before; `make services` starts and leaves them up. As root, victoria-metrics
# runs as its package's user (_victoria-metrics) and mosquitto drops to user mosquitto.
# Exits non-zero with a clear message when a service cannot be brought up.
set -euo pipefail

MQTT_ADDR=${AMR_TEST_MQTT:-127.0.0.1:1883}
INFLUX_URL=${AMR_TEST_INFLUX_URL:-http://127.0.0.1:8428}
MQTT_HOST=${MQTT_ADDR%:*}
MQTT_PORT=${MQTT_ADDR##*:}
VM_ADDR=${INFLUX_URL#*://}
VM_ADDR=${VM_ADDR%%/*}
VM_DATA=${AMR_VM_DATA:-/var/lib/amr-test-victoria-metrics}
STATE_DIR=${AMR_SERVICES_DIR:-/tmp/amr-services}
WAIT_S=${AMR_SERVICES_WAIT_S:-30}
VM_USER=_victoria-metrics
MQTT_USER=mosquitto

say() { printf 'ensure-services: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

ACTION=${1:-start}
RECORD=${2:-}

listening() {  # host port
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0 || return 1
}

vm_healthy() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -m 2 "http://$VM_ADDR/health" >/dev/null 2>&1
    else
        python3 - "$VM_ADDR" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(f"http://{sys.argv[1]}/health", timeout=2).read()
PY
    fi
}

apt_install() {  # package
    if [ "$(id -u)" -ne 0 ]; then
        die "$1 is not installed and this script is not running as root; run 'sudo apt-get install -y $1' or run this script as root"
    fi
    say "installing $1"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed; check the network and /etc/apt/sources.list"
    apt-get install -y -qq "$1" >/dev/null || die "apt-get install $1 failed"
}

wait_for() {  # check-command...
    local deadline=$((SECONDS + WAIT_S))
    while [ $SECONDS -lt $deadline ]; do
        if "$@"; then return 0; fi
        sleep 0.2
    done
    return 1
}

started() {  # name pid: remember a service this run started
    echo "$2" >"$STATE_DIR/$1.pid"
    if [ -n "$RECORD" ]; then echo "$1 $2" >>"$RECORD"; fi
}

# ---------------------------------------------------------------- stop
if [ "$ACTION" = stop ]; then
    [ -n "$RECORD" ] || die "usage: $0 stop RECORD (the file a 'start RECORD' wrote)"
    [ -f "$RECORD" ] || exit 0
    while read -r name pid; do
        [ -n "$pid" ] || continue
        if kill -0 "$pid" 2>/dev/null; then
            say "$name: stopping pid $pid (started by this run)"
            kill -TERM "$pid" 2>/dev/null || true
            deadline=$((SECONDS + WAIT_S))
            while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
            if kill -0 "$pid" 2>/dev/null; then say "$name: pid $pid did not stop in ${WAIT_S}s; killing"; kill -KILL "$pid" 2>/dev/null || true; fi
        fi
        rm -f "$STATE_DIR/$name.pid"
    done <"$RECORD"
    rm -f "$RECORD"
    exit 0
fi
[ "$ACTION" = start ] || die "usage: $0 [start [RECORD] | stop RECORD]"

mkdir -p "$STATE_DIR"

# ---------------------------------------------------------------- chromium
# Not a service: the browser the web console's tests drive (Playwright with Debian's
# chromium; Playwright's own browser downloads are never used). A missing browser fails
# those tests, so install it here.
if [ ! -x /usr/bin/chromium ]; then
    apt_install chromium
fi

# ---------------------------------------------------------------- mosquitto
if listening "$MQTT_HOST" "$MQTT_PORT"; then
    say "mosquitto: already listening on $MQTT_HOST:$MQTT_PORT"
else
    if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
        apt_install mosquitto
    fi
    MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    # A minimal configuration of our own: loopback only, anonymous, persistent sessions.
    CONF=$STATE_DIR/mosquitto.conf
    RUN_AS=$(id -un)
    if [ "$(id -u)" -eq 0 ] && getent passwd "$MQTT_USER" >/dev/null; then RUN_AS=$MQTT_USER; fi
    mkdir -p "$STATE_DIR/mosquitto-data"
    chown "$RUN_AS" "$STATE_DIR/mosquitto-data" 2>/dev/null || true
    cat >"$CONF" <<EOF
user $RUN_AS
listener $MQTT_PORT $MQTT_HOST
allow_anonymous true
persistence true
persistence_location $STATE_DIR/mosquitto-data/
max_queued_messages 0
log_dest stderr
EOF
    say "mosquitto: starting with $CONF (as $RUN_AS)"
    nohup "$MOSQUITTO" -c "$CONF" >>"$STATE_DIR/mosquitto.log" 2>&1 </dev/null &
    started mosquitto $!
    wait_for listening "$MQTT_HOST" "$MQTT_PORT" \
        || die "mosquitto did not listen on $MQTT_HOST:$MQTT_PORT within ${WAIT_S}s; see $STATE_DIR/mosquitto.log"
    say "mosquitto: listening on $MQTT_HOST:$MQTT_PORT"
fi

# ---------------------------------------------------------------- victoria-metrics
if vm_healthy; then
    say "victoria-metrics: already answering on $VM_ADDR"
else
    if listening "${VM_ADDR%:*}" "${VM_ADDR##*:}"; then
        die "something listens on $VM_ADDR but does not answer /health like victoria-metrics; stop it or set AMR_TEST_INFLUX_URL"
    fi
    if ! command -v victoria-metrics >/dev/null 2>&1 && [ ! -x /usr/bin/victoria-metrics ]; then
        apt_install victoria-metrics
    fi
    VM=$(command -v victoria-metrics || echo /usr/bin/victoria-metrics)
    mkdir -p "$VM_DATA" 2>/dev/null || { VM_DATA=$STATE_DIR/victoria-metrics-data; mkdir -p "$VM_DATA"; }
    AS_USER=()
    if [ "$(id -u)" -eq 0 ] && getent passwd "$VM_USER" >/dev/null; then
        # Unprivileged: the package's own user owns the data directory and runs the server.
        chown -R "$VM_USER:" "$VM_DATA"
        AS_USER=(setpriv "--reuid=$VM_USER" "--regid=$VM_USER" --init-groups --)
    fi
    say "victoria-metrics: starting on $VM_ADDR with data in $VM_DATA${AS_USER:+ as $VM_USER}"
    nohup "${AS_USER[@]}" "$VM" -httpListenAddr="$VM_ADDR" -storageDataPath="$VM_DATA" -retentionPeriod=100y \
        -search.disableCache -loggerLevel=ERROR >>"$STATE_DIR/victoria-metrics.log" 2>&1 </dev/null &
    started victoria-metrics $!
    wait_for vm_healthy \
        || die "victoria-metrics did not answer http://$VM_ADDR/health within ${WAIT_S}s; see $STATE_DIR/victoria-metrics.log"
    say "victoria-metrics: answering on $VM_ADDR"
fi
