//! Times training steps of the BraTS UNet on CPU: `cargo run --release -p wf-trainer --example
//! unet_speed -- N D H W [STEPS]` (default 2 64 64 32, 7 steps). A step is what train-unet does per
//! batch: forward in training mode, MONAI's Dice loss (sigmoid, squared_pred), backward, and the
//! Adam update (lr 1e-4). Two warm-up steps, then one `step: SECONDS` line per timed step, and the
//! median (`bench/unet_step_vs_pytorch.sh` runs the same step in PyTorch + MONAI beside it).
//! Threads: rayon's default, or `RAYON_NUM_THREADS`. With `--profile` (anywhere in the arguments)
//! it also prints the mean time per step of each phase (forward, loss, backward, Adam) and of each
//! kernel within it; a phase's "other" is what candle's own ops (bias, residual adds, concatenation,
//! gradient sums) and the allocator took. The step runs as train-unet runs it (the hand-written
//! backward pass, `UNet::loss_and_grads`, where forward, loss and backward are one phase); with
//! `--autograd` through candle's autograd instead, phase by phase.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::collections::BTreeMap;
use std::time::Instant;
use wf_trainer::loss::DiceLoss;
use wf_trainer::ops::profile;
use wf_trainer::optim::{Adam, AdamConfig};
use wf_trainer::train::loss_and_gradients;
use wf_trainer::unet::{UNet, UNetConfig, init_seeded};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let profiling = args.iter().any(|a| a == "--profile");
    let hand = !args.iter().any(|a| a == "--autograd");
    args.retain(|a| a != "--profile" && a != "--autograd");
    let args: Vec<usize> = args
        .iter()
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("usage: unet_speed N D H W [STEPS]: {e}"))?;
    let (shape, steps) = match args[..] {
        [] => ([2, 64, 64, 32], 7),
        [n, d, h, w] => ([n, d, h, w], 7),
        [n, d, h, w, s] => ([n, d, h, w], s.max(1)),
        _ => return Err("usage: unet_speed N D H W [STEPS]".into()),
    };
    let [n, d, h, w] = shape;
    // As the wf binary does for train-unet (`alloc::keep_freed_heap`).
    wf_trainer::alloc::keep_freed_heap();
    let vm = VarMap::new();
    let net = UNet::new(
        &UNetConfig::brats(),
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )?;
    init_seeded(&vm, 0)?;
    let mut opt = Adam::from_varmap(
        &vm,
        AdamConfig {
            lr: 1e-4,
            ..AdamConfig::default()
        },
    )?;
    let x = Tensor::randn(0f32, 1f32, (n, 4, d, h, w), &Device::Cpu)?;
    let t = Tensor::rand(0f32, 1f32, (n, 3, d, h, w), &Device::Cpu)?
        .ge(0.7)?
        .to_dtype(DType::F32)?;
    let loss = DiceLoss::default();
    println!(
        "input {n}x4x{d}x{h}x{w}, {} threads, 2 warm-up steps, {steps} timed, backward {}",
        rayon::current_num_threads(),
        if hand {
            "by hand"
        } else {
            "by candle's autograd"
        }
    );
    let mut times = Vec::with_capacity(steps);
    // (phase, kernel) -> (calls, seconds) over the timed steps; kernel "" is the phase's wall time.
    let mut table: BTreeMap<(usize, String), (u64, f64)> = BTreeMap::new();
    for i in 0..steps + 2 {
        profile::enable(profiling && i >= 2);
        let t0 = Instant::now();
        let mut mark = t0;
        let mut phase = |p: usize, table: &mut BTreeMap<(usize, String), (u64, f64)>| {
            if !profile::enabled() {
                return;
            }
            let now = Instant::now();
            let e = table.entry((p, String::new())).or_default();
            e.0 += 1;
            e.1 += (now - mark).as_secs_f64();
            for (k, n, s) in profile::take() {
                let e = table.entry((p, k)).or_default();
                e.0 += n;
                e.1 += s;
            }
            mark = Instant::now();
        };
        if hand {
            // train-unet's path: forward, loss and backward in one call.
            let (_, grads) = loss_and_gradients(&net, &opt, &loss, &x, &t)?;
            phase(2, &mut table);
            opt.step_with(&grads)?;
        } else {
            let y = net.forward_t(&x, true)?;
            phase(0, &mut table);
            let l = loss.forward(&y, &t)?;
            phase(1, &mut table);
            let grads = l.backward()?;
            phase(2, &mut table);
            opt.step(&grads)?;
        }
        phase(3, &mut table);
        let secs = t0.elapsed().as_secs_f64();
        if i >= 2 {
            println!("step: {secs:.4}");
            times.push(secs);
        }
    }
    profile::enable(false);
    times.sort_by(f64::total_cmp);
    println!("median: {:.4}", times[times.len() / 2]);
    if profiling {
        print_profile(&table, steps, hand);
    }
    Ok(())
}

fn print_profile(table: &BTreeMap<(usize, String), (u64, f64)>, steps: usize, hand: bool) {
    let per = |s: f64| s / steps as f64 * 1e3;
    println!("mean per step (ms); kernels sorted by time within each phase");
    let names = if hand {
        ["", "", "forward+loss+backward", "adam"]
    } else {
        ["forward", "loss", "backward", "adam"]
    };
    for (p, name) in names.iter().enumerate() {
        if name.is_empty() {
            continue;
        }
        let wall = table.get(&(p, String::new())).map_or(0.0, |e| e.1);
        let mut rows: Vec<_> = table
            .iter()
            .filter(|((q, k), _)| *q == p && !k.is_empty())
            .map(|((_, k), &(n, s))| (k.clone(), n, s))
            .collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        let kernels: f64 = rows
            .iter()
            .filter(|r| !r.0.starts_with("pass: "))
            .map(|r| r.2)
            .sum();
        println!("{name:<10} {:8.1}", per(wall));
        for (k, n, s) in &rows {
            println!("    {:8.2}  x{:<3} {k}", per(*s), n / steps as u64);
        }
        println!("    {:8.2}  other", per(wall - kernels));
    }
}
