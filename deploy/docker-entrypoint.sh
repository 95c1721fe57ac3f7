#!/bin/sh
# The container's entry point: the vault on 0.0.0.0:8080 with its cache in the volume, on the
# config mounted at /etc/artifactvault/config.yml or, without one, the embedded default.
# Extra arguments go to the artifactvault command (e.g. --log-format json, --log-level debug).
set -eu
CONFIG=/etc/artifactvault/config.yml
if [ -f "$CONFIG" ]; then
  set -- --config "$CONFIG" "$@"
fi
exec twistd --nodaemon --pidfile= artifactvault --listen tcp:8080:interface=0.0.0.0 \
  --cache-dir /var/cache/artifactvault "$@"
