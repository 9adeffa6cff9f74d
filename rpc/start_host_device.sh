#!/usr/bin/env bash
# Register this machine's CPU as a device at a tracker, in the foreground.
#   rpc/start_host_device.sh [TRACKER_HOST:PORT] [KEY] [THREADS]   (default 127.0.0.1:9190 host 1)
# The server binds 127.0.0.1: it runs whatever code it is sent.
set -euo pipefail
tracker=${1:-127.0.0.1:9190}
key=${2:-host}
export TVM_NUM_THREADS=${3:-1}
exec "${PYTHON:-python3}" -m tvm.exec.rpc_server --host 127.0.0.1 --port 9090 --port-end 9190 \
    --tracker "$tracker" --key "$key"
