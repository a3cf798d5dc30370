"""Times the UNet's convolutions in PyTorch (oneDNN on CPU) as wf-trainer's conv_layers example
times its own: reads that example's `layer ...` lines on stdin and prints each with torch's
medians of the forward (`F.conv3d` / `F.conv_transpose3d`), the input gradient and the weight
gradient (`aten.convolution_backward` with one output each, what autograd runs).

    target/release/examples/conv_layers 2 48 48 32 | python bench/conv_layers.py THREADS [RUNS]
"""

import sys
import time

import torch
import torch.nn.functional as F


def median(runs, f):
    f()
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        f()
        t.append(time.perf_counter() - t0)
    t.sort()
    return t[len(t) // 2] * 1e3


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    n = None
    for line in sys.stdin:
        f = line.split()
        if f[:1] == ["input"]:
            n = int(f[1].split("x")[0])
            print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {runs} runs", flush=True)
            continue
        if f[:1] != ["layer"]:
            continue
        kind, ci, co, k, s, d, h, w, count = f[1], *map(int, f[2:10])
        p = (k - 1) // 2
        x = torch.randn(n, ci, d, h, w)
        transposed = kind == "transposed"
        if transposed:
            wt = torch.randn(ci, co, k, k, k) * 0.1
            op = (s - 1,) * 3
            fwd = lambda: F.conv_transpose3d(x, wt, None, s, p, op)
        else:
            wt = torch.randn(co, ci, k, k, k) * 0.1
            op = (0,) * 3
            fwd = lambda: F.conv3d(x, wt, None, s, p)
        with torch.no_grad():
            dy = torch.randn_like(fwd())

        def bwd(mask):
            return lambda: torch.ops.aten.convolution_backward(
                dy, x, wt, None, (s,) * 3, (p,) * 3, (1,) * 3, transposed, op, 1, mask)

        with torch.no_grad():
            t = [median(runs, fwd), median(runs, bwd([True, False, False])),
                 median(runs, bwd([False, True, False]))]
        print(f"{' '.join(f[:10])} torch fwd {t[0]:.3f} data {t[1]:.3f} filter {t[2]:.3f}", flush=True)


if __name__ == "__main__":
    main()
