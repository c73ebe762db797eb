#!/bin/sh
# media load TAG DEV... | media list
#
# "media load TAG DEV..." loads the drivers of the CD-ROMs (sr*: AHCI, sr) and floppies (fd*)
# named, which are not in the initramfs (they would slow every boot): the host puts the guest's
# media-modules.tar (TestGuest.media_modules) into the 9p share TAG. It then waits up to 10 s
# for each named device (sr0, fd0, vdb...) to appear in /dev.
# "media list" prints "VMCTL-GUEST MEDIA <name> bytes=<size> ro=<0|1>" for every disk, CD-ROM
# and floppy the kernel sees.
op=$1
[ -n "$op" ] || { echo "usage: media load TAG DEV... | media list" >&2; exit 2; }
shift
case "$op" in
    load)
        tag=$1
        [ -n "$tag" ] || { echo "usage: media load TAG [DEV...]" >&2; exit 2; }
        shift
        mkdir -p /run/media-modules
        if ! share get "$tag" media-modules.tar /run/media-modules.tar; then
            echo "VMCTL-GUEST WARN no media-modules.tar in share $tag"
            exit 1
        fi
        tar -xf /run/media-modules.tar -C /run/media-modules && rm -f /run/media-modules.tar
        # only the drivers of the devices named: the floppy driver probes for a controller for
        # seconds where there is none
        want_cd=no want_fd=no
        for dev in "$@"; do
            case "$dev" in sr*) want_cd=yes ;; fd*) want_fd=yes ;; esac
        done
        while read -r mod; do
            case "$mod" in
                "") continue ;;
                floppy.ko) [ "$want_fd" = yes ] || continue ;;
                *) [ "$want_cd" = yes ] || continue ;;
            esac
            insmod "/run/media-modules/$mod" 2>/dev/null || grep -q "^${mod%.ko} " /proc/modules \
                || echo "VMCTL-GUEST WARN insmod $mod failed"
        done < /run/media-modules/list
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
