//! Data parallelism: the gradient all-reduce interface and its in-process (threads, CPU) implementation.
//!
//! Every replica holds the same weights and its own optimizer, computes gradients on its part of
//! the batch, averages them with the others, and applies the same update; the replicas stay
//! identical without ever exchanging weights. The mean of per-replica mean losses equals the mean
//! loss over the whole batch (Dice is per sample and channel, instance norm is per sample), so
//! N replicas x batch b step exactly like 1 replica x batch N b. NCCL (one replica per GPU, feature
//! `nccl`) is another `GradReducer`, in `nccl.rs`.

use crate::error::{Result, TrainerError};
use candle_core::{Device, Tensor};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Averages gradients across replicas. Every replica calls `all_reduce_mean` with its gradients
/// in the same order, the same number of times, and gets back the same averages. A missing
/// gradient counts as zeros.
pub trait GradReducer {
    fn world_size(&self) -> usize;
    fn rank(&self) -> usize;
    fn all_reduce_mean(&self, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>>;
    /// Called by a replica that stops on an error, so the others fail their next (or current)
    /// reduction instead of waiting for it forever.
    fn abort(&self) {}
}

/// A single replica: nothing to reduce.
pub struct SingleProcess;

impl GradReducer for SingleProcess {
    fn world_size(&self) -> usize {
        1
    }
    fn rank(&self) -> usize {
        0
    }
    fn all_reduce_mean(&self, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> {
        Ok(grads.to_vec())
    }
}

/// One gradient as (shape, values); `None` when the replica had no gradient for it.
type Flat = Option<(Vec<usize>, Vec<f32>)>;

struct State {
    slots: Vec<Option<Arc<Vec<Flat>>>>,
    arrived: usize,
    generation: u64,
    aborted_by: Option<usize>,
}

/// A barrier that a failing replica can break (std's `Barrier` cannot be).
struct Shared {
    n: usize,
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| TrainerError::Ddp {
            detail: "all-reduce state poisoned by a panicked replica".into(),
        })
    }

    /// Waits until all `n` ranks arrived; fails as soon as any rank aborted.
    fn wait<'a>(&'a self, mut st: MutexGuard<'a, State>) -> Result<MutexGuard<'a, State>> {
        let aborted = |r: usize| TrainerError::Ddp {
            detail: format!("replica {r} stopped on an error"),
        };
        if let Some(r) = st.aborted_by {
            return Err(aborted(r));
        }
        st.arrived += 1;
        let generation = st.generation;
        if st.arrived == self.n {
            st.arrived = 0;
            st.generation += 1;
            self.cv.notify_all();
            return Ok(st);
        }
        while st.generation == generation && st.aborted_by.is_none() {
            st = self.cv.wait(st).map_err(|_| TrainerError::Ddp {
                detail: "all-reduce state poisoned by a panicked replica".into(),
            })?;
        }
        match st.aborted_by {
            Some(r) if st.generation == generation => Err(aborted(r)),
            _ => Ok(st),
        }
    }
}

/// One replica's handle on an in-process all-reduce among `n` threads.
pub struct ThreadReducer {
    shared: Arc<Shared>,
    rank: usize,
}

impl ThreadReducer {
    /// Handles for ranks 0..n, to move one into each replica thread.
    pub fn group(n: usize) -> Result<Vec<ThreadReducer>> {
        if n == 0 {
            return Err(TrainerError::Ddp {
                detail: "world size must be >= 1".into(),
            });
        }
        let state = State {
            slots: vec![None; n],
            arrived: 0,
            generation: 0,
            aborted_by: None,
        };
        let shared = Arc::new(Shared {
            n,
            state: Mutex::new(state),
            cv: Condvar::new(),
        });
        Ok((0..n)
            .map(|rank| ThreadReducer {
                shared: shared.clone(),
                rank,
            })
            .collect())
    }

    /// Sums the ranks' gradients in rank order: every rank computes the same result itself,
    /// without a second broadcast, at n times the (cheap, memory-bound) adding work.
    fn reduce(
        &self,
        all: &[Arc<Vec<Flat>>],
        grads: &[Option<Tensor>],
    ) -> Result<Vec<Option<Tensor>>> {
        if let Some((r, s)) = all.iter().enumerate().find(|(_, s)| s.len() != grads.len()) {
            return Err(TrainerError::Ddp {
                detail: format!(
                    "replicas are out of step: rank {r} sent {} tensors, rank {} sent {} (different numbers of batches per replica?)",
                    s.len(),
                    self.rank,
                    grads.len()
                ),
            });
        }
        let mut out = Vec::with_capacity(grads.len());
        for (i, g) in grads.iter().enumerate() {
            let mut acc: Flat = None;
            for (r, s) in all.iter().enumerate() {
                let Some(entry) = s.get(i) else {
                    return Err(TrainerError::Ddp {
                        detail: format!(
                            "rank {r} sent {} gradients, rank {} sent {}",
                            s.len(),
                            self.rank,
                            grads.len()
                        ),
                    });
                };
                let Some((dims, v)) = entry else { continue };
                match &mut acc {
                    None => acc = Some((dims.clone(), v.clone())),
                    Some((d, a)) => {
                        if d != dims {
                            return Err(TrainerError::Ddp {
                                detail: format!(
                                    "gradient {i}: rank {r} has shape {dims:?}, another rank {d:?}"
                                ),
                            });
                        }
                        a.iter_mut().zip(v).for_each(|(x, y)| *x += *y);
                    }
                }
            }
            let device = g.as_ref().map_or(Device::Cpu, |t| t.device().clone());
            out.push(match acc {
                None => None,
                Some((dims, mut a)) => {
                    let inv = 1.0 / self.shared.n as f32;
                    a.iter_mut().for_each(|x| *x *= inv);
                    Some(Tensor::from_vec(a, dims, &device)?)
                }
            });
        }
        Ok(out)
    }
}

impl GradReducer for ThreadReducer {
    fn world_size(&self) -> usize {
        self.shared.n
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn all_reduce_mean(&self, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> {
        let mine = grads
            .iter()
            .map(|g| {
                g.as_ref()
                    .map(|t| {
                        Ok::<_, TrainerError>((
                            t.dims().to_vec(),
                            t.flatten_all()?.to_vec1::<f32>()?,
                        ))
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>();
        let mine = match mine {
            Ok(m) => m,
            Err(e) => {
                self.abort();
                return Err(e);
            }
        };
        let mut st = self.shared.lock()?;
        st.slots[self.rank] = Some(Arc::new(mine));
        let st = self.shared.wait(st)?;
        let all: Option<Vec<Arc<Vec<Flat>>>> = st.slots.iter().cloned().collect();
        drop(st);
        let out = match all {
            Some(all) => self.reduce(&all, grads),
            None => Err(TrainerError::Ddp {
                detail: "a replica's gradients went missing".into(),
            }),
        };
        // Nobody may overwrite a slot for the next round before all have read this one; reached
        // on error too, or the other ranks would wait forever.
        let st = self.shared.lock()?;
        drop(self.shared.wait(st)?);
        out
    }

    fn abort(&self) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.aborted_by.get_or_insert(self.rank);
            self.shared.cv.notify_all();
        }
    }
}

/// Where the local replicas wait for each other before NCCL's init: each arrives once, with its
/// failure if it had one (the spawning thread arrives for a replica whose thread did not start),
/// and all leave with the list of failures once every one arrived.
pub struct Gate {
    n: usize,
    state: Mutex<(usize, Vec<String>)>,
    cv: Condvar,
}

impl Gate {
    pub fn new(n: usize) -> Gate {
        Gate {
            n,
            state: Mutex::new((0, Vec::new())),
            cv: Condvar::new(),
        }
    }

    /// Counts one replica in (with its failure, if any), without waiting.
    pub fn arrive(&self, failure: Option<String>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 += 1;
        st.1.extend(failure);
        self.cv.notify_all();
    }

    /// Waits until every replica arrived; returns the failures.
    pub fn wait(&self) -> Vec<String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while st.0 < self.n {
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::DiceLoss;
    use crate::optim::{Adam, AdamConfig};
    use crate::testutil::randn;
    use crate::unet::{UNet, UNetConfig};
    use candle_core::{DType, Var};
    use candle_nn::{VarBuilder, VarMap};

    fn replica(cfg: &UNetConfig, init: &[(String, Tensor)]) -> (UNet, Adam) {
        let vm = VarMap::new();
        {
            let mut d = vm.data().lock().unwrap();
            for (k, t) in init {
                d.insert(k.clone(), Var::from_tensor(t).unwrap());
            }
        }
        let net = UNet::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        // eps well above rounding noise: a conv bias before instance norm has an exactly zero
        // gradient, and Adam with eps 1e-8 would turn its ~1e-9 noise into full-size steps of
        // random sign in both runs, hiding the comparison (gradients are compared directly too).
        let opt = Adam::from_varmap(
            &vm,
            AdamConfig {
                lr: 1e-2,
                eps: 1e-3,
                ..Default::default()
            },
        )
        .unwrap();
        (net, opt)
    }

    /// Runs the steps; returns the reduced gradients of every step.
    fn train_steps(
        net: &UNet,
        opt: &mut Adam,
        red: &dyn GradReducer,
        batches: &[(Tensor, Tensor)],
    ) -> Vec<Vec<Tensor>> {
        let mut seen = Vec::new();
        for (x, y) in batches {
            let loss = DiceLoss::default()
                .forward(&net.forward_t(x, true).unwrap(), y)
                .unwrap();
            let g = opt.gradients(&loss.backward().unwrap());
            let g = red.all_reduce_mean(&g).unwrap();
            opt.step_with(&g).unwrap();
            seen.push(g.into_iter().map(|t| t.unwrap()).collect());
        }
        seen
    }

    fn max_abs(t: &Tensor) -> f32 {
        crate::testutil::to_vec(t)
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
    }

    #[test]
    fn two_replicas_of_batch_b_step_like_one_of_batch_2b() {
        let cfg = UNetConfig {
            channels: vec![2, 4, 8],
            strides: vec![2, 2],
            ..UNetConfig::brats()
        };
        let vm = VarMap::new();
        UNet::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        let mut init: Vec<(String, Tensor)> = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
            .collect();
        init.sort_by(|a, b| a.0.cmp(&b.0)); // the optimizer's parameter order
        let (b, steps) = (2, 3);
        let data: Vec<(Tensor, Tensor)> = (0..steps)
            .map(|s| {
                let x = randn(100 + s as u64, &[2 * b, 4, 8, 8, 4]);
                let y = randn(200 + s as u64, &[2 * b, 3, 8, 8, 4])
                    .gt(0.5)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap();
                (x, y)
            })
            .collect();

        let (net, mut opt) = replica(&cfg, &init);
        let single_grads = train_steps(&net, &mut opt, &SingleProcess, &data);
        let single: Vec<Tensor> = opt
            .params()
            .iter()
            .map(|(_, v)| v.as_tensor().clone())
            .collect();

        let reducers = ThreadReducer::group(2).unwrap();
        let results: Vec<(Vec<Tensor>, Vec<Vec<Tensor>>)> = std::thread::scope(|s| {
            let handles: Vec<_> = reducers
                .into_iter()
                .map(|red| {
                    let (cfg, init, data) = (&cfg, &init, &data);
                    s.spawn(move || {
                        let r = red.rank();
                        let part: Vec<(Tensor, Tensor)> = data
                            .iter()
                            .map(|(x, y)| {
                                (
                                    x.narrow(0, r * b, b).unwrap(),
                                    y.narrow(0, r * b, b).unwrap(),
                                )
                            })
                            .collect();
                        let (net, mut opt) = replica(cfg, init);
                        let grads = train_steps(&net, &mut opt, &red, &part);
                        (
                            opt.params()
                                .iter()
                                .map(|(_, v)| v.as_tensor().clone())
                                .collect::<Vec<_>>(),
                            grads,
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (step, (sg, rg)) in single_grads.iter().zip(&results[0].1).enumerate() {
            let scale = sg.iter().map(max_abs).fold(0f32, f32::max);
            let worst = sg
                .iter()
                .zip(rg)
                .map(|(a, b)| max_abs(&(a - b).unwrap()))
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-4 * scale,
                "step {step}: averaged gradients differ by {worst} (scale {scale})"
            );
        }
        let mut worst = 0f32;
        for ((a, b0), b1) in single.iter().zip(&results[0].0).zip(&results[1].0) {
            // Replicas are bitwise identical to each other...
            assert_eq!(crate::testutil::to_vec(b0), crate::testutil::to_vec(b1));
            // ...and equal to the single replica up to float summation order.
            let d = crate::testutil::to_vec(&(a - b0).unwrap())
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()));
            worst = worst.max(d);
        }
        // Steps are up to lr = 1e-2 each, so 1e-5 is a tight bound.
        assert!(worst < 1e-5, "max parameter difference {worst}");
        assert!(single.iter().zip(&init).any(|(a, (_, b))| {
            crate::testutil::to_vec(&(a - b).unwrap())
                .iter()
                .any(|v| v.abs() > 1e-3)
        }));
    }

    #[test]
    fn a_replica_that_aborts_releases_the_others() {
        let reducers = ThreadReducer::group(3).unwrap();
        let results: Vec<bool> = std::thread::scope(|s| {
            let hs: Vec<_> = reducers
                .into_iter()
                .map(|red| {
                    s.spawn(move || {
                        let g = vec![Some(Tensor::ones(2, DType::F32, &Device::Cpu).unwrap())];
                        if red.rank() == 2 {
                            red.abort();
                            return true;
                        }
                        red.all_reduce_mean(&g).is_err()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.iter().all(|e| *e));
    }

    #[test]
    fn mismatched_gradient_lists_are_errors() {
        let reducers = ThreadReducer::group(2).unwrap();
        let results: Vec<bool> = std::thread::scope(|s| {
            let hs: Vec<_> = reducers
                .into_iter()
                .map(|red| {
                    s.spawn(move || {
                        let n = if red.rank() == 0 { 1 } else { 2 };
                        let g: Vec<Option<Tensor>> = (0..n)
                            .map(|_| Some(Tensor::ones(3, DType::F32, &Device::Cpu).unwrap()))
                            .collect();
                        red.all_reduce_mean(&g).is_err()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.iter().any(|e| *e));
    }

    #[test]
    fn the_start_gate_waits_for_all_and_shares_every_failure() {
        let gate = Gate::new(3);
        std::thread::scope(|s| {
            let waiting: Vec<_> = (0..2)
                .map(|i| {
                    let gate = &gate;
                    s.spawn(move || {
                        gate.arrive((i == 1).then(|| "GPU 1: no memory".to_string()));
                        gate.wait()
                    })
                })
                .collect();
            // The third never ran: its spawner reports it and does not wait.
            gate.arrive(Some("GPU 2: cannot start its thread".into()));
            for h in waiting {
                let mut f = h.join().unwrap();
                f.sort();
                assert_eq!(f, ["GPU 1: no memory", "GPU 2: cannot start its thread"]);
            }
        });
    }
}
