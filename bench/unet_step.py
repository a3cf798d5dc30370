"""One training step of the seed's UNet in PyTorch + MONAI, timed as wf-trainer's unet_speed times
its own: forward in training mode, `DiceLoss(sigmoid=True, squared_pred=True)`, backward and
`torch.optim.Adam(lr=1e-4)`.step(), on the CPU with a given number of torch threads.

    python bench/unet_step.py N D H W [STEPS] [THREADS]     (defaults 2 64 64 32, 7, 2)

Two warm-up steps, then one `step: SECONDS` line per timed step and the median.
"""

import sys
import time

import torch
from monai.losses import DiceLoss
from monai.networks.nets import UNet


def main():
    args = [int(a) for a in sys.argv[1:]]
    n, d, h, w = args[:4] if len(args) >= 4 else (2, 64, 64, 32)
    steps = args[4] if len(args) >= 5 else 7
    threads = args[5] if len(args) >= 6 else 2
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=4, out_channels=3, channels=(16, 32, 64, 128, 256),
               strides=(2, 2, 2, 2), num_res_units=2)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    loss_fn = DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5)
    x = torch.randn(n, 4, d, h, w)
    t = (torch.rand(n, 3, d, h, w) >= 0.7).float()
    print(f"input {n}x4x{d}x{h}x{w}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"2 warm-up steps, {steps} timed", flush=True)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), t)
        loss.backward()
        opt.step()
        secs = time.perf_counter() - t0
        if i >= 2:
            print(f"step: {secs:.4f}", flush=True)
            times.append(secs)
    times.sort()
    print(f"median: {times[len(times) // 2]:.4f}")


if __name__ == "__main__":
    main()
