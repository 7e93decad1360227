#!/bin/sh
# Class syslog-tcp: every TCP connection on $BROOD_PORT appends its lines to $BROOD_FILE.
set -e
# Network: eth0 gets $BROOD_IP (CIDR) and an optional default route.
if [ -n "${BROOD_IP:-}" ]; then
    ip link set eth0 up
    ip addr add "$BROOD_IP" dev eth0
    if [ -n "${BROOD_GATEWAY:-}" ]; then ip route add default via "$BROOD_GATEWAY"; fi
fi
mkdir -p "$(dirname "$BROOD_FILE")"
touch "$BROOD_FILE"
syslogd -O /var/log/messages
cat > "$BROOD_SERVICE_DIR/recv" <<RECV
#!/bin/sh
exec cat >> "$BROOD_FILE"
RECV
chmod 700 "$BROOD_SERVICE_DIR/recv"
setsid nc -ll -p "$BROOD_PORT" -e "$BROOD_SERVICE_DIR/recv" </dev/null >/dev/null 2>&1 &
