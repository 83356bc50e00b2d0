#!/usr/bin/env bash
# Reconnects a node cut off by scripts/node-partition.sh: scripts/node-heal.sh NAME
# The service name is restored as a DNS alias so /dns4/NAME/... addresses resolve again.
set -euo pipefail
# shellcheck source=scripts/testnet-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/testnet-lib.sh"
name="${1:-}"
check_service_name "$name"
cid="$(container_id "$name")"
net="$(testnet_network)"
if docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$cid" | grep -qw -- "$net"; then
    log "$name is already connected to $net"
    exit 0
fi
docker network connect --alias "$name" "$net" "$cid"
log "$name reconnected to $net"
