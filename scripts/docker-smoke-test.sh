#!/usr/bin/env bash
# Docker compose smoke test of the cohort testnet (for CI; needs a Docker engine, no registry).
#
#  1. builds the static binary and the FROM scratch image (scripts/docker-build.sh)
#  2. `compose up -d` node0..node3 under a private compose project (its init service makes
#     the keys and the genesis in the project's volume first)
#  3. waits until all 4 report round >= 5 with equal model hashes (GET /status)
#  4. stops node2, waits for the other 3 to commit 2 more rounds
#  5. starts node2, waits until it is at the same round with the same model hash
#  6. cuts node1 off the network (a minority partition), waits for the other 3 to commit 2
#     more rounds, heals it, waits until it has caught up with the same hash
#  7. starts the joiner (--join): it becomes a validator (node0 reports 5 validators) and
#     follows with the same hash; 110 rounds later there are still 5 (nobody left out after the
#     partition) (SMOKE_JOINER=0 skips 7)
# "Equal hashes" = the nodes' records of the highest round they have all committed
# (GET /round/R) carry one model_hash (or one GET /status snapshot shows one round and hash):
# rounds on the digits data can be far shorter than a polling interval.
# Everything is torn down on exit (trap). Exits non-zero with a message on failure.
#
# Environment:
#   SMOKE_SKIP_BUILD=1     use the existing image, do not run cargo/docker build
#   SMOKE_SKIP_CARGO=1     docker build from the already built binary (docker-build.sh --no-cargo)
#   SMOKE_TIMEOUT=600      seconds allowed for the first 5 rounds (includes startup)
#   SMOKE_STEP_TIMEOUT=300 seconds allowed for each later step
#   SMOKE_MIN_ROUND=5      round all nodes must reach first
#   SMOKE_PORT_BASE=18080  host ports: node0 = base .. joiner = base+4 (on 127.0.0.1)
#   SMOKE_JOINER=1         check that the joiner becomes a validator (0: skip)
#   SMOKE_KEEP=1           leave the testnet running on exit (debugging)
#   SMOKE_HTTP, SMOKE_JSON force the HTTP client (curl|wget|tcp) / JSON parser (jq|python3|sed)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
COHORT_PROJECT="${COHORT_PROJECT:-cohortsmoke$$}"
export COHORT_PROJECT
# shellcheck source=scripts/testnet-lib.sh
source "$here/testnet-lib.sh"

timeout_first="${SMOKE_TIMEOUT:-600}"
timeout_step="${SMOKE_STEP_TIMEOUT:-300}"
min_round="${SMOKE_MIN_ROUND:-5}"
port_base="${SMOKE_PORT_BASE:-18080}"
validators=(node0 node1 node2 node3)
declare -A port=(
    [node0]=$port_base [node1]=$((port_base + 1)) [node2]=$((port_base + 2))
    [node3]=$((port_base + 3)) [joiner]=$((port_base + 4))
)
export NODE0_API_PORT=${port[node0]} NODE1_API_PORT=${port[node1]} NODE2_API_PORT=${port[node2]}
export NODE3_API_PORT=${port[node3]} JOINER_API_PORT=${port[joiner]}

fail() {
    echo "SMOKE TEST FAILED: $*" >&2
    dump_state
    exit 1
}

# --- HTTP GET without depending on curl ------------------------------------------------
# http_get PORT PATH: the response body on stdout; non-zero on any failure or timeout.
# SMOKE_HTTP=curl|wget|tcp forces a client (default: the first of them that exists).
http_client="${SMOKE_HTTP:-}"
if [[ -z "$http_client" ]]; then
    http_client=tcp
    if command -v wget >/dev/null 2>&1; then http_client=wget; fi
    if command -v curl >/dev/null 2>&1; then http_client=curl; fi
fi
if [[ "$http_client" == curl ]]; then
    http_get() { curl -fsS --connect-timeout 2 --max-time 5 "http://127.0.0.1:$1$2"; }
elif [[ "$http_client" == wget ]]; then
    http_get() { wget -q -T 5 -t 1 -O - "http://127.0.0.1:$1$2"; }
else
    # bash's /dev/tcp; HTTP/1.0 so the body is not chunked; bounded by read -t and a deadline.
    http_get() {
        local resp="" line="" rc end=$((SECONDS + 5))
        exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
        printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3
        while ((SECONDS < end)); do
            if IFS= read -r -t 2 line <&3; then
                resp+="$line"$'\n'
            else
                rc=$?
                resp+="$line"
                ((rc > 128)) || break # EOF (not a timeout): done
            fi
            line=""
        done
        exec 3<&-
        [[ "$resp" =~ ^HTTP/[0-9.]+\ 200 ]] || return 1
        resp="${resp#*$'\r\n\r\n'}"
        printf '%s\n' "${resp//$'\r'/}"
    }
fi

# json_field NAME: the top-level field NAME of the JSON object on stdin (string or number).
# SMOKE_JSON=jq|python3|sed forces a parser (default: the first of them that exists).
json_parser="${SMOKE_JSON:-}"
if [[ -z "$json_parser" ]]; then
    json_parser="sed"
    if command -v python3 >/dev/null 2>&1; then json_parser=python3; fi
    if command -v jq >/dev/null 2>&1; then json_parser=jq; fi
fi
if [[ "$json_parser" == jq ]]; then
    json_field() { jq -er --arg k "$1" '.[$k] | if type == "string" or type == "number" then . else error("bad") end' 2>/dev/null; }
elif [[ "$json_parser" == python3 ]]; then
    json_field() { python3 -c 'import json,sys; v=json.load(sys.stdin)[sys.argv[1]]; print(v)' "$1" 2>/dev/null; }
else
    # Good enough for a flat object: the first "NAME": value.
    json_field() {
        tr -d '\n' | grep -oE "\"$1\"[[:space:]]*:[[:space:]]*(\"[^\"]*\"|[0-9]+)" | head -n 1 \
            | sed -E 's/^[^:]*:[[:space:]]*"?([^"]*)"?$/\1/' | grep .
    }
fi

# status NAME: sets ROUND[NAME] and HASH[NAME] ("" / -1 when the node does not answer).
declare -A ROUND HASH
status() {
    local body r h
    ROUND[$1]=-1
    HASH[$1]=""
    body="$(http_get "${port[$1]}" /status 2>/dev/null)" || return 1
    r="$(json_field round <<<"$body")" || return 1
    h="$(json_field model_hash <<<"$body")" || return 1
    [[ "$r" =~ ^[0-9]+$ ]] || return 1
    ROUND[$1]=$r
    HASH[$1]=$h
}

summary() {
    local n out=""
    for n in "$@"; do out+="$n=r${ROUND[$n]:--1}:${HASH[$n]:0:12} "; done
    echo "$out"
}

# wait_for SECONDS DESCRIPTION CHECK_FUNCTION NODES...: polls every second until
# CHECK_FUNCTION succeeds (after refreshing the status of NODES) or the time runs out.
wait_for() {
    local limit=$1 what=$2 check=$3 deadline last_print=0 n now
    shift 3
    deadline=$(($(date +%s) + limit))
    log "waiting (up to ${limit}s) for: $what"
    while :; do
        for n in "$@"; do status "$n" || true; done
        if "$check" "$@"; then
            log "ok: $what -- $CHECKED -- $(summary "$@")"
            return 0
        fi
        now=$(date +%s)
        ((now < deadline)) || fail "timed out after ${limit}s waiting for: $what -- $(summary "$@")"
        if ((now - last_print >= 15)); then
            log "  ... $(summary "$@")"
            last_print=$now
        fi
        sleep 1
    done
}

# round_hash NAME R: the model hash in node NAME's record of committed round R (GET /round/R).
round_hash() {
    local body
    body="$(http_get "${port[$1]}" "/round/$2" 2>/dev/null)" || return 1
    json_field model_hash <<<"$body"
}

# all_synced NODES...: every node has committed round >= TARGET, and they agree on the model:
# the /round/R records of R = the highest round they have all committed carry one model hash
# (robust however fast rounds go), or else one /status snapshot shows them all at one round
# with one hash. Different hashes for the same committed round fail the test at once.
TARGET=0
CHECKED=""
all_synced() {
    local n h rh min=-1 same=1
    for n in "$@"; do
        ((ROUND[$n] >= TARGET)) || return 1
        if ((min < 0 || ROUND[$n] < min)); then min=${ROUND[$n]}; fi
        [[ "${HASH[$n]}" == "${HASH[$1]}" && "${ROUND[$n]}" == "${ROUND[$1]}" ]] || same=0
    done
    h=""
    for n in "$@"; do
        if ! rh="$(round_hash "$n" "$min")" || [[ -z "$rh" ]]; then
            h=""
            break
        fi
        [[ -n "$h" ]] || h="$rh"
        [[ "$rh" == "$h" ]] || fail "different model hashes for committed round $min: $1=${h:0:16} $n=${rh:0:16}"
    done
    if [[ -n "$h" ]]; then
        CHECKED="round $min: every node's /round/$min has model hash ${h:0:16}"
        return 0
    fi
    if ((same)); then
        CHECKED="/status: all at round ${ROUND[$1]} with model hash ${HASH[$1]:0:16}"
        return 0
    fi
    return 1
}

dump_state() {
    set +e
    echo "---- state of compose project $COHORT_PROJECT ----" >&2
    compose --profile joiner ps >&2 2>&1
    local n
    for n in "${validators[@]}" joiner; do
        echo "---- $n: /status ----" >&2
        http_get "${port[$n]}" /status >&2 2>&1
        echo "---- $n: last 40 log lines ----" >&2
        compose --profile joiner logs --no-color --tail=40 "$n" >&2 2>&1
    done
    set -e
}

cleanup() {
    local rc=$?
    set +e
    if [[ "${SMOKE_KEEP:-0}" == 1 ]]; then
        log "SMOKE_KEEP=1: leaving project $COHORT_PROJECT up;" \
            "tear down with: COHORT_PROJECT=$COHORT_PROJECT scripts/testnet-down.sh"
    else
        log "tearing down project $COHORT_PROJECT"
        compose --profile joiner down -v --remove-orphans --timeout 10 >/dev/null 2>&1
    fi
    if ((rc == 0)); then log "SMOKE TEST PASSED"; fi
    exit "$rc"
}

# --- 1. image ----------------------------------------------------------------------------
command -v docker >/dev/null 2>&1 || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine"
detect_compose
log "compose: ${COMPOSE_CMD[*]}; project: $COHORT_PROJECT; API ports: $port_base..$((port_base + 4));" \
    "HTTP client: $http_client; JSON: $json_parser"
if [[ "${SMOKE_SKIP_BUILD:-0}" == 1 ]]; then
    docker image inspect "$COHORT_IMAGE" >/dev/null 2>&1 || die "SMOKE_SKIP_BUILD=1 but no image $COHORT_IMAGE"
elif [[ "${SMOKE_SKIP_CARGO:-0}" == 1 ]]; then
    "$here/docker-build.sh" --no-cargo --tag "$COHORT_IMAGE"
else
    "$here/docker-build.sh" --tag "$COHORT_IMAGE"
fi

trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 2. up (init first) ---------------------------------------------------------------------------
compose up -d --no-build "${validators[@]}"

# --- 3. first rounds -----------------------------------------------------------------
TARGET=$min_round
wait_for "$timeout_first" "node0..node3 at round >= $TARGET with equal model hashes" \
    all_synced "${validators[@]}"

# --- 4. stop node2, the others go on -------------------------------------------------
others=(node0 node1 node3)
"$here/node-stop.sh" node2
! status node2 || fail "node2 still answers on port ${port[node2]} after it was stopped"
# Two rounds past the highest round any of the others reports once node2 is down.
base=${ROUND[node0]}
for n in "${others[@]}"; do
    if status "$n" && ((ROUND[$n] > base)); then base=${ROUND[$n]}; fi
done
TARGET=$((base + 2))
wait_for "$timeout_step" "node0, node1, node3 at round >= $TARGET without node2" \
    all_synced "${others[@]}"

# --- 5. restart node2, it catches up -------------------------------------------------
"$here/node-start.sh" node2
# Caught up = at least at the round the others had reached when it came back.
for n in "${others[@]}"; do
    if status "$n" && ((ROUND[$n] > TARGET)); then TARGET=${ROUND[$n]}; fi
done
wait_for "$timeout_step" "node2 restarted and caught up (round >= $TARGET, same hash)" \
    all_synced "${validators[@]}"

# --- 6. a minority partition heals -----------------------------------------------------
majority=(node0 node2 node3)
"$here/node-partition.sh" node1
base=${ROUND[node0]}
for n in "${majority[@]}"; do
    if status "$n" && ((ROUND[$n] > base)); then base=${ROUND[$n]}; fi
done
TARGET=$((base + 2))
wait_for "$timeout_step" "node0, node2, node3 at round >= $TARGET with node1 cut off" \
    all_synced "${majority[@]}"
"$here/node-heal.sh" node1
for n in "${majority[@]}"; do
    if status "$n" && ((ROUND[$n] > TARGET)); then TARGET=${ROUND[$n]}; fi
done
wait_for "$timeout_step" "node1 back from the partition and caught up (round >= $TARGET)" \
    all_synced "${validators[@]}"

# --- 7. the joiner becomes a validator ---------------------------------------------------
if [[ "${SMOKE_JOINER:-1}" == 1 ]]; then
    "$here/node-start.sh" joiner
    VALIDATORS=0
    five_validators() {
        local body v
        body="$(http_get "${port[node0]}" /status 2>/dev/null)" || return 1
        v="$(json_field validators <<<"$body")" || return 1
        VALIDATORS=$v
        CHECKED="node0 counts $v validators"
        ((v == 5))
    }
    wait_for "$timeout_step" "the joiner admitted as a validator (node0 counts 5)" five_validators node0
    TARGET=$((ROUND[node0] + 2))
    wait_for "$timeout_step" "the joiner follows with the validators' model hash" \
        all_synced "${validators[@]}" joiner
    # --- 8. nobody was left out: past a whole downtime window (W = 100 rounds) after the
    # partition healed, still 5 validators. (A validator back from a partition used to be
    # never waited for, never included, and removed here.)
    TARGET=$((ROUND[node0] + 110))
    wait_for "$timeout_step" "round >= $TARGET" all_synced node0
    five_validators node0 || fail "a validator was removed after the partition: node0 counts $VALIDATORS"
    log "ok: still 5 validators at round ${ROUND[node0]}"
fi

log "final: $(summary "${validators[@]}")"
