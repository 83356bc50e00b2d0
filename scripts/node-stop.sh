#!/usr/bin/env bash
# Stops one testnet node: scripts/node-stop.sh NAME [--kill]
#   NAME    node0..node3 or joiner
#   --kill  SIGKILL instead of a clean stop (SIGTERM, then SIGKILL after the grace period)
# Its container and data volume are kept: scripts/node-start.sh NAME resumes it from disk.
set -euo pipefail
# shellcheck source=scripts/testnet-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/testnet-lib.sh"
name="${1:-}"
check_service_name "$name"
if [[ "${2:-}" == "--kill" ]]; then
    compose kill -s SIGKILL "$name"
else
    [[ -z "${2:-}" ]] || die "unknown option $2"
    compose stop "$name"
fi
log "$name stopped"
