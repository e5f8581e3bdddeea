#!/usr/bin/env bash
# Make sure the peers the delivery tests talk to are up on loopback (idempotent):
#   mosquitto        on 127.0.0.1:1883   (MQTT broker)
#   victoria-metrics on 127.0.0.1:8428   (InfluxDB v2 write API on /api/v2/write, queryable)
# Starts whichever is not answering (installing the Debian package first when missing and we
# are root), waits for both (bounded), and exits non-zero with a clear message otherwise.
# Tests that need them fail loudly when they cannot be reached; this script is how CI
# (.ci/run → make test → make services) makes sure they can.
set -euo pipefail

MQTT_HOST=127.0.0.1
MQTT_PORT=${AMR_MQTT_PORT:-1883}
VM_ADDR=127.0.0.1:${AMR_VM_PORT:-8428}
VM_DATA=${AMR_VM_DATA:-/var/lib/amr-test-victoria-metrics}
STATE_DIR=${AMR_SERVICES_DIR:-/tmp/amr-services}
WAIT_S=${AMR_SERVICES_WAIT_S:-30}

say() { printf 'ensure-services: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

listening() {  # host port
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0 || return 1
}

vm_healthy() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -m 2 "http://$VM_ADDR/health" >/dev/null 2>&1
    else
        python3 - "$VM_ADDR" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(f"http://{sys.argv[1]}/health", timeout=2).read()
EOF
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

wait_for() {  # description check-command...
    local what=$1; shift
    local deadline=$((SECONDS + WAIT_S))
    while [ $SECONDS -lt $deadline ]; do
        if "$@"; then return 0; fi
        sleep 0.2
    done
    return 1
}

mkdir -p "$STATE_DIR"

# ---------------------------------------------------------------- mosquitto
if listening "$MQTT_HOST" "$MQTT_PORT"; then
    say "mosquitto: already listening on $MQTT_HOST:$MQTT_PORT"
else
    if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
        apt_install mosquitto
    fi
    MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    CONF=/etc/mosquitto/mosquitto.conf
    if [ "$MQTT_PORT" != 1883 ] || [ ! -r "$CONF" ] || ! grep -qE "^listener[[:space:]]+$MQTT_PORT" "$CONF"; then
        # A minimal configuration of our own: loopback only, anonymous, persistent sessions.
        CONF=$STATE_DIR/mosquitto.conf
        mkdir -p "$STATE_DIR/mosquitto-data"
        cat >"$CONF" <<EOF
user $(id -un)
listener $MQTT_PORT $MQTT_HOST
allow_anonymous true
persistence true
persistence_location $STATE_DIR/mosquitto-data/
max_queued_messages 0
log_dest file $STATE_DIR/mosquitto.log
EOF
    else
        mkdir -p /run/mosquitto /var/log/mosquitto /var/lib/mosquitto 2>/dev/null || true
        chown mosquitto: /run/mosquitto /var/log/mosquitto /var/lib/mosquitto 2>/dev/null || true
    fi
    say "mosquitto: starting with $CONF"
    "$MOSQUITTO" -d -c "$CONF" || die "mosquitto failed to start with $CONF; see its log"
    wait_for "mosquitto" listening "$MQTT_HOST" "$MQTT_PORT" \
        || die "mosquitto did not listen on $MQTT_HOST:$MQTT_PORT within ${WAIT_S}s"
    say "mosquitto: listening on $MQTT_HOST:$MQTT_PORT"
fi

# ---------------------------------------------------------------- victoria-metrics
if vm_healthy; then
    say "victoria-metrics: already answering on $VM_ADDR"
else
    if listening "${VM_ADDR%:*}" "${VM_ADDR#*:}"; then
        die "something listens on $VM_ADDR but does not answer /health like victoria-metrics; stop it or set AMR_VM_PORT"
    fi
    if ! command -v victoria-metrics >/dev/null 2>&1 && [ ! -x /usr/bin/victoria-metrics ]; then
        apt_install victoria-metrics
    fi
    VM=$(command -v victoria-metrics || echo /usr/bin/victoria-metrics)
    mkdir -p "$VM_DATA" 2>/dev/null || { VM_DATA=$STATE_DIR/victoria-metrics-data; mkdir -p "$VM_DATA"; }
    say "victoria-metrics: starting on $VM_ADDR with data in $VM_DATA"
    nohup "$VM" -httpListenAddr="$VM_ADDR" -storageDataPath="$VM_DATA" -retentionPeriod=100y \
        -search.disableCache -loggerLevel=ERROR >>"$STATE_DIR/victoria-metrics.log" 2>&1 </dev/null &
    echo $! >"$STATE_DIR/victoria-metrics.pid"
    wait_for "victoria-metrics" vm_healthy \
        || die "victoria-metrics did not answer http://$VM_ADDR/health within ${WAIT_S}s; see $STATE_DIR/victoria-metrics.log"
    say "victoria-metrics: answering on $VM_ADDR"
fi
