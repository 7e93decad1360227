#!/bin/sh
# Class switch (service image): bridge or route between the NICs.
set -e
nics=$(ls /sys/class/net | grep '^eth')
if [ "$BROOD_MODE" = bridge ]; then
    ip link add br0 type bridge
    for n in $nics; do ip link set "$n" master br0; ip link set "$n" up; done
    ip link set br0 up
    if [ -n "${BROOD_IP:-}" ]; then ip addr add "$BROOD_IP" dev br0; fi
else
    IFS=','; for a in $BROOD_ADDRESSES; do
        unset IFS; ip link set "${a%%=*}" up; ip addr add "${a#*=}" dev "${a%%=*}"
    done; unset IFS
    sysctl -q -w net.ipv4.ip_forward=1
fi
nft -f - <<NFT
table inet brood_switch {
    chain forward { type filter hook forward priority 0; policy accept; }
}
NFT
