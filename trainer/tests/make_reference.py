#!/usr/bin/env python3
"""Writes the PyTorch / MONAI 1.6.1 reference fixtures the wf-trainer tests compare against.

Run with the MONAI venv (torch + monai; safetensors is written by hand below, no package needed):
    ~/.cache/wf-monai-venv/bin/python trainer/tests/make_reference.py
Outputs go to trainer/tests/fixtures/ and are committed, so the Rust tests never need torch.
Everything is seeded; re-running reproduces the same files (up to torch version changes).
"""

import json
import os
import struct

import monai
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet

def save_file(tensors, path, metadata=None):
    """Minimal safetensors writer (header length, JSON header, raw little-endian data)."""
    dtypes = {torch.float32: "F32", torch.uint8: "U8", torch.int64: "I64"}
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        data = t.numpy().tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)
torch.set_num_threads(2)
torch.backends.mkldnn.enabled = False  # plain f32 reference, no reduced-precision paths


def conv_cases():
    """F.conv3d / F.conv_transpose3d on small shapes: outputs and gradients of sum(y * gy)."""
    tensors, meta = {}, []
    # (n, cin, cout, (d, h, w), (kd, kh, kw), stride, padding, dilation, output_padding, transposed)
    cases = [
        (2, 3, 4, (5, 6, 7), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), (0, 0, 0), False),
        (1, 2, 3, (8, 7, 6), (3, 2, 3), (2, 1, 2), (1, 0, 1), (1, 2, 1), (0, 0, 0), False),
        (2, 4, 2, (6, 6, 5), (1, 1, 1), (2, 2, 2), (0, 0, 0), (1, 1, 1), (0, 0, 0), False),
        (1, 3, 2, (4, 5, 3), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1), True),
        (2, 2, 3, (3, 4, 5), (3, 2, 3), (1, 2, 2), (0, 1, 1), (2, 1, 1), (0, 1, 0), True),
    ]
    for i, (n, cin, cout, sp, k, s, p, d, op, tr) in enumerate(cases):
        x = torch.randn(n, cin, *sp, requires_grad=True)
        if tr:
            w = torch.randn(cin, cout, *k, requires_grad=True)
            y = F.conv_transpose3d(x, w, None, s, p, op, 1, d)
        else:
            w = torch.randn(cout, cin, *k, requires_grad=True)
            y = F.conv3d(x, w, None, s, p, d)
        gy = torch.randn_like(y)
        (y * gy).sum().backward()
        for name, t in [("x", x), ("w", w), ("y", y), ("gy", gy), ("gx", x.grad), ("gw", w.grad)]:
            tensors[f"case{i}.{name}"] = t.detach().contiguous()
        meta.append({"stride": s, "padding": p, "dilation": d, "output_padding": op, "transposed": tr})
    save_file(tensors, os.path.join(OUT, "conv3d.safetensors"), metadata={"cases": json.dumps(meta)})


def unet_names():
    """Name and shape of every state_dict tensor of the BraTS UNet of the seed."""
    net = UNet(spatial_dims=3, in_channels=4, out_channels=3, channels=(16, 32, 64, 128, 256),
               strides=(2, 2, 2, 2), num_res_units=2)
    sd = net.state_dict()
    doc = {
        "monai": monai.__version__,
        "parameters": sum(p.numel() for p in net.parameters()),
        "tensors": [[k, list(v.shape)] for k, v in sd.items()],
    }
    with open(os.path.join(OUT, "unet_state_dict.json"), "w") as f:
        json.dump(doc, f, indent=1)


def unet_small():
    """A narrow UNet of the same depth: forward output, Dice loss and every gradient."""
    torch.manual_seed(1)
    net = UNet(spatial_dims=3, in_channels=4, out_channels=3, channels=(2, 4, 8, 16, 32),
               strides=(2, 2, 2, 2), num_res_units=2)
    with torch.no_grad():
        # Distinct PReLU slopes and biases so a swapped layer cannot pass by symmetry.
        for name, p in net.named_parameters():
            if name.endswith("adn.A.weight"):
                p.copy_(torch.rand(1) * 0.5)
    x = torch.randn(1, 4, 32, 16, 16, requires_grad=True)
    target = (torch.rand(1, 3, 32, 16, 16) > 0.7).float()
    y = net(x)
    loss = DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5)(y, target)
    loss.backward()
    t = {"input": x.detach(), "output": y.detach(), "target": target.to(torch.uint8),
         "loss": loss.detach().reshape(1), "grad.input": x.grad}
    for k, v in net.state_dict().items():
        t[f"weight.{k}"] = v.contiguous()
    for k, p in net.named_parameters():
        t[f"grad.{k}"] = p.grad.contiguous()
    save_file(t, os.path.join(OUT, "unet_small.safetensors"),
              metadata={"channels": "2,4,8,16,32", "strides": "2,2,2,2", "num_res_units": "2"})


def dice():
    """DiceLoss (+BCE) values and gradients, and DiceMetric reductions, with an empty channel."""
    torch.manual_seed(2)
    logits = torch.randn(3, 3, 6, 5, 4, requires_grad=True)
    target = (torch.rand(3, 3, 6, 5, 4) > 0.6).float()
    target[1, 2] = 0  # empty ground truth: NaN in DiceMetric, ignored by its reductions
    target[2, 0] = 0
    dl = DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, target)
    (g_dice,) = torch.autograd.grad(dl, logits, retain_graph=True)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    (g_bce,) = torch.autograd.grad(dl + bce, logits)
    dl_plain = DiceLoss(sigmoid=True)(logits, target)  # squared_pred=False branch
    (g_plain,) = torch.autograd.grad(dl_plain, logits)
    m_batch = DiceMetric(include_background=True, reduction="mean_batch")
    m_mean = DiceMetric(include_background=True, reduction="mean")
    pred = (torch.sigmoid(logits) > 0.5).float()
    # Two update calls, like two validation batches, to pin the accumulation.
    for sl in (slice(0, 2), slice(2, 3)):
        m_batch(y_pred=pred[sl], y=target[sl])
        m_mean(y_pred=pred[sl], y=target[sl])
    per_sample = DiceMetric(include_background=True, reduction="none")(y_pred=pred, y=target)
    t = {
        "logits": logits.detach(), "target": target.to(torch.uint8),
        "dice_loss": dl.detach().reshape(1), "grad_dice": g_dice,
        "bce": bce.detach().reshape(1), "grad_dice_bce": g_bce,
        "dice_loss_plain": dl_plain.detach().reshape(1), "grad_dice_plain": g_plain,
        "metric_per_channel": m_batch.aggregate().reshape(-1), "metric_mean": m_mean.aggregate().reshape(1),
        "metric_none": per_sample,
    }
    save_file(t, os.path.join(OUT, "dice.safetensors"))


def adam():
    """torch.optim.Adam with L2 weight decay on a tiny least-squares problem."""
    torch.manual_seed(3)
    x = torch.randn(8, 3)
    y = torch.randn(8, 2)
    w = torch.randn(3, 2, requires_grad=True)
    b = torch.randn(2, requires_grad=True)
    t = {"x": x, "y": y, "w0": w.detach().clone(), "b0": b.detach().clone()}
    opt = torch.optim.Adam([w, b], lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    for step in range(5):
        opt.zero_grad()
        loss = ((x @ w + b - y) ** 2).mean()
        loss.backward()
        opt.step()
        t[f"w{step + 1}"] = w.detach().clone()
        t[f"b{step + 1}"] = b.detach().clone()
    save_file(t, os.path.join(OUT, "adam.safetensors"),
              metadata={"lr": "0.05", "beta1": "0.8", "beta2": "0.95", "eps": "1e-6", "weight_decay": "0.1"})


def sliding():
    """monai.inferers.sliding_window_inference (constant and Gaussian blending) with a window-dependent predictor."""
    from monai.inferers import sliding_window_inference

    torch.manual_seed(4)
    x = torch.randn(1, 2, 20, 13, 6)

    def predictor(w):
        # Depends on the whole window, so the result pins the windows and the blending.
        return w + w.mean(dim=(1, 2, 3, 4), keepdim=True)

    t = {"input": x}
    for i, overlap in enumerate((0.25, 0.5)):
        t[f"overlap{i}"] = sliding_window_inference(x, (8, 8, 8), 3, predictor, overlap=overlap, mode="constant")
        t[f"gaussian{i}"] = sliding_window_inference(
            x, (8, 8, 8), 3, predictor, overlap=overlap, mode="gaussian", sigma_scale=0.125
        )
    save_file(t, os.path.join(OUT, "sliding.safetensors"),
              metadata={"roi": "8,8,8", "overlaps": "0.25,0.5", "sigma_scale": "0.125"})


if __name__ == "__main__":
    conv_cases()
    unet_names()
    unet_small()
    dice()
    adam()
    sliding()
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {OUT} ({total} bytes)")
