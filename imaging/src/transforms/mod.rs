//! The MONAI transform chain, natively: the in-memory case, the typed transform specs (deserializable
//! from the YAML shape of DESIGN.md) and the [`Chain`] that splits into a cached deterministic prefix
//! and a random suffix replayable from recorded draws.
//!
//! Array layout: the image is channel-first `(C, X, Y, Z)` in C order (Z fastest), as MONAI/numpy hold
//! it, so goldens compare index for index and samples need no transposition before a MONAI-style UNet.
//! Labels are `(X, Y, Z)` C order, either raw values (as in the file) or, after `convert-labels`, one
//! byte per voxel of region bits ([`TC`], [`WT`], [`ET`]).

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::ImagingError;
use crate::rng::Rng;

pub mod convert_labels;
pub mod ensure_channel_first;
pub mod fields;
pub mod item;
pub(crate) mod linalg;
pub mod load;
pub mod normalize_intensity;
pub mod orientation;
pub mod rand_flip;
pub mod rand_scale_intensity;
pub mod rand_shift_intensity;
pub mod rand_spatial_crop;
pub mod spacing;

pub use convert_labels::{ConvertLabels, LabelConvention};
pub use ensure_channel_first::EnsureChannelFirst;
pub use fields::{Field, TRANSFORMS, TransformInfo};
pub use item::{ItemError, PathSeg, parse_item};
pub use linalg::spacing_of;
pub use load::Load;
pub use normalize_intensity::NormalizeIntensity;
pub use orientation::Orientation;
pub use rand_flip::RandFlip;
pub use rand_scale_intensity::RandScaleIntensity;
pub use rand_shift_intensity::RandShiftIntensity;
pub use rand_spatial_crop::RandSpatialCrop;
pub use spacing::{InterpMode, Spacing, SpacingModes};

/// Voxel (i, j, k, 1) → world mm (nibabel RAS+), float64 as MONAI keeps it.
pub type Affine = [[f64; 4]; 4];

/// Region bit: tumour core.
pub const TC: u8 = 1;
/// Region bit: whole tumour.
pub const WT: u8 = 2;
/// Region bit: enhancing tumour.
pub const ET: u8 = 4;

/// Memory order of a volume. Every transform hands on C order, except that `load` passes NIfTI's
/// Fortran order (x fastest, channel slowest) through untouched: `spacing` gathers from it in place,
/// which saves a full-volume reorder (~0.2 s at 240x240x155x4); any other transform reorders first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// `(C, X, Y, Z)` row-major: Z fastest.
    #[default]
    C,
    /// NIfTI on-disk order: X fastest, then Y, Z, channel.
    Fortran,
}

/// Float32 image, shape `(C, X, Y, Z)`, in `layout` order (C unless fresh from `load`).
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub shape: [usize; 4],
    pub data: Vec<f32>,
    pub layout: Layout,
}

impl Image {
    /// A C-order image.
    pub fn new(shape: [usize; 4], data: Vec<f32>) -> Image {
        Image {
            shape,
            data,
            layout: Layout::C,
        }
    }
    /// Reorders to C order if needed.
    pub fn to_c_order(&mut self) {
        if self.layout == Layout::Fortran {
            let mut out = vec![0f32; self.data.len()];
            fortran_to_c(&self.data, &mut out, self.spatial(), self.channels());
            self.data = out;
            self.layout = Layout::C;
        }
    }
    pub fn spatial(&self) -> [usize; 3] {
        [self.shape[1], self.shape[2], self.shape[3]]
    }
    pub fn channels(&self) -> usize {
        self.shape[0]
    }
    pub fn voxels_per_channel(&self) -> usize {
        self.shape[1] * self.shape[2] * self.shape[3]
    }
}

/// Label voxels before or after `convert-labels`.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelData {
    /// Values as in the file.
    Raw(Vec<f32>),
    /// One byte per voxel: [`TC`] | [`WT`] | [`ET`].
    Regions(Vec<u8>),
}

/// A single-channel label volume `(X, Y, Z)`, in `layout` order.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub shape: [usize; 3],
    pub data: LabelData,
    pub layout: Layout,
}

impl Label {
    /// A C-order label.
    pub fn new(shape: [usize; 3], data: LabelData) -> Label {
        Label {
            shape,
            data,
            layout: Layout::C,
        }
    }
    pub fn to_c_order(&mut self) {
        if self.layout == Layout::Fortran {
            match &mut self.data {
                LabelData::Raw(r) => {
                    let mut out = vec![0f32; r.len()];
                    fortran_to_c(r, &mut out, self.shape, 1);
                    *r = out;
                }
                LabelData::Regions(r) => {
                    let mut out = vec![0u8; r.len()];
                    fortran_to_c(r, &mut out, self.shape, 1);
                    *r = out;
                }
            }
            self.layout = Layout::C;
        }
    }
}

impl Case {
    /// Puts image and label in C order (a no-op past `spacing`).
    pub fn to_c_order(&mut self) {
        self.image.to_c_order();
        if let Some(l) = self.label.as_mut() {
            l.to_c_order();
        }
    }
}

/// Cache-blocked reorder: reads x-runs of one cache line, writes 16 z-rows at a time.
pub(crate) fn fortran_to_c<T: Copy>(src: &[T], dst: &mut [T], sp: [usize; 3], c: usize) {
    let [nx, ny, nz] = sp;
    let vol = nx * ny * nz;
    const B: usize = 16;
    for ch in 0..c {
        let s = &src[ch * vol..(ch + 1) * vol];
        let d = &mut dst[ch * vol..(ch + 1) * vol];
        for y in 0..ny {
            for xb in (0..nx).step_by(B) {
                let xe = (xb + B).min(nx);
                for z in 0..nz {
                    let row = &s[(z * ny + y) * nx + xb..(z * ny + y) * nx + xe];
                    for (dx, &v) in row.iter().enumerate() {
                        d[((xb + dx) * ny + y) * nz + z] = v;
                    }
                }
            }
        }
    }
}

/// One case in flight through the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub id: String,
    pub image: Image,
    pub label: Option<Label>,
    pub affine: Affine,
    /// False right after `load` (MONAI's LoadImage keeps channels last); `ensure-channel-first` sets it.
    /// The memory layout is channel-first from the start, so the flag only guards chain order.
    pub channel_first: bool,
}

/// Where a case's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseSource {
    pub id: String,
    pub image: PathBuf,
    pub label: Option<PathBuf>,
}

/// What a random transform drew for one sample, in chain order; enough to replay it exactly.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Drawn {
    /// Crop window start and size (voxels, per spatial axis).
    Crop {
        start: [u32; 3],
        size: [u32; 3],
    },
    Flip {
        flipped: bool,
    },
    /// `Some(f)`: the image was multiplied by `1 + f`; `None`: the coin said no.
    ScaleIntensity {
        factor: Option<f64>,
    },
    /// `Some(o)`: `o` was added to every voxel; `None`: the coin said no.
    ShiftIntensity {
        offset: Option<f64>,
    },
}

/// The drawn parameters of one sample (one entry per random transform, chain order).
#[derive(
    Debug,
    Clone,
    PartialEq,
    Default,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct DrawnParams {
    pub draws: Vec<Drawn>,
}

impl DrawnParams {
    pub fn crop_start(&self) -> Option<[u32; 3]> {
        self.draws.iter().find_map(|d| match d {
            Drawn::Crop { start, .. } => Some(*start),
            _ => None,
        })
    }
    pub fn flipped(&self) -> Option<bool> {
        self.draws.iter().find_map(|d| match d {
            Drawn::Flip { flipped } => Some(*flipped),
            _ => None,
        })
    }
    pub fn scale_factor(&self) -> Option<f64> {
        self.draws.iter().find_map(|d| match d {
            Drawn::ScaleIntensity { factor } => *factor,
            _ => None,
        })
    }
    pub fn shift_offset(&self) -> Option<f64> {
        self.draws.iter().find_map(|d| match d {
            Drawn::ShiftIntensity { offset } => *offset,
            _ => None,
        })
    }
}

/// One transform of a chain, with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransformSpec {
    Load(Load),
    EnsureChannelFirst(EnsureChannelFirst),
    ConvertLabels(ConvertLabels),
    Spacing(Spacing),
    Orientation(Orientation),
    RandSpatialCrop(RandSpatialCrop),
    RandFlip(RandFlip),
    NormalizeIntensity(NormalizeIntensity),
    RandScaleIntensity(RandScaleIntensity),
    RandShiftIntensity(RandShiftIntensity),
}

/// Every transform name the chain understands (YAML spelling).
pub const TRANSFORM_NAMES: &[&str] = &[
    "load",
    "ensure-channel-first",
    "convert-labels",
    "spacing",
    "orientation",
    "rand-spatial-crop",
    "rand-flip",
    "normalize-intensity",
    "rand-scale-intensity",
    "rand-shift-intensity",
];

impl TransformSpec {
    pub fn name(&self) -> &'static str {
        match self {
            TransformSpec::Load(t) => t.name(),
            TransformSpec::EnsureChannelFirst(t) => t.name(),
            TransformSpec::ConvertLabels(t) => t.name(),
            TransformSpec::Spacing(t) => t.name(),
            TransformSpec::Orientation(t) => t.name(),
            TransformSpec::RandSpatialCrop(t) => t.name(),
            TransformSpec::RandFlip(t) => t.name(),
            TransformSpec::NormalizeIntensity(t) => t.name(),
            TransformSpec::RandScaleIntensity(t) => t.name(),
            TransformSpec::RandShiftIntensity(t) => t.name(),
        }
    }

    pub fn is_random(&self) -> bool {
        matches!(
            self,
            TransformSpec::RandSpatialCrop(_)
                | TransformSpec::RandFlip(_)
                | TransformSpec::RandScaleIntensity(_)
                | TransformSpec::RandShiftIntensity(_)
        )
    }

    /// The spec a bare name stands for; transforms without sensible defaults say what they need.
    pub fn from_name(name: &str) -> Result<Self, String> {
        Ok(match name {
            "load" => TransformSpec::Load(Load::default()),
            "ensure-channel-first" => TransformSpec::EnsureChannelFirst(EnsureChannelFirst::default()),
            "convert-labels" => TransformSpec::ConvertLabels(ConvertLabels::default()),
            "orientation" => TransformSpec::Orientation(Orientation::default()),
            "normalize-intensity" => TransformSpec::NormalizeIntensity(NormalizeIntensity::default()),
            "rand-flip" => TransformSpec::RandFlip(RandFlip::default()),
            "spacing" => return Err("`spacing` needs parameters, e.g. `spacing: { pixdim: [1.5, 1.5, 2.0] }`".into()),
            "rand-spatial-crop" => return Err("`rand-spatial-crop` needs parameters, e.g. `rand-spatial-crop: { roi: [128, 128, 64] }`".into()),
            "rand-scale-intensity" => return Err("`rand-scale-intensity` needs parameters, e.g. `{ factors: 0.1, prob: 0.5 }`".into()),
            "rand-shift-intensity" => return Err("`rand-shift-intensity` needs parameters, e.g. `{ offsets: 0.1, prob: 0.5 }`".into()),
            other => return Err(format!("unknown transform `{other}`; expected one of {}", TRANSFORM_NAMES.join(", "))),
        })
    }

    /// Parameter checks that need no data (ranges, probabilities, axis codes).
    pub fn validate(&self) -> Result<(), InvalidField> {
        match self {
            TransformSpec::Spacing(s) => s.validate(),
            TransformSpec::Orientation(o) => o.validate(),
            TransformSpec::RandSpatialCrop(c) => c.validate(),
            TransformSpec::RandFlip(f) => f.validate(),
            TransformSpec::RandScaleIntensity(s) => s.validate(),
            TransformSpec::RandShiftIntensity(s) => s.validate(),
            _ => Ok(()),
        }
    }

    /// Applies a deterministic transform (`load` excepted: it needs a [`CaseSource`]).
    pub fn apply(&self, case: Case) -> Result<Case, ImagingError> {
        match self {
            TransformSpec::Load(_) => Err(ImagingError::Transform {
                case: case.id,
                transform: "load",
                reason: "`load` must be the first transform of a chain".into(),
            }),
            TransformSpec::EnsureChannelFirst(t) => t.apply(case),
            TransformSpec::ConvertLabels(t) => t.apply(case),
            TransformSpec::Spacing(t) => t.apply(case),
            TransformSpec::Orientation(t) => t.apply(case),
            TransformSpec::NormalizeIntensity(t) => t.apply(case),
            random => Err(ImagingError::Transform {
                case: case.id,
                transform: random.name(),
                reason:
                    "random transform applied without a random stream (use Chain::apply_suffix)"
                        .into(),
            }),
        }
    }

    /// Draws this random transform's parameters for `case` (None for a deterministic transform).
    pub fn draw(&self, case: &Case, rng: &mut Rng) -> Option<Drawn> {
        match self {
            TransformSpec::RandSpatialCrop(t) => Some(t.draw(case.image.spatial(), rng)),
            TransformSpec::RandFlip(t) => Some(t.draw(rng)),
            TransformSpec::RandScaleIntensity(t) => Some(t.draw(rng)),
            TransformSpec::RandShiftIntensity(t) => Some(t.draw(rng)),
            _ => None,
        }
    }

    /// Applies a random transform with given draws (replay), or a deterministic one as usual.
    pub fn apply_drawn(&self, case: Case, drawn: Option<&Drawn>) -> Result<Case, ImagingError> {
        let mismatch = |case: Case, t: &'static str| {
            Err(ImagingError::Transform {
                case: case.id,
                transform: t,
                reason: format!("recorded draw {drawn:?} does not belong to this transform"),
            })
        };
        match (self, drawn) {
            (TransformSpec::RandSpatialCrop(t), Some(Drawn::Crop { start, size })) => {
                t.apply_drawn(case, *start, *size)
            }
            (TransformSpec::RandFlip(t), Some(Drawn::Flip { flipped })) => {
                t.apply_drawn(case, *flipped)
            }
            (TransformSpec::RandScaleIntensity(t), Some(Drawn::ScaleIntensity { factor })) => {
                t.apply_drawn(case, *factor)
            }
            (TransformSpec::RandShiftIntensity(t), Some(Drawn::ShiftIntensity { offset })) => {
                t.apply_drawn(case, *offset)
            }
            (t, _) if t.is_random() => mismatch(case, t.name()),
            (t, _) => t.apply(case),
        }
    }
}

/// Parses either `"name"` or `{ name: { params } }` (DESIGN.md's list items), from any self-describing
/// format (serde_json::Value, YAML).
impl<'de> Deserialize<'de> for TransformSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SpecVisitor { validate: true })
    }
}

/// A spec as written, its field values not yet checked ([`item::parse_item`] checks them, each at
/// its field).
pub(crate) struct Unchecked(pub TransformSpec);

impl<'de> Deserialize<'de> for Unchecked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SpecVisitor { validate: false })
            .map(Unchecked)
    }
}

struct SpecVisitor {
    validate: bool,
}

fn params<'de, A: MapAccess<'de>, T: Deserialize<'de> + Default>(
    map: &mut A,
) -> Result<T, A::Error> {
    Ok(map.next_value::<Option<T>>()?.unwrap_or_default())
}

fn required<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
    name: &str,
) -> Result<T, A::Error> {
    map.next_value::<Option<T>>()?
        .ok_or_else(|| de::Error::custom(format!("`{name}` needs parameters")))
}

impl<'de> Visitor<'de> for SpecVisitor {
    type Value = TransformSpec;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a transform name or a one-key map `name: { params }`")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        TransformSpec::from_name(s).map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let key: String = map
            .next_key()?
            .ok_or_else(|| de::Error::custom("empty map: expected one transform name as key"))?;
        let spec = match key.as_str() {
            "load" => TransformSpec::Load(params(&mut map)?),
            "ensure-channel-first" => TransformSpec::EnsureChannelFirst(params(&mut map)?),
            "convert-labels" => TransformSpec::ConvertLabels(params(&mut map)?),
            "spacing" => TransformSpec::Spacing(required(&mut map, "spacing")?),
            "orientation" => TransformSpec::Orientation(params(&mut map)?),
            "rand-spatial-crop" => {
                TransformSpec::RandSpatialCrop(required(&mut map, "rand-spatial-crop")?)
            }
            "rand-flip" => TransformSpec::RandFlip(params(&mut map)?),
            "normalize-intensity" => TransformSpec::NormalizeIntensity(params(&mut map)?),
            "rand-scale-intensity" => {
                TransformSpec::RandScaleIntensity(required(&mut map, "rand-scale-intensity")?)
            }
            "rand-shift-intensity" => {
                TransformSpec::RandShiftIntensity(required(&mut map, "rand-shift-intensity")?)
            }
            other => return Err(de::Error::unknown_variant(other, TRANSFORM_NAMES)),
        };
        if map.next_key::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format!(
                "transform `{key}`: a list item must be a map with exactly one key"
            )));
        }
        if self.validate {
            spec.validate().map_err(de::Error::custom)?;
        }
        Ok(spec)
    }
}

/// A validated chain: `load` (if any) first, split at the first random transform.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    specs: Vec<TransformSpec>,
    split: usize,
}

impl Chain {
    pub fn new(specs: Vec<TransformSpec>) -> Result<Self, ImagingError> {
        for (i, s) in specs.iter().enumerate() {
            s.validate().map_err(|reason| ImagingError::Chain {
                reason: format!("transform {} (`{}`): {reason}", i + 1, s.name()),
            })?;
            if matches!(s, TransformSpec::Load(_)) && i != 0 {
                return Err(ImagingError::Chain {
                    reason: format!("`load` is transform {} but must be the first", i + 1),
                });
            }
        }
        let split = specs
            .iter()
            .position(|s| s.is_random())
            .unwrap_or(specs.len());
        Ok(Chain { specs, split })
    }

    /// Parses the DESIGN.md list shape from JSON (the YAML layer converts to the same value).
    pub fn from_json(v: &serde_json::Value) -> Result<Self, ImagingError> {
        let specs: Vec<TransformSpec> =
            serde_json::from_value(v.clone()).map_err(|e| ImagingError::Chain {
                reason: e.to_string(),
            })?;
        Chain::new(specs)
    }

    /// A chain as a workflow writes it (a `sharded-transform` step, `wf transform`): the list of
    /// transforms (as JSON) and the step's label convention, which applies to every
    /// `convert-labels` that does not name its own. The chain must start with `load`.
    pub fn build(transforms: &serde_json::Value, labels: &str) -> Result<Self, String> {
        let convention: LabelConvention =
            serde_json::from_value(serde_json::Value::String(labels.to_string()))
                .map_err(|e| format!("labels: {e}"))?;
        let items = transforms.as_array().ok_or("`transforms` must be a list")?;
        let mut specs = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let mut spec = parse_item(item).map_err(|errors| {
                let all: Vec<String> = errors.iter().map(ItemError::to_string).collect();
                format!("transforms[{i}]: {}", all.join("; "))
            })?;
            let explicit = item
                .get("convert-labels")
                .and_then(|v| v.get("labels"))
                .is_some();
            if let (TransformSpec::ConvertLabels(c), false) = (&mut spec, explicit) {
                c.labels = convention;
            }
            specs.push(spec);
        }
        if !matches!(specs.first(), Some(TransformSpec::Load(_))) {
            return Err("the chain must start with `load`".into());
        }
        Chain::new(specs).map_err(|e| e.to_string())
    }

    pub fn specs(&self) -> &[TransformSpec] {
        &self.specs
    }
    /// Deterministic transforms before the first random one: computed once per case and cached.
    pub fn prefix(&self) -> &[TransformSpec] {
        &self.specs[..self.split]
    }
    /// From the first random transform on: materialized per copy or applied online by the loader.
    pub fn suffix(&self) -> &[TransformSpec] {
        &self.specs[self.split..]
    }

    /// The spatial shape of a volume of `shape` with `affine` after each transform of the chain,
    /// from the transforms' params alone, no voxels read: `spacing` and `orientation` regrid it as
    /// they would the data, `rand-spatial-crop` takes its `roi` bounded by the volume (where the
    /// window lands changes no size). What a step can know of its samples before it reads a case.
    pub fn spatial_shapes(
        &self,
        shape: [usize; 3],
        affine: &Affine,
    ) -> Result<Vec<[usize; 3]>, String> {
        let (mut shape, mut affine) = (shape, *affine);
        let mut out = Vec::with_capacity(self.specs.len());
        for s in &self.specs {
            match s {
                TransformSpec::Spacing(t) => {
                    let p = t.plan(&affine, shape)?;
                    (shape, affine) = (p.out_shape, p.out_affine);
                }
                TransformSpec::Orientation(t) => (shape, affine) = t.plan(&affine, shape)?,
                TransformSpec::RandSpatialCrop(t) => {
                    shape = [0, 1, 2].map(|a| t.roi[a].min(shape[a]));
                }
                _ => {}
            }
            out.push(shape);
        }
        Ok(out)
    }

    /// Runs the prefix from files; the prefix must start with `load`.
    pub fn run_prefix(&self, src: &CaseSource) -> Result<Case, ImagingError> {
        let Some(TransformSpec::Load(load)) = self.specs.first() else {
            return Err(ImagingError::Chain {
                reason: format!(
                    "case {}: the chain must start with `load` to read files",
                    src.id
                ),
            });
        };
        let case = load.load(src)?;
        self.apply_prefix_from(case, 1)
    }

    /// One case end to end (what `wf transform` does): prefix from files, then the suffix on `rng`.
    pub fn run(
        &self,
        src: &CaseSource,
        rng: &mut Rng,
    ) -> Result<(Case, DrawnParams), ImagingError> {
        let case = self.run_prefix(src)?;
        self.apply_suffix(case, rng)
    }

    /// Runs the prefix on an in-memory case (`load`, if present, is skipped: the case is loaded).
    pub fn apply_prefix(&self, case: Case) -> Result<Case, ImagingError> {
        let start = usize::from(matches!(self.specs.first(), Some(TransformSpec::Load(_))));
        self.apply_prefix_from(case, start)
    }

    /// The prefix's output is always C order, whatever the transforms were.
    fn apply_prefix_from(&self, mut case: Case, start: usize) -> Result<Case, ImagingError> {
        for s in &self.specs[start.min(self.split)..self.split] {
            case = s.apply(case)?;
        }
        case.to_c_order();
        Ok(case)
    }

    /// Draws and applies the random suffix; the draws come back for provenance and replay.
    pub fn apply_suffix(
        &self,
        mut case: Case,
        rng: &mut Rng,
    ) -> Result<(Case, DrawnParams), ImagingError> {
        let mut drawn = DrawnParams::default();
        for s in self.suffix() {
            match s.draw(&case, rng) {
                Some(d) => {
                    case = s.apply_drawn(case, Some(&d))?;
                    drawn.draws.push(d);
                }
                None => case = s.apply(case)?,
            }
        }
        Ok((case, drawn))
    }

    /// Applies the suffix with recorded draws instead of a random stream.
    pub fn replay_suffix(&self, mut case: Case, drawn: &DrawnParams) -> Result<Case, ImagingError> {
        let mut draws = drawn.draws.iter();
        for s in self.suffix() {
            if s.is_random() {
                let d = draws.next().ok_or_else(|| ImagingError::Transform {
                    case: case.id.clone(),
                    transform: s.name(),
                    reason: "no recorded draw left for this random transform".into(),
                })?;
                case = s.apply_drawn(case, Some(d))?;
            } else {
                case = s.apply(case)?;
            }
        }
        Ok(case)
    }
}

/// Writes a case as NIfTI-1 (gzip when the name ends in .gz): the image as float32 `(X, Y, Z[, C])`
/// (3D when it has one channel), the label as uint8 — region bits after `convert-labels`, raw values
/// before (which must then be integers in 0..=255).
pub fn write_case(
    case: &Case,
    image: &std::path::Path,
    label: Option<&std::path::Path>,
) -> Result<(), ImagingError> {
    use crate::nifti::{NiftiData, write_nifti};
    let mut c = case.clone();
    c.to_c_order();
    let sp = c.image.spatial();
    let ch = c.image.channels();
    let data = load::c_to_fortran(&c.image.data, sp, ch);
    let dims: Vec<usize> = if ch == 1 {
        sp.to_vec()
    } else {
        vec![sp[0], sp[1], sp[2], ch]
    };
    write_nifti(image, &dims, NiftiData::F32(&data), &c.affine)?;
    if let (Some(path), Some(l)) = (label, c.label.as_ref()) {
        let bytes: Vec<u8> = match &l.data {
            LabelData::Regions(r) => r.clone(),
            LabelData::Raw(r) => r
                .iter()
                .map(|&v| {
                    if v.fract() == 0.0 && (0.0..=255.0).contains(&v) {
                        Ok(v as u8)
                    } else {
                        Err(ImagingError::LabelValue {
                            case: c.id.clone(),
                            value: v,
                            convention: "uint8 output",
                            allowed: "integers 0..=255",
                        })
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        write_nifti(
            path,
            &l.shape,
            NiftiData::U8(&load::c_to_fortran(&bytes, l.shape, 1)),
            &c.affine,
        )?;
    }
    Ok(())
}

/// Checks chain order, and puts the case in C order for transforms that index it directly.
pub(crate) fn require_channel_first(
    case: &mut Case,
    transform: &'static str,
) -> Result<(), ImagingError> {
    if case.channel_first {
        if transform != "spacing" {
            case.to_c_order();
        }
        Ok(())
    } else {
        Err(ImagingError::Transform {
            case: case.id.clone(),
            transform,
            reason:
                "image is not channel-first yet; put `ensure-channel-first` earlier in the chain"
                    .into(),
        })
    }
}

/// A float range drawn from: a number `f` means `[-f, f]` (MONAI), a pair means itself.
/// Serializes as `[lo, hi]`, which parses back to the same range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub lo: f64,
    pub hi: f64,
}

impl Serialize for Range {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        [self.lo, self.hi].serialize(s)
    }
}

impl<'de> Deserialize<'de> for Range {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(f64),
            Two([f64; 2]),
        }
        let (lo, hi) = match Raw::deserialize(d)? {
            Raw::One(f) => (-f.abs(), f.abs()),
            Raw::Two([a, b]) => (a.min(b), a.max(b)),
        };
        if !lo.is_finite() || !hi.is_finite() {
            return Err(de::Error::custom("range bounds must be finite"));
        }
        Ok(Range { lo, hi })
    }
}

pub(crate) fn check_prob(prob: f64) -> Result<(), InvalidField> {
    if (0.0..=1.0).contains(&prob) {
        Ok(())
    } else {
        Err(InvalidField::new(
            "prob",
            format!("prob {prob} is outside [0, 1]"),
        ))
    }
}

/// A field value a transform cannot use: which field, and why (the reason names the field).
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidField {
    pub field: &'static str,
    pub reason: String,
}

impl InvalidField {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        InvalidField {
            field,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for InvalidField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

#[cfg(test)]
pub(crate) mod npy;
#[cfg(test)]
mod parity;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_md_chain_parses_and_splits() {
        let v = serde_json::json!([
            "load",
            "ensure-channel-first",
            "convert-labels",
            {"spacing": {"pixdim": [1.5, 1.5, 2.0], "mode": ["bilinear", "nearest"]}},
            {"orientation": {"axcodes": "RAS"}},
            {"rand-spatial-crop": {"roi": [128, 128, 64]}},
            {"rand-flip": {"prob": 0.5, "axis": 0}},
            {"normalize-intensity": {"nonzero": true, "channel_wise": true}},
            {"rand-scale-intensity": {"factors": 0.1, "prob": 0.5}},
            {"rand-shift-intensity": {"offsets": 0.1, "prob": 0.5}}
        ]);
        let chain = Chain::from_json(&v).unwrap();
        let names: Vec<_> = chain.prefix().iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "load",
                "ensure-channel-first",
                "convert-labels",
                "spacing",
                "orientation"
            ]
        );
        assert_eq!(chain.suffix().len(), 5);
        assert_eq!(chain.suffix()[0].name(), "rand-spatial-crop");
        match &chain.specs()[2] {
            TransformSpec::ConvertLabels(c) => assert_eq!(c.labels, LabelConvention::Msd),
            other => panic!("{other:?}"),
        }
        match &chain.specs()[8] {
            TransformSpec::RandScaleIntensity(s) => {
                assert_eq!((s.factors.lo, s.factors.hi, s.prob), (-0.1, 0.1, 0.5))
            }
            other => panic!("{other:?}"),
        }
        // Serializing (e.g. for cache keys) and parsing back gives the same chain.
        let again = Chain::from_json(&serde_json::to_value(chain.specs()).unwrap()).unwrap();
        assert_eq!(again, chain);
    }

    fn seed_chain() -> Chain {
        Chain::from_json(&serde_json::json!([
            "load", "ensure-channel-first", {"convert-labels": {"labels": "msd"}},
            {"spacing": {"pixdim": [1.5, 1.5, 2.0]}}, "orientation",
            {"rand-spatial-crop": {"roi": [24, 24, 12]}}, {"rand-flip": {"prob": 0.5, "axis": 0}},
            {"normalize-intensity": {"nonzero": true, "channel_wise": true}},
            {"rand-scale-intensity": {"factors": 0.1, "prob": 0.5}},
            {"rand-shift-intensity": {"offsets": 0.1, "prob": 0.5}}
        ]))
        .unwrap()
    }

    /// Same (seed, case, copy) → bit-identical sample, wherever and in whatever order it is computed;
    /// replaying the recorded draws reproduces it; the loader path (prefix → sample file → suffix) agrees.
    #[test]
    fn suffix_is_deterministic_and_replayable() {
        use crate::testdata::monai_file;
        let src = CaseSource {
            id: "BRATS_001".into(),
            image: monai_file("inputs/synth_tiny/imagesTr/BRATS_001.nii.gz"),
            label: Some(monai_file("inputs/synth_tiny/labelsTr/BRATS_001.nii.gz")),
        };
        let chain = seed_chain();
        let prefix = chain.run_prefix(&src).unwrap();
        assert_eq!(prefix.image.layout, Layout::C);
        let run = |copy| {
            chain
                .apply_suffix(prefix.clone(), &mut Rng::for_sample(42, "BRATS_001", copy))
                .unwrap()
        };
        let (a, da) = run(3);
        let (b, db) = std::thread::scope(|sc| sc.spawn(|| run(3)).join().unwrap());
        assert_eq!((&a, &da), (&b, &db));
        assert_eq!(a.image.shape, [4, 24, 24, 12]);
        let replayed = chain.replay_suffix(prefix.clone(), &da).unwrap();
        assert_eq!(replayed, a);
        let copies: std::collections::HashSet<_> =
            (0..8).map(|c| format!("{:?}", run(c).1)).collect();
        assert!(copies.len() > 4, "copies draw differently");
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("prefix.rkyv");
        crate::sample::write_sample(
            &p,
            &crate::sample::Sample::from_case(
                &prefix,
                crate::sample::PREFIX_COPY,
                0,
                DrawnParams::default(),
            )
            .unwrap(),
        )
        .unwrap();
        let cached = crate::sample::SampleFile::open(&p).unwrap().to_case();
        let (c, dc) = chain
            .apply_suffix(cached, &mut Rng::for_sample(42, "BRATS_001", 3))
            .unwrap();
        assert_eq!((c, dc), (a, da));
    }

    #[test]
    fn spatial_shapes_follow_the_chain_without_data() {
        let identity = linalg::IDENTITY;
        let shapes = seed_chain()
            .spatial_shapes([96, 96, 64], &identity)
            .unwrap();
        // spacing 1.5 x 1.5 x 2 mm: 96 -> 64, 64 -> 32; the crop's roi, then sizes kept.
        assert_eq!(shapes[3], [64, 64, 32]);
        assert_eq!(shapes.last(), Some(&[24, 24, 12]));
        // A crop larger than the volume keeps the volume's size on that axis.
        let small = seed_chain()
            .spatial_shapes([30, 30, 16], &identity)
            .unwrap();
        assert_eq!(small.last(), Some(&[20, 20, 8]));
        // Orientation permutes the axes as it would the voxels.
        let lps_to_sar =
            Chain::from_json(&serde_json::json!(["load", {"orientation": {"axcodes": "SAR"}}]))
                .unwrap()
                .spatial_shapes([10, 20, 30], &identity)
                .unwrap();
        assert_eq!(lps_to_sar.last(), Some(&[30, 20, 10]));
    }

    #[test]
    fn write_case_roundtrips_through_load() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let case = Case {
            id: "w".into(),
            image: Image::new([2, 3, 4, 5], (0..120).map(|v| v as f32).collect()),
            label: Some(Label::new(
                [3, 4, 5],
                LabelData::Regions((0..60).map(|v| (v % 8) as u8).collect()),
            )),
            affine: [
                [1.5, 0.0, 0.0, 1.0],
                [0.0, 1.5, 0.0, 2.0],
                [0.0, 0.0, 2.0, 3.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
            channel_first: true,
        };
        let (i, l) = (dir.join("image.nii.gz"), dir.join("label.nii.gz"));
        write_case(&case, &i, Some(&l)).unwrap();
        let src = CaseSource {
            id: "w".into(),
            image: i,
            label: Some(l),
        };
        let mut back = Load::default().load(&src).unwrap();
        back.to_c_order();
        assert_eq!(back.image.data, case.image.data);
        assert_eq!(back.affine, case.affine);
        match (&back.label.unwrap().data, &case.label.unwrap().data) {
            (LabelData::Raw(a), LabelData::Regions(b)) => {
                assert!(a.iter().zip(b).all(|(x, y)| *x == *y as f32))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_specs_are_rejected_with_names() {
        for (v, needle) in [
            (serde_json::json!(["spacing"]), "needs parameters"),
            (serde_json::json!(["blur"]), "blur"),
            (
                serde_json::json!([{"spacing": {"pixdim": [1, 1, 1]}, "x": 1}]),
                "exactly one key",
            ),
            (
                serde_json::json!([{"spacing": {"pixdim": [1, 1, 1], "bogus": 1}}]),
                "bogus",
            ),
            (
                serde_json::json!([{"spacing": {"pixdim": [1, -1, 1]}}]),
                "pixdim",
            ),
            (serde_json::json!([{"rand-flip": {"prob": 2.0}}]), "prob"),
            (
                serde_json::json!([{"orientation": {"axcodes": "RRS"}}]),
                "axcodes",
            ),
            (
                serde_json::json!([{"convert-labels": {"labels": "kits"}}]),
                "kits",
            ),
            (serde_json::json!(["ensure-channel-first", "load"]), "first"),
        ] {
            let err = Chain::from_json(&v).expect_err(&v.to_string()).to_string();
            assert!(err.contains(needle), "{v}: {err}");
        }
    }
}
