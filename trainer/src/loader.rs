//! The training data loader: batches from a Samples artifact (`wf-samples-v1`, written by the
//! sharded-transform step), read zero-copy through mmap (`wf_imaging::sample::SampleFile`).
//!
//! - Validation split by *case* (never one copy in training and another in validation), chosen by a
//!   hash of (seed, case id), so it is the same whatever the data set order or size.
//! - Training order is reshuffled each epoch from (seed, epoch) (Fisher-Yates).
//! - With `copies_per_case: 0` the artifact holds the deterministic prefix only; the loader replays the
//!   chain's random suffix online, with the per-sample seed of (seed, case, epoch), so epoch e of a run
//!   sees the same augmentation every time.
//! - Each batch is one preallocated (N, C, X, Y, Z) image buffer and one (N, 3, X, Y, Z) label buffer;
//!   every sample is written once, straight from its map into its slot (bf16 images decoded on the
//!   way, region bits expanded to {0, 1} channels, the online suffix fused: see [`crate::augment`]).
//!   Samples are filled in parallel by a small worker pool of the loader's own (not the model's
//!   rayon pool), and a background thread keeps `PREFETCH` batches ready. A sample's values depend
//!   only on (seed, case, epoch), so batches are the same whatever the number of workers.
//! - A `staged.json` (fsx-import's staged copy) redirects reads to the staged directory when present.

use crate::augment::{FusedSuffix, Plan};
use crate::error::{Result, TrainerError};
use crate::train::BatchSource;
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, OnceLock};
use wf_imaging::Rng;
use wf_imaging::sample::{ImageData, SampleFile};
use wf_imaging::samples::{INDEX_FILE, SamplesIndex, Staged};
use wf_imaging::transforms::{Chain, LabelData};

/// Batches kept ready ahead of the model.
pub const PREFETCH: usize = 2;

#[derive(Debug, Clone)]
struct Item {
    case: String,
    path: PathBuf,
    /// The validated map, opened on first use and kept for later epochs (mapping a sample again
    /// each epoch costs page faults; the kernel still reclaims the page cache behind it as needed).
    file: Arc<OnceLock<Arc<SampleFile>>>,
}

impl Item {
    fn open(&self) -> Result<Arc<SampleFile>> {
        if let Some(f) = self.file.get() {
            return Ok(f.clone());
        }
        let f = SampleFile::open(&self.path).map_err(|e| bad(&self.path, e.to_string()))?;
        Ok(self.file.get_or_init(|| Arc::new(f)).clone())
    }
}

/// The random suffix a prefix-only artifact leaves to the loader.
struct Online {
    chain: Chain,
    /// `None`: not fusable, the reference chain runs on an owned copy.
    fused: Option<FusedSuffix>,
}

/// What the two loaders of a run share.
#[derive(Clone)]
struct Source {
    root: PathBuf,
    online: Option<Arc<Online>>,
    seed: u64,
    device: Device,
    label_channels: usize,
    /// Whole-volume validation ([`SamplesLoader::whole_volumes`]): the chain's deterministic
    /// transforms after the prefix, applied to each prefix volume instead of the random suffix.
    whole: Option<Arc<Chain>>,
}

/// Loader worker threads unless set with [`SamplesLoader::with_workers`]: the machine's parallelism,
/// at most 8 (a sample is ~10 ms of memory-bound work; more threads only contend with the model).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(8))
}

fn worker_pool(workers: usize) -> Result<Arc<rayon::ThreadPool>> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(workers.max(1))
        .thread_name(|i| format!("wf-loader-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| TrainerError::Config {
            field: "workers",
            detail: format!("cannot start {workers} loader threads: {e}"),
        })
}

/// A `BatchSource` over one split of a Samples artifact.
pub struct SamplesLoader {
    src: Source,
    items: Vec<Item>,
    batch_size: usize,
    shuffle: bool,
    pool: Arc<rayon::ThreadPool>,
    rx: Option<Receiver<Result<(Tensor, Tensor)>>>,
    /// This replica's rank and the number of replicas (data parallel); (0, 1) alone.
    rank: usize,
    world: usize,
}

fn bad(path: &Path, detail: impl Into<String>) -> TrainerError {
    TrainerError::Samples {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// How many of `cases` cases the split holds out for validation: `val_fraction` of them rounded, at
/// least one when a fraction is asked for, and never all of them (so one case validates on none).
pub fn validation_cases(cases: usize, val_fraction: f64) -> usize {
    let mut n_val = (val_fraction * cases as f64).round() as usize;
    if val_fraction > 0.0 {
        n_val = n_val.max(1);
    }
    n_val.min(cases.saturating_sub(1))
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
    let samples_err = |e: wf_imaging::ImagingError| match e {
        wf_imaging::ImagingError::Format { path, detail } => bad(&path, detail),
        other => bad(dir, other.to_string()),
    };
    // A staged copy (fsx-import's `stage_dir`) is read instead when it is there.
    let root = match Staged::read_in(dir).map_err(samples_err)? {
        Some(s) if s.path.join(INDEX_FILE).is_file() => s.path,
        _ => dir.to_path_buf(),
    };
    let index_path = root.join(INDEX_FILE);
    let index = SamplesIndex::read(&index_path).map_err(samples_err)?;
    let online = if index.copies_per_case == 0 {
        let chain = index.chain().map_err(|e| bad(&index_path, e.to_string()))?;
        let fused = FusedSuffix::new(&chain);
        Some(Arc::new(Online { chain, fused }))
    } else {
        None
    };
    let cases: Vec<(String, Vec<String>)> =
        index.cases.into_iter().map(|c| (c.id, c.files)).collect();
    // Validation cases: the smallest hashes of (seed, case id); at least one when a fraction is asked for,
    // and never all of them.
    let mut ranked: Vec<(u64, usize)> = cases
        .iter()
        .enumerate()
        .map(|(i, (id, _))| {
            (
                wf_imaging::sample_seed(seed ^ 0x005E_ED0F_5A11, id, u32::MAX - 1),
                i,
            )
        })
        .collect();
    ranked.sort_unstable();
    let n_val = validation_cases(cases.len(), val_fraction);
    let is_val: std::collections::HashSet<usize> =
        ranked[..n_val].iter().map(|&(_, i)| i).collect();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, (id, files)) in cases.iter().enumerate() {
        for f in files {
            let item = Item {
                case: id.clone(),
                path: root.join(f),
                file: Arc::default(),
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
        whole: None,
    };
    // One pool for both splits: validation runs after training, never beside it.
    let pool = worker_pool(default_workers())?;
    let make = |items, shuffle| SamplesLoader {
        src: src.clone(),
        items,
        batch_size,
        shuffle,
        pool: pool.clone(),
        rx: None,
        rank: 0,
        world: 1,
    };
    Ok((make(train, true), make(val, false)))
}

impl SamplesLoader {
    /// Fills samples on `workers` threads (default [`default_workers`]); batches do not change.
    pub fn with_workers(mut self, workers: usize) -> Result<Self> {
        self.pool = worker_pool(workers)?;
        Ok(self)
    }
    /// This split as whole volumes, for sliding-window validation: each case's deterministic
    /// prefix (`prefix.wfs`) through the chain's later deterministic transforms
    /// (normalize-intensity), random ones left out, one volume per batch in case-id order. Needs a
    /// prefix-only artifact (`copies_per_case: 0`): materialized copies are crops and augmented.
    pub fn whole_volumes(mut self) -> Result<Self> {
        let Some(online) = &self.src.online else {
            return Err(TrainerError::Config {
                field: "val_mode",
                detail: format!(
                    "whole-volume validation needs the samples' deterministic prefix, but {} holds materialized copies: preprocess with `copies_per_case: 0` (augmentation online)",
                    self.src.root.display()
                ),
            });
        };
        let deterministic: Vec<_> = online
            .chain
            .suffix()
            .iter()
            .filter(|s| !s.is_random())
            .cloned()
            .collect();
        let chain = Chain::new(deterministic).map_err(|e| bad(&self.src.root, e.to_string()))?;
        self.src.whole = Some(Arc::new(chain));
        // In case-id order, as `cases()` lists them: per-case results line up with that list.
        self.items.sort_by(|a, b| a.case.cmp(&b.case));
        self.batch_size = 1;
        self.shuffle = false;
        Ok(self)
    }

    /// This loader as replica `rank` of `world` in data-parallel training: every replica draws
    /// the same epoch order, cuts it into global batches of `world` x batch size, and takes its own
    /// contiguous share of each. When the split's size is not a multiple of `world`, the order is
    /// padded with its own first samples (as torch's DistributedSampler does), so every replica
    /// gets the same number of batches of equal size and N replicas x batch b step exactly like
    /// one replica x batch N b.
    pub fn shard(mut self, rank: usize, world: usize) -> Result<Self> {
        if world == 0 || rank >= world {
            return Err(TrainerError::Config {
                field: "gpus",
                detail: format!("replica {rank} of {world} does not exist"),
            });
        }
        if self.items.is_empty() {
            return Err(TrainerError::Config {
                field: "gpus",
                detail: "no samples to share among replicas".into(),
            });
        }
        self.rank = rank;
        self.world = world;
        Ok(self)
    }

    /// Indices of this replica's batches for `epoch`.
    fn batch_indices(&self, epoch: usize) -> Vec<Vec<usize>> {
        let mut order = if self.shuffle {
            permutation(self.items.len(), self.src.seed, epoch)
        } else {
            (0..self.items.len()).collect()
        };
        let (rank, world) = (self.rank, self.world.max(1));
        if world == 1 {
            return order
                .chunks(self.batch_size)
                .map(<[usize]>::to_vec)
                .collect();
        }
        let padded = order.len().next_multiple_of(world);
        for i in 0..padded - order.len() {
            order.push(order[i % order.len()]);
        }
        order
            .chunks(self.batch_size * world)
            .map(|global| {
                let share = global.len() / world;
                global[rank * share..(rank + 1) * share].to_vec()
            })
            .collect()
    }

    pub fn workers(&self) -> usize {
        self.pool.current_num_threads()
    }
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

/// One sample of a batch: its open map (or, for a suffix that cannot be fused, the reference chain's
/// owned output) and the plan that writes it into its slot.
struct Slot {
    file: Arc<SampleFile>,
    plan: Plan,
    owned: Option<(Vec<f32>, Vec<u8>)>,
}

/// Opens a sample and decides its plan; the draws are cheap, no voxel is touched yet (except on the
/// reference path, which has to run the chain to know the output).
fn open_slot(src: &Source, item: &Item, epoch: usize) -> Result<Slot> {
    let file = item.open()?;
    let shape = file.shape();
    if let Some(chain) = &src.whole {
        let case = chain
            .apply_prefix(file.to_case())
            .map_err(|e| bad(&item.path, e.to_string()))?;
        let labels = match case.label.map(|l| l.data) {
            Some(LabelData::Regions(r)) => r,
            _ => return Err(bad(&item.path, "sample without region labels")),
        };
        return Ok(Slot {
            file,
            plan: Plan::identity(case.image.shape),
            owned: Some((case.image.data, labels)),
        });
    }
    let Some(online) = &src.online else {
        return Ok(Slot {
            file,
            plan: Plan::identity(shape),
            owned: None,
        });
    };
    let mut rng = Rng::for_sample(src.seed, &item.case, epoch as u32);
    if let Some(f) = &online.fused {
        let drawn = f.draw(shape, &mut rng);
        let plan = f.plan(shape, &drawn).map_err(|e| bad(&item.path, e))?;
        return Ok(Slot {
            file,
            plan,
            owned: None,
        });
    }
    let (case, _) = online
        .chain
        .apply_suffix(file.to_case(), &mut rng)
        .map_err(|e| bad(&item.path, e.to_string()))?;
    let labels = match case.label.map(|l| l.data) {
        Some(LabelData::Regions(r)) => r,
        _ => return Err(bad(&item.path, "sample without region labels")),
    };
    Ok(Slot {
        file,
        plan: Plan::identity(case.image.shape),
        owned: Some((case.image.data, labels)),
    })
}

/// Writes one sample into its slots of the batch buffers.
/// Writes one sample into its slots of the batch buffers.
fn fill(
    src: &Source,
    slot: &Slot,
    img: &mut [MaybeUninit<f32>],
    lbl: &mut [MaybeUninit<f32>],
) -> std::result::Result<(), String> {
    let (image, labels) = match &slot.owned {
        Some((image, labels)) => (ImageData::F32(image), &labels[..]),
        None => (slot.file.image_data(), slot.file.labels()),
    };
    slot.plan.fill(image, labels, img, lbl, src.label_channels)
}

/// An empty batch buffer with room for `len` values. It is not zeroed: every sample writes every
/// value of its slot (`Plan::fill`), so with [`crate::alloc::Recycler`] a reused block is written
/// exactly once. A fresh block (a new `mmap` from glibc above 32 MiB) is zeroed by the kernel as it
/// is touched; on Linux it is asked for transparent huge pages, so that costs one fault per 2 MiB
/// instead of one per 4 KiB (with 4 KiB pages over half the loader's time went to page faults).
fn batch_buffer(len: usize) -> Vec<f32> {
    let v: Vec<f32> = Vec::with_capacity(len);
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (v.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (v.as_ptr() as usize + len * 4) & !(HUGE - 1);
        if end > start {
            // SAFETY: a hint on whole pages inside our own allocation; contents are unchanged and a
            // refusal (THP off) is harmless.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    v
}

fn make_batch(
    src: &Source,
    pool: &rayon::ThreadPool,
    items: &[Item],
    epoch: usize,
) -> Result<(Tensor, Tensor)> {
    let slots: Vec<Slot> = pool.install(|| {
        items
            .par_iter()
            .map(|it| open_slot(src, it, epoch))
            .collect::<Result<_>>()
    })?;
    let Some(first) = slots.first() else {
        return Err(TrainerError::shape("collate", "empty batch"));
    };
    let shape = first.plan.out_shape();
    if let Some((i, s)) = slots
        .iter()
        .enumerate()
        .find(|(_, s)| s.plan.out_shape() != shape)
    {
        return Err(bad(
            &items[i].path,
            format!(
                "shape {:?} in a batch whose first sample has {shape:?} (samples of mixed shapes)",
                s.plan.out_shape()
            ),
        ));
    }
    let [c, x, y, z] = shape;
    let (n, lc, vol) = (slots.len(), src.label_channels, x * y * z);
    let (img_len, lbl_len) = (n * c * vol, n * lc * vol);
    let mut img = batch_buffer(img_len);
    let mut lbl = batch_buffer(lbl_len);
    pool.install(|| {
        slots
            .par_iter()
            .zip(img.spare_capacity_mut()[..img_len].par_chunks_mut((c * vol).max(1)))
            .zip(lbl.spare_capacity_mut()[..lbl_len].par_chunks_mut((lc * vol).max(1)))
            .zip(items.par_iter())
            .try_for_each(|(((slot, im), lb), it)| {
                fill(src, slot, im, lb).map_err(|e| bad(&it.path, e))
            })
    })?;
    // SAFETY: every sample's fill returned Ok, and a successful fill writes every value of its image
    // and label slots; the slots tile both buffers exactly (n slots of c·vol and lc·vol values).
    unsafe {
        img.set_len(img_len);
        lbl.set_len(lbl_len);
    }
    Ok((
        Tensor::from_vec(img, (n, c, x, y, z), &src.device)?,
        Tensor::from_vec(lbl, (n, lc, x, y, z), &src.device)?,
    ))
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
        let batches: Vec<Vec<Item>> = self
            .batch_indices(epoch)
            .into_iter()
            .map(|b| b.into_iter().map(|i| self.items[i].clone()).collect())
            .collect();
        let (tx, rx) = sync_channel(PREFETCH);
        let src = self.src.clone();
        let pool = self.pool.clone();
        std::thread::spawn(move || {
            for b in batches {
                // A closed receiver (epoch abandoned) ends the producer.
                if tx.send(make_batch(&src, &pool, &b, epoch)).is_err() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use wf_imaging::sample::{PREFIX_COPY, Sample, SampleDtype, write_sample_as};
    use wf_imaging::transforms::{Case, Image, Label};

    const CHAIN: &str = r#"["ensure-channel-first", "convert-labels",
        {"rand-spatial-crop": {"roi": [9, 8, 7]}}, {"rand-flip": {"prob": 0.5, "axis": 0}},
        {"rand-flip": {"prob": 0.5, "axis": 2}},
        {"normalize-intensity": {"nonzero": true, "channel_wise": true}},
        {"rand-scale-intensity": {"factors": 0.1, "prob": 0.5}},
        {"rand-shift-intensity": {"offsets": 0.1, "prob": 0.5}}]"#;

    #[test]
    fn validation_takes_whole_cases_and_never_all() {
        assert_eq!(validation_cases(484, 0.01), 5);
        assert_eq!(validation_cases(16, 0.25), 4);
        assert_eq!(
            validation_cases(16, 0.001),
            1,
            "at least one when asked for"
        );
        assert_eq!(validation_cases(1, 0.5), 0, "one case cannot be split");
        assert_eq!(validation_cases(4, 0.99), 3);
        assert_eq!(validation_cases(8, 0.0), 0);
    }

    fn case(i: usize, shape: [usize; 4]) -> Case {
        let [c, x, y, z] = shape;
        let mut rng = Rng::new(i as u64);
        let image = (0..c * x * y * z)
            .map(|_| {
                let v = rng.next_f64();
                if v < 0.3 { 0.0 } else { (v * 900.0) as f32 }
            })
            .collect();
        let labels = (0..x * y * z).map(|_| (rng.next_u64() % 8) as u8).collect();
        Case {
            id: format!("BRATS_{i:03}"),
            image: Image::new(shape, image),
            label: Some(Label::new([x, y, z], LabelData::Regions(labels))),
            affine: [[0.0; 4]; 4],
            channel_first: true,
        }
    }

    /// A wf-samples-v1 artifact of 5 cases: prefix only (`copies` 0) or materialized copies.
    fn artifact(dir: &Path, copies: u32, dtype: SampleDtype) {
        artifact_with(dir, copies, dtype, CHAIN)
    }

    fn artifact_with(dir: &Path, copies: u32, dtype: SampleDtype, chain: &str) {
        let transforms: serde_json::Value = serde_json::from_str(chain).unwrap();
        let chain = Chain::from_json(&transforms).unwrap();
        let mut cases = Vec::new();
        for i in 0..5 {
            let c = case(i, [4, 12, 11, 10]);
            let mut files = Vec::new();
            if copies == 0 {
                let s = Sample::from_case(&c, PREFIX_COPY, 0, Default::default()).unwrap();
                write_sample_as(&dir.join(format!("{i}-p.wfs")), &s, dtype).unwrap();
                files.push(format!("{i}-p.wfs"));
            }
            for copy in 0..copies {
                let mut rng = Rng::for_sample(1, &c.id, copy);
                let (out, drawn) = chain.apply_suffix(c.clone(), &mut rng).unwrap();
                let s = Sample::from_case(&out, copy, 0, drawn).unwrap();
                write_sample_as(&dir.join(format!("{i}-{copy}.wfs")), &s, dtype).unwrap();
                files.push(format!("{i}-{copy}.wfs"));
            }
            cases.push(wf_imaging::samples::CaseFiles { id: c.id, files });
        }
        let index = SamplesIndex::new(&chain, "msd", 1, copies, dtype.as_str(), cases, vec![]);
        std::fs::write(dir.join(INDEX_FILE), index.to_json()).unwrap();
    }

    fn epoch(l: &mut SamplesLoader, e: usize) -> Vec<(Vec<u32>, Vec<f32>, Vec<usize>)> {
        l.start_epoch(e).unwrap();
        let mut out = Vec::new();
        while let Some((x, y)) = l.next_batch().unwrap() {
            let bits = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            out.push((
                bits.iter().map(|v| v.to_bits()).collect(),
                y.flatten_all().unwrap().to_vec1().unwrap(),
                x.dims().to_vec(),
            ));
        }
        out
    }

    #[test]
    fn batches_match_the_reference_chain_whatever_the_worker_count() {
        for (copies, dtype) in [
            (0, SampleDtype::F32),
            (0, SampleDtype::Bf16),
            (2, SampleDtype::F32),
        ] {
            let t = tempfile::tempdir().unwrap();
            artifact(t.path(), copies, dtype);
            let seed = 11;
            let (train, _) = open_samples(t.path(), 0.0, 3, seed, &Device::Cpu).unwrap();
            let mut one = train.with_workers(1).unwrap();
            let (train, _) = open_samples(t.path(), 0.0, 3, seed, &Device::Cpu).unwrap();
            let mut three = train.with_workers(3).unwrap();
            for e in 0..3 {
                let got = epoch(&mut one, e);
                assert_eq!(
                    got,
                    epoch(&mut three, e),
                    "{copies} copies, {dtype}, epoch {e}"
                );
                // Each sample is what the unfused chain gives (online) or the file holds.
                let order = permutation(one.items.len(), seed, e);
                let transforms: serde_json::Value = serde_json::from_str(CHAIN).unwrap();
                let chain = Chain::from_json(&transforms).unwrap();
                let mut want_x = Vec::new();
                let mut want_y = Vec::new();
                for &i in &order {
                    let item = &one.items[i];
                    let mut c = SampleFile::open(&item.path).unwrap().to_case();
                    if copies == 0 {
                        let mut rng = Rng::for_sample(seed, &item.case, e as u32);
                        c = chain.apply_suffix(c, &mut rng).unwrap().0;
                    }
                    want_x.extend(c.image.data.iter().map(|v| v.to_bits()));
                    let Some(LabelData::Regions(r)) = c.label.map(|l| l.data) else {
                        panic!("regions")
                    };
                    for bit in 0..3 {
                        want_y.extend(r.iter().map(|&b| ((b >> bit) & 1) as f32));
                    }
                }
                // Batches concatenate samples; labels are per sample (3 channels each).
                let got_x: Vec<u32> = got.iter().flat_map(|b| b.0.clone()).collect();
                assert_eq!(got_x, want_x, "{copies} copies, {dtype}, epoch {e}: images");
                let vol: usize = got[0].2[2..].iter().product();
                let got_y: Vec<f32> = got.iter().flat_map(|b| b.1.clone()).collect();
                assert_eq!(got_y.len(), want_y.len());
                for (s, (g, w)) in got_y
                    .chunks(3 * vol)
                    .zip(want_y.chunks(3 * vol))
                    .enumerate()
                {
                    assert_eq!(g, w, "{copies} copies, epoch {e}: labels of sample {s}");
                }
            }
        }
    }

    #[test]
    fn shards_cut_each_global_batch_and_pad_to_equal_shares() {
        let t = tempfile::tempdir().unwrap();
        artifact(t.path(), 2, SampleDtype::F32); // 5 cases x 2 copies = 10 samples
        let (b, world, epoch) = (2, 3, 4);
        let (one, _) = open_samples(t.path(), 0.0, b * world, 7, &Device::Cpu).unwrap();
        let whole = one.batch_indices(epoch);
        let shards: Vec<Vec<Vec<usize>>> = (0..world)
            .map(|r| {
                let (l, _) = open_samples(t.path(), 0.0, b, 7, &Device::Cpu).unwrap();
                l.shard(r, world).unwrap().batch_indices(epoch)
            })
            .collect();
        // 10 samples padded to 12: two global batches of 6, each cut into three shares of 2.
        for s in &shards {
            assert_eq!(s.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2]);
        }
        for (k, global) in whole.iter().enumerate() {
            let joined: Vec<usize> = shards.iter().flat_map(|s| s[k].clone()).collect();
            // The last global batch holds the 4 remaining samples and the 2 first ones again.
            let want: Vec<usize> = global
                .iter()
                .copied()
                .chain(whole[0].iter().copied())
                .take(6)
                .collect();
            assert_eq!(joined, want, "global batch {k}");
        }
        // Alone, a loader is its own only shard; a rank outside the world is an error.
        let (l, _) = open_samples(t.path(), 0.0, b, 7, &Device::Cpu).unwrap();
        let alone = l.batch_indices(epoch);
        let (l, _) = open_samples(t.path(), 0.0, b, 7, &Device::Cpu).unwrap();
        assert_eq!(l.shard(0, 1).unwrap().batch_indices(epoch), alone);
        let (l, _) = open_samples(t.path(), 0.0, b, 7, &Device::Cpu).unwrap();
        assert!(l.shard(3, 3).is_err());
    }

    /// The data-parallel path end to end on CPU: replicas reading their shards of the real loader
    /// and averaging gradients step like one replica reading whole batches.
    #[test]
    fn sharded_loaders_with_an_all_reduce_train_like_one_loader() {
        use crate::ddp::{GradReducer, ThreadReducer};
        use crate::optim::AdamConfig;
        use crate::train::{TrainConfig, TrainSummary, train, train_replica};
        use crate::unet::UNetConfig;
        let t = tempfile::tempdir().unwrap();
        let chain = r#"["ensure-channel-first", "convert-labels",
            {"rand-spatial-crop": {"roi": [8, 8, 8]}}, {"rand-flip": {"prob": 0.5, "axis": 0}}]"#;
        artifact_with(t.path(), 2, SampleDtype::F32, chain); // 10 samples of 4x8x8x8
        let cfg = TrainConfig {
            unet: UNetConfig {
                channels: vec![2, 4],
                strides: vec![2],
                num_res_units: 1,
                ..UNetConfig::brats()
            },
            // eps above rounding noise (see ddp::tests).
            adam: AdamConfig {
                lr: 1e-2,
                eps: 1e-3,
                ..Default::default()
            },
            epochs: 2,
            ..Default::default()
        };
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut tr, mut va) = open_samples(t.path(), 0.0, 4, 9, &Device::Cpu).unwrap();
        let single = train(&cfg, d1.path(), &mut tr, &mut va, &mut |_| {}).unwrap();
        let (cfg_ref, out, root) = (&cfg, d2.path(), t.path());
        let ranks: Vec<TrainSummary> = std::thread::scope(|s| {
            let hs: Vec<_> = ThreadReducer::group(2)
                .unwrap()
                .into_iter()
                .map(|red| {
                    s.spawn(move || {
                        let (tr, mut va) = open_samples(root, 0.0, 2, 9, &Device::Cpu).unwrap();
                        let mut tr = tr.shard(red.rank(), 2).unwrap();
                        let dev = Device::Cpu;
                        train_replica(cfg_ref, &dev, out, &mut tr, &mut va, &red, &mut |_| {})
                            .unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(ranks[0].metrics[1].train_samples, 10);
        let load = |s: &TrainSummary| {
            let p = s
                .last_checkpoint
                .as_ref()
                .unwrap()
                .join("model.safetensors");
            candle_core::safetensors::load(p, &Device::Cpu).unwrap()
        };
        let (a, b) = (load(&single), load(&ranks[0]));
        let mut worst = 0f32;
        for (k, x) in &a {
            let d = (x - &b[k]).unwrap().abs().unwrap();
            worst = worst.max(
                d.flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar()
                    .unwrap(),
            );
        }
        assert!(worst < 1e-4, "sharded run differs by {worst}");
    }

    /// Whole-volume validation: each validation case's prefix volume, normalized as the chain's
    /// deterministic suffix says (the random crop, flips and intensity draws left out), one per
    /// batch, the same every epoch; materialized copies are refused with the reason.
    #[test]
    fn whole_volumes_are_the_normalized_prefix_of_each_case() {
        let t = tempfile::tempdir().unwrap();
        artifact(t.path(), 0, SampleDtype::F32);
        let (_, val) = open_samples(t.path(), 0.4, 3, 5, &Device::Cpu).unwrap();
        let cases = val.cases();
        assert_eq!(cases.len(), 2);
        let mut val = val.whole_volumes().unwrap();
        let first = epoch(&mut val, 0);
        assert_eq!(first.len(), 2, "one volume per batch");
        assert_eq!(first, epoch(&mut val, 3), "no random draw");
        let norm: wf_imaging::transforms::TransformSpec = serde_json::from_value(
            serde_json::json!({"normalize-intensity": {"nonzero": true, "channel_wise": true}}),
        )
        .unwrap();
        for ((bits, labels, dims), id) in first.iter().zip(&cases) {
            assert_eq!(dims, &[1, 4, 12, 11, 10]);
            let i: usize = id["BRATS_".len()..].parse().unwrap();
            let want = norm.apply(case(i, [4, 12, 11, 10])).unwrap();
            let got: Vec<f32> = bits.iter().map(|b| f32::from_bits(*b)).collect();
            assert_eq!(got, want.image.data, "{id}");
            let LabelData::Regions(r) = &want.label.unwrap().data else {
                panic!()
            };
            let bit = |c: usize| -> Vec<f32> { r.iter().map(|v| f32::from(v >> c & 1)).collect() };
            assert_eq!(labels, &[bit(0), bit(1), bit(2)].concat(), "{id}");
        }

        let t = tempfile::tempdir().unwrap();
        artifact(t.path(), 2, SampleDtype::F32);
        let (_, val) = open_samples(t.path(), 0.4, 3, 5, &Device::Cpu).unwrap();
        let e = val.whole_volumes().err().unwrap().to_string();
        assert!(e.contains("copies_per_case: 0"), "{e}");
    }
}
