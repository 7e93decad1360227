#!/bin/sh
# Ready when a line sent to the sink is stored.
. "$BROOD_SERVICE_DIR/env"
line="brood-probe-$$-$(date +%s)"
echo "<14>$line" | nc -w 2 127.0.0.1 "$BROOD_PORT" || exit 1
i=0
while [ $i -lt 20 ]; do
    grep -q "$line" "$BROOD_FILE" && exit 0
    usleep 20000; i=$((i+1))
done
exit 1
