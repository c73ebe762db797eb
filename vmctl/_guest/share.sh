#!/bin/sh
# share put TAG FILE [NAME] | share get TAG NAME DEST | share ls TAG
#
# QEMU cannot save a VM's state (suspend, snapshot with memory) while a 9p share is mounted
# in the guest, so the test guest mounts a share only for the moment it reads or writes it.
set -e
op=$1 tag=$2
[ -n "$op" ] && [ -n "$tag" ] || { echo "usage: share put|get|ls TAG ..." >&2; exit 2; }
mnt=/run/share-$tag-$$
mkdir -p "$mnt"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 "$tag" "$mnt"
status=0
case "$op" in
    put) name=${4:-$(basename "$3")}
         cp "$3" "$mnt/.$name.tmp" && mv "$mnt/.$name.tmp" "$mnt/$name" || status=1 ;;
    get) cp "$mnt/$3" "$4" || status=1 ;;
    ls)  ls -1 "$mnt" || status=1 ;;
    *)   echo "share: unknown operation $op" >&2; status=2 ;;
esac
sync
umount "$mnt"
rmdir "$mnt"
exit $status
