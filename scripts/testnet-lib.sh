# shellcheck shell=bash
# Shared helpers for the docker compose testnet scripts (sourced, not executed).
#
# Environment (all optional):
#   COHORT_PROJECT       compose project name                       (default: cohort)
#   COHORT_IMAGE         image tag built by docker-build.sh          (default: cohort:dev)
#   COMPOSE              compose command to use, e.g. "docker-compose" (default: autodetect)

COHORT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COHORT_PROJECT="${COHORT_PROJECT:-cohort}"
COHORT_IMAGE="${COHORT_IMAGE:-cohort:dev}"
export COHORT_ROOT COHORT_PROJECT COHORT_IMAGE

die() {
    echo "error: $*" >&2
    exit 1
}

log() {
    echo "[$(date -u +%H:%M:%S)] $*" >&2
}

# Sets the COMPOSE_CMD array to `docker compose` (v2 plugin) or `docker-compose` (v1).
detect_compose() {
    if [[ -n "${COMPOSE:-}" ]]; then
        read -r -a COMPOSE_CMD <<<"$COMPOSE"
    elif docker compose version >/dev/null 2>&1; then
        COMPOSE_CMD=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        COMPOSE_CMD=(docker-compose)
    else
        die "neither 'docker compose' nor 'docker-compose' is available"
    fi
}

# compose ARGS...: runs compose on the repository's docker-compose.yml for this project (keys
# and genesis live in the project's `testnet` volume, made by its init service).
compose() {
    [[ -n "${COMPOSE_CMD[*]:-}" ]] || detect_compose
    "${COMPOSE_CMD[@]}" -p "$COHORT_PROJECT" -f "$COHORT_ROOT/docker-compose.yml" "$@"
}

# The services the scripts accept as NAME.
check_service_name() {
    case "${1:-}" in
        node0 | node1 | node2 | node3 | joiner) ;;
        *) die "unknown node '${1:-}' (expected node0..node3 or joiner)" ;;
    esac
}

# container_id NAME: the id of the service's container (running or stopped).
container_id() {
    local id
    id="$(compose ps -q "$1" 2>/dev/null | head -n 1)"
    [[ -n "$id" ]] || die "no container for service '$1' in project '$COHORT_PROJECT' (is the testnet up?)"
    echo "$id"
}

# testnet_network: the name of the project's private bridge network (compose labels it).
testnet_network() {
    local net
    net="$(docker network ls -q \
        --filter "label=com.docker.compose.project=$COHORT_PROJECT" \
        --filter "label=com.docker.compose.network=testnet" | head -n 1)"
    [[ -n "$net" ]] || die "no 'testnet' network for compose project '$COHORT_PROJECT' (is the testnet up?)"
    docker network inspect -f '{{.Name}}' "$net"
}
