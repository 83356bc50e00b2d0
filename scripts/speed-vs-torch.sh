#!/usr/bin/env bash
# Candle (Cohort) against PyTorch, training throughput on one CPU thread, side by side in one run
# (issue 15, item 5): McMahan et al.'s CNN (batch 32 of 28x28x1, plain SGD; samples/s) and the
# character transformer (layers 4, heads 4, dim 128, context 64, vocabulary 74, batch 12, AdamW;
# tokens/s). Every figure is the CPU time of the training thread (the machine may be shared), the
# best of --repeat runs, and the two sides alternate so that both see the same load.
#
#   scripts/speed-vs-torch.sh [--quick] [--release] [--rounds N]
#
#   --quick     fewer steps per run (a rough figure in about a minute)
#   --release   build Cohort's examples in the release profile (default: dev, which compiles
#               dependencies at opt-level 3 and Cohort's crates at 2)
#   --rounds N  alternate the two sides N times (default 2); the table shows each side's best
#
# PyTorch comes from the Python package registry: this script creates a virtual environment at
# $TORCH_VENV (default .venv-torch) and runs `pip install torch numpy` (PyPI's default index)
# unless that environment already imports torch. Cohort's side is the `cnn_speed` and `lm_speed`
# examples of the model crate, with RAYON_NUM_THREADS=1; PyTorch's is scripts/torch_speed.py with
# torch.set_num_threads(1).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${TORCH_VENV:-.venv-torch}
profile=dev
rounds=2
quick=0
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --release) profile=release ;;
    --rounds) rounds=$2; shift ;;
    *) echo "usage: $0 [--quick] [--release] [--rounds N]" >&2; exit 2 ;;
  esac
  shift
done

if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  echo "speed-vs-torch: installing PyTorch from PyPI into $venv (python3 -m venv; pip install torch numpy)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch numpy
fi

target=${CARGO_TARGET_DIR:-target}
if [ "$profile" = release ]; then
  cargo build -j 1 --release --workspace --example cnn_speed --example lm_speed >&2
  bin=$target/release/examples
else
  cargo build -j 1 --workspace --example cnn_speed --example lm_speed >&2
  bin=$target/debug/examples
fi

if [ "$quick" = 1 ]; then
  cnn_steps=8; lm_steps=4; repeat=2
else
  cnn_steps=30; lm_steps=10; repeat=3
fi

# What was measured, taken before the run.
commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- model scripts Cargo.toml || echo ' (with uncommitted changes)')"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
export RAYON_NUM_THREADS=1
for round in $(seq "$rounds"); do
  echo "speed-vs-torch: round $round of $rounds" >&2
  "$venv/bin/python" scripts/torch_speed.py --only cnn --cnn-steps "$cnn_steps" --repeat "$repeat" >>"$out"
  "$bin/cnn_speed" --threads 1 --steps "$cnn_steps" --repeat "$repeat" >>"$out"
  "$venv/bin/python" scripts/torch_speed.py --only transformer --lm-steps "$lm_steps" --repeat "$repeat" >>"$out"
  "$bin/lm_speed" --threads 1 --steps "$lm_steps" --repeat "$repeat" --vocab 74 >>"$out"
done

echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "commit: $commit"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//') ($(nproc) cores)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "torch: $("$venv/bin/python" -c 'import torch; print(torch.__version__)'); cohort examples: $profile profile"
echo "one thread each, CPU time of the training thread, best of $repeat runs x $rounds rounds"
echo
awk '
  $1 == "RESULT" {
    key = $3 SUBSEP $2
    if (!(key in best) || $6 > best[key]) { best[key] = $6; ms[key] = $7 }
    unit[$3] = $5; batch[$3] = $4
    if (!(($3, $2) in seen)) { seen[$3, $2] = 1; order[++n] = $3 SUBSEP $2 }
  }
  END {
    printf "| model | batch | implementation | %s | CPU ms a step | vs PyTorch |\n", "rate"
    print "| --- | ---: | --- | ---: | ---: | ---: |"
    for (i = 1; i <= n; i++) {
      split(order[i], k, SUBSEP)
      m = k[1]; impl = k[2]
      ref = best[m, "pytorch"]
      ratio = (ref > 0) ? sprintf("%.2fx", best[m, impl] / ref) : "-"
      printf "| %s | %s | %s | %.0f %s | %.1f | %s |\n", m, batch[m], impl, best[m, impl], unit[m], ms[m, impl], ratio
    }
  }' "$out"
