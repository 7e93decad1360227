#!/bin/sh
# Ready when httpd serves index.html on its port.
. "$BROOD_SERVICE_DIR/env"
wget -q -T 2 -O /dev/null "http://127.0.0.1:$BROOD_PORT/index.html"
