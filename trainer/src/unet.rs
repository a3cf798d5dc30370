//! MONAI's `monai.networks.nets.UNet` (3D, residual units) in candle, with MONAI's state_dict names.
//!
//! The structure mirrors MONAI 1.6.1 module for module, so `vb.pp(..)` paths reproduce the
//! PyTorch names (`model.1.submodule.0.conv.unit0.conv.weight`, ...) and a MONAI checkpoint loads
//! as it is, and ours loads into MONAI with `strict=True`:
//! - level `P` = `Sequential(down, SkipConnection(sub), up)`: `P.0`, `P.1.submodule`, `P.2`;
//! - down = `ResidualUnit` (or `Convolution` without residual units), bottom = down with stride 1;
//! - up = `Sequential(Convolution(transposed), ResidualUnit(subunits=1))` as `P.2.0`, `P.2.1`,
//!   or the bare transposed `Convolution` without residual units;
//! - `Convolution` = `conv` then `adn` (Norm, Dropout, Act: instance norm, dropout, PReLU).

use crate::error::{Result, TrainerError};
use crate::ops::{self, Conv3dConfig, ConvTranspose3dConfig};
use candle_core::{DType, Module, Tensor};
use candle_nn::{Init, VarBuilder};

mod tape;
pub use tape::Grads;

/// Hyper-parameters of MONAI's UNet (spatial_dims is always 3).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Top block first; at least 2.
    pub channels: Vec<usize>,
    /// One per down-sampling level: `channels.len() - 1` (extra values are ignored, as in MONAI).
    pub strides: Vec<usize>,
    pub kernel_size: usize,
    pub up_kernel_size: usize,
    pub num_res_units: usize,
    pub dropout: f64,
    pub bias: bool,
}

impl UNetConfig {
    /// The network of the seed: `UNet(3, 4, 3, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)`.
    pub fn brats() -> Self {
        UNetConfig {
            in_channels: 4,
            out_channels: 3,
            channels: vec![16, 32, 64, 128, 256],
            strides: vec![2, 2, 2, 2],
            kernel_size: 3,
            up_kernel_size: 3,
            num_res_units: 2,
            dropout: 0.0,
            bias: true,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |field, detail: String| Err(TrainerError::Config { field, detail });
        if self.channels.len() < 2 {
            return bad(
                "channels",
                format!("needs at least 2 entries, got {:?}", self.channels),
            );
        }
        if self.strides.len() < self.channels.len() - 1 {
            return bad(
                "strides",
                format!(
                    "needs {} entries (len(channels) - 1), got {:?}",
                    self.channels.len() - 1,
                    self.strides
                ),
            );
        }
        if self.strides.contains(&0)
            || self.channels.contains(&0)
            || self.in_channels == 0
            || self.out_channels == 0
        {
            return bad(
                "channels/strides",
                "channel counts and strides must be >= 1".into(),
            );
        }
        if self.kernel_size.is_multiple_of(2) || self.up_kernel_size.is_multiple_of(2) {
            return bad(
                "kernel_size",
                format!(
                    "must be odd, got {} and {}",
                    self.kernel_size, self.up_kernel_size
                ),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(
                "dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            );
        }
        Ok(())
    }

    /// Product of the strides used: every spatial size of the input must be a multiple of it.
    pub fn size_divisor(&self) -> usize {
        self.strides[..self.channels.len() - 1].iter().product()
    }
}

/// torch's default init for conv weights and biases: U(-b, b), b = 1/sqrt(fan_in), with fan_in
/// from weight dim 1 (for a transposed conv that is its *output* channels, as in torch).
fn torch_uniform(fan_in: usize) -> Init {
    let b = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform { lo: -b, up: b }
}

#[derive(Clone, Debug)]
enum ConvKind {
    Conv(Conv3dConfig),
    Transposed(ConvTranspose3dConfig),
}

/// `nn.Conv3d` / `nn.ConvTranspose3d` with weight and optional bias.
#[derive(Clone, Debug)]
struct ConvLayer {
    weight: Tensor,
    bias: Option<Tensor>,
    kind: ConvKind,
}

impl ConvLayer {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        transposed: bool,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (shape, fan_in) = if transposed {
            ([cin, cout, k, k, k], cout * k * k * k)
        } else {
            ([cout, cin, k, k, k], cin * k * k * k)
        };
        let weight = vb.get_with_hints(shape.to_vec(), "weight", torch_uniform(fan_in))?;
        let bias = if bias {
            Some(vb.get_with_hints(cout, "bias", torch_uniform(fan_in))?)
        } else {
            None
        };
        let kind = if transposed {
            // MONAI: output_padding = stride - 1, so the output is exactly stride x the input.
            ConvKind::Transposed(ConvTranspose3dConfig {
                stride: [stride; 3],
                padding: [padding; 3],
                dilation: [1; 3],
                output_padding: [stride - 1; 3],
            })
        } else {
            ConvKind::Conv(Conv3dConfig {
                stride: [stride; 3],
                padding: [padding; 3],
                dilation: [1; 3],
            })
        };
        Ok(ConvLayer { weight, bias, kind })
    }

    fn forward(&self, x: &Tensor, m: Mode) -> candle_core::Result<Tensor> {
        if let (true, false, Some(b)) = (m.fused, m.bf16, &self.bias) {
            return match &self.kind {
                ConvKind::Conv(c) => ops::conv3d_bias(x, &self.weight, b, c),
                ConvKind::Transposed(c) => ops::conv_transpose3d_bias(x, &self.weight, b, c),
            };
        }
        // Mixed precision (autocast): the convolution runs in bf16 from bf16 copies of its input
        // and of the f32 master weight; everything else (bias, norm, activation, loss) stays f32,
        // and the casts' backward brings the gradients back to f32.
        let (x, w) = if m.bf16 {
            (x.to_dtype(DType::BF16)?, self.weight.to_dtype(DType::BF16)?)
        } else {
            (x.clone(), self.weight.clone())
        };
        let y = match &self.kind {
            ConvKind::Conv(c) => ops::conv3d(&x, &w, c)?,
            ConvKind::Transposed(c) => ops::conv_transpose3d(&x, &w, c)?,
        };
        let y = if m.bf16 { y.to_dtype(DType::F32)? } else { y };
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1, 1))?),
            None => Ok(y),
        }
    }
}

/// MONAI `Convolution`: conv, then ADN in "NDA" order unless `conv_only`.
#[derive(Clone, Debug)]
struct Convolution {
    conv: ConvLayer,
    /// PReLU slope (`adn.A.weight`); `None` for a conv-only block.
    prelu: Option<Tensor>,
    dropout: f64,
}

impl Convolution {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: &UNetConfig,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        transposed: bool,
        conv_only: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv = ConvLayer::new(
            cin,
            cout,
            k,
            stride,
            (k - 1) / 2,
            transposed,
            cfg.bias,
            vb.pp("conv"),
        )?;
        let prelu = if conv_only {
            None
        } else {
            Some(
                vb.pp("adn")
                    .pp("A")
                    .get_with_hints(1, "weight", Init::Const(0.25))?,
            )
        };
        Ok(Convolution {
            conv,
            prelu,
            dropout: cfg.dropout,
        })
    }

    fn forward(&self, x: &Tensor, m: Mode) -> candle_core::Result<Tensor> {
        let y = self.conv.forward(x, m)?;
        let Some(a) = &self.prelu else { return Ok(y) };
        let dropout = m.train && self.dropout > 0.0;
        if m.fused && !dropout {
            return ops::instance_norm_prelu(&y, a, 1e-5);
        }
        let mut y = if m.fused {
            ops::instance_norm(&y, 1e-5)?
        } else {
            ops::instance_norm_composite(&y, 1e-5)?
        };
        if dropout {
            y = candle_nn::ops::dropout(&y, self.dropout as f32)?;
        }
        if m.fused {
            ops::prelu(&y, a)
        } else {
            ops::prelu_composite(&y, a)
        }
    }
}

/// MONAI `ResidualUnit`: `conv.unit{i}` Convolutions plus `residual` (identity or a conv).
#[derive(Clone, Debug)]
struct ResidualUnit {
    units: Vec<Convolution>,
    residual: Option<ConvLayer>,
}

impl ResidualUnit {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: &UNetConfig,
        cin: usize,
        cout: usize,
        stride: usize,
        subunits: usize,
        last_conv_only: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let k = cfg.kernel_size;
        let subunits = subunits.max(1);
        let mut units = Vec::with_capacity(subunits);
        let (mut sc, mut ss) = (cin, stride);
        for su in 0..subunits {
            let conv_only = last_conv_only && su == subunits - 1;
            units.push(Convolution::new(
                cfg,
                sc,
                cout,
                k,
                ss,
                false,
                conv_only,
                vb.pp("conv").pp(format!("unit{su}")),
            )?);
            sc = cout;
            ss = 1;
        }
        let residual = if stride != 1 || cin != cout {
            // Only adapting channels: a 1x1x1 kernel without padding, as in MONAI.
            let (rk, rp) = if stride == 1 {
                (1, 0)
            } else {
                (k, (k - 1) / 2)
            };
            Some(ConvLayer::new(
                cin,
                cout,
                rk,
                stride,
                rp,
                false,
                cfg.bias,
                vb.pp("residual"),
            )?)
        } else {
            None
        };
        Ok(ResidualUnit { units, residual })
    }

    fn forward(&self, x: &Tensor, m: Mode) -> candle_core::Result<Tensor> {
        let res = match &self.residual {
            Some(r) => r.forward(x, m)?,
            None => x.clone(),
        };
        let mut y = x.clone();
        for u in &self.units {
            y = u.forward(&y, m)?;
        }
        y + res
    }
}

/// A down layer (or the bottom layer): a residual unit, or a single Convolution without residual units.
#[derive(Clone, Debug)]
enum Down {
    Residual(ResidualUnit),
    Plain(Convolution),
}

impl Down {
    fn new(
        cfg: &UNetConfig,
        cin: usize,
        cout: usize,
        stride: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(if cfg.num_res_units > 0 {
            Down::Residual(ResidualUnit::new(
                cfg,
                cin,
                cout,
                stride,
                cfg.num_res_units,
                false,
                vb,
            )?)
        } else {
            Down::Plain(Convolution::new(
                cfg,
                cin,
                cout,
                cfg.kernel_size,
                stride,
                false,
                false,
                vb,
            )?)
        })
    }

    fn forward(&self, x: &Tensor, m: Mode) -> candle_core::Result<Tensor> {
        match self {
            Down::Residual(r) => r.forward(x, m),
            Down::Plain(c) => c.forward(x, m),
        }
    }
}

/// The up layer: a transposed Convolution, followed by a one-unit ResidualUnit when residual units are on.
#[derive(Clone, Debug)]
struct Up {
    conv: Convolution,
    ru: Option<ResidualUnit>,
}

impl Up {
    fn new(
        cfg: &UNetConfig,
        cin: usize,
        cout: usize,
        stride: usize,
        is_top: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let res = cfg.num_res_units > 0;
        let conv_vb = if res { vb.pp("0") } else { vb.clone() };
        let conv = Convolution::new(
            cfg,
            cin,
            cout,
            cfg.up_kernel_size,
            stride,
            true,
            is_top && !res,
            conv_vb,
        )?;
        let ru = if res {
            Some(ResidualUnit::new(
                cfg,
                cout,
                cout,
                1,
                1,
                is_top,
                vb.pp("1"),
            )?)
        } else {
            None
        };
        Ok(Up { conv, ru })
    }

    fn forward(&self, x: &Tensor, m: Mode) -> candle_core::Result<Tensor> {
        let y = self.conv.forward(x, m)?;
        match &self.ru {
            Some(r) => r.forward(&y, m),
            None => Ok(y),
        }
    }
}

#[derive(Clone, Debug)]
enum Sub {
    Level(Box<Level>),
    Bottom(Down),
}

/// `Sequential(down, SkipConnection(sub), up)`; the skip concatenates [x, sub(x)] on channels.
#[derive(Clone, Debug)]
struct Level {
    down: Down,
    sub: Sub,
    up: Up,
}

impl Level {
    /// MONAI's `_create_block`, recursing from the top.
    fn new(
        cfg: &UNetConfig,
        inc: usize,
        outc: usize,
        channels: &[usize],
        strides: &[usize],
        is_top: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (c, s) = (channels[0], strides[0]);
        let sub_vb = vb.pp("1").pp("submodule");
        let (sub, upc) = if channels.len() > 2 {
            (
                Sub::Level(Box::new(Level::new(
                    cfg,
                    c,
                    c,
                    &channels[1..],
                    &strides[1..],
                    false,
                    sub_vb,
                )?)),
                c * 2,
            )
        } else {
            (
                Sub::Bottom(Down::new(cfg, c, channels[1], 1, sub_vb)?),
                c + channels[1],
            )
        };
        let down = Down::new(cfg, inc, c, s, vb.pp("0"))?;
        let up = Up::new(cfg, upc, outc, s, is_top, vb.pp("2"))?;
        Ok(Level { down, sub, up })
    }

    fn forward(&self, x: &Tensor, m: Mode) -> candle_core::Result<Tensor> {
        let d = self.down.forward(x, m)?;
        let s = match &self.sub {
            Sub::Level(l) => l.forward(&d, m)?,
            Sub::Bottom(b) => b.forward(&d, m)?,
        };
        let cat = Tensor::cat(&[&d, &s], 1)?;
        self.up.forward(&cat, m)
    }
}

/// MONAI's 3D UNet. Build with a `VarBuilder` over a `VarMap` to train, or over MONAI's
/// safetensors to load; names live under `model.` like MONAI's state_dict.
#[derive(Clone, Debug)]
pub struct UNet {
    cfg: UNetConfig,
    model: Level,
    bf16: bool,
    fused: bool,
}

/// How a forward pass runs: with dropout (training) or not, convolutions in bf16 or f32, and
/// with the fused CPU ops or candle's own.
#[derive(Clone, Copy, Debug)]
struct Mode {
    train: bool,
    bf16: bool,
    fused: bool,
}

impl UNet {
    pub fn new(cfg: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let n = cfg.channels.len();
        let model = Level::new(
            cfg,
            cfg.in_channels,
            cfg.out_channels,
            &cfg.channels,
            &cfg.strides[..n - 1],
            true,
            vb.pp("model"),
        )?;
        Ok(UNet {
            cfg: cfg.clone(),
            model,
            bf16: false,
            fused: true,
        })
    }

    /// The fused ops (`ops::conv3d_bias`, `ops::instance_norm_prelu`; on by default) or, off,
    /// every block from candle's own ops: the reference path, and the fallback a user can choose.
    /// The fused ops run on CPU; on a GPU both settings run candle's ops.
    pub fn with_fused(mut self, on: bool) -> Self {
        self.fused = on;
        self
    }

    pub fn fused(&self) -> bool {
        self.fused
    }

    /// bf16 mixed precision: convolutions in bf16 (cuDNN, f32 accumulation), weights, norms,
    /// activations and loss in f32. Only on CUDA: the CPU convolution is f32 only.
    pub fn with_bf16(mut self, on: bool) -> Self {
        self.bf16 = on;
        self
    }

    pub fn bf16(&self) -> bool {
        self.bf16
    }

    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// Checks the input before any compute, so a wrong channel count or size reads as such.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        let div = self.cfg.size_divisor();
        if dims.len() != 5
            || dims[1] != self.cfg.in_channels
            || dims[2..].iter().any(|d| *d == 0 || d % div != 0)
        {
            return Err(TrainerError::shape(
                "unet",
                format!(
                    "input must be (N, {}, D, H, W) with D, H, W multiples of {div}, got {dims:?}",
                    self.cfg.in_channels
                ),
            ));
        }
        Ok(())
    }

    /// Logits (N, out_channels, D, H, W). `train` enables dropout (instance norm keeps no running stats).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        if self.bf16 && !x.device().is_cuda() {
            return Err(TrainerError::shape(
                "unet",
                "bf16 mixed precision needs a CUDA device (the CPU convolution is f32 only)",
            ));
        }
        Ok(self.model.forward(
            x,
            Mode {
                train,
                bf16: self.bf16,
                fused: self.fused,
            },
        )?)
    }
}

impl Module for UNet {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_t(x, false).map_err(|e| match e {
            TrainerError::Candle(c) => c,
            other => other.into_candle(),
        })
    }
}

/// Re-draws every variable of a UNet's VarMap from `seed` with torch's default init (conv weights
/// and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PReLU slopes 0.25): candle's CPU RNG cannot be
/// seeded, and a training run must be reproducible from the workflow seed.
pub fn init_seeded(vm: &candle_nn::VarMap, seed: u64) -> Result<()> {
    let data = vm.data().lock().map_err(|_| crate::optim::poisoned())?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = SplitMix64(seed ^ 0x5EED_0F0A_7E57);
    for name in names {
        let var = &data[name];
        let values: Vec<f32> = if name.ends_with(".adn.A.weight") {
            vec![0.25; var.elem_count()]
        } else {
            let weight_name = match name.strip_suffix(".bias") {
                Some(prefix) => format!("{prefix}.weight"),
                None => name.clone(),
            };
            let dims = data
                .get(&weight_name)
                .map(|w| w.dims().to_vec())
                .unwrap_or_else(|| var.dims().to_vec());
            // torch: fan_in = size(1) * receptive field (for ConvTranspose that is out_channels).
            let fan_in = dims.get(1).copied().unwrap_or(1) * dims.iter().skip(2).product::<usize>();
            let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
            (0..var.elem_count())
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                .collect()
        };
        var.set(&Tensor::from_vec(values, var.dims(), var.device())?)?;
    }
    Ok(())
}

/// Small, fast, well-mixed generator for initialization; not for anything security-related.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{fixture, fixture_path, rel_err};
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;
    use std::collections::HashMap;

    fn build(cfg: &UNetConfig) -> (VarMap, UNet) {
        let vm = VarMap::new();
        let net = UNet::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        (vm, net)
    }

    #[derive(serde::Deserialize)]
    struct Names {
        parameters: usize,
        tensors: Vec<(String, Vec<usize>)>,
    }

    #[test]
    fn brats_unet_has_monai_names_shapes_and_parameter_count() {
        let want: Names = serde_json::from_str(
            &std::fs::read_to_string(fixture_path("unet_state_dict.json")).unwrap(),
        )
        .unwrap();
        let (vm, _) = build(&UNetConfig::brats());
        let got: HashMap<String, Vec<usize>> = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().dims().to_vec()))
            .collect();
        assert_eq!(got.len(), 63);
        assert_eq!(want.tensors.len(), 63);
        for (name, shape) in &want.tensors {
            assert_eq!(got.get(name), Some(shape), "tensor {name}");
        }
        let count: usize = got.values().map(|s| s.iter().product::<usize>()).sum();
        assert_eq!(count, want.parameters);
        assert_eq!(count, 4_810_074);
    }

    #[test]
    fn initial_prelu_slopes_are_a_quarter_and_weights_are_bounded() {
        let (vm, _) = build(&UNetConfig::brats());
        let data = vm.data().lock().unwrap();
        let a = data["model.0.conv.unit0.adn.A.weight"]
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, vec![0.25]);
        // fan_in 4*27 = 108 for the first conv: |w| <= 1/sqrt(108).
        let w = data["model.0.conv.unit0.conv.weight"]
            .as_tensor()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(w <= 1.0 / 108f32.sqrt() + 1e-6 && w > 0.05);
    }

    fn small_cfg() -> UNetConfig {
        UNetConfig {
            channels: vec![2, 4, 8, 16, 32],
            ..UNetConfig::brats()
        }
    }

    #[test]
    fn forward_and_gradients_match_monai() {
        // candle's autograd over the fused ops and over candle's own, and the hand-written
        // backward pass, each against MONAI.
        for (fused, hand) in [(true, false), (false, false), (true, true)] {
            forward_and_gradients_match_monai_with(fused, hand);
        }
    }

    fn forward_and_gradients_match_monai_with(fused: bool, hand: bool) {
        let t = fixture("unet_small.safetensors");
        let weights: HashMap<String, Tensor> = t
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("weight.")
                    .map(|n| (n.to_string(), v.clone()))
            })
            .collect();
        // Vars, so the same model yields parameter gradients.
        let vm = VarMap::new();
        {
            let mut data = vm.data().lock().unwrap();
            for (k, v) in &weights {
                data.insert(k.clone(), Var::from_tensor(v).unwrap());
            }
        }
        let net = UNet::new(
            &small_cfg(),
            VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
        )
        .unwrap()
        .with_fused(fused);
        assert_eq!(
            vm.data().lock().unwrap().len(),
            weights.len(),
            "model created tensors MONAI does not have"
        );
        let x = Var::from_tensor(&t["input"]).unwrap();
        let target = t["target"].to_dtype(DType::F32).unwrap();
        let dice = crate::loss::DiceLoss::default();
        let want = t["loss"].to_vec1::<f32>().unwrap()[0];
        type GradOf = Box<dyn Fn(&Tensor) -> Option<Tensor>>;
        let grad_of: GradOf = if hand {
            assert!(net.hand_backward_applies(x.as_tensor(), &dice));
            let (loss, grads) = net.loss_and_grads(x.as_tensor(), &target, &dice).unwrap();
            let got = loss.to_scalar::<f32>().unwrap();
            assert!((got - want).abs() < 1e-5, "loss {got} vs {want}");
            // The network's input needs no gradient in training, and gets none.
            assert!(!grads.contains_key(&x.as_tensor().id()));
            Box::new(move |v| grads.get(&v.id()).cloned())
        } else {
            let y = net.forward_t(x.as_tensor(), true).unwrap();
            let e = rel_err(&y, &t["output"]);
            assert!(e < 1e-4, "forward rel err {e}");
            let loss = dice.forward_with(&y, &target, fused).unwrap();
            let got = loss.to_scalar::<f32>().unwrap();
            assert!((got - want).abs() < 1e-5, "loss {got} vs {want}");
            let grads = loss.backward().unwrap();
            let gx = grads.get(x.as_tensor()).unwrap();
            assert!(
                rel_err(gx, &t["grad.input"]) < 1e-3,
                "input grad err {}",
                rel_err(gx, &t["grad.input"])
            );
            Box::new(move |v| grads.get(v).cloned())
        };
        let data = vm.data().lock().unwrap();
        let max_abs = |t: &Tensor| {
            crate::testutil::to_vec(t)
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()))
        };
        let global = data
            .keys()
            .map(|k| max_abs(&t[&format!("grad.{k}")]))
            .fold(0f32, f32::max);
        for (k, v) in data.iter() {
            let g = grad_of(v.as_tensor()).unwrap_or_else(|| panic!("no gradient for {k}"));
            let want = &t[&format!("grad.{k}")];
            // Errors are relative to the tensor's own scale, floored at 5% of the largest gradient:
            // a conv bias before instance norm has an exactly zero gradient (both sides hold
            // rounding noise), and tiny PReLU slope gradients are sums with heavy cancellation.
            let scale = max_abs(want).max(0.05 * global);
            let e = max_abs(&(g - want).unwrap()) / scale;
            assert!(
                e < 1e-3,
                "gradient of {k} (fused {fused}, by hand {hand}): err {e} (scale {scale})"
            );
        }
    }

    #[test]
    fn hand_backward_matches_autograd_without_residual_units_or_bias() {
        for cfg in [
            UNetConfig {
                channels: vec![2, 4, 8],
                strides: vec![2, 2],
                num_res_units: 0,
                ..UNetConfig::brats()
            },
            UNetConfig {
                channels: vec![3, 5, 6],
                strides: vec![2, 1],
                num_res_units: 1,
                bias: false,
                ..UNetConfig::brats()
            },
        ] {
            let (vm, net) = build(&cfg);
            init_seeded(&vm, 3).unwrap();
            let x = crate::testutil::randn(41, &[2, 4, 8, 8, 4]);
            let target = crate::testutil::randn(42, &[2, 3, 8, 8, 4])
                .ge(0.5)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let dice = crate::loss::DiceLoss::default();
            let (loss, hand) = net.loss_and_grads(&x, &target, &dice).unwrap();
            let want = dice
                .forward(&net.forward_t(&x, true).unwrap(), &target)
                .unwrap();
            let auto = want.backward().unwrap();
            let (a, b) = (
                loss.to_scalar::<f32>().unwrap(),
                want.to_scalar::<f32>().unwrap(),
            );
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
            let data = vm.data().lock().unwrap();
            assert_eq!(hand.len(), data.len(), "one gradient per parameter");
            for (k, v) in data.iter() {
                let (h, w) = (&hand[&v.as_tensor().id()], auto.get(v.as_tensor()).unwrap());
                let e = rel_err(h, w);
                // Bias gradients before a norm are rounding noise on both sides.
                let tiny = crate::testutil::to_vec(w).iter().all(|v| v.abs() < 1e-6);
                assert!(tiny || e < 1e-4, "{k} ({:?}): err {e}", cfg.channels);
            }
        }
    }

    #[test]
    fn seeded_init_is_reproducible_and_bounded() {
        let cfg = UNetConfig {
            channels: vec![2, 4, 8],
            strides: vec![2, 2],
            ..UNetConfig::brats()
        };
        let (a, _) = build(&cfg);
        let (b, _) = build(&cfg);
        init_seeded(&a, 7).unwrap();
        init_seeded(&b, 7).unwrap();
        let get = |vm: &VarMap, k: &str| {
            crate::testutil::to_vec(vm.data().lock().unwrap()[k].as_tensor())
        };
        let k = "model.0.conv.unit0.conv.weight";
        assert_eq!(get(&a, k), get(&b, k));
        assert!(get(&a, k).iter().all(|v| v.abs() <= 1.0 / 108f32.sqrt()));
        assert_eq!(get(&a, "model.0.conv.unit0.adn.A.weight"), vec![0.25]);
        init_seeded(&b, 8).unwrap();
        assert_ne!(get(&a, k), get(&b, k));
    }

    /// Full-width parity (weights too large to commit): make the fixture with the MONAI venv as
    /// `make_reference.py` does for `unet_small` with channels (16, .., 256), then
    /// `WF_TRAINER_FULL_FIXTURE=/path/unet_full.safetensors cargo test -p wf-trainer --release -- --ignored`.
    #[test]
    #[ignore]
    fn full_width_forward_matches_monai() {
        let Ok(path) = std::env::var("WF_TRAINER_FULL_FIXTURE") else {
            return;
        };
        let t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
        let weights: HashMap<String, Tensor> = t
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("weight.")
                    .map(|n| (n.to_string(), v.clone()))
            })
            .collect();
        let net = UNet::new(
            &UNetConfig::brats(),
            VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let y = net.forward_t(&t["input"], false).unwrap();
        let e = rel_err(&y, &t["output"]);
        assert!(e < 1e-4, "full-width forward rel err {e}");
    }

    #[test]
    fn wrong_input_is_a_clear_error() {
        let (_, net) = build(&UNetConfig {
            channels: vec![2, 4],
            strides: vec![2],
            ..UNetConfig::brats()
        });
        let x = Tensor::zeros((1, 3, 8, 8, 8), DType::F32, &Device::Cpu).unwrap();
        let e = net.forward_t(&x, false).unwrap_err().to_string();
        assert!(e.contains("(N, 4, D, H, W)"), "{e}");
        let x = Tensor::zeros((1, 4, 8, 7, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(net.forward_t(&x, false).is_err());
        // Mixed precision is a CUDA feature: on the CPU it is refused, not silently fp32.
        let x = Tensor::zeros((1, 4, 8, 8, 8), DType::F32, &Device::Cpu).unwrap();
        let e = net
            .with_bf16(true)
            .forward_t(&x, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bf16") && e.contains("CUDA"), "{e}");
    }

    #[test]
    fn configurable_without_residual_units() {
        let cfg = UNetConfig {
            channels: vec![2, 4, 8],
            strides: vec![2, 2],
            num_res_units: 0,
            ..UNetConfig::brats()
        };
        let (vm, net) = build(&cfg);
        let y = net
            .forward_t(
                &Tensor::ones((1, 4, 8, 8, 4), DType::F32, &Device::Cpu).unwrap(),
                false,
            )
            .unwrap();
        assert_eq!(y.dims(), &[1, 3, 8, 8, 4]);
        // The top up layer is conv-only without residual units: no PReLU slope there.
        assert!(
            !vm.data()
                .lock()
                .unwrap()
                .contains_key("model.2.adn.A.weight")
        );
        assert!(
            vm.data()
                .lock()
                .unwrap()
                .contains_key("model.2.conv.weight")
        );
    }
}
