#!/usr/bin/env python3
"""`wf predict` against MONAI's own inference of the same export, voxel by voxel.

    PY=$(bench/setup-monai.sh)
    $PY bench/predict_vs_monai.py EXPORT_DIR IMAGE WF_SEG [IMAGE WF_SEG ...]

EXPORT_DIR is an export-checkpoint output (model.safetensors, config.json, preprocessing.json);
each WF_SEG is what `wf predict --model EXPORT_DIR --image IMAGE --out WF_SEG` wrote (default
options: the training crop as the window, overlap 0.5, constant blending, `--resample linear`).

MONAI side, as its BraTS tutorial: the export's deterministic transforms (LoadImaged,
EnsureChannelFirstd, Spacingd, Orientationd, NormalizeIntensityd, in the recorded order),
`sliding_window_inference` with the same window and overlap, then `Invertd(nearest_interp=False)`,
`Activationsd(sigmoid=True)`, `AsDiscreted(threshold=0.5)` on the input grid. The three region
channels become label values with wf's rule (the innermost region's class: ET, else TC, else WT), so
both sides are compared as the files a user gets. Prints per case the fraction of voxels whose label
agrees and the per-region agreement of the channels; exits 1 if any case agrees on less than 99.9 %.
"""

import json
import struct
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    Spacingd,
)

# The label value of each convention's classes, innermost first (ET, TC, WT).
VALUES = {"msd": (3, 2, 1), "brats": (4, 1, 2), "brats-monai": (4, 1, 2)}


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32).reshape(info["shape"])
    return out


def transforms_of(chain):
    """MONAI transforms for the deterministic part of a recorded wf chain, and the crop's roi."""
    out, crop = [], None
    for t in chain:
        name, args = (t, {}) if isinstance(t, str) else next(iter(t.items()))
        if name == "load":
            out.append(LoadImaged("image"))
        elif name == "ensure-channel-first":
            out.append(EnsureChannelFirstd("image"))
        elif name == "spacing":
            mode = args.get("mode", "bilinear")
            mode = mode[0] if isinstance(mode, list) else mode
            out.append(Spacingd("image", pixdim=tuple(args["pixdim"]), mode=mode))
        elif name == "orientation":
            out.append(Orientationd("image", axcodes=args.get("axcodes", "RAS")))
        elif name == "normalize-intensity":
            out.append(NormalizeIntensityd("image", nonzero=args.get("nonzero", False),
                                           channel_wise=args.get("channel_wise", False)))
        elif name == "rand-spatial-crop":
            crop = args["roi"]
        elif name.startswith("rand-") or name == "convert-labels":
            continue
        else:
            raise SystemExit(f"transform {name} has no MONAI counterpart here")
    return Compose(out), crop


def main():
    if len(sys.argv) < 4 or len(sys.argv) % 2 != 0:
        raise SystemExit(__doc__)
    export = Path(sys.argv[1])
    cfg = json.loads((export / "config.json").read_text())
    pre = json.loads((export / "preprocessing.json").read_text())
    net = UNet(spatial_dims=3, in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
               channels=tuple(cfg["channels"]), strides=tuple(cfg["strides"]),
               num_res_units=cfg["num_res_units"], dropout=cfg.get("dropout", 0.0))
    net.load_state_dict(load_safetensors(export / "model.safetensors"), strict=True)
    net.eval()
    transforms, crop = transforms_of(pre["transforms"])
    div = int(np.prod(cfg["strides"][: len(cfg["channels"]) - 1]))
    roi = tuple(-(-c // div) * div for c in crop) if crop else (div * 8, div * 8, div * 4)
    post = Compose([
        Invertd(keys="pred", transform=transforms, orig_keys="image", nearest_interp=False, to_tensor=True),
        Activationsd(keys="pred", sigmoid=True),
        AsDiscreted(keys="pred", threshold=0.5),
    ])
    et, tc, wt = VALUES[pre["labels"]]
    worst = 1.0
    torch.set_num_threads(torch.get_num_threads())
    for image, wf_seg in zip(sys.argv[2::2], sys.argv[3::2]):
        d = transforms({"image": image})
        with torch.no_grad():
            d["pred"] = sliding_window_inference(d["image"][None], roi, 1, net, overlap=0.5)[0]
        if not isinstance(d["pred"], MetaTensor):
            d["pred"] = MetaTensor(d["pred"])
        ch = post(d)["pred"].numpy().astype(bool)
        monai = np.where(ch[2], et, np.where(ch[0], tc, np.where(ch[1], wt, 0))).astype(np.uint8)
        ours = np.asarray(nib.load(wf_seg).dataobj).astype(np.uint8)
        if ours.shape != monai.shape:
            raise SystemExit(f"{wf_seg}: shape {ours.shape}, MONAI's {monai.shape}")
        agree = float((ours == monai).mean())
        worst = min(worst, agree)
        regions = []
        for name, values in (("TC", (et, tc)), ("WT", (et, tc, wt)), ("ET", (et,))):
            a, b = np.isin(ours, values), np.isin(monai, values)
            regions.append(f"{name} {float((a == b).mean()) * 100:.3f}% ({int(a.sum())} vs {int(b.sum())} voxels)")
        print(f"{Path(image).name}: roi {roi}, {ours.size} voxels, labels agree on {agree * 100:.4f}%; "
              + ", ".join(regions), flush=True)
    print(f"worst case: {worst * 100:.4f}% of voxels agree")
    sys.exit(0 if worst >= 0.999 else 1)


if __name__ == "__main__":
    main()
