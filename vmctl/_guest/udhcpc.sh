#!/bin/sh
# udhcpc event script of the vmctl test guest: configure eth0 from the lease.
case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface"
        ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip -4 addr add "$ip/${mask:-24}" dev "$interface"
        for gw in $router; do
            ip -4 route add default via "$gw" dev "$interface" && break
        done
        : >/etc/resolv.conf
        for ns in $dns; do echo "nameserver $ns" >>/etc/resolv.conf; done
        [ "$1" = bound ] && echo "VMCTL-GUEST DHCP ip=$ip" >/dev/console
        ;;
esac
exit 0
