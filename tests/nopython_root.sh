#!/bin/bash
# Run a command inside a Debian root that has no Python (built by .ci/nopython-root), the way
# .ci/other-release enters its roots: new mount and PID namespaces (unshare), the root's own
# /proc, /dev (null, zero, random, urandom, tty, kvm), /tmp and /run, and DIR bind-mounted at the
# same path so that the host sees the files the command writes there.
#   tests/nopython_root.sh ROOT DIR -- COMMAND...
set -euo pipefail
if [ "${1:-}" = "--inside" ]; then
    R=$2 DIR=$3
    shift 4
    mount -t proc proc "$R/proc"
    mount -t tmpfs -o mode=0755,nosuid tmpfs "$R/dev"
    for node in null zero full random urandom tty; do
        touch "$R/dev/$node"
        mount --bind "/dev/$node" "$R/dev/$node"
    done
    [ -c /dev/kvm ] && { touch "$R/dev/kvm"; mount --bind /dev/kvm "$R/dev/kvm"; }
    mkdir -p "$R/dev/shm" && mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R/run"
    mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
    cp /etc/hosts "$R/etc/hosts"
    mkdir -p "$R$DIR"
    mount --bind "$DIR" "$R$DIR"
    # No exec: this shell is PID 1 of the namespace; when it returns, everything in it ends.
    chroot "$R" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C LC_ALL=C "$@"
    exit $?
fi
ROOT=$1 DIR=$2
[ "$3" = "--" ] || { echo "usage: $0 ROOT DIR -- COMMAND..." >&2; exit 2; }
shift 3
exec unshare --mount --propagation private --pid --fork --kill-child -- "$0" --inside "$ROOT" "$DIR" -- "$@"
