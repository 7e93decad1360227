#!/bin/sh
# Class dns (service image): dnsmasq authoritative for $BROOD_DOMAIN.
set -e
# Network: eth0 gets $BROOD_IP (CIDR) and an optional default route.
if [ -n "${BROOD_IP:-}" ]; then
    ip link set eth0 up
    ip addr add "$BROOD_IP" dev eth0
    if [ -n "${BROOD_GATEWAY:-}" ]; then ip route add default via "$BROOD_GATEWAY"; fi
fi
: > /etc/brood-hosts
IFS=','; for h in $BROOD_HOSTS; do
    [ -n "$h" ] && echo "${h#*=} ${h%%=*}.$BROOD_DOMAIN ${h%%=*}" >> /etc/brood-hosts
done; unset IFS
set -- --no-resolv --no-hosts --addn-hosts=/etc/brood-hosts --local=/$BROOD_DOMAIN/ \
    --domain="$BROOD_DOMAIN" --pid-file=/run/dnsmasq.pid
[ -n "$BROOD_UPSTREAM" ] && set -- "$@" --server="$BROOD_UPSTREAM"
dnsmasq "$@"
