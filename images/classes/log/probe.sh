#!/bin/sh
# Ready when a line sent over UDP and one sent over TCP are both stored.
. "$BROOD_SERVICE_DIR/env"
tag="brood-probe-$$-$(date +%s%N)"
logger -n 127.0.0.1 -P "$BROOD_PORT" -d -t probe "$tag-udp" || exit 1
logger -n 127.0.0.1 -P "$BROOD_PORT" -T -t probe "$tag-tcp" || exit 1
i=0
while [ $i -lt 50 ]; do
    if grep -q "$tag-udp" "$BROOD_FILE" && grep -q "$tag-tcp" "$BROOD_FILE"; then exit 0; fi
    sleep 0.02; i=$((i+1))
done
exit 1
