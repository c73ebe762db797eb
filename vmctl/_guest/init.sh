#!/bin/busybox sh
# /init of the vmctl test guest: busybox sh running as PID 1 in an initramfs.
#
# Lines printed on the serial console (ttyS0) that tests rely on:
#   VMCTL-GUEST BOOT                       first line printed by this script
#   VMCTL-GUEST READY                      modules, disk, acpid, shares and network are set up
#   VMCTL-GUEST POWERBUTTON                ACPI power button pressed; the guest powers off
#   VMCTL-GUEST LINK up|down               eth0 carrier, initial state and every change
#   VMCTL-GUEST TICK n=<n> up=<uptime>     every 0.5 s; n is a counter kept in guest RAM
# and, informational:
#   VMCTL-GUEST DISK mounted | VMCTL-GUEST SHARE <tag> mounted | VMCTL-GUEST DHCP ip=<addr>
#   VMCTL-GUEST RUN <tag> started | VMCTL-GUEST RUN <tag> exit=<status> | VMCTL-GUEST WARN <text>
#
# Kernel command line: "vmctl.powerbutton=ignore" makes the guest announce the power button
# but not shut down (a guest that ignores ACPI, for testing forced stops).
# Every "vmctl.share=TAG" names a virtio-9p share: if it holds run.sh, that is copied to
# /run/job/TAG and run with sh in the background (cwd /run/job/TAG, VMCTL_SHARE_TAG=TAG, output
# to the console). The share is not kept mounted (QEMU cannot save state while it is):
# "share put TAG FILE [NAME]" writes a file into it atomically, "share get TAG NAME DEST" reads.

echo "VMCTL-GUEST BOOT"

/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root

say() { echo "VMCTL-GUEST $*"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /var/run /var/log /mnt/disk

# Kernel modules, dependencies first (the list is written by vmctl.testguest).
while read -r mod; do
    [ -n "$mod" ] || continue
    insmod "/lib/modules/$mod" || say "WARN insmod $mod failed"
done < /etc/vmctl/modules

# The disk: /dev/vda (ext2) at /mnt/disk, if a virtio block device is attached.
has_virtio_blk=no
for dev in /sys/bus/virtio/devices/*; do
    [ -r "$dev/device" ] || continue
    read -r id < "$dev/device"
    [ "$id" = "0x0002" ] && has_virtio_blk=yes
done
if [ "$has_virtio_blk" = yes ]; then
    i=0
    while [ ! -b /dev/vda ] && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
fi
if [ -b /dev/vda ]; then
    if mount -t ext2 /dev/vda /mnt/disk; then say "DISK mounted"; else say "WARN mount /dev/vda failed"; fi
fi

# ACPI power button -> /etc/acpi/PWRF/00000080 (busybox acpid reads /dev/input/event*).
acpid -c /etc/acpi -l /tmp/acpid.log -p /tmp/acpid.pid || say "WARN acpid failed"

# 9p shares named on the kernel command line: fetch each share's run.sh, then unmount, because
# QEMU refuses to save the VM's state while a share is mounted. Jobs use /bin/share to read and
# write the share (it mounts, copies, unmounts).
shares=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vmctl.share=?*)
            tag=${arg#vmctl.share=}
            mkdir -p "/run/job/$tag"
            if share get "$tag" run.sh "/run/job/$tag/run.sh" 2>/dev/null; then
                say "SHARE $tag job fetched"
                shares="$shares $tag"
            elif share ls "$tag" >/dev/null; then
                say "SHARE $tag ready"
            else
                say "WARN share $tag unavailable"
            fi
            ;;
    esac
done

# Network: eth0 up, DHCP in the background, carrier changes reported.
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    udhcpc -f -i eth0 -s /etc/vmctl/udhcpc.sh -t 10 -T 1 -A 3 >/tmp/udhcpc.log 2>&1 &
    link_state() {  # sets $state to up or down
        carrier=0
        read -r carrier 2>/dev/null </sys/class/net/eth0/carrier
        if [ "$carrier" = 1 ]; then state=up; else state=down; fi
    }
    # The carrier comes up shortly after the interface: give it a second before the first report.
    i=0
    link_state
    while [ "$state" = down ] && [ "$i" -lt 10 ]; do sleep 0.1; i=$((i + 1)); link_state; done
    say "LINK $state"
    (
        prev=$state
        while :; do
            sleep 0.2
            link_state
            if [ "$state" != "$prev" ]; then say "LINK $state"; prev=$state; fi
        done
    ) &
    # Echo service on TCP port 22, so a host port forward can be checked end to end.
    nc -ll -p 22 -e /bin/cat >/dev/null 2>&1 &
fi

say "READY"

for tag in $shares; do
    say "RUN $tag started"
    (
        cd "/run/job/$tag" || exit 1
        VMCTL_SHARE_TAG="$tag" sh ./run.sh </dev/null
        say "RUN $tag exit=$?"
    ) &
done

n=1
while :; do
    read -r up rest < /proc/uptime
    echo "VMCTL-GUEST TICK n=$n up=$up"
    n=$((n + 1))
    sleep 0.5
done
