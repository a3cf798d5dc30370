#!/usr/bin/env bash
# One training step of the seed's UNet (forward, Dice loss, backward, Adam) in wf-trainer and in
# PyTorch + MONAI, back to back on the same machine and the same number of threads, alternating
# ROUNDS times; prints every step line, each side's median over all its timed steps, and the ratio.
#   bench/unet_step_vs_pytorch.sh [N D H W] [THREADS] [ROUNDS]    (defaults 2 48 48 32, 2, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
shape=(${1:-2} ${2:-48} ${3:-48} ${4:-32}); threads=${5:-2}; rounds=${6:-3}
py=$(bench/setup-monai.sh)
cargo build --release -q -p wf-trainer --example unet_speed
ours=(); theirs=()
for r in $(seq "$rounds"); do
  out=$(RAYON_NUM_THREADS=$threads target/release/examples/unet_speed "${shape[@]}" 7)
  echo "wf-trainer round $r: $(echo "$out" | head -1)"; echo "$out" | grep '^step:'
  ours+=($(echo "$out" | awk '/^step:/ {print $2}'))
  out=$(OMP_NUM_THREADS=$threads "$py" bench/unet_step.py "${shape[@]}" 7 "$threads")
  echo "pytorch round $r: $(echo "$out" | head -1)"; echo "$out" | grep '^step:'
  theirs+=($(echo "$out" | awk '/^step:/ {print $2}'))
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2)}'; }
m1=$(median "${ours[@]}"); m2=$(median "${theirs[@]}")
echo "median step: wf-trainer $m1 s, PyTorch + MONAI $m2 s; wf-trainer takes $(awk -v a="$m1" -v b="$m2" 'BEGIN {printf "%.2f", a / b}')x PyTorch's time"
