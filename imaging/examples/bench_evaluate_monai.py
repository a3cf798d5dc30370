"""MONAI's side of `bench_evaluate`: Dice and HD95 (percentile 95, mm from the files' spacing) of
TC, WT and ET for each (segmentation, label) pair of MSD-convention NIfTI files, one line per case
with the seconds of the metric calls (the masks are tensors before the clock starts).

Usage: python bench_evaluate_monai.py SEG LABEL [SEG LABEL ...]   (needs MONAI, torch, nibabel, scipy)
"""

import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric


def regions(v):
    return np.stack([np.isin(v, (2, 3)), v > 0, v == 3]).astype(np.float32)[None]


args = sys.argv[1:]
dice = DiceMetric(include_background=True, reduction="none")
hd95 = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
for seg, label in zip(args[::2], args[1::2]):
    s, l = nib.load(seg), nib.load(label)
    spacing = [float(x) for x in s.header.get_zooms()[:3]]
    p = torch.from_numpy(regions(np.asarray(s.dataobj).astype(np.uint8)))
    q = torch.from_numpy(regions(np.asarray(l.dataobj).astype(np.uint8)))
    t = time.perf_counter()
    d = dice(p, q)[0]
    h = hd95(p, q, spacing=spacing)[0]
    secs = time.perf_counter() - t
    dice.reset()
    hd95.reset()
    parts = ", ".join(f"{n} {float(d[i]):.4f}/{float(h[i]):.3f}" for i, n in enumerate(("TC", "WT", "ET")))
    print(f"MONAI {Path(seg).name}: {parts} (Dice/HD95 mm); metrics {secs:.3f} s, {torch.get_num_threads()} torch threads",
          flush=True)
