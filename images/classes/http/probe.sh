#!/bin/sh
# Ready when httpd serves index.html on its port. (busybox-static's wget
# crashes resolving even a literal address, so the request goes through nc.)
. "$BROOD_SERVICE_DIR/env"
printf 'GET /index.html HTTP/1.0\r\n\r\n' | nc -w 2 127.0.0.1 "$BROOD_PORT" | head -n 1 | grep -q ' 200 '
