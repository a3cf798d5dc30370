//! The three convolution primitives on CUDA, through cuDNN's N-d convolution API (cudarc, as
//! re-exported by candle).
//!
//! - Forward is `cudnnConvolutionForward`, backward-data `cudnnConvolutionBackwardData` (also the
//!   transposed convolution's forward) and backward-filter `cudnnConvolutionBackwardFilter`, on
//!   NCDHW tensors and KCTRS filters, cross-correlation like PyTorch.
//! - Data is f32 or bf16; the compute type is always f32. With f32 data cuDNN may use TF32 tensor
//!   cores (`CUDNN_DEFAULT_MATH`), which is PyTorch's default for cuDNN convolutions too; bf16 uses
//!   tensor-op math.
//! - Descriptors and the algorithm (cuDNN's heuristic choice) are built once per shape and
//!   primitive and cached per thread and device, with one growing workspace per device: a training
//!   step reuses every plan after the first step. cuDNN handles are neither `Send` nor `Sync`, so
//!   the caches are thread-local, like candle's own cuDNN handles.

use super::{Kind, Prim};
use crate::error::TrainerError;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    FilterDescriptor, TensorDescriptor, sys,
};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, DeviceId};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape, WithDType};
use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    device: DeviceId,
    kind: Kind,
    bf16: bool,
    n: usize,
    ci: usize,
    co: usize,
    g: super::cpu::Geom,
}

#[derive(Clone, Copy)]
enum Algo {
    Fwd(sys::cudnnConvolutionFwdAlgo_t),
    Data(sys::cudnnConvolutionBwdDataAlgo_t),
    Filter(sys::cudnnConvolutionBwdFilterAlgo_t),
}

/// Everything one primitive needs for one shape, built once.
struct Plan<T: CudnnDataType> {
    conv: ConvDescriptor<f32>,
    /// The convolution's input (the transposed convolution's output): N, Ci, big.
    big: TensorDescriptor<T>,
    /// The convolution's output: N, Co, small.
    small: TensorDescriptor<T>,
    filter: FilterDescriptor<T>,
    algo: Algo,
    workspace: usize,
}

thread_local! {
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
    static PLANS: RefCell<HashMap<Key, Rc<dyn Any>>> = RefCell::new(HashMap::new());
    static WORKSPACES: RefCell<HashMap<DeviceId, CudaSlice<u8>>> = RefCell::new(HashMap::new());
}

fn err(p: &Prim, detail: impl Into<String>) -> candle_core::Error {
    TrainerError::shape(p.name_str(), detail).into_candle()
}

fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream())?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

fn int(p: &Prim, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| err(p, format!("size {v} is too large for cuDNN")))
}

fn packed_strides(dims: &[i32; 5]) -> [i32; 5] {
    let mut s = [1; 5];
    for i in (0..4).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

fn build<T: CudnnDataType>(p: &Prim, dev: &CudaDevice, k: &Key) -> Result<Plan<T>> {
    let g = &k.g;
    let cudnn = handle(dev)?;
    let three =
        |v: [usize; 3]| -> Result<[i32; 3]> { Ok([int(p, v[0])?, int(p, v[1])?, int(p, v[2])?]) };
    let mut conv = cudnn.create_convnd::<f32>(
        &three(g.padding)?,
        &three(g.stride)?,
        &three(g.dilation)?,
        sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
    )?;
    if k.bf16 {
        conv.set_math_type(sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH)?;
    }
    let (n, ci, co) = (int(p, k.n)?, int(p, k.ci)?, int(p, k.co)?);
    let [bd, bh, bw] = three(g.big)?;
    let [sd, sh, sw] = three(g.small)?;
    let [kd, kh, kw] = three(g.kernel)?;
    let big_dims = [n, ci, bd, bh, bw];
    let small_dims = [n, co, sd, sh, sw];
    let big = cudnn.create_nd_tensor::<T>(&big_dims, &packed_strides(&big_dims))?;
    let small = cudnn.create_nd_tensor::<T>(&small_dims, &packed_strides(&small_dims))?;
    let filter = cudnn.create_nd_filter::<T>(
        sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
        &[co, ci, kd, kh, kw],
    )?;
    let (algo, workspace) = match k.kind {
        Kind::Fwd => {
            let op = ConvForward {
                conv: &conv,
                x: &big,
                w: &filter,
                y: &small,
            };
            let a = op.pick_algorithm()?;
            (Algo::Fwd(a), op.get_workspace_size(a)?)
        }
        Kind::BwdData => {
            let op = ConvBackwardData {
                conv: &conv,
                dx: &big,
                w: &filter,
                dy: &small,
            };
            let a = op.pick_algorithm()?;
            (Algo::Data(a), op.get_workspace_size(a)?)
        }
        Kind::BwdFilter => {
            let op = ConvBackwardFilter {
                conv: &conv,
                x: &big,
                dw: &filter,
                dy: &small,
            };
            let a = op.pick_algorithm()?;
            (Algo::Filter(a), op.get_workspace_size(a)?)
        }
    };
    Ok(Plan {
        conv,
        big,
        small,
        filter,
        algo,
        workspace,
    })
}

fn plan<T: CudnnDataType + 'static>(p: &Prim, dev: &CudaDevice, k: Key) -> Result<Rc<Plan<T>>> {
    let cached = PLANS.with(|m| m.borrow().get(&k).cloned());
    if let Some(any) = cached
        && let Ok(plan) = any.downcast::<Plan<T>>()
    {
        return Ok(plan);
    }
    let plan = Rc::new(build::<T>(p, dev, &k)?);
    PLANS.with(|m| m.borrow_mut().insert(k, plan.clone() as Rc<dyn Any>));
    Ok(plan)
}

/// Runs `f` with this thread's workspace for `dev`, grown to at least `bytes` (`None` for 0).
fn with_workspace<R>(
    dev: &CudaDevice,
    bytes: usize,
    f: impl FnOnce(Option<&mut CudaSlice<u8>>) -> Result<R>,
) -> Result<R> {
    if bytes == 0 {
        return f(None);
    }
    WORKSPACES.with(|w| {
        let mut w = w.borrow_mut();
        if w.get(&dev.id()).is_none_or(|s| s.len() < bytes) {
            // Dropped first, so the old and new buffers are never both held.
            w.remove(&dev.id());
            w.insert(dev.id(), dev.alloc_zeros::<u8>(bytes)?);
        }
        let ws = w
            .get_mut(&dev.id())
            .ok_or_else(|| candle_core::Error::Msg("cuDNN workspace went missing".to_string()))?;
        f(Some(ws))
    })
}

fn view<'a, T: CudaDType + DeviceRepr>(
    p: &Prim,
    s: &'a CudaStorage,
    l: &Layout,
) -> Result<CudaView<'a, T>> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| err(p, "operand is not contiguous"))?;
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

/// The primitive `p` on two CUDA operands.
pub(super) fn run(
    p: &Prim,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    match (s1.dtype(), s2.dtype()) {
        (DType::F32, DType::F32) => launch::<f32>(p, s1, l1, s2, l2),
        (DType::BF16, DType::BF16) => launch::<half::bf16>(p, s1, l1, s2, l2),
        (a, b) => Err(err(
            p,
            format!("cuDNN path takes f32 or bf16 operands of one dtype, got {a:?} and {b:?}"),
        )),
    }
}

fn launch<T>(
    p: &Prim,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)>
where
    T: CudnnDataType + CudaDType + DeviceRepr + WithDType + 'static,
{
    let (n, ci, co, out_dims) = p.shapes(l1.dims(), l2.dims())?;
    if p.kind == Kind::BwdData {
        // cuDNN derives the forward output size from dx and requires it to be dy's; PyTorch also
        // allows output_padding in [stride, dilation), which the CPU path handles and cuDNN does not.
        for a in 0..3 {
            let g = &p.g;
            let span = g.dilation[a] * (g.kernel[a] - 1) + 1;
            if (g.big[a] + 2 * g.padding[a] - span) / g.stride[a] + 1 != g.small[a] {
                return Err(err(
                    p,
                    "output_padding >= stride is not supported by the cuDNN path",
                ));
            }
        }
    }
    let dev = &s1.device;
    if s2.device.id() != dev.id() {
        return Err(err(p, "operands are on different GPUs"));
    }
    let key = Key {
        device: dev.id(),
        kind: p.kind,
        bf16: s1.dtype() == DType::BF16,
        n,
        ci,
        co,
        g: p.g,
    };
    let plan = plan::<T>(p, dev, key)?;
    let (a, b) = (view::<T>(p, s1, l1)?, view::<T>(p, s2, l2)?);
    // SAFETY: with beta = 0 cuDNN writes every element of the output and reads none of it.
    let mut out = unsafe { dev.alloc::<T>(out_dims.iter().product())? };
    let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
    with_workspace(dev, plan.workspace, |ws| {
        // SAFETY: the descriptors were built from these operands' shapes (checked above by
        // `shapes`), the views are contiguous, and all work is ordered on the device's one stream.
        unsafe {
            match plan.algo {
                Algo::Fwd(algo) => ConvForward {
                    conv: &plan.conv,
                    x: &plan.big,
                    w: &plan.filter,
                    y: &plan.small,
                }
                .launch(algo, ws, (one, zero), &a, &b, &mut out)?,
                Algo::Data(algo) => ConvBackwardData {
                    conv: &plan.conv,
                    dx: &plan.big,
                    w: &plan.filter,
                    dy: &plan.small,
                }
                .launch(algo, ws, (one, zero), &mut out, &b, &a)?,
                Algo::Filter(algo) => ConvBackwardFilter {
                    conv: &plan.conv,
                    x: &plan.big,
                    dw: &plan.filter,
                    dy: &plan.small,
                }
                .launch(algo, ws, (one, zero), &a, &mut out, &b)?,
            }
        }
        Ok(())
    })?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(out_dims),
    ))
}
