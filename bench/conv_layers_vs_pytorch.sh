#!/usr/bin/env bash
# Every convolution of the seed's UNet, forward, input gradient and weight gradient, timed in
# wf-trainer (conv_layers example) and in PyTorch (bench/conv_layers.py, oneDNN) on the same
# threads; prints both medians per layer and primitive, the ratio (wf / torch), and the totals
# over one training step (each layer times its count; the first layer's input gradient left
# out, as training does not compute it).
#   bench/conv_layers_vs_pytorch.sh [N D H W] [THREADS] [RUNS]    (defaults 2 48 48 32, 2, 9)
set -euo pipefail
cd "$(dirname "$0")/.."
shape=(${1:-2} ${2:-48} ${3:-48} ${4:-32}); threads=${5:-2}; runs=${6:-9}
py=$(bench/setup-monai.sh)
cargo build --release -q -p wf-trainer --example conv_layers
ours=$(RAYON_NUM_THREADS=$threads target/release/examples/conv_layers "${shape[@]}" "$runs")
theirs=$(echo "$ours" | OMP_NUM_THREADS=$threads "$py" bench/conv_layers.py "$threads" "$runs")
echo "$ours" | head -1; echo "$theirs" | head -1
paste -d' ' <(echo "$ours" | grep '^layer') <(echo "$theirs" | grep '^layer') | awk '
  BEGIN { printf "%-11s %3s %3s %1s %1s %-9s %3s | %-16s | %-16s | %-16s\n", "layer", "ci", "co", "k", "s", "input", "n",
          "fwd wf/torch ms", "data wf/torch ms", "filter wf/torch ms" }
  {
    # ours: 1 layer 2 kind 3 ci 4 co 5 k 6 s 7 d 8 h 9 w 10 count 12 fwd 14 data 16 filter;
    # theirs starts at 17: 17..26 the same layer fields, 29 fwd 31 data 33 filter.
    n = $10; first = (NR == 1)
    printf "%-11s %3d %3d %1d %1d %-9s %3d | %6.2f %6.2f %4.2fx | %6.2f %6.2f %4.2fx | %6.2f %6.2f %4.2fx\n", $2, $3, $4, $5, $6, $7 "x" $8 "x" $9, n,
      $12, $29, $12 / $29, $14, $31, $14 / $31, $16, $33, $16 / $33
    wf_f += n * $12; th_f += n * $29; wf_b += n * $16; th_b += n * $33
    if (!first) { wf_b += n * $14; th_b += n * $31 }
  }
  END {
    printf "per training step: forward wf %.1f ms, torch %.1f ms (%.2fx); backward wf %.1f ms, torch %.1f ms (%.2fx); all %.2fx\n",
      wf_f, th_f, wf_f / th_f, wf_b, th_b, wf_b / th_b, (wf_f + wf_b) / (th_f + th_b)
  }'
