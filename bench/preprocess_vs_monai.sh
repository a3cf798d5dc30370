#!/usr/bin/env bash
# Side-by-side benchmark of the seed's preprocessing chain: MONAI 1.6.1 (bench/monai_chain.py, single
# process, 1 torch thread) and wf's sharded-transform, on the same full-size 240x240x155x4 volumes, back
# to back in one run.
#   bench/preprocess_vs_monai.sh [N_CASES] [RUNS]      (defaults 4, 3)     writes bench-out/
# The MONAI venv comes from bench/setup-monai.sh (WF_MONAI_VENV picks its folder; created on first use).
# wf is timed through `wf run --json` (the step's own seconds), with the per-case cache wiped between
# runs, on 1 worker (shards: 1) and on all cores. Prints per-volume medians and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-4}; runs=${2:-3}
py=$(bench/setup-monai.sh)
out=bench-out; mkdir -p "$out"
cargo build --release -q
wf=$PWD/target/release/wf
[ -f "$out/full/dataset.json" ] || "$wf" synth --out "$out/full" --cases "$n" --shape 240,240,155 --seed 0 2>/dev/null
"$py" bench/monai_chain.py --data "$out/full" --runs "$runs" --out "$out/monai_pt" --json "$out/monai.json" \
  --threads 1 --skip-pool > "$out/monai.log" 2>&1 || { echo "MONAI run failed: see $out/monai.log" >&2; exit 1; }
chain='        - load
        - ensure-channel-first
        - convert-labels
        - spacing: { pixdim: [1.5, 1.5, 2.0], mode: [bilinear, nearest] }
        - orientation: { axcodes: RAS }
        - rand-spatial-crop: { roi: [128, 128, 64] }
        - rand-flip: { prob: 0.5, axis: 0 }
        - normalize-intensity: { nonzero: true, channel_wise: true }
        - rand-scale-intensity: { factors: 0.1, prob: 0.5 }
        - rand-shift-intensity: { offsets: 0.1, prob: 0.5 }'
for shards in 1 0; do
  cat > "$out/wf-$shards.yaml" <<YAML
name: bench
steps:
  fetch: { uses: fetch-dataset, with: { source: full } }
  preprocess:
    uses: sharded-transform
    inputs: { dataset: fetch }
    with:
      labels: brats-monai
      shards: $shards
      copies_per_case: 1
      transforms:
$chain
YAML
  for r in $(seq 1 "$runs"); do
    rm -rf "$out/.wf/cache/derived"
    "$wf" run "$out/wf-$shards.yaml" --json --force preprocess 2>/dev/null \
      | python3 -c "import json,sys; s=json.load(sys.stdin)['steps'][1]; print(s['seconds'])" >> "$out/wf-$shards.times"
  done
done
du -sb "$out/.wf/cache/derived/sharded-transform/prefix" | cut -f1 > "$out/prefix.bytes"
python3 - "$out" "$n" <<'PY'
import json, statistics, sys, os
out, n = sys.argv[1], int(sys.argv[2])
m = json.load(open(f"{out}/monai.json"))
sp = m["single_process"]
med_monai = statistics.median(r["total"] for r in sp["per_volume"])
cpu_monai = statistics.median(r["cpu_s"] for r in sp["per_volume"])
def t(name): return [float(x)/n for x in open(f"{out}/wf-{name}.times")]
one, allc = t("1"), t("0")
cores = os.cpu_count()
prefix = int(open(f"{out}/prefix.bytes").read())
threads = m["env"]["torch_threads"]
print(f"MONAI single process ({threads} torch thread{'s' if threads != 1 else ''}), per volume: median {med_monai:.3f} s (CPU {cpu_monai:.3f} s)")
print(f"wf 1 worker, per volume:          median {statistics.median(one):.3f} s (min {min(one):.3f})  -> {med_monai/statistics.median(one):.1f}x MONAI")
print(f"wf {cores} workers, per volume:   median {statistics.median(allc):.3f} s  -> scaling {statistics.median(one)/statistics.median(allc):.2f} on {cores} cores ({statistics.median(one)/statistics.median(allc)/cores:.2f} x cores)")
print(f"deterministic prefix: {prefix/n/1e6:.1f} MB per case -> {prefix/n*484/1e9:.1f} GB for 484 cases")
PY
