#!/bin/sh
# Ready when httpd serves index.html on its port. (busybox-static's wget
# crashes resolving even a literal address, so the request goes through nc;
# the status line is read with shell builtins: one process fewer to start.)
. "$BROOD_SERVICE_DIR/env"
printf 'GET /index.html HTTP/1.0\r\n\r\n' | nc -w 2 127.0.0.1 "$BROOD_PORT" | {
    read -r status || exit 1
    case "$status" in *" 200 "*) exit 0 ;; esac
    exit 1
}
