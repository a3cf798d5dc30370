"""MONAI's side of `bench_hd95`: HausdorffDistanceMetric(percentile=95) on the pair it wrote.

Usage: python bench_hd95_monai.py PAIR.npy RUNS   (PAIR: uint8 (2, X, Y, Z), prediction then label)
Prints one JSON line: hd95, dice, median/min/max seconds of RUNS calls (the metric only; the masks
are tensors before the clock starts). Needs MONAI, torch, numpy and scipy.
"""

import json
import statistics
import sys
import time

import monai
import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric

pair = np.load(sys.argv[1])
runs = int(sys.argv[2])
pred = torch.from_numpy(pair[0][None, None].astype(np.float32))
label = torch.from_numpy(pair[1][None, None].astype(np.float32))
metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
times = []
for _ in range(runs):
    t = time.perf_counter()
    hd = metric(pred, label, spacing=[1.0, 1.0, 1.0]).item()
    times.append(time.perf_counter() - t)
    metric.reset()
dice = DiceMetric(include_background=True, reduction="none")(pred, label).item()
print(
    json.dumps(
        {
            "monai": monai.__version__,
            "hd95": hd,
            "dice": dice,
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
            "torch_threads": torch.get_num_threads(),
        }
    )
)
