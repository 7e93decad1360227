#!/bin/sh
# Ready when dnsmasq answers a query (its own version record).
. "$BROOD_SERVICE_DIR/env"
dig +short +time=1 +tries=1 @127.0.0.1 version.bind chaos txt | grep -q .
