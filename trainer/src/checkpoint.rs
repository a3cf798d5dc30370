//! Checkpoints: model weights (MONAI state_dict names), Adam state and progress, written atomically as a directory.
//!
//! Layout of one checkpoint directory:
//! - `model.safetensors`: exactly the model's tensors under MONAI's names, so the file loads into
//!   `monai.networks.nets.UNet(...).load_state_dict(..., strict=True)` as it is;
//! - `optimizer.safetensors`: `m.<name>` and `v.<name>` moments;
//! - `checkpoint.json`: [`CheckpointMeta`].
//!
//! A checkpoint is written to `<dir>.partial` and renamed into place, so a kill mid-write never
//! leaves a directory that looks complete; `checkpoint.json` is written last.

use crate::error::{Result, TrainerError};
use crate::optim::{Adam, AdamConfig, Moments, poisoned};
use crate::unet::UNetConfig;
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const FORMAT_VERSION: u32 = 1;

/// Progress and configuration stored next to the tensors.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointMeta {
    pub format: u32,
    /// Epochs completed when this checkpoint was written (training resumes at this epoch index).
    pub epoch: usize,
    /// Optimizer steps taken so far.
    pub global_step: usize,
    pub unet: UNetConfig,
    pub adam: AdamConfig,
    /// Validation mean Dice of the epoch that produced the checkpoint, if validated.
    pub val_mean_dice: Option<f32>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainerError + '_ {
    move |source| TrainerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    candle_core::safetensors::save(
        &tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>(),
        path,
    )
    .map_err(|e| TrainerError::Checkpoint {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(TrainerError::Checkpoint {
            path: path.to_path_buf(),
            detail: "file is missing".into(),
        });
    }
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| TrainerError::Checkpoint {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// The model's tensors by name (sorted), as stored in `model.safetensors`.
pub fn model_tensors(vm: &VarMap) -> Result<BTreeMap<String, Tensor>> {
    Ok(vm
        .data()
        .lock()
        .map_err(|_| poisoned())?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect())
}

/// Writes a checkpoint to `dir` (replacing one that is there) without ever exposing a partial one.
pub fn save(dir: &Path, vm: &VarMap, opt: &Adam, meta: &CheckpointMeta) -> Result<()> {
    let name = dir.file_name().ok_or_else(|| TrainerError::Checkpoint {
        path: dir.into(),
        detail: "needs a directory name".into(),
    })?;
    let tmp = dir.with_file_name(format!("{}.partial", name.to_string_lossy()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    write_safetensors(&tmp.join("model.safetensors"), &model_tensors(vm)?)?;
    let mut st = BTreeMap::new();
    for (name, m) in opt.state() {
        if let Some(Moments { m, v }) = m {
            st.insert(format!("m.{name}"), m.clone());
            st.insert(format!("v.{name}"), v.clone());
        }
    }
    write_safetensors(&tmp.join("optimizer.safetensors"), &st)?;
    let mut meta = meta.clone();
    meta.global_step = meta.global_step.max(opt.step_count());
    let json_path = tmp.join("checkpoint.json");
    let json = serde_json::to_vec_pretty(
        &serde_json::json!({ "meta": meta, "adam_step": opt.step_count() }),
    )
    .map_err(|source| TrainerError::Json {
        path: json_path.clone(),
        source,
    })?;
    std::fs::write(&json_path, json).map_err(io(&json_path))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io(dir))?;
    Ok(())
}

#[derive(serde::Deserialize)]
struct MetaFile {
    meta: CheckpointMeta,
    adam_step: usize,
}

/// Reads only `checkpoint.json`.
pub fn read_meta(dir: &Path) -> Result<CheckpointMeta> {
    Ok(read_meta_file(dir)?.meta)
}

fn read_meta_file(dir: &Path) -> Result<MetaFile> {
    let p = dir.join("checkpoint.json");
    let bytes = std::fs::read(&p).map_err(io(&p))?;
    let m: MetaFile = serde_json::from_slice(&bytes).map_err(|source| TrainerError::Json {
        path: p.clone(),
        source,
    })?;
    if m.meta.format != FORMAT_VERSION {
        return Err(TrainerError::Checkpoint {
            path: p,
            detail: format!(
                "format {} (this build reads {FORMAT_VERSION})",
                m.meta.format
            ),
        });
    }
    Ok(m)
}

/// Copies `tensors` into the model's variables after checking that both hold exactly the same
/// names and shapes; the error names the first (sorted) tensor that differs.
pub fn load_weights(path: &Path, vm: &VarMap, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let data = vm.data().lock().map_err(|_| poisoned())?;
    let mismatch = |name: &str, detail: String| TrainerError::CheckpointMismatch {
        path: path.into(),
        name: name.into(),
        detail,
    };
    let mut names: Vec<&String> = data.keys().chain(tensors.keys()).collect();
    names.sort();
    names.dedup();
    for name in &names {
        match (data.get(*name), tensors.get(*name)) {
            (Some(v), Some(t)) if v.dims() != t.dims() => {
                return Err(mismatch(
                    name,
                    format!(
                        "has shape {:?} in the checkpoint, the model expects {:?} (different architecture?)",
                        t.dims(),
                        v.dims()
                    ),
                ));
            }
            (Some(_), None) => {
                return Err(mismatch(
                    name,
                    "is missing from the checkpoint (different architecture?)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(mismatch(
                    name,
                    "is in the checkpoint but not in the model (different architecture?)".into(),
                ));
            }
            _ => {}
        }
    }
    for (name, v) in data.iter() {
        let t = &tensors[name];
        v.set(&t.to_dtype(v.dtype())?.to_device(v.device())?)?;
    }
    Ok(())
}

/// Restores weights and optimizer state from `dir` into an already built model and optimizer.
pub fn load(dir: &Path, vm: &VarMap, opt: &mut Adam) -> Result<CheckpointMeta> {
    let mf = read_meta_file(dir)?;
    let model_path = dir.join("model.safetensors");
    load_weights(&model_path, vm, &read_safetensors(&model_path)?)?;
    let opt_path = dir.join("optimizer.safetensors");
    let mut st = read_safetensors(&opt_path)?;
    let names: Vec<String> = st
        .keys()
        .filter_map(|k| k.strip_prefix("m.").map(str::to_string))
        .collect();
    let mut moments = Vec::new();
    for name in names {
        let (Some(m), Some(v)) = (
            st.remove(&format!("m.{name}")),
            st.remove(&format!("v.{name}")),
        ) else {
            return Err(TrainerError::CheckpointMismatch {
                path: opt_path,
                name,
                detail: "has a first moment but no second".into(),
            });
        };
        let device = opt
            .params()
            .first()
            .map(|(_, p)| p.device().clone())
            .unwrap_or(Device::Cpu);
        moments.push((
            name,
            Moments {
                m: m.to_device(&device)?,
                v: v.to_device(&device)?,
            },
        ));
    }
    if let Some(extra) = st.keys().next() {
        return Err(TrainerError::CheckpointMismatch {
            path: opt_path,
            name: extra.clone(),
            detail: "is not an optimizer moment".into(),
        });
    }
    opt.load_state(mf.adam_step, moments)
        .map_err(|e| TrainerError::Checkpoint {
            path: opt_path.clone(),
            detail: e.to_string(),
        })?;
    Ok(mf.meta)
}

/// Directory name of the checkpoint written after `epoch` epochs.
pub fn epoch_dir(root: &Path, epoch: usize) -> PathBuf {
    root.join(format!("epoch-{epoch:04}"))
}

/// The complete checkpoint with the most epochs under `root` (partial ones are ignored).
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    if !root.is_dir() {
        return Ok(None);
    }
    let mut best: Option<(usize, PathBuf)> = None;
    for e in std::fs::read_dir(root).map_err(io(root))? {
        let e = e.map_err(io(root))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name
            .strip_prefix("epoch-")
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        if e.path().join("checkpoint.json").is_file() && best.as_ref().is_none_or(|(b, _)| n > *b) {
            best = Some((n, e.path()));
        }
    }
    Ok(best.map(|(_, p)| p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet::UNet;
    use candle_core::DType;
    use candle_nn::VarBuilder;

    fn model(channels: Vec<usize>) -> (UNetConfig, VarMap) {
        let cfg = UNetConfig {
            channels,
            strides: vec![2, 2],
            ..UNetConfig::brats()
        };
        let vm = VarMap::new();
        UNet::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        (cfg, vm)
    }

    fn meta(cfg: &UNetConfig, epoch: usize) -> CheckpointMeta {
        CheckpointMeta {
            format: FORMAT_VERSION,
            epoch,
            global_step: 0,
            unet: cfg.clone(),
            adam: AdamConfig::default(),
            val_mean_dice: Some(0.5),
        }
    }

    #[test]
    fn round_trip_restores_weights_moments_and_progress() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, vm) = model(vec![2, 4, 8]);
        let mut opt = Adam::from_varmap(&vm, AdamConfig::default()).unwrap();
        let grads: Vec<Option<Tensor>> = opt
            .params()
            .iter()
            .map(|(_, v)| Some(v.as_tensor().ones_like().unwrap()))
            .collect();
        opt.step_with(&grads).unwrap();
        save(&epoch_dir(dir.path(), 1), &vm, &opt, &meta(&cfg, 1)).unwrap();

        let (_, vm2) = model(vec![2, 4, 8]);
        let mut opt2 = Adam::from_varmap(&vm2, AdamConfig::default()).unwrap();
        let got = load(&latest(dir.path()).unwrap().unwrap(), &vm2, &mut opt2).unwrap();
        assert_eq!(got.epoch, 1);
        assert_eq!(opt2.step_count(), 1);
        let (a, b) = (model_tensors(&vm).unwrap(), model_tensors(&vm2).unwrap());
        for (k, t) in &a {
            assert_eq!(
                crate::testutil::to_vec(t),
                crate::testutil::to_vec(&b[k]),
                "{k}"
            );
        }
        // Same next update from the restored state as from the original.
        opt.step_with(&grads).unwrap();
        let grads2: Vec<Option<Tensor>> = opt2
            .params()
            .iter()
            .map(|(_, v)| Some(v.as_tensor().ones_like().unwrap()))
            .collect();
        opt2.step_with(&grads2).unwrap();
        let (a, b) = (model_tensors(&vm).unwrap(), model_tensors(&vm2).unwrap());
        for (k, t) in &a {
            assert_eq!(
                crate::testutil::to_vec(t),
                crate::testutil::to_vec(&b[k]),
                "{k} after a step"
            );
        }
    }

    #[test]
    fn different_architecture_names_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, vm) = model(vec![2, 4, 8]);
        let opt = Adam::from_varmap(&vm, AdamConfig::default()).unwrap();
        save(&epoch_dir(dir.path(), 1), &vm, &opt, &meta(&cfg, 1)).unwrap();
        let (_, other) = model(vec![2, 4, 16]);
        let mut opt2 = Adam::from_varmap(&other, AdamConfig::default()).unwrap();
        let err = load(&epoch_dir(dir.path(), 1), &other, &mut opt2).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, TrainerError::CheckpointMismatch { .. }),
            "{msg}"
        );
        assert!(
            msg.contains("model.1.submodule") && msg.contains("shape"),
            "{msg}"
        );
    }

    #[test]
    fn partial_checkpoints_are_not_latest() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, vm) = model(vec![2, 4, 8]);
        let opt = Adam::from_varmap(&vm, AdamConfig::default()).unwrap();
        save(&epoch_dir(dir.path(), 1), &vm, &opt, &meta(&cfg, 1)).unwrap();
        std::fs::create_dir_all(dir.path().join("epoch-0002.partial")).unwrap();
        std::fs::create_dir_all(dir.path().join("epoch-0003")).unwrap(); // killed before checkpoint.json
        assert_eq!(
            latest(dir.path()).unwrap().unwrap(),
            epoch_dir(dir.path(), 1)
        );
        assert!(latest(&dir.path().join("nothing")).unwrap().is_none());
    }
}
