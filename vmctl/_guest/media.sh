#!/bin/sh
# media load [DEV...] | media list
#
# "media load" loads the drivers of CD-ROMs (AHCI, sr) and floppies, which the guest does not
# load at boot (probing for a floppy controller that is not there slows every boot), then
# waits up to 10 s for each named device (sr0, fd0...) to appear in /dev.
# "media list" prints "VMCTL-GUEST MEDIA <name> bytes=<size> ro=<0|1>" for every disk, CD-ROM
# and floppy the kernel sees.
op=$1
[ -n "$op" ] || { echo "usage: media load [DEV...] | media list" >&2; exit 2; }
shift
case "$op" in
    load)
        while read -r mod; do
            [ -n "$mod" ] || continue
            insmod "/lib/modules/$mod" 2>/dev/null || grep -q "^${mod%.ko} " /proc/modules \
                || echo "VMCTL-GUEST WARN insmod $mod failed"
        done < /etc/vmctl/media-modules
        status=0
        for dev in "$@"; do
            i=0
            while [ ! -b "/dev/$dev" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
            [ -b "/dev/$dev" ] || { echo "VMCTL-GUEST WARN no /dev/$dev"; status=1; }
        done
        exit $status ;;
    list)
        for dir in /sys/block/*; do
            name=${dir##*/}
            case "$name" in loop*|ram*) continue ;; esac
            read -r sectors < "$dir/size"
            read -r ro < "$dir/ro"
            echo "VMCTL-GUEST MEDIA $name bytes=$((sectors * 512)) ro=$ro"
        done ;;
    *) echo "media: unknown operation $op" >&2; exit 2 ;;
esac
