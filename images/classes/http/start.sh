#!/bin/sh
# Class http: busybox httpd on $BROOD_PORT serving $BROOD_ROOT.
set -e
# Network: eth0 gets $BROOD_IP (CIDR) and an optional default route.
if [ -n "${BROOD_IP:-}" ]; then
    ip link set eth0 up
    ip addr add "$BROOD_IP" dev eth0
    if [ -n "${BROOD_GATEWAY:-}" ]; then ip route add default via "$BROOD_GATEWAY"; fi
fi
mkdir -p "$BROOD_ROOT"
[ -e "$BROOD_ROOT/index.html" ] || printf '%s\n' "$BROOD_INDEX" > "$BROOD_ROOT/index.html"
httpd -p "$BROOD_PORT" -h "$BROOD_ROOT"
