#!/bin/sh
# Ready when dnsmasq listens on the DHCP port.
ss -lun 'sport = :67' | grep -q ':67'
