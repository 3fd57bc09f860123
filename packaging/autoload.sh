# Sourced by postinst and postrm: osquery-netutil's line in osquery's autoload list.
#
# The list is osquery's file, not ours, so this package adds one line, once, and takes it
# out on removal: if the file is as we left it, what was there before comes back byte for
# byte (or the file goes, if we created it); if the admin changed it since, only our line
# is taken out. An admin who took the line out meant it: it is not added again.

EXT=/usr/lib/osquery-netutil/osquery-netutil.ext
LOAD=/etc/osquery/extensions.load
STATE=/var/lib/osquery-netutil        # the file before and after our change

autoload_add() {
    [ -d /etc/osquery ] || return 0                 # no osquery here
    [ -e "$STATE/extensions.load.after" ] && return 0
    if [ -e "$LOAD" ] && grep -qxF "$EXT" "$LOAD"; then return 0; fi
    mkdir -p "$STATE"
    if [ -e "$LOAD" ]; then
        cp -p "$LOAD" "$STATE/extensions.load.before"
        # A last line without its newline gets one, so that ours is a line of its own.
        if [ -s "$LOAD" ] && [ "$(tail -c 1 "$LOAD" | wc -l)" -eq 0 ]; then
            printf '\n' >> "$LOAD"
        fi
    fi
    printf '%s\n' "$EXT" >> "$LOAD"
    cp -p "$LOAD" "$STATE/extensions.load.after"
}

autoload_remove() {
    [ -e "$STATE/extensions.load.after" ] || return 0
    if [ -e "$LOAD" ] && cmp -s "$LOAD" "$STATE/extensions.load.after"; then
        if [ -e "$STATE/extensions.load.before" ]; then
            cat "$STATE/extensions.load.before" > "$LOAD"
        else
            rm -f "$LOAD"
        fi
    elif [ -e "$LOAD" ]; then
        grep -vxF "$EXT" "$LOAD" > "$LOAD.osquery-netutil.tmp" || true
        cat "$LOAD.osquery-netutil.tmp" > "$LOAD"
        rm -f "$LOAD.osquery-netutil.tmp"
    fi
    rm -rf "$STATE"
}
