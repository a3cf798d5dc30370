//! The training data loader: batches from a Samples artifact (`wf-samples-v1`, written by the
//! sharded-transform step), read zero-copy through mmap (`wf_imaging::sample::SampleFile`).
//!
//! - Validation split by *case* (never one copy in training and another in validation), chosen by a
//!   hash of (seed, case id), so it is the same whatever the data set order or size.
//! - Training order is reshuffled each epoch from (seed, epoch) (Fisher-Yates).
//! - With `copies_per_case: 0` the artifact holds the deterministic prefix only; the loader replays the
//!   chain's random suffix online, with the per-sample seed of (seed, case, epoch), so epoch e of a run
//!   sees the same augmentation every time.
//! - A background thread prefetches the next batches (decoding and augmenting with rayon) while the
//!   model computes; `PREFETCH` batches are kept ready.
//! - A `staged.json` (fsx-import's staged copy) redirects reads to the staged directory when present.

use crate::data::{SampleRef, collate};
use crate::error::{Result, TrainerError};
use crate::train::BatchSource;
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};
use wf_imaging::Rng;
use wf_imaging::sample::SampleFile;
use wf_imaging::transforms::{Chain, LabelData};

/// Batches kept ready ahead of the model.
pub const PREFETCH: usize = 2;

#[derive(Debug, Clone)]
struct Item {
    case: String,
    path: PathBuf,
}

/// What the two loaders of a run share.
#[derive(Clone)]
struct Source {
    root: PathBuf,
    online: Option<std::sync::Arc<Chain>>,
    seed: u64,
    device: Device,
    label_channels: usize,
}

/// A `BatchSource` over one split of a Samples artifact.
pub struct SamplesLoader {
    src: Source,
    items: Vec<Item>,
    batch_size: usize,
    shuffle: bool,
    rx: Option<Receiver<Result<(Tensor, Tensor)>>>,
}

fn bad(path: &Path, detail: impl Into<String>) -> TrainerError {
    TrainerError::Samples {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Opens a Samples artifact directory and splits it: (train, validation).
pub fn open_samples(
    dir: &Path,
    val_fraction: f64,
    batch_size: usize,
    seed: u64,
    device: &Device,
) -> Result<(SamplesLoader, SamplesLoader)> {
    if batch_size == 0 {
        return Err(TrainerError::Config {
            field: "batch_size",
            detail: "must be >= 1".into(),
        });
    }
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(TrainerError::Config {
            field: "val_fraction",
            detail: format!("{val_fraction} is not in [0, 1)"),
        });
    }
    let mut root = dir.to_path_buf();
    if let Ok(text) = std::fs::read_to_string(dir.join("staged.json")) {
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| bad(&dir.join("staged.json"), e.to_string()))?;
        if let Some(p) = v["path"]
            .as_str()
            .map(PathBuf::from)
            .filter(|p| p.join("index.json").is_file())
        {
            root = p;
        }
    }
    let index_path = root.join("index.json");
    let text = std::fs::read_to_string(&index_path).map_err(|e| bad(&index_path, e.to_string()))?;
    let index: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&index_path, e.to_string()))?;
    if index["format"] != "wf-samples-v1" {
        return Err(bad(
            &index_path,
            format!("not a wf-samples-v1 index (format {})", index["format"]),
        ));
    }
    let online = if index["copies_per_case"].as_u64() == Some(0) {
        let chain =
            Chain::from_json(&index["transforms"]).map_err(|e| bad(&index_path, e.to_string()))?;
        Some(std::sync::Arc::new(chain))
    } else {
        None
    };
    let mut cases: Vec<(String, Vec<String>)> = Vec::new();
    for c in index["cases"]
        .as_array()
        .ok_or_else(|| bad(&index_path, "no `cases` list"))?
    {
        let id = c["id"]
            .as_str()
            .ok_or_else(|| bad(&index_path, "a case without `id`"))?
            .to_string();
        let files = c["files"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        cases.push((id, files));
    }
    if cases.is_empty() {
        return Err(bad(&index_path, "no cases"));
    }
    // Validation cases: the smallest hashes of (seed, case id); at least one when a fraction is asked for,
    // and never all of them.
    let mut ranked: Vec<(u64, usize)> = cases
        .iter()
        .enumerate()
        .map(|(i, (id, _))| {
            (
                wf_imaging::sample_seed(seed ^ 0x5EED_0F_5A11, id, u32::MAX - 1),
                i,
            )
        })
        .collect();
    ranked.sort_unstable();
    let mut n_val = (val_fraction * cases.len() as f64).round() as usize;
    if val_fraction > 0.0 {
        n_val = n_val.max(1);
    }
    n_val = n_val.min(cases.len().saturating_sub(1));
    let is_val: std::collections::HashSet<usize> =
        ranked[..n_val].iter().map(|&(_, i)| i).collect();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, (id, files)) in cases.iter().enumerate() {
        for f in files {
            let item = Item {
                case: id.clone(),
                path: root.join(f),
            };
            if is_val.contains(&i) {
                val.push(item)
            } else {
                train.push(item)
            }
        }
    }
    let src = Source {
        root,
        online,
        seed,
        device: device.clone(),
        label_channels: 3,
    };
    let make = |items, shuffle| SamplesLoader {
        src: src.clone(),
        items,
        batch_size,
        shuffle,
        rx: None,
    };
    Ok((make(train, true), make(val, false)))
}

impl SamplesLoader {
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn root(&self) -> &Path {
        &self.src.root
    }
    /// Case ids in this split (sorted, deduplicated).
    pub fn cases(&self) -> Vec<String> {
        let mut c: Vec<String> = self.items.iter().map(|i| i.case.clone()).collect();
        c.sort();
        c.dedup();
        c
    }
}

/// Loads (and, online, augments) one sample into owned buffers.
fn load(src: &Source, item: &Item, epoch: usize) -> Result<(Vec<f32>, Vec<u8>, [usize; 4])> {
    let f = SampleFile::open(&item.path).map_err(|e| bad(&item.path, e.to_string()))?;
    let Some(chain) = &src.online else {
        let s = f.shape();
        let shape = [s[0] as usize, s[1] as usize, s[2] as usize, s[3] as usize];
        return Ok((f.image().to_vec(), f.labels().to_vec(), shape));
    };
    let mut rng = Rng::for_sample(src.seed, &item.case, epoch as u32);
    let (case, _) = chain
        .apply_suffix(f.to_case(), &mut rng)
        .map_err(|e| bad(&item.path, e.to_string()))?;
    let labels = match case.label.map(|l| l.data) {
        Some(LabelData::Regions(r)) => r,
        _ => return Err(bad(&item.path, "sample without region labels")),
    };
    Ok((case.image.data, labels, case.image.shape))
}

fn make_batch(src: &Source, items: &[Item], epoch: usize) -> Result<(Tensor, Tensor)> {
    let loaded: Vec<(Vec<f32>, Vec<u8>, [usize; 4])> = items
        .par_iter()
        .map(|it| load(src, it, epoch))
        .collect::<Result<_>>()?;
    let refs: Vec<SampleRef<'_>> = loaded
        .iter()
        .map(|(image, labels, shape)| SampleRef {
            image,
            labels,
            shape: *shape,
        })
        .collect();
    collate(&refs, src.label_channels, &src.device)
}

/// Deterministic per-epoch permutation (Fisher-Yates over a xorshift stream of (seed, epoch)).
fn permutation(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut s =
        seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for i in (1..n).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        order.swap(i, (s % (i as u64 + 1)) as usize);
    }
    order
}

impl BatchSource for SamplesLoader {
    fn start_epoch(&mut self, epoch: usize) -> Result<()> {
        let order = if self.shuffle {
            permutation(self.items.len(), self.src.seed, epoch)
        } else {
            (0..self.items.len()).collect()
        };
        let batches: Vec<Vec<Item>> = order
            .chunks(self.batch_size)
            .map(|c| c.iter().map(|&i| self.items[i].clone()).collect())
            .collect();
        let (tx, rx) = sync_channel(PREFETCH);
        let src = self.src.clone();
        std::thread::spawn(move || {
            for b in batches {
                // A closed receiver (epoch abandoned) ends the producer.
                if tx.send(make_batch(&src, &b, epoch)).is_err() {
                    return;
                }
            }
        });
        self.rx = Some(rx);
        Ok(())
    }

    fn next_batch(&mut self) -> Result<Option<(Tensor, Tensor)>> {
        match self.rx.as_ref().map(|rx| rx.recv()) {
            Some(Ok(batch)) => batch.map(Some),
            _ => Ok(None),
        }
    }
}
