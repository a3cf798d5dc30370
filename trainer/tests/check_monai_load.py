#!/usr/bin/env python3
"""Loads a wf-trainer model.safetensors into MONAI's UNet with strict=True and runs it.

    ~/.cache/wf-monai-venv/bin/python trainer/tests/check_monai_load.py CHECKPOINT_DIR [channels...]
Needs torch + monai only (the safetensors file is parsed by hand). Exit 0 when it loads and runs.
"""

import json
import struct
import sys

import torch
from monai.networks.nets import UNet


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        a, b = info["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32).reshape(info["shape"])
    return out


def main():
    ckpt = sys.argv[1]
    channels = tuple(int(c) for c in sys.argv[2:]) or (16, 32, 64, 128, 256)
    net = UNet(spatial_dims=3, in_channels=4, out_channels=3, channels=channels,
               strides=(2,) * (len(channels) - 1), num_res_units=2)
    net.load_state_dict(load_safetensors(f"{ckpt}/model.safetensors"), strict=True)
    d = 2 ** (len(channels) - 1)
    y = net.eval()(torch.zeros(1, 4, 2 * d, 2 * d, d))
    print(f"loaded {ckpt} into MONAI UNet{channels} with strict=True; output {tuple(y.shape)}")


if __name__ == "__main__":
    main()
