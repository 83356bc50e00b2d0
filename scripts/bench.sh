#!/usr/bin/env bash
# Runs Cohort's benchmark suites and regenerates BENCHMARKS.md, bench/results/*.csv and
# bench/plots/*.png. Builds what it runs in release first (one target dir for everything).
#
#   scripts/bench.sh --quick                 # every suite at a size that takes minutes
#   scripts/bench.sh                         # every suite, full size
#   scripts/bench.sh --quick attacks privacy # some suites
#   scripts/bench.sh render                  # only the document and plots, from the CSVs
#
# MNIST comes from ../shared/data/mnist unless MNIST_DIR says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cohort/target}"
MNIST_DIR="${MNIST_DIR:-../shared/data/mnist}"
echo "building release binaries in $CARGO_TARGET_DIR (candle takes ~7 min the first time)"
cargo build --release -q -p node --bin cohort
cargo build --release -q -p consensus --example bench --features sim
cargo build --release -q -p model --example train_speed
cargo build --release -q -p model --example mia
cargo build --release -q -p cohort-bench
R="$CARGO_TARGET_DIR/release"
exec "$R/cohort-bench" \
  --cohort "$R/cohort" \
  --consensus-bench "$R/examples/bench" \
  --train-speed "$R/examples/train_speed" \
  --mia "$R/examples/mia" \
  --data-dir "$MNIST_DIR" "$@"
