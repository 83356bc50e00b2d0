#!/usr/bin/env bash
# Tears the compose testnet down: containers (the joiner included), the network and the
# nodes' data volumes and the testnet volume (keys, genesis). Usage:
#   scripts/testnet-down.sh [--keep-data]
#   --keep-data  keep the named volumes (the chain and its keys survive the next `up`)
set -euo pipefail
# shellcheck source=scripts/testnet-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/testnet-lib.sh"
volumes=(-v)
for arg in "$@"; do
    case "$arg" in
        --keep-data) volumes=() ;;
        *) die "unknown argument $arg" ;;
    esac
done
compose --profile joiner down "${volumes[@]}" --remove-orphans --timeout 20
log "testnet '$COHORT_PROJECT' is down"
