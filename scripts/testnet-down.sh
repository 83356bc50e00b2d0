#!/usr/bin/env bash
# Tears the compose testnet down: containers (the joiner included), the network and the
# nodes' data volumes. Usage: scripts/testnet-down.sh [--keep-data] [--keys]
#   --keep-data  keep the named data volumes (the chain survives the next `up`)
#   --keys       also delete the generated keys, genesis and .env (docker/testnet/, ./.env)
set -euo pipefail
# shellcheck source=scripts/testnet-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/testnet-lib.sh"
volumes=(-v)
keys=0
for arg in "$@"; do
    case "$arg" in
        --keep-data) volumes=() ;;
        --keys) keys=1 ;;
        *) die "unknown argument $arg" ;;
    esac
done
# Compose refuses to parse the file without the PeerIds; any value does for `down`.
for v in NODE0_PEER NODE1_PEER NODE2_PEER NODE3_PEER JOINER_PEER; do
    export "$v=${!v:-unset}"
done
compose --profile joiner down "${volumes[@]}" --remove-orphans --timeout 20
if [[ $keys -eq 1 ]]; then
    rm -rf "${COHORT_TESTNET_DIR:?}"
    if [[ -f "$COHORT_ROOT/.env" ]] && head -n 1 "$COHORT_ROOT/.env" | grep -q 'scripts/testnet-keys.sh'; then
        rm -f "$COHORT_ROOT/.env"
    fi
    log "removed $COHORT_TESTNET_DIR"
fi
log "testnet '$COHORT_PROJECT' is down"
