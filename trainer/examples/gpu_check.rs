//! The trainer's GPU checks, in one binary for one run on a GPU machine (see scripts/gpu-check.sh).
//!
//! Built on any Linux machine with the CUDA toolchain (`source scripts/cuda-toolchain.sh`), run on
//! the GPU machine through `scripts/run-on-gpu.sh`:
//! `gpu_check [STEPS]`. In order, each printed as one line (`PASS`/`FAIL`/`INFO`), exit status 1
//! when any check fails:
//! 1. conv3d / conv_transpose3d (cuDNN) against the CPU path: outputs and both gradients, f32 (TF32
//!    allowed, as in PyTorch) and bf16, over the UNet's shapes and odd strides/paddings/dilations;
//! 2. instance norm, PReLU and sigmoid on the GPU (candle's ops) against the CPU's fused ops;
//! 3. the BraTS UNet forward and its Dice-loss gradients, GPU vs CPU, same seeded weights;
//! 4. NCCL: every visible GPU as a replica, all-reduce mean of known values;
//! 5. a short training (Adam, Dice) on the GPU whose loss must fall;
//! 6. training throughput at 4x128x128x64: fp32 batch 8, bf16 batch 8 and 16 (samples/s, median
//!    of STEPS timed steps after 3 warm-up steps); an out-of-memory is reported, not fatal.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use std::time::Instant;
use wf_trainer::cluster::ID_BYTES;
use wf_trainer::ddp::GradReducer;
use wf_trainer::loss::DiceLoss;
use wf_trainer::nccl::{NcclReducer, new_id};
use wf_trainer::ops::{
    Conv3dConfig, ConvTranspose3dConfig, conv_transpose3d, conv3d, instance_norm, prelu, sigmoid,
};
use wf_trainer::optim::{Adam, AdamConfig};
use wf_trainer::unet::{UNet, UNetConfig, init_seeded};

type R<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Deterministic values in about [-2, 2] (sum of uniforms), made on the CPU.
fn randn(seed: u64, dims: &[usize]) -> R<Tensor> {
    let n: usize = dims.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            (0..4)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s >> 40) as f32 / (1u64 << 24) as f32
                })
                .sum::<f32>()
                - 2.0
        })
        .collect();
    Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
}

/// max |a - b| / max |b|, on the CPU in f32; NaN when either holds a non-finite value or the
/// shapes differ (so a NaN can never pass a check).
fn rel(a: &Tensor, b: &Tensor) -> R<f32> {
    if a.dims() != b.dims() {
        return Ok(f32::NAN);
    }
    let v = |t: &Tensor| -> R<Vec<f32>> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    };
    let (a, b) = (v(a)?, v(b)?);
    let (mut diff, mut scale) = (0f32, 1e-12f32);
    for (x, y) in a.iter().zip(&b) {
        if !x.is_finite() || !y.is_finite() {
            return Ok(f32::NAN);
        }
        diff = diff.max((x - y).abs());
        scale = scale.max(y.abs());
    }
    Ok(diff / scale)
}

/// The worse of two errors, NaN winning.
fn worse(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

struct Report {
    failed: usize,
}

impl Report {
    fn check(&mut self, what: &str, err: f32, tol: f32) {
        let ok = err.is_finite() && err <= tol;
        if !ok {
            self.failed += 1;
        }
        println!(
            "{} {what}: rel err {err:.2e} (tol {tol:.0e})",
            if ok { "PASS" } else { "FAIL" }
        );
    }
    fn fail(&mut self, what: &str, e: impl std::fmt::Display) {
        self.failed += 1;
        println!("FAIL {what}: {e}");
    }
}

enum ConvCase {
    Fwd(Conv3dConfig),
    Transposed(ConvTranspose3dConfig),
}

/// Output and gradients (of sum(y * r)) in x and w, on `dev`, convolution in `dtype`.
fn conv_run(
    case: &ConvCase,
    x: &Tensor,
    w: &Tensor,
    r: &Tensor,
    dev: &Device,
    dtype: DType,
) -> R<[Tensor; 3]> {
    let xv = Var::from_tensor(&x.to_device(dev)?)?;
    let wv = Var::from_tensor(&w.to_device(dev)?)?;
    let (xc, wc) = (xv.to_dtype(dtype)?, wv.to_dtype(dtype)?);
    let y = match case {
        ConvCase::Fwd(c) => conv3d(&xc, &wc, c)?,
        ConvCase::Transposed(c) => conv_transpose3d(&xc, &wc, c)?,
    }
    .to_dtype(DType::F32)?;
    let g = (&y * r.to_device(dev)?)?.sum_all()?.backward()?;
    let gx = g.get(xv.as_tensor()).ok_or("no x gradient")?.clone();
    let gw = g.get(wv.as_tensor()).ok_or("no w gradient")?.clone();
    Ok([y, gx, gw])
}

fn check_convs(rep: &mut Report, gpu: &Device) -> R<()> {
    let c = |s: usize, p: usize, d: usize| Conv3dConfig {
        stride: [s; 3],
        padding: [p; 3],
        dilation: [d; 3],
    };
    let t = |s: usize, p: usize, op: usize| ConvTranspose3dConfig {
        stride: [s; 3],
        padding: [p; 3],
        output_padding: [op; 3],
        dilation: [1; 3],
    };
    // (name, x dims, w dims, op): the UNet's own layers, then odd geometries.
    let cases: Vec<(&str, Vec<usize>, Vec<usize>, ConvCase)> = vec![
        (
            "unet down 4->16 s2",
            vec![2, 4, 32, 32, 16],
            vec![16, 4, 3, 3, 3],
            ConvCase::Fwd(c(2, 1, 1)),
        ),
        (
            "unet unit 16->16 s1",
            vec![2, 16, 16, 16, 8],
            vec![16, 16, 3, 3, 3],
            ConvCase::Fwd(c(1, 1, 1)),
        ),
        (
            "unet residual 1x1 s2",
            vec![2, 16, 16, 16, 8],
            vec![32, 16, 1, 1, 1],
            ConvCase::Fwd(c(2, 0, 1)),
        ),
        (
            "unet up 64->16 s2 op1",
            vec![2, 64, 8, 8, 4],
            vec![64, 16, 3, 3, 3],
            ConvCase::Transposed(t(2, 1, 1)),
        ),
        (
            "odd dilation 2 pad 2",
            vec![1, 3, 11, 9, 7],
            vec![5, 3, 3, 2, 3],
            ConvCase::Fwd(c(1, 2, 2)),
        ),
        (
            "odd stride 3",
            vec![1, 2, 13, 10, 8],
            vec![4, 2, 3, 3, 3],
            ConvCase::Fwd(c(3, 1, 1)),
        ),
        (
            "odd transposed s3 p1 op2",
            vec![1, 3, 5, 4, 3],
            vec![3, 2, 3, 3, 3],
            ConvCase::Transposed(t(3, 1, 2)),
        ),
    ];
    for (i, (name, xd, wd, case)) in cases.iter().enumerate() {
        let seed = 10 * i as u64;
        let (x, w) = (randn(seed + 1, xd)?, (randn(seed + 2, wd)? * 0.2)?);
        let y0 = match case {
            ConvCase::Fwd(c) => conv3d(&x, &w, c)?,
            ConvCase::Transposed(c) => conv_transpose3d(&x, &w, c)?,
        };
        let r = randn(seed + 3, y0.dims())?;
        let want = conv_run(case, &x, &w, &r, &Device::Cpu, DType::F32)?;
        for (dtype, tol) in [(DType::F32, 1e-2f32), (DType::BF16, 4e-2)] {
            match conv_run(case, &x, &w, &r, gpu, dtype) {
                Ok(got) => {
                    for (k, part) in ["y", "dx", "dw"].iter().enumerate() {
                        rep.check(
                            &format!("conv {name} {dtype:?} {part}"),
                            rel(&got[k], &want[k])?,
                            tol,
                        );
                    }
                }
                Err(e) => rep.fail(&format!("conv {name} {dtype:?}"), e),
            }
        }
    }
    Ok(())
}

fn check_elementwise(rep: &mut Report, gpu: &Device) -> R<()> {
    let x = (randn(100, &[2, 3, 8, 8, 4])? * 3.0)?.affine(1.0, 0.5)?;
    let r = randn(101, &[2, 3, 8, 8, 4])?;
    let a = Tensor::new(&[0.25f32], &Device::Cpu)?;
    type Op = fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>;
    let ops: [(&str, Op); 3] = [
        ("instance_norm", |x, _| instance_norm(x, 1e-5)),
        ("prelu", |x, a| prelu(x, a)),
        ("sigmoid", |x, _| sigmoid(x)),
    ];
    for (name, f) in ops {
        let run = |dev: &Device| -> R<[Tensor; 3]> {
            let xv = Var::from_tensor(&x.to_device(dev)?)?;
            let av = Var::from_tensor(&a.to_device(dev)?)?;
            let y = f(xv.as_tensor(), av.as_tensor())?;
            let g = (&y * r.to_device(dev)?)?.sum_all()?.backward()?;
            let ga = g
                .get(av.as_tensor())
                .cloned()
                .unwrap_or(Tensor::zeros(1, DType::F32, dev)?);
            Ok([y, g.get(xv.as_tensor()).ok_or("no x gradient")?.clone(), ga])
        };
        let want = run(&Device::Cpu)?;
        match run(gpu) {
            Ok(got) => {
                // Only PReLU has a slope whose gradient means something.
                let parts = if name == "prelu" { 3 } else { 2 };
                for (k, part) in ["y", "dx", "da"].iter().enumerate().take(parts) {
                    rep.check(&format!("{name} {part}"), rel(&got[k], &want[k])?, 1e-4);
                }
            }
            Err(e) => rep.fail(name, e),
        }
    }
    Ok(())
}

fn unet_on(dev: &Device, seed: u64) -> R<(VarMap, UNet)> {
    let vm = VarMap::new();
    let net = UNet::new(
        &UNetConfig::brats(),
        VarBuilder::from_varmap(&vm, DType::F32, dev),
    )?;
    init_seeded(&vm, seed)?;
    Ok((vm, net))
}

fn check_unet(rep: &mut Report, gpu: &Device) -> R<()> {
    let x = randn(200, &[1, 4, 32, 32, 32])?;
    let y = randn(201, &[1, 3, 32, 32, 32])?
        .gt(0.5)?
        .to_dtype(DType::F32)?;
    let run = |dev: &Device, bf16: bool| -> R<(Tensor, Vec<(String, Tensor)>)> {
        let (vm, net) = unet_on(dev, 7)?;
        let net = net.with_bf16(bf16);
        let logits = net.forward_t(&x.to_device(dev)?, false)?;
        let loss = DiceLoss::default().forward(&logits, &y.to_device(dev)?)?;
        let g = loss.backward()?;
        let mut grads: Vec<(String, Tensor)> = vm
            .data()
            .lock()
            .map_err(|_| "poisoned")?
            .iter()
            .filter_map(|(k, v)| g.get(v.as_tensor()).map(|t| (k.clone(), t.clone())))
            .collect();
        grads.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((logits, grads))
    };
    let (want_y, want_g) = run(&Device::Cpu, false)?;
    for (bf16, tol_y, tol_g) in [(false, 1e-2f32, 5e-2f32), (true, 5e-2, 2e-1)] {
        let tag = if bf16 { "bf16" } else { "fp32" };
        match run(gpu, bf16) {
            Ok((y, g)) => {
                rep.check(&format!("unet {tag} logits"), rel(&y, &want_y)?, tol_y);
                let names =
                    |v: &[(String, Tensor)]| v.iter().map(|p| p.0.clone()).collect::<Vec<_>>();
                let mut worst = (0f32, String::new());
                if names(&g) != names(&want_g) {
                    worst = (f32::NAN, "the GPU run has different gradients".into());
                } else {
                    for ((k, a), (_, b)) in g.iter().zip(&want_g) {
                        let e = rel(a, b)?;
                        // NaN wins: a non-finite gradient must fail the check.
                        if e.is_nan() || e > worst.0 {
                            worst = (e, k.clone());
                        }
                    }
                }
                rep.check(
                    &format!(
                        "unet {tag} gradients ({} tensors, worst {})",
                        g.len(),
                        worst.1
                    ),
                    worst.0,
                    tol_g,
                );
            }
            Err(e) => rep.fail(&format!("unet {tag}"), e),
        }
    }
    Ok(())
}

fn check_nccl(rep: &mut Report) -> R<()> {
    let n = wf_trainer::gpu::device_count()?;
    let id: [u8; ID_BYTES] = new_id()?;
    let results: Vec<R<Vec<f32>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|rank| {
                s.spawn(move || -> R<Vec<f32>> {
                    let dev = wf_trainer::gpu::device(rank)?;
                    let red = NcclReducer::new(&dev, rank, n, &id)?;
                    let g = vec![
                        Some(Tensor::full((rank + 1) as f32, (2, 3), &dev)?),
                        None,
                        Some(Tensor::full(10.0 * rank as f32, 5, &dev)?),
                    ];
                    let out = red.all_reduce_mean(&g)?;
                    if out[1].is_some() {
                        return Err("a missing gradient came back".into());
                    }
                    let a = out[0].as_ref().ok_or("gradient 0 missing")?;
                    let b = out[2].as_ref().ok_or("gradient 2 missing")?;
                    Ok([a.flatten_all()?.to_vec1::<f32>()?, b.to_vec1::<f32>()?].concat())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("replica panicked".into())))
            .collect()
    });
    let mean_a = (1..=n).sum::<usize>() as f32 / n as f32;
    let mean_b = 10.0 * (0..n).sum::<usize>() as f32 / n as f32;
    let want: Vec<f32> = [vec![mean_a; 6], vec![mean_b; 5]].concat();
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Ok(v) => {
                let err = if v.len() != want.len() {
                    f32::NAN
                } else {
                    v.iter()
                        .zip(&want)
                        .fold(0f32, |m, (a, b)| worse(m, (a - b).abs()))
                };
                rep.check(
                    &format!("nccl all-reduce mean, rank {rank} of {n}"),
                    err,
                    1e-5,
                );
            }
            Err(e) => rep.fail(&format!("nccl rank {rank} of {n}"), e),
        }
    }
    Ok(())
}

fn batch(dev: &Device, n: usize, dims: [usize; 3], seed: u64) -> R<(Tensor, Tensor)> {
    let [d, h, w] = dims;
    let x = randn(seed, &[n, 4, d, h, w])?;
    // Labels that depend on the image, so the loss can fall.
    let y = x.narrow(1, 0, 3)?.gt(0.3)?.to_dtype(DType::F32)?;
    Ok((x.to_device(dev)?, y.to_device(dev)?))
}

fn check_training(rep: &mut Report, gpu: &Device) -> R<()> {
    let (vm, net) = unet_on(gpu, 3)?;
    let mut opt = Adam::from_varmap(
        &vm,
        AdamConfig {
            lr: 1e-2,
            ..Default::default()
        },
    )?;
    let (x, y) = batch(gpu, 2, [32, 32, 32], 300)?;
    let mut losses = Vec::new();
    for _ in 0..20 {
        let loss = DiceLoss::default().forward(&net.forward_t(&x, true)?, &y)?;
        opt.step(&loss.backward()?)?;
        losses.push(loss.to_scalar::<f32>()?);
    }
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    let ok = last.is_finite() && last < 0.8 * first;
    if !ok {
        rep.failed += 1;
    }
    println!(
        "{} short training on the GPU: Dice loss {first:.4} -> {last:.4} in 20 steps",
        if ok { "PASS" } else { "FAIL" }
    );
    Ok(())
}

fn throughput(gpu: &Device, n: usize, bf16: bool, steps: usize) -> R<(f64, f64)> {
    let (vm, net) = unet_on(gpu, 5)?;
    let net = net.with_bf16(bf16);
    let mut opt = Adam::from_varmap(&vm, AdamConfig::default())?;
    let (x, y) = batch(gpu, n, [128, 128, 64], 400)?;
    let mut times = Vec::new();
    for i in 0..steps + 3 {
        gpu.synchronize()?;
        let t = Instant::now();
        let loss = DiceLoss::default().forward(&net.forward_t(&x, true)?, &y)?;
        opt.step(&loss.backward()?)?;
        gpu.synchronize()?;
        if i >= 3 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok((n as f64 / median, median))
}

fn main() -> R<()> {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10usize)
        .max(1);
    let gpu = wf_trainer::gpu::device(0)?;
    println!(
        "INFO {} CUDA device(s); wf-trainer gpu_check, {steps} timed steps per throughput run",
        wf_trainer::gpu::device_count()?
    );
    let mut rep = Report { failed: 0 };
    let t = Instant::now();
    check_convs(&mut rep, &gpu)?;
    check_elementwise(&mut rep, &gpu)?;
    check_unet(&mut rep, &gpu)?;
    if let Err(e) = check_nccl(&mut rep) {
        rep.fail("nccl", e);
    }
    if let Err(e) = check_training(&mut rep, &gpu) {
        rep.fail("short training", e);
    }
    println!(
        "INFO correctness checks took {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for (n, bf16) in [(8, false), (8, true), (16, true), (16, false)] {
        let tag = if bf16 { "bf16" } else { "fp32" };
        match throughput(&gpu, n, bf16, steps) {
            Ok((rate, step)) => println!(
                "INFO train throughput {tag} batch {n} at 4x128x128x64: {rate:.1} samples/s (median step {:.1} ms)",
                step * 1e3
            ),
            Err(e) => println!("INFO train throughput {tag} batch {n}: not measured: {e}"),
        }
    }
    if rep.failed > 0 {
        println!("FAIL {} check(s) failed", rep.failed);
        std::process::exit(1);
    }
    println!("PASS all checks");
    Ok(())
}
