"""Goldens for `wf predict`'s default post-processing: MONAI 1.6.1's BraTS-tutorial inversion of a
prediction made on the preprocessed grid back onto the input image's grid (`Invertd` with
`nearest_interp=False`, then `Activationsd(sigmoid=True)` and `AsDiscreted(threshold=0.5)`).

Usage: python regenerate.py [OUT_DIR]   (default: this script's directory)

Per case it writes
  <case>.nii.gz            the input image (float32, one channel), with the case's affine;
  <case>_pred.npy.gz       float32 (3, X, Y, Z): logits on the preprocessed grid, smooth blobs defined
                           in world coordinates (so every region has boundaries that need
                           interpolation);
  <case>_inverted.npy.gz   float32 (3, X, Y, Z): MONAI's Invertd output on the input grid;
  <case>_seg.npy.gz        uint8 (3, X, Y, Z): after sigmoid and threshold 0.5;
and expected.json: each case's chain (in wf's YAML spelling), the preprocessed grid's shape and
affine as MONAI computed them, and the input's shape and affine. gzip with mtime 0 so the bytes
depend only on the data; everything is deterministic, so a rerun gives the same files.
"""

import gzip
import io
import json
import math
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    Orientationd,
    Spacingd,
)


def rot(axis, deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def affine(rzs, origin):
    a = np.eye(4)
    a[:3, :3] = rzs
    a[:3, 3] = origin
    return a


# name -> (input shape, input affine, chain as wf spells it, MONAI transforms)
def cases():
    pix = (1.5, 1.5, 2.0)
    spacing = {"spacing": {"pixdim": list(pix), "mode": ["bilinear", "nearest"]}}
    orientation = {"orientation": {"axcodes": "RAS"}}
    head = ["load", "ensure-channel-first"]
    lps = affine(np.diag([-1.0, -1.0, 1.0]), [20.0, 22.0, -11.0])
    oblique = affine(rot(2, 20.0) @ rot(0, 10.0) @ np.diag([-1.0, 1.1, 1.3]), [-5.0, 7.5, 3.25])
    return {
        # BraTS-like: 1 mm, LPS, spacing then orientation as the quickstart (a tie every other z).
        "lps_1mm": ((34, 30, 23), lps, head + [spacing, orientation],
                    [Spacingd("image", pixdim=pix, mode="bilinear"), Orientationd("image", axcodes="RAS")]),
        # Rotated, anisotropic voxels, X flipped, in the quickstart's order.
        "oblique": ((30, 28, 20), oblique, head + [spacing, orientation],
                    [Spacingd("image", pixdim=pix, mode="bilinear"), Orientationd("image", axcodes="RAS")]),
        # The same image, in MONAI's BraTS tutorial order (orientation, then spacing).
        "oblique_tutorial": ((30, 28, 20), oblique, head + [orientation, spacing],
                             [Orientationd("image", axcodes="RAS"), Spacingd("image", pixdim=pix, mode="bilinear")]),
    }


def blobs(shape, aff):
    """3 channels of logits: ellipsoids in world mm (nested like TC inside WT), plus a ripple."""
    idx = np.stack(np.meshgrid(*(np.arange(s, dtype=np.float64) for s in shape), indexing="ij"), -1)
    world = idx @ aff[:3, :3].T + aff[:3, 3]
    centre = world.reshape(-1, 3).mean(0)
    out = []
    for radii, shift in [((9.0, 7.0, 6.0), (2.0, -1.0, 0.5)), ((14.0, 11.0, 9.0), (0.0, 0.0, 0.0)),
                         ((5.0, 4.0, 4.5), (4.0, 1.0, -1.0))]:
        d = (world - centre - np.array(shift)) / np.array(radii)
        r = np.sqrt((d ** 2).sum(-1))
        ripple = 0.15 * np.sin(world[..., 0] * 0.7) * np.cos(world[..., 1] * 0.5)
        out.append(4.0 * (1.0 - r) + ripple)
    return np.stack(out).astype(np.float32)


def save_npy_gz(path, arr):
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr))
    with open(path, "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0, filename="") as g:
            g.write(buf.getvalue())


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    expected = {"monai": "1.6.1", "cases": {}}
    for name, (shape, aff, chain, spatial) in cases().items():
        # The values do not matter (only the grids do): a ramp, which compresses well.
        image = np.indices(shape).sum(0).astype(np.float32)
        img = nib.Nifti1Image(image, aff)
        img.header.set_xyzt_units("mm")
        path = out / f"{name}.nii.gz"
        nib.save(img, path)
        pre = Compose([LoadImaged("image"), EnsureChannelFirstd("image")] + spatial)
        d = pre({"image": str(path)})
        model_affine = np.asarray(d["image"].affine, dtype=np.float64)
        model_shape = tuple(d["image"].shape[1:])
        pred = blobs(model_shape, model_affine)
        save_npy_gz(out / f"{name}_pred.npy.gz", pred)
        # A MetaTensor, as sliding_window_inference returns for a MetaTensor input.
        d["pred"] = MetaTensor(torch.from_numpy(pred.copy()))
        # The tutorial's post-processing, in two parts so the inverted logits are kept too.
        inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True)(d)
        inverted = inv["pred"].detach().cpu().numpy().astype(np.float32)
        assert inverted.shape == (3,) + shape, inverted.shape
        save_npy_gz(out / f"{name}_inverted.npy.gz", inverted)
        post = Compose([Activationsd("pred", sigmoid=True), AsDiscreted("pred", threshold=0.5)])
        seg = post(inv)["pred"].detach().cpu().numpy().astype(np.uint8)
        save_npy_gz(out / f"{name}_seg.npy.gz", seg)
        expected["cases"][name] = {
            "chain": chain,
            "input_shape": list(shape),
            "input_affine": aff.tolist(),
            "model_shape": list(model_shape),
            "model_affine": model_affine.tolist(),
            "voxels_per_region": [int(v) for v in seg.reshape(3, -1).sum(1)],
        }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
