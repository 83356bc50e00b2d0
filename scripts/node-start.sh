#!/usr/bin/env bash
# (Re)starts one testnet node: scripts/node-start.sh NAME   (node0..node3 or joiner)
# A stopped node resumes from its data volume; a node that was never created (e.g. the
# joiner, under the "joiner" compose profile) is created and started.
set -euo pipefail
# shellcheck source=scripts/testnet-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/testnet-lib.sh"
name="${1:-}"
check_service_name "$name"
profile=()
[[ "$name" != joiner ]] || profile=(--profile joiner)
# `up -d --no-deps NAME` starts an existing container as-is, or creates a missing one
# (building the image only if it does not exist yet).
compose "${profile[@]}" up -d --no-deps "$name"
log "$name started"
