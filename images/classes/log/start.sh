#!/bin/sh
# Class log (service image): rsyslogd receives syslog on UDP and TCP
# $BROOD_PORT (and the member's own /dev/log) and appends every message,
# with the sender's address, to $BROOD_FILE.
set -e
# Network: eth0 gets $BROOD_IP (CIDR) and an optional default route.
if [ -n "${BROOD_IP:-}" ]; then
    ip link set eth0 up
    ip addr add "$BROOD_IP" dev eth0
    if [ -n "${BROOD_GATEWAY:-}" ]; then ip route add default via "$BROOD_GATEWAY"; fi
fi
mkdir -p "$(dirname "$BROOD_FILE")" /var/spool/rsyslog
touch "$BROOD_FILE"
conf="$BROOD_SERVICE_DIR/rsyslog.conf"
cat > "$conf" <<CONF
global(workDirectory="/var/spool/rsyslog")
module(load="imuxsock")
module(load="imudp")
input(type="imudp" port="$BROOD_PORT")
module(load="imtcp" MaxSessions="256")
input(type="imtcp" port="$BROOD_PORT")
template(name="brood" type="string" string="%timegenerated:::date-rfc3339% %fromhost-ip% %syslogtag%%msg:::sp-if-no-1st-sp%%msg:::drop-last-lf%\n")
*.* action(type="omfile" file="$BROOD_FILE" template="brood")
CONF
rsyslogd -f "$conf" -i "$BROOD_SERVICE_DIR/rsyslogd.pid"
