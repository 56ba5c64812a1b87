#!/system/bin/sh
# upmt Magisk module: late_start service stage. Magisk runs this once per boot in the
# background. It waits for Android to finish booting, keeps mobile data up beside Wi-Fi (the
# cellular uplink exists only then), and runs upmt-mh under a respawn loop with backoff.
# Everything it does goes to /data/adb/upmt/service.log; the daemon's own output to
# /data/adb/upmt/upmt-mh.log. POSIX sh only: Android runs this with mksh.

MODDIR=${0%/*}
# UPMT_DATA only lets the tests run this script in a scratch directory.
DATA=${UPMT_DATA:-/data/adb/upmt}
CONFIG=$DATA/mh.toml
LOG=$DATA/service.log
DAEMON_LOG=$DATA/upmt-mh.log
BIN=$MODDIR/system/bin/upmt-mh
# Logs past this many bytes are moved to <log>.1 (one old copy kept).
LOG_MAX=1048576
# A run that lasted this long (seconds) resets the backoff to its start.
STABLE_AFTER=60
BACKOFF_MAX=300

umask 077
mkdir -p "$DATA"
chmod 0700 "$DATA"

log() {
    echo "$(date '+%Y-%m-%d %H:%M:%S') $*" >>"$LOG"
}

rotate() {
    [ -f "$1" ] || return 0
    size=$(wc -c <"$1")
    if [ "$size" -gt "$LOG_MAX" ]; then
        mv -f "$1" "$1.1"
    fi
}

rotate "$LOG"
log "service.sh started (module $MODDIR)"
echo $$ >"$DATA/service.pid"

until [ "$(getprop sys.boot_completed)" = 1 ]; do
    sleep 5
done
log "boot completed"

# Remember the user's own setting once, so uninstalling can put it back.
if [ ! -f "$DATA/mobile_data_always_on.before" ]; then
    settings get global mobile_data_always_on >"$DATA/mobile_data_always_on.before" 2>/dev/null
fi
if settings put global mobile_data_always_on 1; then
    log "mobile_data_always_on = 1 (cellular stays up beside Wi-Fi)"
else
    log "could not set mobile_data_always_on; the cellular uplink may be missing while on Wi-Fi"
fi

if [ ! -f "$CONFIG" ]; then
    log "no $CONFIG: not starting upmt-mh (start from $DATA/mh.toml.example, then reboot)"
    rm -f "$DATA/service.pid"
    exit 0
fi

pid=
stop() {
    log "service.sh stopping (signal)"
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
    rm -f "$DATA/service.pid" "$DATA/upmt-mh.pid"
    exit 0
}
trap stop INT TERM

delay=1
while :; do
    # Disabled or marked for removal in the Magisk app: stop respawning.
    if [ -f "$MODDIR/disable" ] || [ -f "$MODDIR/remove" ]; then
        log "module disabled or being removed: not starting upmt-mh again"
        break
    fi
    rotate "$DAEMON_LOG"
    started=$(date +%s)
    log "starting upmt-mh run --config $CONFIG"
    "$BIN" run --config "$CONFIG" >>"$DAEMON_LOG" 2>&1 &
    pid=$!
    echo "$pid" >"$DATA/upmt-mh.pid"
    wait "$pid"
    status=$?
    pid=
    rm -f "$DATA/upmt-mh.pid"
    ran=$(($(date +%s) - started))
    if [ "$ran" -ge "$STABLE_AFTER" ]; then
        delay=1
    fi
    log "upmt-mh exited with status $status after ${ran}s; restarting in ${delay}s (see $DAEMON_LOG)"
    sleep "$delay"
    delay=$((delay * 2))
    if [ "$delay" -gt "$BACKOFF_MAX" ]; then
        delay=$BACKOFF_MAX
    fi
done
rm -f "$DATA/service.pid"
