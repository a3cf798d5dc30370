#!/usr/bin/env python3
"""Regenerates the MONAI 1.6.1 reference data of wf-imaging's parity tests.

Runs MONAI's transforms on the input NIfTI files and writes, under OUT:
  golden/manifest.json                      per case: inputs (path, sha256, header facts), every stage's
                                            shape and affine, normalisation statistics, final array stats
                                            and sha256; the random-chain cases with their drawn parameters
  golden/<group>/<case>/<stage>.npy.gz      float32 (uint8 for label_converted_uint8), C order, gzip -9
  golden/random_chain/<case>/random_chain_{image,label}.npy.gz
  inputs/                                   a copy of INPUTS, unless OUT/inputs already is that directory
so that OUT has the layout of this directory and `WF_MONAI_DATA=OUT cargo test -p wf-imaging` runs the
tests against it.

Chain (synthetic MSD-layout cases, image + label):
  LoadImaged -> EnsureChannelFirstd(image) -> ConvertToMultiChannelBasedOnBratsClassesd(label)
  -> Spacingd((1.5, 1.5, 2.0), bilinear / nearest) -> Orientationd(RAS)
  -> NormalizeIntensityd(image, nonzero, channel_wise)
Real files get the image transforms only; dipy__S0_10slices uses pixdim (4, 4, 60).
Random chain (BRATS_001..003, seeds 1234..1236 for Compose.set_random_state): the chain above with
  RandSpatialCropd(roi 24x24x12) -> RandFlipd(p 0.5, axis 0) before the normalisation and
  RandScaleIntensityd(0.1, p 0.5) -> RandShiftIntensityd(0.1, p 0.5) after it.

Usage: python regenerate.py --out DIR [--inputs DIR]   (needs the packages of requirements.txt)
"""
from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import io
import json
import os
import shutil
import sys

import nibabel as nib
import numpy as np
import torch

import monai
from monai.transforms import (Compose, ConvertToMultiChannelBasedOnBratsClassesd, EnsureChannelFirstd, LoadImaged,
                              NormalizeIntensityd, Orientationd, RandFlipd, RandScaleIntensityd, RandShiftIntensityd,
                              RandSpatialCropd, Spacingd)

HERE = os.path.dirname(os.path.abspath(__file__))
PIXDIM = (1.5, 1.5, 2.0)
ROI = (24, 24, 12)
# Intermediate stages (after_spacing, after_orientation) are stored for arrays up to this many values.
SMALL = 1_000_000
# Statistics per channel are recorded for the first channels only.
PER_CHANNEL = 8

SYNTH_GROUPS = ["synth_tiny", "synth_tiny_lps"]
# (file stem under inputs/real, note, pixdim); the order is the manifest's.
REAL = [
    ("nibabel__standard", "uint8 3D RAS, sform only, zooms (1,3,2): z kept (|2-2|<=1e-3), y upsampled", PIXDIM),
    ("nibabel__anatomical", "big-endian int16 3D LAS 2mm, q=s code 2 -> flip x in Orientation", PIXDIM),
    ("nibabel__example_nifti2", "NIfTI-2, int16 4D (2 vols), oblique LAS, qform != sform", PIXDIM),
    ("nibabel__reoriented_anat_moved", "big-endian float32 3D RAS 4mm", PIXDIM),
    ("dipy__small_101D", "uint16 4D (102 vols) oblique LAS 2.5mm", PIXDIM),
    ("dipy__test_piesno", "float64 3D RAS 1mm; z: 13/2+1 = 7.5 -> 8 (round half to even)", PIXDIM),
    ("dipy__S0_10slices",
     "uint16 4D(1 vol) SHEARED sform (q!=s, z column (30,30,32)): shear dropped by zoom_affine, min corner = "
     "voxel 0; pixdim overridden to (4,4,60) to keep it small", (4.0, 4.0, 60.0)),
    ("nilearn__mni_icbm152_t1_tal_nlin_sym_09a_converted", "uint8 3D RAS 1mm T1 brain template (MNI)", PIXDIM),
]
RANDOM_CHAIN = [("BRATS_001", 1234), ("BRATS_002", 1235), ("BRATS_003", 1236)]

NOTES = [
    "All .npy are C-order; axis 0 = channel, axes 1..3 = voxel (i,j,k) of the output grid; the 'affine' maps "
    "(i,j,k,1) to world mm in nibabel RAS+ convention. Stored gzip-compressed as .npy.gz.",
    "final_image = after NormalizeIntensityd; final_label = 3-channel (TC,WT,ET per MONAI's BraTS definition with "
    "et_label=4) float32 0/1 after nearest resampling + orientation.",
    "after_spacing_* / after_orientation_* are stored only for small cases; after_orientation_* only when "
    "Orientationd changed the array.",
    "label_converted_uint8.npy = output of ConvertToMultiChannelBasedOnBratsClassesd (bool) as uint8.",
    "normalize_params: (mean, std(ddof=0), count) over voxels != 0 of the pre-normalisation array, computed in "
    "float32 by torch exactly like MONAI (first 8 channels).",
]
RANDOM_SEMANTICS = (
    "crop = slicing [start:stop) of the RAS-oriented spacing output (before normalisation); flip = reverse spatial "
    "axis 0 of image and label; normalisation (nonzero, channel-wise) is computed on the CROPPED, flipped image; "
    "scale: x*(1+factor); shift: x+offset on ALL voxels (background zeros become offset).")


# ------------------------------------------------------------------ transforms
def load(keys):
    return LoadImaged(keys=keys, image_only=True, dtype=np.float32, reader="NibabelReader")


def spacing(keys, pixdim):
    modes = ["bilinear", "nearest"][:len(keys)]
    return Spacingd(keys=keys, pixdim=pixdim, mode=modes, padding_mode="border", align_corners=False,
                    dtype=np.float64, diagonal=False, scale_extent=False, recompute_affine=False)


def orientation(keys):
    # nibabel's RAS+ labels, MONAI 1.6.1's default, spelled out (the default is due to change).
    return Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))


def normalize():
    return NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True, dtype=np.float32)


def transform_records(keys, pixdim):
    recs = [{"name": "LoadImaged", "keys": keys, "image_only": True, "dtype": "float32", "reader": "NibabelReader"},
            {"name": "EnsureChannelFirstd", "keys": ["image"]}]
    if "label" in keys:
        recs.append({"name": "ConvertToMultiChannelBasedOnBratsClassesd", "keys": ["label"], "et_label": 4})
    recs += [
        {"name": "Spacingd", "keys": keys, "pixdim": list(pixdim), "mode": ["bilinear", "nearest"][:len(keys)],
         "padding_mode": "border", "align_corners": False, "dtype": "float64", "diagonal": False,
         "scale_extent": False, "recompute_affine": False},
        {"name": "Orientationd", "keys": keys, "axcodes": "RAS", "labels": "default (RAS+ for nibabel data)"},
        {"name": "NormalizeIntensityd", "keys": ["image"], "nonzero": True, "channel_wise": True, "dtype": "float32"},
    ]
    return recs


# ------------------------------------------------------------------ records
def arr(t) -> np.ndarray:
    """A MetaTensor / tensor as a C-order numpy array."""
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return np.ascontiguousarray(a)


def affine(t) -> list:
    return np.round(np.asarray(t.affine, dtype=np.float64), 10).tolist()


def pixdim_of(t) -> list:
    return [float(x) for x in np.asarray(t.pixdim, dtype=np.float64)]


def sha256_of(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def stats(a: np.ndarray) -> dict:
    a64 = a.astype(np.float64)
    per = [{"min": float(c.min()), "max": float(c.max()), "mean": float(c.mean()), "std": float(c.std()),
            "sum": float(c.sum()), "nonzero": int(np.count_nonzero(c))} for c in a64[:PER_CHANNEL]]
    return {"shape": list(a.shape), "dtype": str(a.dtype), "per_channel": per,
            "per_channel_truncated": a.shape[0] > PER_CHANNEL, "mean": float(a64.mean()), "std": float(a64.std()),
            "min": float(a64.min()), "max": float(a64.max()), "sha256_of_array": sha256_of(a)}


def normalize_params(img) -> list:
    """(mean, std, count) of the non-zero voxels per channel, in float32 torch arithmetic like MONAI's."""
    out = []
    for c in img.as_tensor()[:PER_CHANNEL]:
        x = c.float()[c != 0]
        out.append([torch.mean(x).item(), torch.std(x, unbiased=False).item(), int(x.numel())])
    return out


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Writer:
    """Writes golden arrays as gzip-compressed .npy under OUT and remembers their relative paths."""

    def __init__(self, out: str):
        self.out = out

    def save(self, rel: str, a: np.ndarray) -> str:
        rel = rel + ".npy.gz"
        path = os.path.join(self.out, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
        with open(path, "wb") as f:
            f.write(gzip.compress(buf.getvalue(), compresslevel=9, mtime=0))
        return rel


# ------------------------------------------------------------------ one case
def run_case(w: Writer, inputs: str, group: str, case: str, image_rel: str, label_rel: str | None, pixdim,
             note: str) -> dict:
    keys = ["image", "label"] if label_rel else ["image"]
    gdir = f"golden/{group}/{case}"
    files = []
    rec = {"group": group, "case": case, "note": note, "inputs": {}}

    img_path = os.path.join(inputs, image_rel)
    nimg = nib.load(img_path)
    rec["inputs"]["image"] = {
        "path": image_rel, "sha256": file_sha256(img_path), "nib_shape": list(nimg.shape),
        "disk_dtype": str(nimg.get_data_dtype()), "affine": np.round(nimg.affine, 10).tolist(),
        "axcodes": "".join(nib.aff2axcodes(nimg.affine))}
    d = {"image": img_path}
    if label_rel:
        lab_path = os.path.join(inputs, label_rel)
        rec["inputs"]["label"] = {"path": label_rel, "sha256": file_sha256(lab_path)}
        d["label"] = lab_path

    d = load(keys)(d)
    rec["after_load"] = {"image_shape": list(d["image"].shape), "image_dtype": str(d["image"].dtype),
                         "original_channel_dim": str(d["image"].meta["original_channel_dim"])}
    d = EnsureChannelFirstd(keys="image")(d)
    if label_rel:
        d = ConvertToMultiChannelBasedOnBratsClassesd(keys="label")(d)
        lab = arr(d["label"])
        rec["after_label_conversion"] = {"shape": list(lab.shape), "dtype": str(lab.dtype),
                                         "channel_voxels": [int(c.sum()) for c in lab]}
        files.append(w.save(f"{gdir}/label_converted_uint8", lab.astype(np.uint8)))

    d = spacing(keys, pixdim)(d)
    rec["after_spacing"] = {}
    for k in keys:
        a = arr(d[k])
        rec["after_spacing"][k] = {"shape": list(a.shape), "dtype": str(a.dtype), "affine": affine(d[k]),
                                   "pixdim": pixdim_of(d[k])}
        if a.size <= SMALL:
            files.append(w.save(f"{gdir}/after_spacing_{k}", a))

    before = {k: arr(d[k]) for k in keys}
    d = orientation(keys)(d)
    rec["after_orientation"] = {}
    for k in keys:
        a = arr(d[k])
        changed = a.shape != before[k].shape or not np.array_equal(a, before[k])
        rec["after_orientation"][k] = {"shape": list(a.shape), "affine": affine(d[k]),
                                       "axcodes": "".join(nib.aff2axcodes(np.asarray(d[k].affine))),
                                       "changed_array": bool(changed)}
        if changed and a.size <= SMALL:
            files.append(w.save(f"{gdir}/after_orientation_{k}", a))

    rec["normalize_params_per_channel_[mean,std,count]"] = normalize_params(d["image"])
    d = normalize()(d)
    rec["transforms"] = transform_records(keys, pixdim)
    rec["final"] = {}
    for k in keys:
        a = arr(d[k])
        rel = w.save(f"{gdir}/final_{k}", a)
        files.append(rel)
        rec["final"][k] = {"file": rel, "affine": affine(d[k]), "stats": stats(a)}
    rec["files"] = sorted(files)
    print(f"{group}/{case}: {rec['final']['image']['stats']['shape']}", flush=True)
    return rec


def run_random_chain(w: Writer, inputs: str, group: str, case: str, seed: int) -> dict:
    keys = ["image", "label"]
    crop = RandSpatialCropd(keys=keys, roi_size=list(ROI), random_size=False)
    flip = RandFlipd(keys=keys, prob=0.5, spatial_axis=0)
    scale = RandScaleIntensityd(keys="image", factors=0.1, prob=0.5)
    shift = RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5)
    chain = Compose([load(keys), EnsureChannelFirstd(keys="image"), ConvertToMultiChannelBasedOnBratsClassesd(keys="label"),
                     spacing(keys, PIXDIM), orientation(keys), crop, flip, normalize(), scale,
                     shift])
    chain.set_random_state(seed=seed)
    d = chain({"image": os.path.join(inputs, group, "imagesTr", case + ".nii.gz"),
               "label": os.path.join(inputs, group, "labelsTr", case + ".nii.gz")})
    params = {
        "seed_for_Compose.set_random_state": seed,
        "crop_slices": [[int(s.start), int(s.stop)] for s in crop.cropper._slices],
        "flip_axis0_done": bool(flip._do_transform),
        "scale_done": bool(scale._do_transform),
        "scale_factor": float(scale.scaler.factor) if scale._do_transform else None,
        "shift_done": bool(shift._do_transform),
        "shift_offset": float(shift.shifter._offset) if shift._do_transform else None,
    }
    outputs = {}
    for k in keys:
        a = arr(d[k])
        outputs[k] = {"file": w.save(f"golden/random_chain/{case}/random_chain_{k}", a), "stats": stats(a),
                      "affine": affine(d[k])}
    print(f"random_chain/{case}: {params}", flush=True)
    return {"case": case, "roi_size": list(ROI), "params": params, "outputs": outputs, "semantics": RANDOM_SEMANTICS}


# ------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inputs", default=os.path.join(HERE, "inputs"), help="input NIfTI files (default: ./inputs)")
    ap.add_argument("--out", required=True, help="output directory (golden/ is replaced)")
    a = ap.parse_args()
    inputs, out = os.path.abspath(a.inputs), os.path.abspath(a.out)

    golden = os.path.join(out, "golden")
    if os.path.exists(golden):
        if not os.path.isfile(os.path.join(golden, "manifest.json")):
            sys.exit(f"{golden} exists and holds no manifest.json: not replacing it")
        shutil.rmtree(golden)
    if os.path.realpath(os.path.join(out, "inputs")) != os.path.realpath(inputs):
        shutil.copytree(inputs, os.path.join(out, "inputs"), dirs_exist_ok=True)
    w = Writer(out)

    cases = []
    for group in SYNTH_GROUPS:
        images = sorted(glob.glob(os.path.join(inputs, group, "imagesTr", "*.nii.gz")))
        if not images:
            sys.exit(f"no cases in {os.path.join(inputs, group, 'imagesTr')}")
        for p in images:
            case = os.path.basename(p)[:-len(".nii.gz")]
            cases.append(run_case(w, inputs, group, case, f"{group}/imagesTr/{case}.nii.gz",
                                  f"{group}/labelsTr/{case}.nii.gz", PIXDIM, ""))
    for stem, note, pixdim in REAL:
        found = [f for f in (f"real/{stem}.nii.gz", f"real/{stem}.nii") if os.path.isfile(os.path.join(inputs, f))]
        if not found:
            sys.exit(f"missing input {os.path.join(inputs, 'real', stem)}.nii[.gz]")
        cases.append(run_case(w, inputs, "real", stem, found[0], None, pixdim, note))
    random_chain = [run_random_chain(w, inputs, "synth_tiny", case, seed) for case, seed in RANDOM_CHAIN]

    manifest = {
        "generated_by": "regenerate.py",
        "versions": {"monai": monai.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "nibabel": nib.__version__},
        "pixdim": list(PIXDIM),
        "cases": cases,
        "random_chain": random_chain,
        "notes": NOTES,
    }
    with open(os.path.join(golden, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {golden}")


if __name__ == "__main__":
    main()
