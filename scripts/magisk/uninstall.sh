#!/system/bin/sh
# upmt Magisk module: run by Magisk when the module is removed (at the next boot after
# "Remove" in the Magisk app). Stops the respawn loop and the daemon if they run, removes the
# daemon's routing rules, and puts mobile_data_always_on back as it was. The data directory
# (config, keys, logs) stays unless /data/adb/upmt/remove-on-uninstall exists. POSIX sh only.

MODDIR=${0%/*}
# UPMT_DATA only lets the tests run this script in a scratch directory.
DATA=${UPMT_DATA:-/data/adb/upmt}
CONFIG=$DATA/mh.toml
LOG=$DATA/service.log
BIN=$MODDIR/system/bin/upmt-mh

log() {
    [ -d "$DATA" ] && echo "$(date '+%Y-%m-%d %H:%M:%S') uninstall: $*" >>"$LOG"
}

# The loop first, so it cannot start the daemon again; then the daemon, by the pids the loop
# recorded.
for name in service upmt-mh; do
    if [ -f "$DATA/$name.pid" ]; then
        pid=$(cat "$DATA/$name.pid")
        case "$pid" in
            '' | *[!0-9]*) ;;
            *) kill "$pid" 2>/dev/null && log "stopped $name (pid $pid)" ;;
        esac
        rm -f "$DATA/$name.pid"
    fi
done

# upmt-mh stop removes every rule and route the daemon adds, also after a crash. Older
# daemons have no stop command: then nothing is left once the daemon has exited cleanly, and
# nothing survives a reboot anyway.
if [ -x "$BIN" ] && [ -f "$CONFIG" ]; then
    if "$BIN" stop --config "$CONFIG" >>"$LOG" 2>&1; then
        log "upmt-mh stop removed the routing rules"
    else
        log "upmt-mh stop failed or is not supported (status $?)"
    fi
fi

# Settings can only be written once Android is up; uninstall.sh may run earlier in boot.
if [ -f "$DATA/mobile_data_always_on.before" ]; then
    before=$(cat "$DATA/mobile_data_always_on.before")
    case "$before" in
        0 | 1) ;;
        *) before=delete ;;
    esac
    (
        until [ "$(getprop sys.boot_completed)" = 1 ]; do
            sleep 5
        done
        if [ "$before" = delete ]; then
            settings delete global mobile_data_always_on
        else
            settings put global mobile_data_always_on "$before"
        fi
    ) >/dev/null 2>&1 &
    log "mobile_data_always_on goes back to '$before' once booted"
fi

if [ -f "$DATA/remove-on-uninstall" ]; then
    rm -rf "$DATA"
else
    log "kept $DATA (config, keys, logs); touch $DATA/remove-on-uninstall before removing the module to delete it too"
fi
