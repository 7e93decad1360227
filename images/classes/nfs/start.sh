#!/bin/sh
# Class nfs (service image): export $BROOD_EXPORT to $BROOD_CLIENTS.
set -e
# Network: eth0 gets $BROOD_IP (CIDR) and an optional default route.
if [ -n "${BROOD_IP:-}" ]; then
    ip link set eth0 up
    ip addr add "$BROOD_IP" dev eth0
    if [ -n "${BROOD_GATEWAY:-}" ]; then ip route add default via "$BROOD_GATEWAY"; fi
fi
mkdir -p "$BROOD_EXPORT" /proc/fs/nfsd
mountpoint -q /proc/fs/nfsd || mount -t nfsd nfsd /proc/fs/nfsd
echo "$BROOD_EXPORT $BROOD_CLIENTS(rw,sync,no_subtree_check,no_root_squash)" > /etc/exports
rpcbind
exportfs -ra
rpc.nfsd 8
rpc.mountd
