#!/bin/sh
# Class dhcp (service image): dnsmasq with DNS off, serving $BROOD_RANGE on eth0.
set -e
# Network: eth0 gets $BROOD_IP (CIDR) and an optional default route.
if [ -n "${BROOD_IP:-}" ]; then
    ip link set eth0 up
    ip addr add "$BROOD_IP" dev eth0
    if [ -n "${BROOD_GATEWAY:-}" ]; then ip route add default via "$BROOD_GATEWAY"; fi
fi
[ -n "$BROOD_RANGE" ] || { echo "dhcp: set range=first,last,lease" >&2; exit 1; }
set -- --port=0 --interface=eth0 --dhcp-range="$BROOD_RANGE" --pid-file=/run/dnsmasq.pid
[ -n "$BROOD_ROUTER" ] && set -- "$@" --dhcp-option=option:router,"$BROOD_ROUTER"
dnsmasq "$@"
