//! The `sharded-transform` step: Dataset → Samples through the MONAI transform chain (wf-imaging).
//!
//! The chain splits at its first random transform. The deterministic prefix is computed once per case
//! and cached by content (`derived/sharded-transform/prefix/`, keyed by the step version, the prefix's
//! canonical JSON and the digests of the case's image and label from the Dataset's manifest), so adding
//! a case to a data set processes only that case and changing a training parameter processes nothing.
//! `copies_per_case: N` materializes N random augmentations per case, each cached by (prefix key,
//! suffix, workflow seed, case id, copy) in `derived/sharded-transform/samples/`, so changing the seed
//! recomputes only the random part. Per-sample seeds come from `wf_imaging::sample_seed(seed, case,
//! copy)`: results do not depend on `shards` or thread scheduling, which is why `shards` is outside the
//! key. `copies_per_case: 0` stores the prefix only and records the suffix in `index.json` for the
//! trainer's loader to apply online.
//!
//! Output layout (`wf-samples-v1`): `index.json` and `cases/<case id>/<copy>.wfs` (or `prefix.wfs`).
//! `sample_dtype: bf16` stores the output samples' images as bfloat16 (half the bytes a loader reads);
//! the cached prefix stays exact f32, and f32 sample keys are unchanged by the option's existence.

use serde::Deserialize;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use wf_engine::params::{ParamType, to_json};
use wf_engine::words::human_bytes;
use wf_engine::yaml::Node;
use wf_engine::{
    ArtifactType, CheckContext, Count, Diagnostics, Facts, FileDigest, Item, Merged, ParamSpec,
    Params, Part, RemoteTask, RunContext, Sharded, SizeEstimate, Slots, Step, StepError, Store,
    Unit, plural,
};
use wf_imaging::msd::{DATASET_JSON, MsdDataset};
use wf_imaging::sample::{
    PREFIX_COPY, Sample, SampleDtype, SampleFile, write_sample, write_sample_as,
};
use wf_imaging::samples::{CaseFiles, INDEX_FILE, SamplesIndex, SkippedCase};
use wf_imaging::transforms::{self, CaseSource, Chain, DrawnParams, PathSeg, TransformSpec};
use wf_imaging::{Rng, sample_seed};

use crate::facts::{DatasetFacts, Grid, Known, SamplesFacts};

pub struct ShardedTransform;

const VERSION: u32 = 1;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::required(
        "transforms",
        ParamType::Any,
        "the chain, starting with `load`: a list of transforms, each a name or a one-key mapping of its name to its fields (docs/workflow.md, Transforms)",
    )
    .shape("list of transforms", transforms::fields::list_schema),
    ParamSpec::optional(
        "labels",
        ParamType::Enum(&["msd", "brats", "brats-monai"]),
        "\"msd\"",
        "the label convention of `convert-labels` (MSD: 1 edema, 2 non-enhancing, 3 enhancing; BraTS: 1, 2, 4; `brats-monai`: MONAI's class verbatim)",
    ),
    ParamSpec::optional(
        "copies_per_case",
        ParamType::int_min(0),
        "1",
        "random augmentations stored per case; 0 stores the prefix and augments online in the loader",
    ),
    ParamSpec::optional(
        "shards",
        ParamType::int_min(0),
        "0",
        "parallel workers (0: all cores); instances of the Processing job in the cloud",
    )
    .not_in_key(),
    ParamSpec::optional(
        "on_bad_case",
        ParamType::Enum(&["fail", "skip"]),
        "\"fail\"",
        "a bad case fails the step, or is skipped with a warning",
    ),
    ParamSpec::optional(
        "sample_dtype",
        ParamType::Enum(&["f32", "bf16"]),
        "\"f32\"",
        "image precision of the stored samples: f32 (exact) or bf16 (half the bytes to read)",
    ),
];

#[derive(Debug, Deserialize)]
struct TransformParams {
    transforms: Json,
    labels: String,
    copies_per_case: u32,
    shards: usize,
    on_bad_case: String,
    sample_dtype: String,
}

/// Builds the chain from params: the step's `labels:` applies to every `convert-labels` that does not
/// name its own convention.
fn chain(params: &Params) -> Result<Chain, String> {
    let p: TransformParams = params.decode().map_err(|e| e.to_string())?;
    Chain::build(&p.transforms, &p.labels)
}

impl Step for ShardedTransform {
    fn kind(&self) -> &'static str {
        "sharded-transform"
    }
    fn version(&self) -> u32 {
        VERSION
    }
    fn summary(&self) -> &'static str {
        "preprocess every case of a data set through the MONAI transform chain, cached per case"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> Slots {
        Slots::Fixed(&[("dataset", ArtifactType::Dataset)])
    }
    fn output(&self, _params: &Params) -> ArtifactType {
        ArtifactType::Samples
    }
    fn seeded(&self) -> bool {
        true
    }

    fn check(&self, params: &Params, cx: &CheckContext<'_>, diags: &mut Diagnostics) {
        let Some(node) = params.node("transforms") else {
            return;
        };
        let Some(items) = node.as_seq() else {
            diags.error(
                node.span,
                format!(
                    "step `{}`: `transforms` expects a list of transforms, found {}",
                    cx.step_id,
                    node.describe()
                ),
            );
            return;
        };
        let context = format!("step `{}`", cx.step_id);
        if check_transforms(items, Some(&context), diags)
            && let Err(e) = chain(params)
        {
            diags.error(node.span, format!("step `{}`: {e}", cx.step_id));
        }
    }

    /// The data set's cases and channels, and the samples' spatial size where it is known: the
    /// data set's grid through the chain, or without one the crop's `roi` (when nothing after the
    /// crop regrids).
    fn facts(&self, params: &Params, cx: &CheckContext<'_>) -> Option<Facts> {
        let chain = chain(params).ok()?;
        let dataset = cx.input::<DatasetFacts>("dataset");
        let cropped = chain
            .specs()
            .iter()
            .any(|s| matches!(s, TransformSpec::RandSpatialCrop(_)));
        Some(Facts::new(SamplesFacts {
            cases: dataset.and_then(|d| d.cases.clone()),
            channels: dataset.and_then(|d| d.channels),
            spatial: sample_size(
                &chain,
                params,
                dataset.and_then(|d| d.grid.as_ref()),
                cx.step_id,
            ),
            cropped,
            prefix_only: Some(Known::new(
                params
                    .get("copies_per_case")
                    .and_then(|v| v.as_u64())
                    .is_some_and(|c| c == 0),
                params.span_of("copies_per_case"),
                format!("`copies_per_case` of step `{}`", cx.step_id),
            )),
        }))
    }

    /// Known before any case is read when the data set's case count and channels are (generated or
    /// local data) and the samples' size is: cases × copies × bytes per sample, plus the cached
    /// prefixes (exact f32) when the volumes' grid is known too. A data set still to be fetched
    /// says so.
    fn output_size(&self, params: &Params, cx: &CheckContext<'_>) -> Option<SizeEstimate> {
        let p: TransformParams = params.decode().ok()?;
        let chain = chain(params).ok()?;
        let unknown = |why: &str| {
            Some(SizeEstimate::Unknown {
                why: why.to_string(),
            })
        };
        let Some(d) = cx.input::<DatasetFacts>("dataset") else {
            return unknown("size unknown until the data set is fetched");
        };
        let (Some(cases), Some(channels)) = (&d.cases, d.channels) else {
            return unknown("size unknown until the data set is fetched");
        };
        let dtype = if p.sample_dtype == "bf16" {
            SampleDtype::Bf16
        } else {
            SampleDtype::F32
        };
        let prefix = d.grid.as_ref().and_then(|g| {
            let shapes = chain.spatial_shapes(g.value.shape, &g.value.affine).ok()?;
            shapes.get(chain.prefix().len().checked_sub(1)?).copied()
        });
        let sample = sample_size(&chain, params, d.grid.as_ref(), cx.step_id).map(|k| k.value);
        let shape = SamplesShape {
            cases: cases.value as u64,
            channels: channels as u64,
            copies: p.copies_per_case as u64,
            dtype,
            prefix,
            sample,
        };
        let Some((bytes, how)) = shape.estimate() else {
            return unknown("size unknown until the volumes are read (their grid)");
        };
        let help = if p.copies_per_case > 0 {
            "store fewer bytes: `copies_per_case: 0` (augment online while training) or `sample_dtype: bf16` (half the image bytes)"
        } else {
            "store fewer bytes: `sample_dtype: bf16` (half the image bytes), or crop or resample to smaller volumes"
        };
        Some(SizeEstimate::Bytes {
            bytes,
            how,
            help: Some(help.to_string()),
            span: if params.node("copies_per_case").is_some() {
                params.span_of("copies_per_case")
            } else {
                params.span_of("transforms")
            },
        })
    }

    fn run(&self, cx: &RunContext<'_>) -> Result<(), StepError> {
        let part = process_cases(cx, None)?;
        let index = index_json(cx.params, cx.seed, part)?;
        std::fs::write(cx.out_dir.join(INDEX_FILE), index)?;
        Ok(())
    }

    fn sharded(&self) -> Option<&dyn Sharded> {
        Some(self)
    }

    fn remote(&self, params: &Params) -> RemoteTask {
        let shards = params
            .get("shards")
            .and_then(Json::as_u64)
            .unwrap_or(1)
            .max(1);
        RemoteTask::Processing {
            instances: shards as u32,
            sharded_input: true,
        }
    }
}

/// What the output of a sharded-transform holds, as far as validation knows, for its size.
struct SamplesShape {
    cases: u64,
    channels: u64,
    copies: u64,
    dtype: SampleDtype,
    /// The spatial size after the deterministic prefix (cached per case, f32), when known.
    prefix: Option<[usize; 3]>,
    /// The spatial size of an augmented copy, when known.
    sample: Option<[usize; 3]>,
}

impl SamplesShape {
    /// The bytes of one sample: its image (channels × voxels × the dtype's size) and its labels
    /// (one byte per voxel); the few bytes of the file's header are left out.
    fn sample_bytes(&self, spatial: [usize; 3], dtype: SampleDtype) -> u64 {
        let voxels: u64 = spatial.iter().map(|&n| n as u64).product();
        self.channels * voxels * dtype.size() as u64 + voxels
    }

    /// The bytes the step writes and how they add up, or `None` when a size it needs is unknown.
    fn estimate(&self) -> Option<(u64, String)> {
        let prefixes = self
            .prefix
            .map(|s| (self.cases * self.sample_bytes(s, SampleDtype::F32), s));
        if self.copies == 0 {
            // The samples are the prefixes themselves (converted once more for bf16).
            let (f32_bytes, shape) = prefixes?;
            let converted = match self.dtype {
                SampleDtype::F32 => 0,
                dtype => self.cases * self.sample_bytes(shape, dtype),
            };
            let per = self.sample_bytes(shape, self.dtype);
            return Some((
                f32_bytes + converted,
                format!(
                    "{} × {} per {} sample{}",
                    plural(self.cases, "case"),
                    human_bytes(per),
                    self.dtype.as_str(),
                    if converted > 0 {
                        ", beside the exact f32 prefixes"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let per = self.sample_bytes(self.sample?, self.dtype);
        let samples = self.cases * self.copies * per;
        let mut how = format!(
            "{} × {} × {} per {} sample",
            plural(self.cases, "case"),
            plural(self.copies, "copy"),
            human_bytes(per),
            self.dtype.as_str()
        );
        let total = match prefixes {
            Some((bytes, _)) => {
                how.push_str(&format!(", and {} of cached prefixes", human_bytes(bytes)));
                samples + bytes
            }
            None => {
                how.push_str(", and the cached prefixes");
                samples
            }
        };
        Some((total, how))
    }
}

/// The spatial size of the samples, known without data: with the data set's grid, the grid through
/// the chain, attributed to the last transform that resized it (a crop's `roi`, a `spacing`'s
/// `pixdim`) or else to the grid; without it, the crop's `roi` when nothing after it regrids.
fn sample_size(
    chain: &Chain,
    params: &Params,
    grid: Option<&Known<Grid>>,
    id: &str,
) -> Option<Known<[usize; 3]>> {
    let specs = chain.specs();
    let resizer = |i: usize| match &specs[i] {
        TransformSpec::RandSpatialCrop(_) => Some(Known::new(
            (),
            transform_field_span(params, i, "roi"),
            format!("the `roi` of step `{id}`"),
        )),
        TransformSpec::Spacing(_) => Some(Known::new(
            (),
            transform_field_span(params, i, "pixdim"),
            format!("the volume after `spacing` in step `{id}`"),
        )),
        _ => None,
    };
    let Some(grid) = grid else {
        let crop = specs
            .iter()
            .rposition(|s| matches!(s, TransformSpec::RandSpatialCrop(_)))?;
        let regrids = specs[crop..]
            .iter()
            .any(|s| matches!(s, TransformSpec::Spacing(_) | TransformSpec::Orientation(_)));
        let TransformSpec::RandSpatialCrop(c) = &specs[crop] else {
            unreachable!("found as a crop")
        };
        let by = resizer(crop)?;
        return (!regrids).then(|| Known::new(c.roi, by.span, by.what));
    };
    let shapes = chain
        .spatial_shapes(grid.value.shape, &grid.value.affine)
        .ok()?;
    let size = *shapes.last()?;
    let resized = (0..specs.len()).rev().find_map(|i| {
        let before = if i == 0 {
            grid.value.shape
        } else {
            shapes[i - 1]
        };
        (shapes[i] != before).then(|| resizer(i)).flatten()
    });
    Some(match resized {
        Some(by) => Known::new(size, by.span, by.what),
        None => Known::new(size, grid.span, grid.what.clone()),
    })
}

/// The position of `field` of the transform at `index` of `transforms` (the `roi` of a crop), or of
/// the list item when the field is not written there.
fn transform_field_span(params: &Params, index: usize, field: &str) -> wf_engine::Span {
    let Some(item) = params
        .node("transforms")
        .and_then(|n| n.as_seq())
        .and_then(|items| items.get(index))
    else {
        return params.span_of("transforms");
    };
    item.as_map()
        .and_then(|m| m.first())
        .and_then(|(_, body)| body.get(field))
        .map_or(item.span, |n| n.span)
}

/// Checks each item of a `transforms:` list (a step's, or `wf transform`'s file) and reports every
/// problem where it was written: the item, the transform's name, a field's name, its value, or an
/// entry of a list value. `context` starts each message (`step `preprocess``). Whether all items
/// are transforms.
pub fn check_transforms(items: &[Node], context: Option<&str>, diags: &mut Diagnostics) -> bool {
    let mut ok = true;
    for item in items {
        let Err(errors) = transforms::parse_item(&to_json(item)) else {
            continue;
        };
        ok = false;
        for e in errors {
            let span = locate(item, &e.path, e.at_key);
            let message = match context {
                Some(c) => format!("{c}: {}", e.message),
                None => e.message.clone(),
            };
            let suggestion = e.unknown.as_ref().and_then(|u| {
                wf_engine::diag::did_you_mean(&u.got, u.expected.iter().map(String::as_str))
            });
            match (suggestion, e.help) {
                (Some(best), _) => {
                    diags.error_with_help(span, message, format!("did you mean `{best}`?"))
                }
                (None, Some(help)) => diags.error_with_help(span, message, help),
                (None, None) => diags.error(span, message),
            }
        }
    }
    ok
}

/// The position of `path` inside `item`: the named key itself when `at_key`, else the value (or
/// list entry) it leads to; as deep as the path goes.
fn locate(item: &Node, path: &[PathSeg], at_key: bool) -> wf_engine::Span {
    let mut node = item;
    for (i, seg) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        match seg {
            PathSeg::Key(name) => {
                let Some((key, value)) = node
                    .as_map()
                    .and_then(|m| m.iter().find(|(k, _)| k.name == *name))
                else {
                    break;
                };
                if last && at_key {
                    return key.span;
                }
                node = value;
            }
            PathSeg::Index(n) => match node.as_seq().and_then(|s| s.get(*n)) {
                Some(entry) => node = entry,
                None => break,
            },
        }
    }
    node.span
}

/// In the cloud, each instance of a sharded job processes the cases whose image it was given, and
/// the commit job writes `index.json` from every instance's records (docs/cloud.md §6): the same
/// artifact as a local run.
impl Sharded for ShardedTransform {
    fn item_name(&self) -> &'static str {
        "case"
    }

    fn run_part(&self, cx: &RunContext<'_>) -> Result<Part, StepError> {
        let input = cx
            .inputs
            .get("dataset")
            .ok_or_else(|| StepError::new("missing input `dataset`"))?;
        let have = |image: &str| input.path.join(image).is_file();
        process_cases(cx, Some(&have))
    }

    fn items(
        &self,
        _params: &Params,
        read: &dyn Fn(&str) -> Result<Vec<u8>, String>,
    ) -> Result<Vec<String>, StepError> {
        let text = read(DATASET_JSON).map_err(StepError::new)?;
        let ds = MsdDataset::from_slice(&text, DATASET_JSON).map_err(imaging_error)?;
        Ok(ds
            .cases()
            .map_err(imaging_error)?
            .into_iter()
            .map(|c| c.id)
            .collect())
    }

    fn merge(&self, params: &Params, seed: u64, part: Part) -> Result<Merged, StepError> {
        let warnings = part
            .skipped
            .iter()
            .map(|c| {
                format!(
                    "skipped case {}: {}",
                    c.id,
                    c.error.as_deref().unwrap_or_default()
                )
            })
            .collect();
        let index = index_json(params, seed, part)?;
        Ok(Merged {
            files: vec![(INDEX_FILE.to_string(), index.into_bytes())],
            warnings,
        })
    }
}

/// Processes the data set's cases into `cx.out_dir` (sample files only; no `index.json`): every case,
/// or those whose image path (relative to the data set, e.g. `imagesTr/x.nii.gz`) `only` admits (a
/// shard of a sharded job). Returns the processed and the skipped cases, each in `dataset.json`
/// order.
fn process_cases(
    cx: &RunContext<'_>,
    only: Option<&(dyn Fn(&str) -> bool + Sync)>,
) -> Result<Part, StepError> {
    let p: TransformParams = cx
        .params
        .decode()
        .map_err(|e| StepError::new(format!("invalid params: {e}")))?;
    let chain = chain(cx.params).map_err(StepError::new)?;
    let input = cx
        .inputs
        .get("dataset")
        .ok_or_else(|| StepError::new("missing input `dataset`"))?;
    let manifest = cx
        .store
        .manifest(&input.digest)
        .map_err(|e| StepError::new(e.to_string()))?;
    let digest_of = |rel: &str| {
        manifest
            .entries
            .iter()
            .find(|e| e.path == rel)
            .map(|e| e.digest)
    };
    let mut cases = read_cases(&input.path)?;
    if let Some(keep) = only {
        cases.retain(|(_, image, _)| keep(image));
    }
    let prefix_json = serde_json::to_string(chain.prefix()).expect("specs serialize");
    let suffix_json = serde_json::to_string(chain.suffix()).expect("specs serialize");
    let derived = cx.store.derived_dir("sharded-transform");
    let skip = p.on_bad_case == "skip";
    let workers = if p.shards == 0 { cx.threads } else { p.shards }.clamp(1, cases.len().max(1));

    let next = AtomicUsize::new(0);
    let total = cases.len() as u64;
    cx.progress.advance(Count::new(0, total, Unit::Case));
    // Counted and reported under one lock, so the reports arrive in order.
    let done = Mutex::new(0u64);
    let results: Vec<Mutex<Option<Result<Vec<String>, String>>>> =
        cases.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= cases.len() || cx.cancel.is_cancelled() {
                        break;
                    }
                    let (src, image_rel, label_rel) = &cases[i];
                    let r = (|| {
                        let image_digest = digest_of(image_rel)
                            .ok_or(format!("{image_rel} is listed in dataset.json but missing"))?;
                        let label_digest = match label_rel {
                            Some(l) => Some(
                                digest_of(l)
                                    .ok_or(format!("{l} is listed in dataset.json but missing"))?,
                            ),
                            None => None,
                        };
                        let job = CaseJob {
                            chain: &chain,
                            prefix_json: &prefix_json,
                            suffix_json: &suffix_json,
                            derived: &derived,
                            store: cx.store,
                            seed: cx.seed,
                            copies: p.copies_per_case,
                            dtype: if p.sample_dtype == "bf16" {
                                SampleDtype::Bf16
                            } else {
                                SampleDtype::F32
                            },
                        };
                        job.process(src, image_digest, label_digest, cx.out_dir)
                    })();
                    *results[i].lock().expect("no panics") = Some(r);
                    let mut n = done.lock().expect("no panics");
                    *n += 1;
                    cx.progress.advance(Count::new(*n, total, Unit::Case));
                }
            });
        }
    });
    if cx.cancel.is_cancelled() {
        return Err(StepError::new("interrupted"));
    }

    let mut part = Part::default();
    for ((src, _, _), r) in cases.iter().zip(results) {
        match r
            .into_inner()
            .expect("no panics")
            .expect("every case processed")
        {
            Ok(files) => part.done.push(Item {
                id: src.id.clone(),
                files,
                error: None,
            }),
            Err(e) if skip => {
                cx.progress.warn(&format!("skipped case {}: {e}", src.id));
                part.skipped.push(Item {
                    id: src.id.clone(),
                    files: Vec::new(),
                    error: Some(e),
                });
            }
            Err(e) => {
                return Err(StepError::new(format!("case {}: {e}", src.id))
                    .with_hint("set `on_bad_case: skip` to leave bad cases out"));
            }
        }
    }
    Ok(part)
}

/// The text of `index.json` for the processed and skipped cases (in `dataset.json` order): what a
/// local run writes, and what the commit job of a sharded run writes from the shards' records.
fn index_json(params: &Params, seed: u64, part: Part) -> Result<String, StepError> {
    let p: TransformParams = params
        .decode()
        .map_err(|e| StepError::new(format!("invalid params: {e}")))?;
    let chain = chain(params).map_err(StepError::new)?;
    if part.done.is_empty() {
        return Err(StepError::new("no case could be processed"));
    }
    let cases = part
        .done
        .into_iter()
        .map(|i| CaseFiles {
            id: i.id,
            files: i.files,
        })
        .collect();
    let skipped = part
        .skipped
        .into_iter()
        .map(|i| SkippedCase {
            id: i.id,
            error: i.error.unwrap_or_default(),
        })
        .collect();
    let index = SamplesIndex::new(
        &chain,
        &p.labels,
        seed,
        p.copies_per_case,
        &p.sample_dtype,
        cases,
        skipped,
    );
    Ok(index.to_json())
}

trait WithHint {
    fn with_hint(self, hint: &str) -> StepError;
}
impl WithHint for StepError {
    fn with_hint(mut self, hint: &str) -> StepError {
        self.detail = Some(hint.to_string());
        self
    }
}

struct CaseJob<'a> {
    chain: &'a Chain,
    prefix_json: &'a str,
    suffix_json: &'a str,
    derived: &'a Path,
    store: &'a Store,
    seed: u64,
    copies: u32,
    /// Image precision of the output samples (the cached prefix stays f32, exact).
    dtype: SampleDtype,
}

fn key(text: &str) -> String {
    FileDigest::of_bytes(text.as_bytes()).to_hex()
}

/// Where a derived file lives; its directory is created so it can be written.
fn cached_path(root: &Path, kind: &str, key: &str) -> Result<PathBuf, String> {
    let dir = root.join(kind).join(&key[..2]);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir.join(format!("{key}.wfs")))
}

/// Links a cached file into the output (copying where a link is impossible); the store adopts it
/// as its object at commit rather than copying it (`Store::link_derived`).
fn link(store: &Store, from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to.parent().expect("has parent")).map_err(|e| e.to_string())?;
    store
        .link_derived(from, to)
        .map_err(|e| format!("{}: {e}", from.display()))?;
    // Reuse refreshes the file's age for `wf cache gc --older-than` (best effort).
    if let Ok(f) = std::fs::File::options().write(true).open(from) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
    Ok(())
}

impl CaseJob<'_> {
    /// Produces the case's files in `out` (from the derived cache when possible); returns their
    /// paths relative to `out`.
    fn process(
        &self,
        src: &CaseSource,
        image: FileDigest,
        label: Option<FileDigest>,
        out: &Path,
    ) -> Result<Vec<String>, String> {
        let label_hex = label.map(|d| d.to_hex()).unwrap_or_else(|| "-".into());
        let pkey = key(&format!(
            "wf-prefix-v{VERSION}\n{}\n{image}\n{label_hex}",
            self.prefix_json
        ));
        let ppath = cached_path(self.derived, "prefix", &pkey)?;
        // A prefix computed now stays in memory for the copies instead of being read back.
        let mut prefix_case = None;
        if !ppath.exists() {
            let case = self.chain.run_prefix(src).map_err(|e| e.to_string())?;
            let sample = Sample::from_case(&case, PREFIX_COPY, 0, DrawnParams::default())
                .map_err(|e| e.to_string())?;
            write_sample(&ppath, &sample).map_err(|e| e.to_string())?;
            prefix_case = Some(case);
        }
        let dir = format!("cases/{}", src.id);
        if self.copies == 0 {
            let rel = format!("{dir}/prefix.wfs");
            let mut from = ppath;
            if self.dtype != SampleDtype::F32 {
                // A converted copy of the exact prefix, cached beside it.
                let bkey = key(&format!("{pkey}\n{}", self.dtype.as_str()));
                let bpath = cached_path(self.derived, "prefix", &bkey)?;
                if !bpath.exists() {
                    let sample = match prefix_case {
                        Some(case) => {
                            Sample::from_case(&case, PREFIX_COPY, 0, DrawnParams::default())
                                .map_err(|e| e.to_string())?
                        }
                        None => Sample::from_case(
                            &SampleFile::open(&from)
                                .map_err(|e| e.to_string())?
                                .to_case(),
                            PREFIX_COPY,
                            0,
                            DrawnParams::default(),
                        )
                        .map_err(|e| e.to_string())?,
                    };
                    write_sample_as(&bpath, &sample, self.dtype).map_err(|e| e.to_string())?;
                }
                from = bpath;
            }
            link(self.store, &from, &out.join(&rel))?;
            return Ok(vec![rel]);
        }
        // Grown as copies are made: `copies_per_case` is the user's number, not a size to reserve.
        let mut files = Vec::new();
        for copy in 0..self.copies {
            let mut skey_text = format!(
                "wf-sample-v{VERSION}\n{pkey}\n{}\n{}\n{}\n{copy}",
                self.suffix_json, self.seed, src.id
            );
            if self.dtype != SampleDtype::F32 {
                skey_text.push_str(&format!("\n{}", self.dtype.as_str()));
            }
            let skey = key(&skey_text);
            let spath = cached_path(self.derived, "samples", &skey)?;
            if !spath.exists() {
                if prefix_case.is_none() {
                    prefix_case = Some(
                        SampleFile::open(&ppath)
                            .map_err(|e| e.to_string())?
                            .to_case(),
                    );
                }
                let case = prefix_case.clone().expect("loaded");
                let mut rng = Rng::for_sample(self.seed, &src.id, copy);
                let (case, drawn) = self
                    .chain
                    .apply_suffix(case, &mut rng)
                    .map_err(|e| e.to_string())?;
                let sample =
                    Sample::from_case(&case, copy, sample_seed(self.seed, &src.id, copy), drawn)
                        .map_err(|e| e.to_string())?;
                write_sample_as(&spath, &sample, self.dtype).map_err(|e| e.to_string())?;
            }
            let rel = format!("{dir}/{copy}.wfs");
            link(self.store, &spath, &out.join(&rel))?;
            files.push(rel);
        }
        Ok(files)
    }
}

/// The training cases of an MSD data set: (source, image path, label path) relative to the root.
fn read_cases(root: &Path) -> Result<Vec<(CaseSource, String, Option<String>)>, StepError> {
    let ds = MsdDataset::read(&root.join(DATASET_JSON)).map_err(imaging_error)?;
    Ok(ds
        .cases()
        .map_err(imaging_error)?
        .into_iter()
        .map(|c| {
            let src = CaseSource {
                id: c.id,
                image: root.join(&c.image),
                label: c.label.as_ref().map(|l| root.join(l)),
            };
            (src, c.image, c.label)
        })
        .collect())
}

fn imaging_error(e: wf_imaging::ImagingError) -> StepError {
    StepError::new(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped BraTS workflow: 101 f32 copies of 484 cases, 4 × 128 × 128 × 64.
    #[test]
    fn the_size_estimate_counts_every_byte_of_image_and_labels() {
        let brats = SamplesShape {
            cases: 484,
            channels: 4,
            copies: 101,
            dtype: SampleDtype::F32,
            prefix: None,
            sample: Some([128, 128, 64]),
        };
        let per = 4 * 128 * 128 * 64 * 4 + 128 * 128 * 64;
        assert_eq!(per, 17_825_792);
        let (bytes, how) = brats.estimate().unwrap();
        assert_eq!(bytes, 484 * 101 * per);
        assert_eq!(bytes, 871_396_016_128);
        assert_eq!(
            how,
            "484 cases × 101 copies × 17.0 MiB per f32 sample, and the cached prefixes"
        );
        // bf16 halves the image bytes, not the labels'; known prefixes (f32) are added.
        let bf16 = SamplesShape {
            dtype: SampleDtype::Bf16,
            prefix: Some([160, 160, 78]),
            ..brats
        };
        let prefix = 4 * 160 * 160 * 78 * 4 + 160 * 160 * 78;
        assert_eq!(
            bf16.estimate().unwrap().0,
            484 * 101 * (4 * 128 * 128 * 64 * 2 + 128 * 128 * 64) + 484 * prefix
        );
        // Online augmentation stores the prefixes only (and a bf16 copy of each when asked).
        let online = SamplesShape { copies: 0, ..bf16 };
        assert_eq!(
            online.estimate().unwrap().0,
            484 * prefix + 484 * (4 * 160 * 160 * 78 * 2 + 160 * 160 * 78)
        );
        // Without the grid, online augmentation's size is unknown rather than guessed.
        let unknown = SamplesShape {
            prefix: None,
            ..online
        };
        assert_eq!(unknown.estimate(), None);
    }
    use std::path::Path;

    fn items(dataset_json: &str) -> Result<Vec<String>, String> {
        let read = |path: &str| {
            assert_eq!(path, "dataset.json");
            Ok(dataset_json.as_bytes().to_vec())
        };
        ShardedTransform
            .items(&Params::default(), &read)
            .map_err(|e| e.message)
    }

    #[test]
    fn items_are_the_case_ids_of_dataset_json() {
        let ds = r#"{"training": [{"image": "./imagesTr/B_2.nii.gz", "label": "./labelsTr/B_2.nii.gz"},
                                  {"image": "imagesTr/B_1.nii"}]}"#;
        assert_eq!(items(ds).unwrap(), ["B_2", "B_1"]);
        let e = items(r#"{"training": [{"label": "x"}]}"#).unwrap_err();
        assert_eq!(e, r#"dataset.json: training[0] has no "image""#);
        let e =
            items(r#"{"training": [{"image": "a/X.nii"}, {"image": "b/X.nii.gz"}]}"#).unwrap_err();
        assert!(e.contains("both have case id `X`"), "{e}");
    }

    fn transform_errors(yaml: &str) -> Vec<String> {
        let mut diags = Diagnostics::new(Path::new("t.yaml"));
        let root = wf_engine::yaml::parse(yaml, &mut diags).unwrap();
        let items = root.get("transforms").and_then(Node::as_seq).unwrap();
        let ok = check_transforms(items, Some("step `p`"), &mut diags);
        assert_eq!(ok, diags.is_empty());
        diags.into_sorted().iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn transform_errors_sit_where_they_were_written() {
        let e = transform_errors(
            "transforms:\n  - load\n  - spacng: { pixdim: [1, 1, 1] }\n  - spacing: { pixdim: [1.5, 2.0] }\n  - spacing: { pixdim: [1, 1, 1], mode: [bilinear, nerest] }\n  - spacing:\n  - rand-flip: { prob: 2 }\n",
        );
        assert_eq!(
            e,
            [
                "t.yaml:3:5: step `p`: unknown transform `spacng`\n  help: did you mean `spacing`?",
                "t.yaml:4:24: step `p`: `spacing.pixdim` expects 3 numbers > 0, found a list of 2",
                "t.yaml:5:52: step `p`: `spacing.mode` expects `bilinear` or `nearest`, or `[image, label]`; entry 2 is string \"nerest\"\n  help: did you mean `nearest`?",
                "t.yaml:6:5: step `p`: transform `spacing` needs `pixdim` (3 numbers > 0)\n  help: write it as `- spacing: { pixdim: … }`",
                "t.yaml:7:24: step `p`: transform `rand-flip`: prob 2 is outside [0, 1]",
            ]
        );
        assert!(transform_errors("transforms: [load, orientation]\n").is_empty());
    }
}
