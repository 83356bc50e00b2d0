#!/usr/bin/env bash
# Real node processes on loopback, checking what the node core promises (a 4-validator digits
# network, the demo genesis, 3 s proposal timeout):
#   quorum   kill 2 of 4 validators, restart 1: seconds until rounds resume (TRIALS trials)
#   onedown  rounds/s with 4 up, then with 1 of 4 down (SECS seconds each)
#   rss      RSS and peak RSS of a validator with its anonymous and file-backed parts (RssAnon:
#            what the node allocated; RssFile: pages of the binary), at rounds RSS_AT (default
#            100, 1000, 2500, RSS_ROUNDS, 2 x RSS_ROUNDS); fails unless the peak at the last
#            round is within RSS_FLAT_KIB (default 512) of the peak at the first
#   wipe     a validator whose data dir is wiped at round WIPE_AT catches up
#   fair     how often each validator's delta is included in rounds 101..FAIR_ROUNDS (node 1
#            trains on the most data: the Dirichlet split gives shards of different sizes)
#   apiload  rounds/s quiet, then while node 0's API holds 1,000 idle connections, 100 clients
#            dripping a request head and 16 clients polling /round/1 (scripts/api-load.py);
#            the slowest of 10 /status requests during the load
# Usage: scripts/resilience.sh [quorum] [onedown] [rss] [wipe] [fair] [apiload]
#        (default: the first five)
# Env: COHORT (binary; default the dev build in ~/.cache/cohort/target), TRIALS=5, SECS=20,
#      RSS_ROUNDS=5000, WIPE_AT=2000, MIN_ROUND_MS (the genesis's, default 250).
#      Prints one `result:` line per measurement.
set -euo pipefail
BIN="${COHORT:-$HOME/.cache/cohort/target/debug/cohort}"
TRIALS="${TRIALS:-5}"
SECS="${SECS:-20}"
RSS_ROUNDS="${RSS_ROUNDS:-5000}"
WIPE_AT="${WIPE_AT:-2000}"
FAIR_ROUNDS="${FAIR_ROUNDS:-600}"
W=$(mktemp -d /tmp/cohort-resilience.XXXXXX)
cleanup() {
  for p in "$W"/n*/pid; do [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null || true; done
}
trap cleanup EXIT

setup() {
  cleanup
  rm -rf "${W:?}"/*
  local pubs=()
  for i in 0 1 2 3; do
    "$BIN" keygen --out "$W/n$i/node.key" >/dev/null
    pubs+=("$W/n$i/node.key.pub")
  done
  "$BIN" genesis --validators "$(IFS=,; echo "${pubs[*]}")" --chain-id resilience \
    --propose-ms 3000 --checkpoint-every 0 --out "$W/genesis.toml" >/dev/null
  if [ -n "${MIN_ROUND_MS:-}" ]; then
    sed -i "s/^min_round_ms = .*/min_round_ms = $MIN_ROUND_MS/" "$W/genesis.toml"
    grep -q "^min_round_ms = $MIN_ROUND_MS\$" "$W/genesis.toml" || { echo "min_round_ms not set" >&2; exit 1; }
  fi
}

start() {
  local i=$1
  local boot=()
  if [ "$i" != 0 ]; then boot=(--bootstrap "$(head -1 "$W/n0/data/listen.txt")"); fi
  rm -f "$W/n$i/data/api.txt"
  # In a subshell, so this shell does not report the kills it does on purpose.
  (RUST_LOG="${RUST_LOG:-warn,cohort::protocol::sync=info}" "$BIN" run --key "$W/n$i/node.key" \
    --genesis "$W/genesis.toml" --data-dir "$W/n$i/data" --shard "$i" --shards 4 \
    --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 --eval-every 0 "${boot[@]}" \
    >/dev/null 2>>"$W/n$i/log" & echo $! >"$W/n$i/pid")
  for _ in $(seq 100); do [ -s "$W/n$i/data/api.txt" ] && [ -s "$W/n$i/data/listen.txt" ] && return; sleep 0.1; done
  echo "node $i did not start" >&2; exit 1
}

kill_node() { kill -9 "$(cat "$W/n$1/pid")" 2>/dev/null || true; rm -f "$W/n$1/pid"; }

round() {
  curl -s --max-time 2 "http://$(cat "$W/n$1/data/api.txt")/status" 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["round"])' 2>/dev/null || echo -1
}

now() { date +%s.%N; }

wait_round() { # node, round, timeout seconds
  local end=$(( $(date +%s) + $3 ))
  while [ "$(round "$1")" -lt "$2" ]; do
    [ "$(date +%s)" -ge "$end" ] && return 1
    sleep 0.1
  done
}

start_all() { setup; for i in 0 1 2 3; do start "$i"; done; wait_round 0 5 60; }

quorum() {
  for t in $(seq "$TRIALS"); do
    start_all
    wait_round 0 20 60
    kill_node 2; kill_node 3
    sleep 5
    local r; r=$(round 0)
    start 3
    local t0; t0=$(now)
    if wait_round 0 $((r + 1)) 120; then
      local took; took=$(python3 -c "print(f'{$(now) - $t0:.1f}')")
      echo "result: quorum trial $t: resumed $took s after restarting 1 of the 2 killed (round $r)"
      # A trial over 8 s (near or past the issue's 10 s) keeps its logs too.
      if python3 -c "import sys; sys.exit(0 if $took > 8 else 1)"; then cp -r "$W" "$W.trial$t"; fi
    else
      echo "result: quorum trial $t: NOT resumed within 120 s (round $r); logs kept in $W.trial$t"
      cp -r "$W" "$W.trial$t"
    fi
  done
}

rate() { # seconds -> rounds/s at node 0
  local a t0; a=$(round 0); t0=$(now)
  sleep "$1"
  python3 -c "print(f'{($(round 0) - $a) / ($(now) - $t0):.2f}')"
}

onedown() {
  start_all
  wait_round 0 20 60
  echo "result: onedown all 4 up: $(rate "$SECS") rounds/s"
  kill_node 3
  sleep 5
  echo "result: onedown 1 of 4 down: $(rate "$SECS") rounds/s"
}

# VmHWM and VmRSS are the kernel's per-CPU counters, which may lag by up to 32 pages a CPU each;
# smaps_rollup's Rss walks the page tables: exact.
rss_of() {
  local p="/proc/$(cat "$W/n$1/pid")"
  awk '/VmRSS|VmHWM|RssAnon|RssFile/ {printf "%s %s KiB  ", $1, $2}' "$p/status"
  awk '/^Rss:/ {printf "exact Rss: %s KiB  ", $2}' "$p/smaps_rollup"
}

rss() {
  start_all
  local first="" last=""
  for r in ${RSS_AT:-100 1000 2500 $RSS_ROUNDS $((RSS_ROUNDS * 2))}; do
    wait_round 1 "$r" 3600
    echo "result: rss round $(round 1): $(rss_of 1)"
    last=$(awk '/VmHWM/ {print $2}' "/proc/$(cat "$W/n1/pid")/status")
    first=${first:-$last}
  done
  # Flat: the peak at the last round within RSS_FLAT_KIB (default 512 KiB) of the peak at the first.
  local grew=$((last - first)) tol=${RSS_FLAT_KIB:-512}
  if [ "$grew" -le "$tol" ]; then
    echo "result: rss flat: peak +$grew KiB from the first round measured to the last (at most $tol): PASS"
  else
    echo "result: rss flat: peak +$grew KiB from the first round measured to the last (more than $tol): FAIL"
    return 1
  fi
}

wipe() {
  start_all
  wait_round 0 "$WIPE_AT" 3600
  kill_node 3
  rm -rf "$W/n3/data"
  local r; r=$(round 0)
  start 3
  local t0; t0=$(now)
  if wait_round 3 "$r" 300; then
    echo "result: wipe at round $r: caught up in $(python3 -c "print(f'{$(now) - $t0:.1f}')") s; $(grep -c 'state synced' "$W/n3/log" || true) state syncs; ledger $(stat -c %s "$W/n3/data/ledger.log") bytes"
  else
    echo "result: wipe at round $r: NOT caught up within 300 s (at $(round 3))"
  fi
}

fair() {
  start_all
  wait_round 0 "$FAIR_ROUNDS" 3600
  local api; api=$(cat "$W/n0/data/api.txt")
  for r in $(seq 101 "$FAIR_ROUNDS"); do
    curl -s --max-time 5 "http://$api/round/$r" | python3 -c 'import json,sys; print(" ".join(i["author"][:8] for i in json.load(sys.stdin)["included"]))'
  done | tr ' ' '\n' | sort | uniq -c | while read -r count author; do
    echo "result: fair validator $author included in $count of $((FAIR_ROUNDS - 100)) rounds"
  done
}

apiload() {
  start_all
  wait_round 0 20 60
  echo "result: apiload quiet: $(rate "$SECS") rounds/s"
  # 1,000 idle sockets plus the rest need descriptors on both sides.
  ulimit -n 4096 2>/dev/null || true
  python3 "$(dirname "$0")/api-load.py" "$(cat "$W/n0/data/api.txt")" 1000 100 16 /round/1 \
    >"$W/load.out" 2>&1 &
  local load=$!
  sleep 5
  echo "result: apiload under load: $(rate "$SECS") rounds/s"
  local worst=0
  for _ in $(seq 10); do
    local t; t=$(curl -s -o /dev/null -w '%{time_total}' --max-time 10 "http://$(cat "$W/n0/data/api.txt")/status" || echo 10)
    worst=$(python3 -c "print(max($worst, $t))")
    sleep 0.5
  done
  kill -TERM "$load" 2>/dev/null || true
  wait "$load" 2>/dev/null || true
  echo "result: apiload slowest /status of 10 under load: ${worst} s; $(cat "$W/load.out")"
}

for what in "${@:-quorum onedown rss wipe fair}"; do
  for w in $what; do "$w"; done
done
