#!/usr/bin/env python3
"""Times MONAI 1.6.1's version of the seed pipeline's preprocessing chain, per volume and per stage.

    python bench/monai_chain.py --data DIR [--runs 3] [--out DIR] [--json FILE] [--skip-pool]
                                [--seed 0] [--threads 1] [--keep]

DIR is an MSD-layout folder (dataset.json whose "training" list names imagesTr/ and labelsTr/ files),
e.g. the output of `wf synth`. Run it with the python that bench/setup-monai.sh prints.

Chain, per case (the dictionary transforms of the seed's training pipeline):
  LoadImaged(image, label) -> EnsureChannelFirstd(image) -> ConvertToMultiChannelBasedOnBratsClassesd(label)
  -> Spacingd(pixdim (1.5, 1.5, 2.0), bilinear / nearest) -> Orientationd(RAS)
  -> RandSpatialCropd(roi (128, 128, 64), fixed size) -> RandFlipd(prob 0.5, spatial axis 0)
  -> NormalizeIntensityd(image, nonzero, channel_wise) -> RandScaleIntensityd(image, 0.1, prob 0.5)
  -> RandShiftIntensityd(image, 0.1, prob 0.5)
then torch.save of the resulting dictionary to OUT/<case>.pt, as the seed stores its samples. MONAI 1.x
transforms already return torch MetaTensors, so the seed's final ToTensord is left out (it changes nothing).

Single process (always): every stage timed on its own with time.perf_counter, plus the save, the total and
the process CPU seconds, for every case in every run. torch runs with --threads intra-op threads (default
1; OMP/MKL/OpenBLAS thread counts are set to the same before numpy and torch are imported), so the figure
is MONAI's cost on one core, comparable with one wf worker. Before timing, every input file is read once
(page cache) and case 0 goes through the whole chain once, untimed (imports, first-call set-up).

Pool (unless --skip-pool): the seed's multiprocessing approach, a Pool with one process per core
(os.cpu_count()) mapping cases to chain + torch.save, each worker with --threads torch threads. Workers
are started with the 'spawn' method (fresh interpreters: forking a parent whose torch/OpenMP thread pool
has already run can deadlock the children) and warmed on case 0 before the timed map; pool start-up and
warm-up are reported apart from the map's wall time.

Random draws: before each case, Compose.set_random_state(seed + case index), so every run and the Pool
draw the same crops, flips, scales and shifts for a given case.

JSON (--json), times in seconds:
  env                 versions, cpu_count, torch threads, CPU capability, load average, date, data folder
  chain               stage names, in order; each per-volume record has one key per stage
  warmup_s            the untimed pass over case 0
  single_process
    per_volume[]      {run, case, <stage>..., torch_save, total, cpu_s, pt_bytes, image_shape, label_shape,
                       image_dtype, label_dtype}; total = sum of the stages and the save
    per_stage         {<stage> | torch_save | total | cpu_s: {min, median, max}} over all volumes and runs
    runs[]            {run, wall_s, volumes_per_s, loadavg_before}
  pool                (absent with --skip-pool) {processes, torch_threads_per_worker, start_method,
                       startup_s, runs[]: {run, wall_s, volumes_per_s, wall_per_volume_s, loadavg_before,
                       per_volume[]: {case, pid, <stage>..., torch_save, total}}}
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

STAGES = ["load", "ensure_channel_first", "convert_labels", "spacing", "orientation", "rand_spatial_crop",
          "rand_flip", "normalize_intensity", "rand_scale_intensity", "rand_shift_intensity"]
KEYS = ["image", "label"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="MSD-layout folder with dataset.json")
    ap.add_argument("--runs", type=int, default=3, help="timed passes over all cases (default 3)")
    ap.add_argument("--out", default="monai-out", help="folder for the .pt samples (default monai-out)")
    ap.add_argument("--json", default=None, help="results file (default OUT/monai.json)")
    ap.add_argument("--skip-pool", action="store_true", help="single process only")
    ap.add_argument("--seed", type=int, default=0, help="base of the per-case random seeds (default 0)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the .pt files (default: removed at the end)")
    a = ap.parse_args(argv)
    if a.runs < 1 or a.threads < 1:
        ap.error("--runs and --threads must be at least 1")
    return a


def limit_threads(n):
    """Thread counts of the native libraries; must run before numpy and torch are imported."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)


def build_chain():
    from monai.transforms import (Compose, ConvertToMultiChannelBasedOnBratsClassesd, EnsureChannelFirstd,
                                  LoadImaged, NormalizeIntensityd, Orientationd, RandFlipd, RandScaleIntensityd,
                                  RandShiftIntensityd, RandSpatialCropd, Spacingd)
    return Compose([
        LoadImaged(keys=KEYS),
        EnsureChannelFirstd(keys="image"),
        ConvertToMultiChannelBasedOnBratsClassesd(keys="label"),
        Spacingd(keys=KEYS, pixdim=(1.5, 1.5, 2.0), mode=("bilinear", "nearest")),
        Orientationd(keys=KEYS, axcodes="RAS"),
        RandSpatialCropd(keys=KEYS, roi_size=(128, 128, 64), random_size=False),
        RandFlipd(keys=KEYS, prob=0.5, spatial_axis=0),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
    ])


def read_cases(data):
    path = os.path.join(data, "dataset.json")
    if not os.path.isfile(path):
        sys.exit(f"monai_chain.py: {path} not found (--data must be an MSD-layout folder)")
    with open(path) as f:
        ds = json.load(f)
    items = []
    for entry in ds.get("training", []):
        item = {k: os.path.normpath(os.path.join(data, entry[k])) for k in KEYS}
        for p in item.values():
            if not os.path.isfile(p):
                sys.exit(f"monai_chain.py: {p} (listed in {data}/dataset.json) does not exist")
        items.append(item)
    if not items:
        sys.exit(f"monai_chain.py: {data}/dataset.json lists no training cases")
    return items


def case_name(item):
    base = os.path.basename(item["image"])
    for ext in (".nii.gz", ".nii"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def run_case(chain, item, index, seed, out_dir):
    """The chain on one case, each stage timed, then torch.save. Returns (timings, output dict, path)."""
    import torch
    chain.set_random_state(seed=seed + index)
    t = {}
    d = dict(item)
    c0 = time.process_time()
    for name, tr in zip(STAGES, chain.transforms):
        t0 = time.perf_counter()
        d = tr(d)
        t[name] = time.perf_counter() - t0
    path = os.path.join(out_dir, case_name(item) + ".pt")
    t0 = time.perf_counter()
    torch.save(d, path)
    t["torch_save"] = time.perf_counter() - t0
    t["total"] = sum(t.values())
    t["cpu_s"] = time.process_time() - c0
    return t, d, path


def rounded(t):
    return {k: round(v, 4) for k, v in t.items()}


def summary(records, keys):
    return {k: {"min": round(min(r[k] for r in records), 4),
                "median": round(statistics.median(r[k] for r in records), 4),
                "max": round(max(r[k] for r in records), 4)} for k in keys}


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def single_process(chain, items, runs, seed, out_dir):
    per_volume, run_recs = [], []
    for r in range(1, runs + 1):
        la = loadavg()
        t_run = time.perf_counter()
        for i, item in enumerate(items):
            t, d, path = run_case(chain, item, i, seed, out_dir)
            rec = {"run": r, "case": case_name(item), **rounded(t), "pt_bytes": os.path.getsize(path),
                   "image_shape": list(d["image"].shape), "label_shape": list(d["label"].shape),
                   "image_dtype": str(d["image"].dtype), "label_dtype": str(d["label"].dtype)}
            per_volume.append(rec)
            print(f"single run {r} {rec['case']}: " + " ".join(f"{k} {t[k]:.3f}" for k in t), flush=True)
        wall = time.perf_counter() - t_run
        run_recs.append({"run": r, "wall_s": round(wall, 3), "volumes_per_s": round(len(items) / wall, 4),
                         "loadavg_before": la})
    return {"per_volume": per_volume, "per_stage": summary(per_volume, STAGES + ["torch_save", "total", "cpu_s"]),
            "runs": run_recs}


# ---- Pool workers (module level, so that 'spawn' children can import them)
_W = {}


def _worker_init(out_dir, seed, threads, warm_item):
    import torch
    torch.set_num_threads(threads)
    _W.update(chain=build_chain(), out=out_dir, seed=seed)
    warm_dir = os.path.join(out_dir, f"warmup-{os.getpid()}")  # one per worker: they warm up concurrently
    os.makedirs(warm_dir, exist_ok=True)
    _, _, path = run_case(_W["chain"], warm_item, 0, seed, warm_dir)  # warm-up, like the single-process pass
    os.remove(path)
    os.rmdir(warm_dir)


def _worker_case(arg):
    import torch
    i, item = arg
    t, _, _ = run_case(_W["chain"], item, i, _W["seed"], _W["out"])
    return {"case": case_name(item), "pid": os.getpid(), "torch_threads": torch.get_num_threads(), **rounded(t)}


def _worker_ready(_):
    return os.getpid()


def pool_runs(items, runs, seed, threads, out_dir):
    import multiprocessing as mp
    procs = os.cpu_count() or 1
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    with ctx.Pool(processes=procs, initializer=_worker_init, initargs=(out_dir, seed, threads, items[0])) as pool:
        # one trivial task per worker, so that all of them have started and warmed up before timing
        pool.map(_worker_ready, range(procs), chunksize=1)
        startup = time.perf_counter() - t0
        print(f"pool: {procs} processes started and warmed in {startup:.2f} s", flush=True)
        recs = []
        for r in range(1, runs + 1):
            la = loadavg()
            t0 = time.perf_counter()
            per = pool.map(_worker_case, list(enumerate(items)), chunksize=1)
            wall = time.perf_counter() - t0
            recs.append({"run": r, "wall_s": round(wall, 3), "volumes_per_s": round(len(items) / wall, 4),
                         "wall_per_volume_s": round(wall / len(items), 4), "loadavg_before": la,
                         "per_volume": per})
            print(f"pool run {r}: wall {wall:.3f} s, {wall / len(items):.3f} s per volume, "
                  f"{len(items) / wall:.3f} volumes/s", flush=True)
    return {"processes": procs, "torch_threads_per_worker": per[0]["torch_threads"], "start_method": "spawn",
            "startup_s": round(startup, 3), "runs": recs}


def main(argv=None):
    a = parse_args(argv)
    limit_threads(a.threads)
    import numpy as np
    import torch
    import monai
    torch.set_num_threads(a.threads)

    items = read_cases(a.data)
    os.makedirs(a.out, exist_ok=True)
    json_path = a.json or os.path.join(a.out, "monai.json")
    for item in items:  # page cache, so that the first run does not pay for the disk
        for p in item.values():
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass

    env = {"monai": monai.__version__, "torch": torch.__version__, "numpy": np.__version__,
           "nibabel": __import__("nibabel").__version__, "python": platform.python_version(),
           "machine": platform.machine(), "system": platform.platform(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "loadavg_start": loadavg(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "data": os.path.abspath(a.data), "n_cases": len(items), "runs": a.runs, "seed": a.seed}
    print(json.dumps(env), flush=True)

    chain = build_chain()
    t0 = time.perf_counter()
    run_case(chain, items[0], 0, a.seed, a.out)
    warmup = time.perf_counter() - t0

    res = {"env": env, "chain": STAGES, "warmup_s": round(warmup, 3),
           "single_process": single_process(chain, items, a.runs, a.seed, a.out)}
    if not a.skip_pool:
        res["pool"] = pool_runs(items, a.runs, a.seed, a.threads, a.out)
    res["env"]["loadavg_end"] = loadavg()

    with open(json_path, "w") as f:
        json.dump(res, f, indent=1)
    if not a.keep:
        for item in items:
            p = os.path.join(a.out, case_name(item) + ".pt")
            if os.path.exists(p):
                os.remove(p)

    ps = res["single_process"]["per_stage"]
    print(f"single process, {env['torch_threads']} torch thread(s), per volume over {len(items)} case(s) x "
          f"{a.runs} run(s): median {ps['total']['median']:.3f} s (min {ps['total']['min']:.3f}, "
          f"max {ps['total']['max']:.3f}), CPU median {ps['cpu_s']['median']:.3f} s")
    for k in STAGES + ["torch_save"]:
        print(f"  {k:22s} median {ps[k]['median']:.3f} s  min {ps[k]['min']:.3f} s")
    if "pool" in res:
        walls = [r["wall_per_volume_s"] for r in res["pool"]["runs"]]
        print(f"pool of {res['pool']['processes']}: wall per volume median {statistics.median(walls):.3f} s "
              f"(min {min(walls):.3f})")
    print(f"results: {json_path}")


if __name__ == "__main__":
    main()
