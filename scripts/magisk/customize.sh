# shellcheck shell=sh
# upmt Magisk module: sourced by Magisk's installer (util_functions.sh provides ui_print,
# abort, set_perm and set_perm_recursive; MODPATH and ARCH are set). Checks the device, sets
# the binaries' modes, and prepares /data/adb/upmt: a private key on first install (mode 0600)
# and an example config. An existing config and key are never touched, so updating the module
# keeps them. POSIX sh only.

DATA=/data/adb/upmt

if [ "$ARCH" != arm64 ]; then
    abort "! upmt is built for arm64 (aarch64) only; this device is $ARCH"
fi

set_perm_recursive "$MODPATH" 0 0 0755 0644
set_perm "$MODPATH/system/bin/upmt-mh" 0 0 0755
set_perm "$MODPATH/system/bin/upmt" 0 0 0755

umask 077
mkdir -p "$DATA"
chmod 0700 "$DATA"
cp -f "$MODPATH/mh.toml.example" "$DATA/mh.toml.example"
chmod 0600 "$DATA/mh.toml.example"

if [ ! -f "$DATA/mh.key" ]; then
    if "$MODPATH/system/bin/upmt" genkey >"$DATA/mh.key.new"; then
        mv -f "$DATA/mh.key.new" "$DATA/mh.key"
        ui_print "- New private key in $DATA/mh.key"
    else
        rm -f "$DATA/mh.key.new"
        ui_print "! Could not make a key: run 'upmt genkey > $DATA/mh.key' as root"
    fi
fi
if [ -f "$DATA/mh.key" ]; then
    chmod 0600 "$DATA/mh.key"
    public=$("$MODPATH/system/bin/upmt" pubkey <"$DATA/mh.key" 2>/dev/null)
    ui_print "- This phone's public key (add it to the anchor's [[peer]]):"
    ui_print "  $public"
    echo "$public" >"$DATA/mh.pub"
fi

if [ -f "$DATA/mh.toml" ]; then
    ui_print "- Keeping $DATA/mh.toml"
else
    ui_print "- Next: copy $DATA/mh.toml.example to $DATA/mh.toml,"
    ui_print "  set the anchor and its key, then reboot"
fi
