//! 3D convolution and transposed convolution for candle tensors (N, C, D, H, W), as custom ops with gradients.
//!
//! candle 0.11 has no 3D convolution. Three bilinear primitives cover both layers and all their
//! gradients: `Fwd` (x, w) -> y, `BwdData` (dy, w) -> dx and `BwdFilter` (x, dy) -> dw. The
//! gradient of each primitive in each argument is one of the other two, so every op below has a
//! `bwd` and `candle_core::backprop` runs through them. A transposed convolution is
//! `BwdData` applied forward. The CPU path is vol2col + GEMM (`cpu.rs`); on CUDA the same three primitives are cuDNN's N-d
//! convolution forward, backward-data and backward-filter (`cudnn.rs`, feature `cudnn`).

mod act;
mod cpu;
#[cfg(feature = "cudnn")]
mod cudnn;
mod fused;
mod norm;
pub mod profile;
pub(crate) mod untracked;

pub use act::{prelu, prelu_composite, sigmoid};
pub use fused::{conv_transpose3d_bias, conv3d_bias, dice_loss_sigmoid, instance_norm_prelu};
pub use norm::{instance_norm, instance_norm_composite};

use crate::error::TrainerError;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use cpu::Geom;

/// Hyper-parameters of `conv3d`, as in `torch.nn.functional.conv3d` (groups = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3dConfig {
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub dilation: [usize; 3],
}

impl Default for Conv3dConfig {
    fn default() -> Self {
        Conv3dConfig {
            stride: [1; 3],
            padding: [0; 3],
            dilation: [1; 3],
        }
    }
}

/// Hyper-parameters of `conv_transpose3d`, as in `torch.nn.functional.conv_transpose3d` (groups = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose3dConfig {
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub dilation: [usize; 3],
    pub output_padding: [usize; 3],
}

impl Default for ConvTranspose3dConfig {
    fn default() -> Self {
        ConvTranspose3dConfig {
            stride: [1; 3],
            padding: [0; 3],
            dilation: [1; 3],
            output_padding: [0; 3],
        }
    }
}

fn dims5(op: &'static str, what: &str, t: &Tensor) -> Result<[usize; 5]> {
    match *t.dims() {
        [a, b, c, d, e] => Ok([a, b, c, d, e]),
        ref other => Err(TrainerError::shape(
            op,
            format!("{what} must be 5-D (N, C, D, H, W), got {other:?}"),
        )
        .into_candle()),
    }
}

/// f32 anywhere; bf16 on CUDA too (cuDNN, f32 accumulation), for mixed precision. Both operands
/// must have the same dtype.
fn check_dtypes(op: &'static str, x: &Tensor, w: &Tensor) -> Result<()> {
    let ok = match x.dtype() {
        DType::F32 => true,
        DType::BF16 => x.device().is_cuda(),
        _ => false,
    };
    if !ok || w.dtype() != x.dtype() {
        return Err(TrainerError::shape(
            op,
            format!(
                "supported: f32, or bf16 on CUDA, the same for input and weight; got {:?} and {:?} on {:?}",
                x.dtype(),
                w.dtype(),
                x.device().location()
            ),
        )
        .into_candle());
    }
    Ok(())
}

fn check_hyper(op: &'static str, stride: [usize; 3], dilation: [usize; 3]) -> Result<()> {
    if stride.contains(&0) || dilation.contains(&0) {
        return Err(TrainerError::shape(
            op,
            format!("stride {stride:?} and dilation {dilation:?} must be >= 1"),
        )
        .into_candle());
    }
    Ok(())
}

/// `torch.nn.functional.conv3d(x, w, None, stride, padding, dilation)`: x (N, Ci, D, H, W), w (Co, Ci, kd, kh, kw).
pub fn conv3d(x: &Tensor, w: &Tensor, cfg: &Conv3dConfig) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, conv3d_prim(x, w, cfg)?)
}

/// The gradient of `conv3d(x, w, cfg)` in `w` for the output gradient `dy`, without building a
/// graph (`w` gives the shape only): the weight-gradient primitive on its own, for benchmarks.
pub fn conv3d_weight_grad(
    x: &Tensor,
    dy: &Tensor,
    w: &Tensor,
    cfg: &Conv3dConfig,
) -> Result<Tensor> {
    let prim = conv3d_prim(x, w, cfg)?.with(Kind::BwdFilter);
    x.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &prim)
}

/// Checks a convolution's operands and resolves its geometry.
fn conv3d_prim(x: &Tensor, w: &Tensor, cfg: &Conv3dConfig) -> Result<Prim> {
    const OP: &str = "conv3d";
    check_dtypes(OP, x, w)?;
    check_hyper(OP, cfg.stride, cfg.dilation)?;
    let [_, ci, d, h, wd] = dims5(OP, "input", x)?;
    let [_, wci, kd, kh, kw] = dims5(OP, "weight", w)?;
    if ci != wci {
        return Err(TrainerError::shape(
            OP,
            format!("input has {ci} channels, weight expects {wci}"),
        )
        .into_candle());
    }
    let big = [d, h, wd];
    let kernel = [kd, kh, kw];
    let mut small = [0; 3];
    for a in 0..3 {
        let span = cfg.dilation[a] * (kernel[a].max(1) - 1) + 1;
        let padded = big[a] + 2 * cfg.padding[a];
        if kernel[a] == 0 || padded < span {
            return Err(TrainerError::shape(
                OP,
                format!(
                    "kernel {kernel:?} (dilation {:?}) larger than padded input {big:?} + 2x{:?}",
                    cfg.dilation, cfg.padding
                ),
            )
            .into_candle());
        }
        small[a] = (padded - span) / cfg.stride[a] + 1;
    }
    let g = Geom {
        kernel,
        stride: cfg.stride,
        padding: cfg.padding,
        dilation: cfg.dilation,
        big,
        small,
    };
    Ok(Prim { kind: Kind::Fwd, g })
}

/// `torch.nn.functional.conv_transpose3d(x, w, None, stride, padding, output_padding, 1, dilation)`:
/// x (N, Ci, D, H, W), w (Ci, Co, kd, kh, kw).
pub fn conv_transpose3d(x: &Tensor, w: &Tensor, cfg: &ConvTranspose3dConfig) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, conv_transpose3d_prim(x, w, cfg)?)
}

/// Checks a transposed convolution's operands and resolves its geometry.
fn conv_transpose3d_prim(x: &Tensor, w: &Tensor, cfg: &ConvTranspose3dConfig) -> Result<Prim> {
    const OP: &str = "conv_transpose3d";
    check_dtypes(OP, x, w)?;
    check_hyper(OP, cfg.stride, cfg.dilation)?;
    let [_, ci, d, h, wd] = dims5(OP, "input", x)?;
    let [wci, _, kd, kh, kw] = dims5(OP, "weight", w)?;
    if ci != wci {
        return Err(TrainerError::shape(
            OP,
            format!("input has {ci} channels, weight expects {wci}"),
        )
        .into_candle());
    }
    let small = [d, h, wd];
    let kernel = [kd, kh, kw];
    let mut big = [0; 3];
    for a in 0..3 {
        // Same rule as PyTorch: output padding must be smaller than stride or dilation, which
        // keeps the forward size formula of the matching convolution consistent.
        if cfg.output_padding[a] >= cfg.stride[a].max(cfg.dilation[a]) {
            return Err(TrainerError::shape(
                OP,
                format!(
                    "output_padding {:?} must be smaller than stride {:?} or dilation {:?}",
                    cfg.output_padding, cfg.stride, cfg.dilation
                ),
            )
            .into_candle());
        }
        let full = (small[a].max(1) - 1) * cfg.stride[a]
            + cfg.dilation[a] * (kernel[a].max(1) - 1)
            + cfg.output_padding[a]
            + 1;
        if kernel[a] == 0 || small[a] == 0 || full <= 2 * cfg.padding[a] {
            return Err(TrainerError::shape(
                OP,
                format!(
                    "empty output for input {small:?}, kernel {kernel:?}, padding {:?}",
                    cfg.padding
                ),
            )
            .into_candle());
        }
        big[a] = full - 2 * cfg.padding[a];
    }
    let g = Geom {
        kernel,
        stride: cfg.stride,
        padding: cfg.padding,
        dilation: cfg.dilation,
        big,
        small,
    };
    Ok(Prim {
        kind: Kind::BwdData,
        g,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    /// (x[N,Ci,big], w[Co,Ci,k]) -> y[N,Co,small]
    Fwd,
    /// (dy[N,Co,small], w[Co,Ci,k]) -> dx[N,Ci,big]
    BwdData,
    /// (x[N,Ci,big], dy[N,Co,small]) -> dw[Co,Ci,k]
    BwdFilter,
}

#[derive(Clone, Copy, Debug)]
struct Prim {
    kind: Kind,
    g: Geom,
}

fn slice<'a>(op: &'static str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        other => {
            return Err(TrainerError::shape(
                op,
                format!("only f32 is supported, got {:?}", other.dtype()),
            )
            .into_candle());
        }
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => Err(TrainerError::shape(op, "operand is not contiguous").into_candle()),
    }
}

impl Prim {
    fn with(self, kind: Kind) -> Prim {
        Prim { kind, g: self.g }
    }

    fn expect(&self, what: &str, dims: &[usize], want: &[usize]) -> Result<()> {
        if dims != want {
            return Err(TrainerError::shape(
                self.name_str(),
                format!("{what} has shape {dims:?}, expected {want:?}"),
            )
            .into_candle());
        }
        Ok(())
    }

    /// Checks both operands' shapes for this primitive; returns (batch, conv input channels, conv
    /// output channels, result shape).
    fn shapes(&self, d1: &[usize], d2: &[usize]) -> Result<(usize, usize, usize, Vec<usize>)> {
        let g = &self.g;
        let [kd, kh, kw] = g.kernel;
        let (big, small) = (g.big, g.small);
        let first = |d: &[usize], i: usize| d.get(i).copied().unwrap_or(0);
        Ok(match self.kind {
            Kind::Fwd => {
                let (n, ci, co) = (first(d1, 0), first(d1, 1), first(d2, 0));
                self.expect("input", d1, &[n, ci, big[0], big[1], big[2]])?;
                self.expect("weight", d2, &[co, ci, kd, kh, kw])?;
                (n, ci, co, vec![n, co, small[0], small[1], small[2]])
            }
            Kind::BwdData => {
                let (n, co, ci) = (first(d1, 0), first(d1, 1), first(d2, 1));
                self.expect("gradient", d1, &[n, co, small[0], small[1], small[2]])?;
                self.expect("weight", d2, &[co, ci, kd, kh, kw])?;
                (n, ci, co, vec![n, ci, big[0], big[1], big[2]])
            }
            Kind::BwdFilter => {
                let (n, ci, co) = (first(d1, 0), first(d1, 1), first(d2, 1));
                self.expect("input", d1, &[n, ci, big[0], big[1], big[2]])?;
                self.expect("gradient", d2, &[n, co, small[0], small[1], small[2]])?;
                (n, ci, co, vec![co, ci, kd, kh, kw])
            }
        })
    }

    fn name_str(&self) -> &'static str {
        match self.kind {
            Kind::Fwd => "conv3d",
            Kind::BwdData => "conv3d-backward-data",
            Kind::BwdFilter => "conv3d-backward-filter",
        }
    }
}

impl Prim {
    /// The primitive on CPU: its result and shape.
    fn cpu_run(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        let g = &self.g;
        let (a, b) = (
            slice(self.name_str(), s1, l1)?,
            slice(self.name_str(), s2, l2)?,
        );
        let (n, ci, co, shape) = self.shapes(l1.dims(), l2.dims())?;
        let _t = profile::scope(|| {
            format!(
                "{} {ci}->{co} k{} s{} {:?}",
                self.name_str(),
                g.kernel[0],
                g.stride[0],
                g.big
            )
        });
        let out = match self.kind {
            Kind::Fwd => cpu::conv_fwd(g, a, b, n, ci, co),
            Kind::BwdData => cpu::conv_bwd_data(g, a, b, n, ci, co),
            Kind::BwdFilter => cpu::conv_bwd_filter(g, a, b, n, ci, co),
        };
        Ok((out, shape))
    }
}

impl CustomOp2 for Prim {
    fn name(&self) -> &'static str {
        self.name_str()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out, shape) = self.cpu_run(s1, l1, s2, l2)?;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cudnn::run(self, s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        a1: &Tensor,
        a2: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // An operand that does not depend on a variable (the network's input) gets no gradient:
        // candle would compute it and throw it away. Tracked ops, so gradients of gradients work.
        self.grads(
            a1,
            a2,
            &grad.contiguous()?,
            (a1.track_op(), a2.track_op()),
            |a, b, p| a.apply_op2(b, p),
        )
    }
}

impl Prim {
    /// The gradients of this primitive in its two operands for the output gradient `grad`
    /// (contiguous), each only when `need` says so; `apply(a, b, p)` runs primitive `p` on
    /// (a, b), recording a graph or not.
    fn grads(
        &self,
        a1: &Tensor,
        a2: &Tensor,
        grad: &Tensor,
        need: (bool, bool),
        apply: impl Fn(&Tensor, &Tensor, Prim) -> Result<Tensor>,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let run = |on: bool, f: &dyn Fn() -> Result<Tensor>| on.then(f).transpose();
        Ok(match self.kind {
            // y = F(x, w): dx = D(dy, w), dw = W(x, dy)
            Kind::Fwd => (
                run(need.0, &|| apply(grad, a2, self.with(Kind::BwdData)))?,
                run(need.1, &|| apply(a1, grad, self.with(Kind::BwdFilter)))?,
            ),
            // dx = D(dy, w): d(dy) = F(g, w), dw = W(g, dy)
            Kind::BwdData => (
                run(need.0, &|| apply(grad, a2, self.with(Kind::Fwd)))?,
                run(need.1, &|| apply(grad, a1, self.with(Kind::BwdFilter)))?,
            ),
            // dw = W(x, dy): dx = D(dy, g), d(dy) = F(x, g)
            Kind::BwdFilter => (
                run(need.0, &|| apply(a2, grad, self.with(Kind::BwdData)))?,
                run(need.1, &|| apply(a1, grad, self.with(Kind::Fwd)))?,
            ),
        })
    }
}

#[cfg(test)]
mod tests;
