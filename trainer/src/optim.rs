//! Adam exactly as `torch.optim.Adam` (L2 weight decay added to the gradient, bias-corrected moments) over named candle Vars.

use crate::error::{Result, TrainerError};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp3, Layout, Tensor, Var};
use candle_nn::VarMap;
use rayon::prelude::*;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// L2 penalty added to the gradient (torch.optim.Adam's `weight_decay`, not AdamW's).
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    /// torch's defaults with the seed's learning rate (1e-4).
    fn default() -> Self {
        AdamConfig {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl AdamConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |field, detail: String| Err(TrainerError::Config { field, detail });
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("lr", format!("must be finite and >= 0, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad(
                "betas",
                format!("must be in [0, 1), got ({}, {})", self.beta1, self.beta2),
            );
        }
        if !(self.eps.is_finite()
            && self.eps >= 0.0
            && self.weight_decay.is_finite()
            && self.weight_decay >= 0.0)
        {
            return bad(
                "eps/weight_decay",
                format!(
                    "must be finite and >= 0, got {} and {}",
                    self.eps, self.weight_decay
                ),
            );
        }
        Ok(())
    }
}

/// Per-parameter state: first and second moments, created on the first step that has a gradient.
#[derive(Clone, Debug)]
pub struct Moments {
    pub m: Tensor,
    pub v: Tensor,
}

pub struct Adam {
    cfg: AdamConfig,
    /// Sorted by name, so state files and data-parallel reductions line up across replicas.
    params: Vec<(String, Var)>,
    state: Vec<Option<Moments>>,
    step: usize,
    /// The in-place CPU kernels; off only to test the composite (any-device) path on CPU.
    fused: bool,
}

impl Adam {
    pub fn new(mut params: Vec<(String, Var)>, cfg: AdamConfig) -> Result<Self> {
        cfg.validate()?;
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let state = vec![None; params.len()];
        Ok(Adam {
            cfg,
            params,
            state,
            step: 0,
            fused: true,
        })
    }

    /// All variables of a VarMap, by name.
    pub fn from_varmap(vm: &VarMap, cfg: AdamConfig) -> Result<Self> {
        let params = vm
            .data()
            .lock()
            .map_err(|_| poisoned())?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Adam::new(params, cfg)
    }

    /// The in-place CPU update (on by default) or, off, the update from candle's ops.
    pub fn set_fused(&mut self, on: bool) {
        self.fused = on;
    }

    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Number of steps taken (torch's `state["step"]`, shared by all parameters here).
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// The gradients of the parameters from a backward pass, in parameter order.
    pub fn gradients(&self, grads: &GradStore) -> Vec<Option<Tensor>> {
        self.params
            .iter()
            .map(|(_, v)| grads.get(v.as_tensor()).cloned())
            .collect()
    }

    /// One update from a backward pass.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let g = self.gradients(grads);
        self.step_with(&g)
    }

    /// One update from gradients in parameter order (e.g. after a data-parallel all-reduce);
    /// a parameter without gradient is left alone, as torch does.
    pub fn step_with(&mut self, grads: &[Option<Tensor>]) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(TrainerError::shape(
                "adam",
                format!(
                    "{} gradients for {} parameters",
                    grads.len(),
                    self.params.len()
                ),
            ));
        }
        self.step += 1;
        let c = &self.cfg;
        let t = self.step as i32;
        let step_size = c.lr / (1.0 - c.beta1.powi(t));
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        for (((name, p), g), st) in self.params.iter().zip(grads).zip(self.state.iter_mut()) {
            let Some(g) = g else { continue };
            if g.dims() != p.dims() {
                return Err(TrainerError::shape(
                    "adam",
                    format!(
                        "gradient of `{name}` has shape {:?}, parameter {:?}",
                        g.dims(),
                        p.dims()
                    ),
                ));
            }
            if self.fused && p.device().is_cpu() && p.dtype() == candle_core::DType::F32 {
                // Fused: three in-place passes, no temporaries (the composite form below
                // allocates ~10 parameter-sized tensors per step).
                let g = g.contiguous()?;
                let Moments { m, v } = match st.take() {
                    Some(mo) => mo,
                    None => Moments {
                        m: p.as_tensor().zeros_like()?,
                        v: p.as_tensor().zeros_like()?,
                    },
                };
                let wd = c.weight_decay as f32;
                m.inplace_op3(
                    &g,
                    p.as_tensor(),
                    &MomentUpdate {
                        beta: c.beta1 as f32,
                        wd,
                        square: false,
                    },
                )?;
                v.inplace_op3(
                    &g,
                    p.as_tensor(),
                    &MomentUpdate {
                        beta: c.beta2 as f32,
                        wd,
                        square: true,
                    },
                )?;
                p.as_tensor().inplace_op3(
                    &m,
                    &v,
                    &ParamUpdate {
                        step_size: step_size as f32,
                        bc2_sqrt: bc2_sqrt as f32,
                        eps: c.eps as f32,
                    },
                )?;
                *st = Some(Moments { m, v });
                continue;
            }
            let g = if c.weight_decay != 0.0 {
                (g + (p.as_tensor() * c.weight_decay)?)?
            } else {
                g.clone()
            };
            let (m, v) = match st.take() {
                Some(Moments { m, v }) => (
                    ((m * c.beta1)? + (&g * (1.0 - c.beta1))?)?,
                    ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?,
                ),
                None => ((&g * (1.0 - c.beta1))?, (g.sqr()? * (1.0 - c.beta2))?),
            };
            let denom = ((v.sqrt()? / bc2_sqrt)? + c.eps)?;
            let update = ((&m / denom)? * step_size)?;
            p.set(&p.as_tensor().sub(&update)?)?;
            *st = Some(Moments { m, v });
        }
        Ok(())
    }

    /// Moments by parameter name, for checkpoints.
    pub fn state(&self) -> Vec<(&str, Option<&Moments>)> {
        self.params
            .iter()
            .zip(&self.state)
            .map(|((n, _), s)| (n.as_str(), s.as_ref()))
            .collect()
    }

    /// Restores step count and moments (by parameter name); every name must be a parameter with
    /// the same shape.
    pub fn load_state(&mut self, step: usize, moments: Vec<(String, Moments)>) -> Result<()> {
        let mut state = vec![None; self.params.len()];
        for (name, mo) in moments {
            let Ok(i) = self.params.binary_search_by(|(n, _)| n.as_str().cmp(&name)) else {
                return Err(TrainerError::shape(
                    "adam",
                    format!("state for `{name}`, which is not a parameter"),
                ));
            };
            if mo.m.dims() != self.params[i].1.dims() || mo.v.dims() != self.params[i].1.dims() {
                return Err(TrainerError::shape(
                    "adam",
                    format!(
                        "state of `{name}` has shape {:?}, parameter {:?}",
                        mo.m.dims(),
                        self.params[i].1.dims()
                    ),
                ));
            }
            state[i] = Some(mo);
        }
        self.state = state;
        self.step = step;
        Ok(())
    }
}

fn cpu_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => Err(TrainerError::shape("adam", "expects contiguous f32 tensors").into_candle()),
    }
}

fn cpu_slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => Err(TrainerError::shape("adam", "expects contiguous f32 tensors").into_candle()),
    }
}

const CHUNK: usize = 1 << 14;

/// moment = beta * moment + (1 - beta) * h, h = g + wd * p (squared for the second moment).
struct MomentUpdate {
    beta: f32,
    wd: f32,
    square: bool,
}

impl InplaceOp3 for MomentUpdate {
    fn name(&self) -> &'static str {
        "adam-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let (m, g, p) = (
            cpu_slice_mut(s1, l1)?,
            cpu_slice(s2, l2)?,
            cpu_slice(s3, l3)?,
        );
        if m.len() != g.len() || m.len() != p.len() {
            return Err(
                TrainerError::shape("adam", "moment, gradient and parameter sizes differ")
                    .into_candle(),
            );
        }
        let (b, one_b, wd, sq) = (self.beta, 1.0 - self.beta, self.wd, self.square);
        m.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(p.par_chunks(CHUNK))
            .for_each(|((m, g), p)| {
                for ((m, &g), &p) in m.iter_mut().zip(g).zip(p) {
                    let h = g + wd * p;
                    *m = b * *m + one_b * if sq { h * h } else { h };
                }
            });
        Ok(())
    }
}

/// p -= step_size * m / (sqrt(v) / sqrt(1 - beta2^t) + eps), as torch.optim.Adam.
struct ParamUpdate {
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
}

impl InplaceOp3 for ParamUpdate {
    fn name(&self) -> &'static str {
        "adam-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let (p, m, v) = (
            cpu_slice_mut(s1, l1)?,
            cpu_slice(s2, l2)?,
            cpu_slice(s3, l3)?,
        );
        if p.len() != m.len() || p.len() != v.len() {
            return Err(
                TrainerError::shape("adam", "parameter and moment sizes differ").into_candle(),
            );
        }
        let (ss, bc, eps) = (self.step_size, self.bc2_sqrt, self.eps);
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK))
            .zip(v.par_chunks(CHUNK))
            .for_each(|((p, m), v)| {
                for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                    *p -= ss * m / (v.sqrt() / bc + eps);
                }
            });
        Ok(())
    }
}

pub(crate) fn poisoned() -> TrainerError {
    TrainerError::Config {
        field: "varmap",
        detail: "lock poisoned by a panicked thread".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{fixture, fixture_metadata, rel_err};

    #[test]
    fn matches_torch_adam_with_weight_decay() {
        let t = fixture("adam.safetensors");
        let meta = fixture_metadata("adam.safetensors");
        let f = |k: &str| meta[k].parse::<f64>().unwrap();
        let cfg = AdamConfig {
            lr: f("lr"),
            beta1: f("beta1"),
            beta2: f("beta2"),
            eps: f("eps"),
            weight_decay: f("weight_decay"),
        };
        let w = Var::from_tensor(&t["w0"]).unwrap();
        let b = Var::from_tensor(&t["b0"]).unwrap();
        let mut opt =
            Adam::new(vec![("w".into(), w.clone()), ("b".into(), b.clone())], cfg).unwrap();
        for step in 1..=5 {
            let pred = t["x"]
                .matmul(w.as_tensor())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap();
            let loss = (pred - &t["y"]).unwrap().sqr().unwrap().mean_all().unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
            assert!(
                rel_err(w.as_tensor(), &t[&format!("w{step}")]) < 1e-5,
                "w after step {step}"
            );
            assert!(
                rel_err(b.as_tensor(), &t[&format!("b{step}")]) < 1e-5,
                "b after step {step}"
            );
        }
        assert_eq!(opt.step_count(), 5);
    }

    #[test]
    fn fused_and_composite_paths_agree() {
        let t = fixture("adam.safetensors");
        let run = |fused: bool| {
            let w = Var::from_tensor(&t["w0"]).unwrap();
            let cfg = AdamConfig {
                lr: 0.05,
                weight_decay: 0.1,
                ..Default::default()
            };
            let mut opt = Adam::new(vec![("w".into(), w.clone())], cfg).unwrap();
            opt.fused = fused;
            for _ in 0..3 {
                let loss = t["x"]
                    .matmul(w.as_tensor())
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .mean_all()
                    .unwrap();
                opt.step(&loss.backward().unwrap()).unwrap();
            }
            w.as_tensor().copy().unwrap()
        };
        assert!(rel_err(&run(true), &run(false)) < 1e-6);
    }

    #[test]
    fn rejects_bad_config_and_mismatched_gradients() {
        assert!(
            Adam::new(
                vec![],
                AdamConfig {
                    beta1: 1.0,
                    ..Default::default()
                }
            )
            .is_err()
        );
        let v = Var::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let mut opt = Adam::new(vec![("v".into(), v)], AdamConfig::default()).unwrap();
        let g = Tensor::zeros(4, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(
            opt.step_with(&[Some(g)])
                .unwrap_err()
                .to_string()
                .contains("`v`")
        );
        assert!(opt.step_with(&[]).is_err());
    }
}
