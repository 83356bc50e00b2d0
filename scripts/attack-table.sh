#!/usr/bin/env bash
# Rule x attack table with `cohort simulate` on MNIST (2 of 8 nodes Byzantine).
# Usage: scripts/attack-table.sh [MNIST_DIR] [ROUNDS] [OUT_CSV]
# Writes one CSV row per (rule, attack) and prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/mnist}
ROUNDS=${2:-50}
OUT=${3:-bench/results/attack-table.csv}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cohort/target}"
cargo build -q --release -p node --bin cohort
BIN="${COHORT_BIN:-$CARGO_TARGET_DIR/release/cohort}"
COMMON=(simulate --dataset mnist --data-dir "$DATA" --model mlp --nodes 8 --partition dirichlet:0.5
  --rounds "$ROUNDS" --local-steps 23 --batch 32 --optimizer sgd:0.05,0.9 --server-momentum 0.5
  --eval-every "$ROUNDS")
# multi-krum:2 keeps m = n - f; nnm+ mixes each delta with its n - f nearest first (see README).
RULES=(mean median trimmed-mean:0.25 multi-krum:2 centered-clip:1.0,3
  nnm+median nnm+trimmed-mean:0.25 nnm+centered-clip:0.1,3)
ATTACKS=(none sign-flip:10 gaussian:1 alie label-flip zeros)
mkdir -p "$(dirname "$OUT")"
echo "rule,attack,accuracy" > "$OUT"
for rule in "${RULES[@]}"; do
  for attack in "${ATTACKS[@]}"; do
    extra=()
    [ "$attack" != none ] && extra=(--byzantine "2:$attack")
    acc=$("$BIN" "${COMMON[@]}" --rule "$rule" "${extra[@]}" | awk '/^final:/ {gsub("%","",$3); print $3}')
    echo "\"$rule\",$attack,$acc" | tee -a "$OUT" >&2
  done
done
python3 - "$OUT" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
attacks = list(dict.fromkeys(r["attack"] for r in rows))
rules = list(dict.fromkeys(r["rule"] for r in rows))
acc = {(r["rule"], r["attack"]): r["accuracy"] for r in rows}
print("| rule | " + " | ".join(attacks) + " |")
print("|---" * (len(attacks) + 1) + "|")
for ru in rules:
    print(f"| {ru} | " + " | ".join(acc.get((ru, a), "") for a in attacks) + " |")
PY
