#!/usr/bin/env bash
# Show the devices (keys, free / pending) registered at a tracker.
#   rpc/query_tracker.sh [HOST] [PORT]        (default 127.0.0.1 9190)
set -euo pipefail
exec "${PYTHON:-python3}" -m tvm.exec.query_rpc_tracker --host "${1:-127.0.0.1}" --port "${2:-9190}"
