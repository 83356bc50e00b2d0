#!/usr/bin/env bash
# Cuts one running node off the testnet network: scripts/node-partition.sh NAME
# The process keeps running but can reach no peer (and its published API port stops
# answering, since that is forwarded over the same network). Undo: scripts/node-heal.sh NAME
set -euo pipefail
# shellcheck source=scripts/testnet-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/testnet-lib.sh"
name="${1:-}"
check_service_name "$name"
cid="$(container_id "$name")"
net="$(testnet_network)"
docker network disconnect "$net" "$cid"
log "$name disconnected from $net"
