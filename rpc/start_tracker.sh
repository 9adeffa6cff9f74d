#!/usr/bin/env bash
# Start a TVM RPC tracker in the foreground.
#   rpc/start_tracker.sh [HOST] [PORT]        (default 127.0.0.1 9190)
# The tracker has no authentication and its devices run any code sent to them: bind it to
# 127.0.0.1, or to a LAN address only on a network you trust (see rpc/README.md).
set -euo pipefail
host=${1:-127.0.0.1}
port=${2:-9190}
exec "${PYTHON:-python3}" -m tvm.exec.rpc_tracker --host "$host" --port "$port" --port-end "$((port + 1))"
