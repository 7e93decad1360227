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
    for n in $nics; do ip link set "$n" up; done
    sysctl -q -w net.ipv4.ip_forward=1
fi
# Rules from the configuration: statements for the forward chain
# (`forward_rules`, `;`-separated) and the NICs whose outgoing traffic is
# masqueraded (`masquerade`, `,`-separated).
nl='
'
masq=""
IFS=','; for n in $BROOD_MASQUERADE; do
    [ -n "$n" ] && masq="$masq${nl}oifname \"$n\" masquerade"
done; unset IFS
fwd=$(printf '%s\n' "$BROOD_FORWARD_RULES" | tr ';' '\n')
nft -f - <<NFT
table inet brood_switch {
    chain forward {
        type filter hook forward priority 0; policy accept;
$fwd
    }
    chain postrouting {
        type nat hook postrouting priority 100;
$masq
    }
}
NFT
