#!/bin/sh
# Ready when the ruleset is loaded and forwarding (or the bridge) is on.
nft list table inet brood_switch >/dev/null || exit 1
[ "$(cat /proc/sys/net/ipv4/ip_forward)" = 1 ] || ip link show br0 >/dev/null
