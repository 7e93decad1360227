#!/bin/sh
# Ready when the export is listed by mountd.
. "$BROOD_SERVICE_DIR/env"
showmount -e 127.0.0.1 | grep -q "^$BROOD_EXPORT "
