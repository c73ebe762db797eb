#!/bin/sh
# Run by busybox acpid as /etc/acpi/PWRF/00000080 when the ACPI power button is pressed
# (QMP system_powerdown): announce it, flush and unmount the file systems, power off.
exec </dev/null >/dev/console 2>&1
case " $(cat /proc/cmdline) " in
    *" vmctl.powerbutton=ignore "*)
        echo "VMCTL-GUEST POWERBUTTON ignored"
        exit 0
        ;;
esac
echo "VMCTL-GUEST POWERBUTTON"
sync
for mnt in $(awk '$3 == "9p" || $2 == "/mnt/disk" { print $2 }' /proc/mounts); do
    umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null
done
sync
poweroff -f
