//! Times every convolution of the seed's UNet at its shape for one input size, each primitive
//! separately: `cargo run --release -p wf-trainer --example conv_layers -- N D H W [RUNS]`
//! (default 2 48 48 32, 9 runs). One line per distinct layer:
//!
//! `layer KIND CI CO K STRIDE D H W COUNT fwd MS data MS filter MS`
//!
//! KIND is `conv` or `transposed`; K the kernel size; D H W is the layer's input size; COUNT how many layers of the
//! network have that shape; MS the median of RUNS calls of the forward, the input-gradient
//! (`data`) and the weight-gradient (`filter`) primitive. `bench/conv_layers.py` reads these lines
//! and times the same layers with `torch.nn.functional.conv3d` / `conv_transpose3d`.

use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::time::Instant;
use wf_trainer::ops::{self, Conv3dConfig, ConvTranspose3dConfig};
use wf_trainer::unet::UNetConfig;

/// One convolution of the network: (transposed, ci, co, kernel, stride, input size).
type Layer = (bool, usize, usize, usize, usize, [usize; 3]);

/// The layers of MONAI's UNet (`UNetConfig`), walked as `UNet::new` builds them.
fn layers(cfg: &UNetConfig, size: [usize; 3]) -> Vec<Layer> {
    let mut out = Vec::new();
    walk(
        cfg,
        cfg.in_channels,
        cfg.out_channels,
        &cfg.channels,
        &cfg.strides,
        size,
        &mut out,
    );
    out
}

#[allow(clippy::too_many_arguments)]
fn walk(
    cfg: &UNetConfig,
    inc: usize,
    outc: usize,
    ch: &[usize],
    st: &[usize],
    size: [usize; 3],
    out: &mut Vec<Layer>,
) {
    let k = cfg.kernel_size;
    let res = |out: &mut Vec<Layer>,
               cin: usize,
               cout: usize,
               s: usize,
               units: usize,
               size: [usize; 3]| {
        let mut sz = size;
        let mut c = cin;
        for u in 0..units.max(1) {
            let stride = if u == 0 { s } else { 1 };
            out.push((false, c, cout, k, stride, sz));
            sz = sz.map(|v| v / stride);
            c = cout;
        }
        if s != 1 || cin != cout {
            let rk = if s == 1 { 1 } else { k };
            out.push((false, cin, cout, rk, s, size));
        }
    };
    let (c, s) = (ch[0], st[0]);
    let small = size.map(|v| v / s);
    res(out, inc, c, s, cfg.num_res_units, size);
    let upc = if ch.len() > 2 {
        walk(cfg, c, c, &ch[1..], &st[1..], small, out);
        c * 2
    } else {
        res(out, c, ch[1], 1, cfg.num_res_units, small);
        c + ch[1]
    };
    out.push((true, upc, outc, cfg.up_kernel_size, s, small));
    res(out, outc, outc, 1, 1, size);
}

fn median(
    runs: usize,
    mut f: impl FnMut() -> candle_core::Result<Tensor>,
) -> candle_core::Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        f()?;
        t.push(t0.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2] * 1e3)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("usage: conv_layers N D H W [RUNS]: {e}"))?;
    let (n, size, runs) = match args[..] {
        [] => (2, [48, 48, 32], 9),
        [n, d, h, w] => (n, [d, h, w], 9),
        [n, d, h, w, r] => (n, [d, h, w], r.max(1)),
        _ => return Err("usage: conv_layers N D H W [RUNS]".into()),
    };
    let dev = Device::Cpu;
    let mut count: BTreeMap<Layer, usize> = BTreeMap::new();
    let mut order = Vec::new();
    for l in layers(&UNetConfig::brats(), size) {
        let c = count.entry(l).or_insert(0);
        if *c == 0 {
            order.push(l);
        }
        *c += 1;
    }
    println!(
        "input {n}x4x{}x{}x{}, {} threads, {runs} runs",
        size[0],
        size[1],
        size[2],
        rayon::current_num_threads()
    );
    for l in order {
        let (transposed, ci, co, k, s, [d, h, w]) = l;
        let p = (k - 1) / 2;
        let x = Tensor::randn(0f32, 1., (n, ci, d, h, w), &dev)?;
        let (fwd, data, filter) = if transposed {
            let wt = Tensor::randn(0f32, 0.1, (ci, co, k, k, k), &dev)?;
            let cfg = ConvTranspose3dConfig {
                stride: [s; 3],
                padding: [p; 3],
                dilation: [1; 3],
                output_padding: [s - 1; 3],
            };
            let y = ops::conv_transpose3d(&x, &wt, &cfg)?;
            let dy = Tensor::randn(0f32, 1., y.dims(), &dev)?;
            // The transposed convolution's gradients are the forward convolution of dy (input)
            // and the filter gradient with the roles of input and output swapped.
            let conv = Conv3dConfig {
                stride: [s; 3],
                padding: [p; 3],
                dilation: [1; 3],
            };
            (
                median(runs, || ops::conv_transpose3d(&x, &wt, &cfg))?,
                median(runs, || ops::conv3d(&dy, &wt, &conv))?,
                median(runs, || ops::conv3d_weight_grad(&dy, &x, &wt, &conv))?,
            )
        } else {
            let wt = Tensor::randn(0f32, 0.1, (co, ci, k, k, k), &dev)?;
            let cfg = Conv3dConfig {
                stride: [s; 3],
                padding: [p; 3],
                dilation: [1; 3],
            };
            let y = ops::conv3d(&x, &wt, &cfg)?;
            let dy = Tensor::randn(0f32, 1., y.dims(), &dev)?;
            let up = ConvTranspose3dConfig {
                stride: [s; 3],
                padding: [p; 3],
                dilation: [1; 3],
                output_padding: [0; 3],
            };
            // The input gradient is the transposed convolution of dy, sized back to x.
            let op = [d, h, w]
                .iter()
                .zip(y.dims()[2..].iter())
                .map(|(&big, &sm)| big - ((sm - 1) * s + k - 2 * p))
                .collect::<Vec<_>>();
            let up = ConvTranspose3dConfig {
                output_padding: [op[0], op[1], op[2]],
                ..up
            };
            (
                median(runs, || ops::conv3d(&x, &wt, &cfg))?,
                median(runs, || ops::conv_transpose3d(&dy, &wt, &up))?,
                median(runs, || ops::conv3d_weight_grad(&x, &dy, &wt, &cfg))?,
            )
        };
        println!(
            "layer {} {ci} {co} {k} {s} {d} {h} {w} {} fwd {fwd:.3} data {data:.3} filter {filter:.3}",
            if transposed { "transposed" } else { "conv" },
            count[&l]
        );
    }
    Ok(())
}
