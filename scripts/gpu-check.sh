#!/usr/bin/env bash
# The GPU checks, in one run on a GPU machine (H100/H200, NVIDIA driver, PyTorch's CUDA 13 wheels;
# no Rust, CUDA toolkit or network needed): runs what scripts/gpu-bundle.sh built, through
# scripts/run-on-gpu.sh, writes every log to OUT (default $OUT or /tmp/wf-gpu-out) and exits 1 when a
# correctness check failed. Each part has its own timeout: about 11 minutes at most in all.
#   1. gpu_check: cuDNN convolutions vs CPU (f32/TF32 and bf16, values and both gradients), the
#      GPU paths of instance norm / PReLU / sigmoid, the UNet forward and gradients vs CPU,
#      NCCL all-reduce over every visible GPU, a short training, training samples/s at
#      4x128x128x64 (fp32 b8, bf16 b8 and b16, fp32 b16);
#   2. the loader benchmark on this machine's cores (target >= 1,000 samples/s);
#   3. workflows/quickstart-gpu.yaml end to end with the CUDA wf (gpus: 1, bf16).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=${1:-${OUT:-/tmp/wf-gpu-out}}
bin=/tmp/wf-gpu-bin
mkdir -p "$out" "$bin"
for f in wf gpu_check loader; do
  gunzip -c "gpu-bundle/$f.gz" > "$bin/$f" && chmod +x "$bin/$f" || { echo "missing gpu-bundle/$f.gz" >&2; exit 3; }
done
cp gpu-bundle/run-on-gpu.sh "$bin/" && chmod +x "$bin/run-on-gpu.sh"
{ cat gpu-bundle/REVISION; date -u; nproc; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } \
  2>&1 | tee "$out/machine.txt"
rc=0
echo "== gpu_check"
timeout 330 "$bin/run-on-gpu.sh" "$bin/gpu_check" 10 2>&1 | tee "$out/gpu_check.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
echo "== loader benchmark"
# run-on-gpu.sh sets LD_LIBRARY_PATH, which the wf the bench starts inherits.
(cd "$bin" && WF_BIN="$bin/wf" timeout 150 "$bin/run-on-gpu.sh" "$bin/loader" 16 5) 2>&1 | tee "$out/loader.txt"
echo "== quickstart-gpu"
mkdir -p /tmp/wf-gpu-qs && cp "$repo/workflows/quickstart-gpu.yaml" /tmp/wf-gpu-qs/
(cd /tmp/wf-gpu-qs && timeout 200 "$bin/run-on-gpu.sh" "$bin/wf" run quickstart-gpu.yaml) 2>&1 | tee "$out/quickstart.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || echo "quickstart-gpu did not finish (see quickstart.txt)"
grep -h "FAIL\|samples/s\|val Dice" "$out"/*.txt | tail -30
exit $rc
