#!/usr/bin/env bash
# Builds everything one run of scripts/gpu-check.sh on a GPU machine needs, into gpu-bundle/
# (git-ignored). It builds on a machine without a GPU or a CUDA toolkit, with the toolchain of
# scripts/cuda-toolchain.sh (set up on first use). Copy the repository checkout with gpu-bundle/ to the
# GPU machine, which needs no Rust, CUDA toolkit or network, then run there:
#   scripts/gpu-check.sh OUT
# Contents (stripped and gzipped, about 35 MB):
#   wf         the CLI with --features gpu (CUDA, cuDNN convolutions, NCCL data parallel)
#   gpu_check  wf-trainer's GPU checks (trainer/examples/gpu_check.rs)
#   loader     the loader benchmark (benches/loader.rs; CPU code, it runs `wf` through WF_BIN)
#   run-on-gpu.sh  scripts/run-on-gpu.sh (CUDA libraries from the machine's PyTorch wheels)
# First build ~15 min on 2 cores (candle's kernels through nvcc), later ones minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=scripts/cuda-toolchain.sh
source scripts/cuda-toolchain.sh "${WF_CUDA_DIR:-}" >/dev/null
cuda_target=${WF_CUDA_TARGET_DIR:-$root/target-cuda}
CARGO_TARGET_DIR=$cuda_target cargo build --release --locked --features gpu --bin wf
CARGO_TARGET_DIR=$cuda_target cargo build --release --locked -p wf-trainer --features cudnn,nccl --example gpu_check
bench=$(cargo bench --locked --bench loader --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "loader":
        print(m["executable"])' | tail -1)
[ -n "$bench" ] || { echo "gpu-bundle: the loader bench did not build" >&2; exit 1; }
rm -rf gpu-bundle && mkdir -p gpu-bundle
for pair in "wf:$cuda_target/release/wf" "gpu_check:$cuda_target/release/examples/gpu_check" "loader:$bench"; do
  name=${pair%%:*} path=${pair#*:}
  strip -o "gpu-bundle/$name" "$path"
  gzip -9 "gpu-bundle/$name"
done
cp scripts/run-on-gpu.sh gpu-bundle/
git rev-parse HEAD > gpu-bundle/REVISION
git status --porcelain | grep -q . && echo "(uncommitted changes)" >> gpu-bundle/REVISION
du -sh gpu-bundle
