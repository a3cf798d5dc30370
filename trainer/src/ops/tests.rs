//! Tests of the 3D convolution ops: naive reference, finite differences, PyTorch fixture.

use super::*;
use crate::testutil::{fixture, fixture_metadata, randn, rel_err, to_vec};
use candle_core::{Device, Var};

/// The textbook 7-loop convolution in f64.
fn naive_conv3d(x: &Tensor, w: &Tensor, c: &Conv3dConfig) -> Tensor {
    let [n, ci, d, h, wd] = <[usize; 5]>::try_from(x.dims()).unwrap();
    let [co, _, kd, kh, kw] = <[usize; 5]>::try_from(w.dims()).unwrap();
    let (xv, wv) = (to_vec(x), to_vec(w));
    let out = |i: usize, k: usize, a: usize| {
        (i + 2 * c.padding[a] - c.dilation[a] * (k - 1) - 1) / c.stride[a] + 1
    };
    let (od, oh, ow) = (out(d, kd, 0), out(h, kh, 1), out(wd, kw, 2));
    let mut y = vec![0f32; n * co * od * oh * ow];
    for b in 0..n {
        for o in 0..co {
            for z in 0..od {
                for yy in 0..oh {
                    for xx in 0..ow {
                        let mut acc = 0f64;
                        for i in 0..ci {
                            for a in 0..kd {
                                for bb in 0..kh {
                                    for cc in 0..kw {
                                        let iz = (z * c.stride[0] + a * c.dilation[0]) as isize
                                            - c.padding[0] as isize;
                                        let iy = (yy * c.stride[1] + bb * c.dilation[1]) as isize
                                            - c.padding[1] as isize;
                                        let ix = (xx * c.stride[2] + cc * c.dilation[2]) as isize
                                            - c.padding[2] as isize;
                                        if iz < 0
                                            || iy < 0
                                            || ix < 0
                                            || iz >= d as isize
                                            || iy >= h as isize
                                            || ix >= wd as isize
                                        {
                                            continue;
                                        }
                                        let xi = (((b * ci + i) * d + iz as usize) * h
                                            + iy as usize)
                                            * wd
                                            + ix as usize;
                                        let wi = (((o * ci + i) * kd + a) * kh + bb) * kw + cc;
                                        acc += xv[xi] as f64 * wv[wi] as f64;
                                    }
                                }
                            }
                        }
                        y[(((b * co + o) * od + z) * oh + yy) * ow + xx] = acc as f32;
                    }
                }
            }
        }
    }
    Tensor::from_vec(y, (n, co, od, oh, ow), &Device::Cpu).unwrap()
}

/// Transposed convolution by its definition: scatter every input voxel through the kernel.
fn naive_conv_transpose3d(x: &Tensor, w: &Tensor, c: &ConvTranspose3dConfig) -> Tensor {
    let [n, ci, d, h, wd] = <[usize; 5]>::try_from(x.dims()).unwrap();
    let [_, co, kd, kh, kw] = <[usize; 5]>::try_from(w.dims()).unwrap();
    let (xv, wv) = (to_vec(x), to_vec(w));
    let out = |i: usize, k: usize, a: usize| {
        (i - 1) * c.stride[a] + c.dilation[a] * (k - 1) + c.output_padding[a] + 1 - 2 * c.padding[a]
    };
    let (od, oh, ow) = (out(d, kd, 0), out(h, kh, 1), out(wd, kw, 2));
    let mut y = vec![0f64; n * co * od * oh * ow];
    for b in 0..n {
        for i in 0..ci {
            for z in 0..d {
                for yy in 0..h {
                    for xx in 0..wd {
                        let xval = xv[(((b * ci + i) * d + z) * h + yy) * wd + xx] as f64;
                        for o in 0..co {
                            for a in 0..kd {
                                for bb in 0..kh {
                                    for cc in 0..kw {
                                        let oz = (z * c.stride[0] + a * c.dilation[0]) as isize
                                            - c.padding[0] as isize;
                                        let oy = (yy * c.stride[1] + bb * c.dilation[1]) as isize
                                            - c.padding[1] as isize;
                                        let ox = (xx * c.stride[2] + cc * c.dilation[2]) as isize
                                            - c.padding[2] as isize;
                                        if oz < 0
                                            || oy < 0
                                            || ox < 0
                                            || oz >= od as isize
                                            || oy >= oh as isize
                                            || ox >= ow as isize
                                        {
                                            continue;
                                        }
                                        let wi = (((i * co + o) * kd + a) * kh + bb) * kw + cc;
                                        let yi = (((b * co + o) * od + oz as usize) * oh
                                            + oy as usize)
                                            * ow
                                            + ox as usize;
                                        y[yi] += xval * wv[wi] as f64;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let y: Vec<f32> = y.into_iter().map(|v| v as f32).collect();
    Tensor::from_vec(y, (n, co, od, oh, ow), &Device::Cpu).unwrap()
}

fn conv_cases() -> Vec<([usize; 5], usize, [usize; 3], Conv3dConfig)> {
    // (input dims, out channels, kernel, config)
    vec![
        (
            [2, 3, 5, 6, 7],
            4,
            [3, 3, 3],
            Conv3dConfig {
                stride: [1; 3],
                padding: [1; 3],
                dilation: [1; 3],
            },
        ),
        (
            [1, 2, 9, 7, 8],
            3,
            [3, 3, 3],
            Conv3dConfig {
                stride: [2; 3],
                padding: [1; 3],
                dilation: [1; 3],
            },
        ),
        (
            [2, 2, 7, 8, 6],
            2,
            [3, 2, 3],
            Conv3dConfig {
                stride: [1, 2, 3],
                padding: [0, 1, 2],
                dilation: [2, 1, 1],
            },
        ),
        // Unit stride in H and W with the output as wide as the input: vol2col and col2vol copy
        // whole planes as one run, then clear the columns that wrapped (two wide here).
        (
            [1, 2, 6, 5, 7],
            3,
            [3, 3, 3],
            Conv3dConfig {
                stride: [2, 1, 1],
                padding: [1, 2, 2],
                dilation: [1, 2, 2],
            },
        ),
        // The W taps in the GEMM with strided, dilated D and H, and an even W kernel unpadded.
        (
            [2, 3, 7, 6, 5],
            2,
            [3, 2, 2],
            Conv3dConfig {
                stride: [2, 2, 1],
                padding: [1, 0, 0],
                dilation: [2, 1, 1],
            },
        ),
        // Unit stride everywhere with dilation and uneven padding: the input gradient runs as a
        // forward convolution with flipped weights.
        (
            [2, 2, 6, 5, 6],
            3,
            [3, 3, 2],
            Conv3dConfig {
                stride: [1; 3],
                padding: [2, 1, 0],
                dilation: [2, 1, 1],
            },
        ),
        ([1, 3, 6, 6, 6], 5, [1, 1, 1], Conv3dConfig::default()),
        (
            [1, 4, 6, 5, 4],
            2,
            [1, 1, 1],
            Conv3dConfig {
                stride: [2; 3],
                padding: [0; 3],
                dilation: [1; 3],
            },
        ),
        (
            [3, 1, 5, 5, 5],
            2,
            [2, 2, 2],
            Conv3dConfig {
                stride: [3, 1, 2],
                padding: [1, 0, 1],
                dilation: [1, 3, 2],
            },
        ),
    ]
}

fn transpose_cases() -> Vec<([usize; 5], usize, [usize; 3], ConvTranspose3dConfig)> {
    vec![
        (
            [1, 3, 4, 5, 3],
            2,
            [3, 3, 3],
            ConvTranspose3dConfig {
                stride: [2; 3],
                padding: [1; 3],
                dilation: [1; 3],
                output_padding: [1; 3],
            },
        ),
        (
            [2, 2, 3, 4, 5],
            3,
            [3, 2, 3],
            ConvTranspose3dConfig {
                stride: [1, 2, 2],
                padding: [0, 1, 1],
                dilation: [2, 1, 1],
                output_padding: [0, 1, 0],
            },
        ),
        (
            [1, 4, 3, 3, 3],
            2,
            [1, 1, 1],
            ConvTranspose3dConfig::default(),
        ),
        (
            [2, 3, 4, 3, 5],
            2,
            [3, 2, 3],
            ConvTranspose3dConfig {
                stride: [1; 3],
                padding: [1, 0, 1],
                dilation: [1, 2, 1],
                output_padding: [0; 3],
            },
        ),
        (
            [2, 2, 4, 3, 2],
            2,
            [2, 3, 2],
            ConvTranspose3dConfig {
                stride: [3, 1, 2],
                padding: [1, 1, 0],
                dilation: [1, 2, 2],
                output_padding: [2, 0, 1],
            },
        ),
    ]
}

#[test]
fn conv3d_matches_naive_reference() {
    for (i, (xd, co, k, cfg)) in conv_cases().into_iter().enumerate() {
        let x = randn(10 + i as u64, &xd);
        let w = randn(20 + i as u64, &[co, xd[1], k[0], k[1], k[2]]);
        let got = conv3d(&x, &w, &cfg).unwrap();
        let want = naive_conv3d(&x, &w, &cfg);
        assert!(
            rel_err(&got, &want) < 1e-5,
            "case {i}: err {}",
            rel_err(&got, &want)
        );
    }
}

#[test]
fn conv_transpose3d_matches_naive_reference() {
    for (i, (xd, co, k, cfg)) in transpose_cases().into_iter().enumerate() {
        let x = randn(30 + i as u64, &xd);
        let w = randn(40 + i as u64, &[xd[1], co, k[0], k[1], k[2]]);
        let got = conv_transpose3d(&x, &w, &cfg).unwrap();
        let want = naive_conv_transpose3d(&x, &w, &cfg);
        assert!(
            rel_err(&got, &want) < 1e-5,
            "case {i}: err {}",
            rel_err(&got, &want)
        );
    }
}

/// Central differences of L = sum(f(x, w) * r) at a few entries of x and w, against backprop.
fn check_finite_differences(
    f: &dyn Fn(&Tensor, &Tensor) -> Tensor,
    x: &Tensor,
    w: &Tensor,
    seed: u64,
) {
    let xv = Var::from_tensor(x).unwrap();
    let wv = Var::from_tensor(w).unwrap();
    let y = f(xv.as_tensor(), wv.as_tensor());
    let r = randn(seed, y.dims());
    let loss = (&y * &r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let loss_at = |x: &Tensor, w: &Tensor| -> f64 {
        (f(x, w) * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    for (which, t) in [("x", x), ("w", w)] {
        let g = to_vec(
            grads
                .get(if which == "x" {
                    xv.as_tensor()
                } else {
                    wv.as_tensor()
                })
                .unwrap(),
        );
        let base = to_vec(t);
        let n = base.len();
        for probe in 0..6 {
            let idx = (probe * 7919 + seed as usize) % n;
            let h = 1e-2f32;
            let mut plus = base.clone();
            plus[idx] += h;
            let mut minus = base.clone();
            minus[idx] -= h;
            let tp = Tensor::from_vec(plus, t.dims(), &Device::Cpu).unwrap();
            let tm = Tensor::from_vec(minus, t.dims(), &Device::Cpu).unwrap();
            let (lp, lm) = if which == "x" {
                (loss_at(&tp, w), loss_at(&tm, w))
            } else {
                (loss_at(x, &tp), loss_at(x, &tm))
            };
            let fd = (lp - lm) / (2.0 * h as f64);
            let err = (fd - g[idx] as f64).abs() / fd.abs().max(1.0);
            assert!(
                err < 2e-2,
                "d{which}[{idx}]: backprop {} vs finite difference {fd}",
                g[idx]
            );
        }
    }
}

#[test]
fn conv3d_gradients_match_finite_differences() {
    for (i, (xd, co, k, cfg)) in conv_cases().into_iter().enumerate() {
        let x = randn(50 + i as u64, &xd);
        let w = randn(60 + i as u64, &[co, xd[1], k[0], k[1], k[2]]);
        check_finite_differences(&|x, w| conv3d(x, w, &cfg).unwrap(), &x, &w, 70 + i as u64);
    }
}

#[test]
fn conv_transpose3d_gradients_match_finite_differences() {
    for (i, (xd, co, k, cfg)) in transpose_cases().into_iter().enumerate() {
        let x = randn(80 + i as u64, &xd);
        let w = randn(90 + i as u64, &[xd[1], co, k[0], k[1], k[2]]);
        check_finite_differences(
            &|x, w| conv_transpose3d(x, w, &cfg).unwrap(),
            &x,
            &w,
            100 + i as u64,
        );
    }
}

#[derive(serde::Deserialize)]
struct FixtureCase {
    stride: [usize; 3],
    padding: [usize; 3],
    dilation: [usize; 3],
    output_padding: [usize; 3],
    transposed: bool,
}

#[test]
fn conv_ops_match_pytorch() {
    let t = fixture("conv3d.safetensors");
    let cases: Vec<FixtureCase> =
        serde_json::from_str(&fixture_metadata("conv3d.safetensors")["cases"]).unwrap();
    assert_eq!(cases.len(), 5);
    for (i, c) in cases.iter().enumerate() {
        let get = |k: &str| t[&format!("case{i}.{k}")].clone();
        let (x, w) = (
            Var::from_tensor(&get("x")).unwrap(),
            Var::from_tensor(&get("w")).unwrap(),
        );
        let y = if c.transposed {
            let cfg = ConvTranspose3dConfig {
                stride: c.stride,
                padding: c.padding,
                dilation: c.dilation,
                output_padding: c.output_padding,
            };
            conv_transpose3d(x.as_tensor(), w.as_tensor(), &cfg).unwrap()
        } else {
            let cfg = Conv3dConfig {
                stride: c.stride,
                padding: c.padding,
                dilation: c.dilation,
            };
            conv3d(x.as_tensor(), w.as_tensor(), &cfg).unwrap()
        };
        assert!(
            rel_err(&y, &get("y")) < 1e-5,
            "case {i} y: {}",
            rel_err(&y, &get("y"))
        );
        let grads = (&y * get("gy"))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gx = grads.get(x.as_tensor()).unwrap();
        let gw = grads.get(w.as_tensor()).unwrap();
        assert!(
            rel_err(gx, &get("gx")) < 1e-5,
            "case {i} gx: {}",
            rel_err(gx, &get("gx"))
        );
        assert!(
            rel_err(gw, &get("gw")) < 1e-5,
            "case {i} gw: {}",
            rel_err(gw, &get("gw"))
        );
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let x = randn(1, &[1, 2, 4, 4, 4]);
    let cfg = Conv3dConfig::default();
    assert!(
        conv3d(&x, &randn(2, &[3, 5, 3, 3, 3]), &cfg)
            .unwrap_err()
            .to_string()
            .contains("channels")
    );
    assert!(conv3d(&x, &randn(2, &[3, 2, 5, 5, 5]), &cfg).is_err());
    assert!(conv3d(&randn(1, &[2, 4, 4, 4]), &randn(2, &[3, 2, 3, 3, 3]), &cfg).is_err());
    let zero = Conv3dConfig {
        stride: [0, 1, 1],
        ..cfg
    };
    assert!(conv3d(&x, &randn(2, &[3, 2, 3, 3, 3]), &zero).is_err());
    let t = ConvTranspose3dConfig {
        stride: [2; 3],
        output_padding: [2; 3],
        ..Default::default()
    };
    assert!(conv_transpose3d(&x, &randn(2, &[2, 3, 3, 3, 3]), &t).is_err());
    // bf16 is for the cuDNN path; on the CPU, and with mixed dtypes, a clear error.
    let (xb, wb) = (
        x.to_dtype(DType::BF16).unwrap(),
        randn(3, &[4, 2, 3, 3, 3]).to_dtype(DType::BF16).unwrap(),
    );
    let e = conv3d(&xb, &wb, &Conv3dConfig::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bf16 on CUDA"), "{e}");
    assert!(conv3d(&x, &wb, &Conv3dConfig::default()).is_err());
}

#[test]
fn instance_norm_matches_composed_ops_and_gradient() {
    let x = Var::from_tensor(
        &(randn(5, &[2, 3, 4, 5, 3]) * 3.0)
            .unwrap()
            .affine(1.0, 0.5)
            .unwrap(),
    )
    .unwrap();
    let r = randn(6, &[2, 3, 4, 5, 3]);
    let y = instance_norm(x.as_tensor(), 1e-5).unwrap();
    // Reference: the GPU path, the same normalization from candle's differentiable ops.
    let want = norm::instance_norm_composite(x.as_tensor(), 1e-5).unwrap();
    assert!(rel_err(&y, &want) < 1e-5);
    let g1 = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = (&want * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let e = rel_err(
        g1.get(x.as_tensor()).unwrap(),
        g2.get(x.as_tensor()).unwrap(),
    );
    assert!(e < 1e-4, "instance norm gradient err {e}");
}

#[test]
fn prelu_matches_composed_ops_and_gradients() {
    for channels_slope in [false, true] {
        let x = Var::from_tensor(&randn(7, &[2, 3, 3, 4, 2])).unwrap();
        let a = Var::from_tensor(&if channels_slope {
            randn(8, &[3])
        } else {
            Tensor::new(&[0.3f32], &Device::Cpu).unwrap()
        })
        .unwrap();
        let r = randn(9, &[2, 3, 3, 4, 2]);
        let y = prelu(x.as_tensor(), a.as_tensor()).unwrap();
        // Reference: the GPU path, built from candle's differentiable ops.
        let want = act::prelu_composite(x.as_tensor(), a.as_tensor()).unwrap();
        assert!(rel_err(&y, &want) < 1e-6);
        let g1 = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&want * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [x.as_tensor(), a.as_tensor()] {
            assert!(rel_err(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-5);
        }
    }
}

#[test]
fn sigmoid_matches_the_gpu_path_and_gradient() {
    let x = Var::from_tensor(&(randn(11, &[2, 3, 4, 4, 2]) * 4.0).unwrap()).unwrap();
    let r = randn(12, &[2, 3, 4, 4, 2]);
    let y = sigmoid(x.as_tensor()).unwrap();
    let want = candle_nn::ops::sigmoid(x.as_tensor()).unwrap();
    assert!(rel_err(&y, &want) < 1e-6);
    let g1 = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = (&want * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let e = rel_err(
        g1.get(x.as_tensor()).unwrap(),
        g2.get(x.as_tensor()).unwrap(),
    );
    assert!(e < 1e-5, "sigmoid gradient err {e}");
}

/// Sum of `y * r` and its gradients in `vars`: a dense upstream gradient.
fn grads_of(y: &Tensor, r: &Tensor, vars: &[&Var]) -> Vec<Tensor> {
    let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
    vars.iter()
        .map(|v| g.get(v.as_tensor()).expect("gradient").clone())
        .collect()
}

#[test]
fn biased_convolutions_match_conv_plus_bias_and_gradients() {
    let x = Var::from_tensor(&randn(21, &[2, 3, 5, 6, 4])).unwrap();
    let b = Var::from_tensor(&randn(22, &[4])).unwrap();
    // A strided convolution and a transposed one (whose weight is (Ci, Co, k)).
    let w = Var::from_tensor(&(randn(23, &[4, 3, 3, 3, 3]) * 0.2).unwrap()).unwrap();
    let cfg = Conv3dConfig {
        stride: [2, 1, 2],
        padding: [1; 3],
        dilation: [1; 3],
    };
    let y = conv3d_bias(x.as_tensor(), w.as_tensor(), b.as_tensor(), &cfg).unwrap();
    let want = conv3d(x.as_tensor(), w.as_tensor(), &cfg)
        .unwrap()
        .broadcast_add(&b.as_tensor().reshape((1, 4, 1, 1, 1)).unwrap())
        .unwrap();
    assert!(rel_err(&y, &want) < 1e-6);
    let r = randn(24, y.dims());
    let (g1, g2) = (
        grads_of(&y, &r, &[&x, &w, &b]),
        grads_of(&want, &r, &[&x, &w, &b]),
    );
    for (a, e) in g1.iter().zip(&g2) {
        assert!(
            rel_err(a, e) < 1e-5,
            "conv3d_bias gradient err {}",
            rel_err(a, e)
        );
    }
    let wt = Var::from_tensor(&(randn(25, &[3, 4, 3, 3, 3]) * 0.2).unwrap()).unwrap();
    let tcfg = ConvTranspose3dConfig {
        stride: [2; 3],
        padding: [1; 3],
        dilation: [1; 3],
        output_padding: [1; 3],
    };
    let y = conv_transpose3d_bias(x.as_tensor(), wt.as_tensor(), b.as_tensor(), &tcfg).unwrap();
    let want = conv_transpose3d(x.as_tensor(), wt.as_tensor(), &tcfg)
        .unwrap()
        .broadcast_add(&b.as_tensor().reshape((1, 4, 1, 1, 1)).unwrap())
        .unwrap();
    assert_eq!(y.dims(), &[2, 4, 10, 12, 8]);
    assert!(rel_err(&y, &want) < 1e-6);
    let r = randn(26, y.dims());
    let (g1, g2) = (
        grads_of(&y, &r, &[&x, &wt, &b]),
        grads_of(&want, &r, &[&x, &wt, &b]),
    );
    for (a, e) in g1.iter().zip(&g2) {
        assert!(
            rel_err(a, e) < 1e-5,
            "transposed gradient err {}",
            rel_err(a, e)
        );
    }
    // A bias of the wrong length is an error naming both sizes.
    let e = conv3d_bias(x.as_tensor(), w.as_tensor(), &randn(27, &[3]), &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bias has shape [3]") && e.contains("4 channels"),
        "{e}"
    );
}

#[test]
fn fused_norm_prelu_matches_candle_ops_and_gradients() {
    // Rows of 3 (no full lane block), 1030 (one full 1024-block plus a ragged tail) and 2 x 1024.
    for (dims, slope_per_channel) in [
        ([2usize, 3, 3, 1, 1], false),
        ([2, 4, 10, 103, 1], true),
        ([1, 2, 16, 16, 8], false),
    ] {
        let x =
            Var::from_tensor(&(randn(31, &dims) * 2.0).unwrap().affine(1.0, 0.7).unwrap()).unwrap();
        let a = Var::from_tensor(&if slope_per_channel {
            randn(32, &[dims[1]])
        } else {
            Tensor::new(&[0.25f32], &Device::Cpu).unwrap()
        })
        .unwrap();
        let y = instance_norm_prelu(x.as_tensor(), a.as_tensor(), 1e-5).unwrap();
        let want = prelu_composite(
            &instance_norm_composite(x.as_tensor(), 1e-5).unwrap(),
            a.as_tensor(),
        )
        .unwrap();
        assert!(
            rel_err(&y, &want) < 1e-5,
            "{dims:?}: {}",
            rel_err(&y, &want)
        );
        let r = randn(33, &dims);
        let (g1, g2) = (grads_of(&y, &r, &[&x, &a]), grads_of(&want, &r, &[&x, &a]));
        for (what, got, exp) in [("x", &g1[0], &g2[0]), ("slope", &g1[1], &g2[1])] {
            let e = rel_err(got, exp);
            assert!(e < 1e-4, "{dims:?} gradient in {what}: err {e}");
        }
    }
    let x = randn(34, &[1, 3, 2, 2, 2]);
    let e = instance_norm_prelu(&x, &randn(35, &[2]), 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 elements") && e.contains("3 channels"), "{e}");
}
