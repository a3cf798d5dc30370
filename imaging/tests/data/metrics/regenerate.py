"""Fixture masks and MONAI 1.6.1's Dice and Hausdorff distances on them, for wf-imaging's
`metrics::parity` test.

Usage: python regenerate.py [OUT_DIR]   (default: this script's directory)

Writes <case>.npy.gz (uint8, shape (2, X, Y, Z): prediction, label; gzip with mtime 0 so the bytes
depend only on the data) and expected.json (spacing and MONAI's outputs per case; NaN and infinity
as the strings "nan" and "inf", which JSON cannot hold as numbers). The masks come from a seeded
numpy generator, so a rerun gives the same files.
"""

import gzip
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric

SHAPE = (32, 32, 24)


def blobs(rng, n, shape=SHAPE, rmin=2.0, rmax=7.0):
    """A union of `n` random axis-aligned ellipsoids."""
    x, y, z = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    m = np.zeros(shape, dtype=bool)
    for _ in range(n):
        c = rng.uniform(0, shape)
        r = rng.uniform(rmin, rmax, size=3)
        m |= ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0
    return m


def jitter(rng, m, p):
    """`m` with a fraction `p` of its voxels flipped at random (small islands and holes)."""
    return m ^ (rng.random(m.shape) < p)


def one_voxel(at, shape=SHAPE):
    m = np.zeros(shape, dtype=bool)
    m[at] = True
    return m


def cases():
    rng = np.random.default_rng(20261206)
    empty = np.zeros(SHAPE, dtype=bool)
    a = blobs(rng, 4)
    b = a.copy()
    b[2:] = a[:-2]  # shifted 2 voxels along X
    c = blobs(rng, 6)
    yield "blobs_iso", jitter(rng, a, 0.01), blobs(rng, 4), (1.0, 1.0, 1.0)
    yield "blobs_aniso", a, jitter(rng, c, 0.005), (0.8, 1.2, 2.5)
    yield "shifted_aniso", a, b, (1.0, 1.0, 3.0)
    yield "identical", c, c, (1.0, 0.5, 2.0)
    yield "empty_pred", empty, c, (1.0, 1.0, 1.0)
    yield "empty_label", c, empty, (1.0, 1.0, 1.0)
    yield "both_empty", empty, empty, (1.0, 1.0, 1.0)
    yield "one_voxel", one_voxel((3, 4, 5)), one_voxel((20, 9, 17)), (0.9, 1.1, 3.0)
    # Masks filling a corner and a face of the volume: border voxels are surface.
    border = np.zeros(SHAPE, dtype=bool)
    border[:10, :, :12] = True
    yield "border", border, blobs(rng, 3), (1.0, 1.0, 1.0)
    yield "scattered", jitter(rng, empty, 0.002), jitter(rng, c, 0.02), (1.5, 1.5, 1.5)


def number(v):
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    expected = {"monai": "1.6.1", "torch": torch.__version__, "shape": list(SHAPE), "cases": {}}
    for name, pred, label, spacing in cases():
        stacked = np.stack([pred, label]).astype(np.uint8)
        buf = io.BytesIO()
        np.save(buf, stacked)
        with open(out / f"{name}.npy.gz", "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as g:
            g.write(buf.getvalue())
        yp = torch.from_numpy(pred[None, None].astype(np.float32))
        y = torch.from_numpy(label[None, None].astype(np.float32))
        dice = DiceMetric(include_background=True, reduction="none")(yp, y)
        hd95 = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(
            yp, y, spacing=list(spacing)
        )
        hd = HausdorffDistanceMetric(include_background=True, reduction="none")(yp, y, spacing=list(spacing))
        expected["cases"][name] = {
            "spacing": list(spacing),
            "dice": number(dice.item()),
            "hd95": number(hd95.item()),
            "hd": number(hd.item()),
        }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
