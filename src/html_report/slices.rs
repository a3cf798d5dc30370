//! Pictures of a preprocessed sample, as MONAI's tutorials draw them with matplotlib: the axial,
//! coronal and sagittal mid-slices of each channel with the tumour regions overlaid (WT, TC, ET,
//! filled translucent and outlined), so a reader sees that orientation and labels came out right.
//!
//! Layout (the same for every sample, whatever its orientation): axial = the mid-plane of the third
//! array axis, the first axis to the right and the second up; coronal = the mid-plane of the second
//! axis, the first to the right and the third up; sagittal = the mid-plane of the first axis, the
//! second to the right and the third up. Each edge is labelled with the anatomical direction the
//! sample's affine gives it (RAS+ world: R/L, A/P, S/I), so data in RAS shows R right, A and S up.
//! Pixels are voxels scaled to their spacing (nearest neighbour); intensities are windowed per
//! channel between the 0.5th and 99.5th percentiles of its non-zero voxels.

use wf_imaging::sample::SampleFile;
use wf_imaging::transforms::{ET, TC, WT};

/// The longer side of a view, in pixels.
const VIEW_PIXELS: f64 = 192.0;
/// Opacity of a region's fill.
const FILL: f32 = 0.35;

/// Region bits with their colors, outermost first (the colors of the training plot's curves).
fn regions() -> [(u8, [u8; 3]); 3] {
    use wf_trainer::plot::{ET_COLOR, TC_COLOR, WT_COLOR};
    [
        (WT, [WT_COLOR.0, WT_COLOR.1, WT_COLOR.2]),
        (TC, [TC_COLOR.0, TC_COLOR.1, TC_COLOR.2]),
        (ET, [ET_COLOR.0, ET_COLOR.1, ET_COLOR.2]),
    ]
}

/// The CSS color of a region, for the legend beside the pictures.
pub fn region_css() -> [(&'static str, String); 3] {
    let [wt, tc, et] = regions();
    let css = |c: [u8; 3]| format!("rgb({}, {}, {})", c[0], c[1], c[2]);
    [("WT", css(wt.1)), ("TC", css(tc.1)), ("ET", css(et.1))]
}

/// One view of one channel.
pub struct View {
    pub name: &'static str,
    /// The array axis held fixed and the index it is held at.
    pub axis: usize,
    pub index: usize,
    pub png: Vec<u8>,
    /// Anatomical direction of the left, right, top and bottom edges.
    pub edges: [&'static str; 4],
}

pub struct Channel {
    pub name: String,
    pub views: Vec<View>,
}

/// Every picture of one sample file.
pub struct SamplePictures {
    pub case: String,
    pub copy: u32,
    /// `(C, X, Y, Z)`.
    pub shape: [usize; 4],
    /// Voxel spacing along the array axes, mm.
    pub spacing: [f64; 3],
    /// Voxels of WT, TC, ET in the whole sample; `None` without labels.
    pub region_voxels: Option<[usize; 3]>,
    pub channels: Vec<Channel>,
}

/// Draws `sample`; `names` names its channels (missing names read `channel N`). An inconsistent
/// sample (sizes that do not match its shape) is an error, not a panic.
pub fn render(sample: &SampleFile, names: &[String]) -> Result<SamplePictures, String> {
    let shape = sample.shape();
    let [c, x, y, z] = shape;
    let dims = [x, y, z];
    let voxels = x * y * z;
    if voxels == 0 || c == 0 {
        return Err(format!("empty sample of shape {shape:?}"));
    }
    let image = sample.image();
    if image.len() != c * voxels {
        return Err(format!("{} image values for shape {shape:?}", image.len()));
    }
    let labels = sample.labels();
    if !labels.is_empty() && labels.len() != voxels {
        return Err(format!("{} label voxels for shape {shape:?}", labels.len()));
    }
    let labels = (!labels.is_empty()).then_some(labels);
    let affine = sample.affine();
    let spacing: [f64; 3] = std::array::from_fn(|a| {
        let s = (0..3).map(|r| affine[r][a].powi(2)).sum::<f64>().sqrt();
        if s.is_finite() && s > 0.0 { s } else { 1.0 }
    });
    let region_voxels =
        labels.map(|l| regions().map(|(bit, _)| l.iter().filter(|&&v| v & bit != 0).count()));
    let mut channels = Vec::with_capacity(c);
    for ch in 0..c {
        let data = &image[ch * voxels..(ch + 1) * voxels];
        let window = window(data);
        let mut views = Vec::with_capacity(3);
        for (name, fixed, h, v) in [
            ("axial", 2, 0, 1),
            ("coronal", 1, 0, 2),
            ("sagittal", 0, 1, 2),
        ] {
            let index = dims[fixed] / 2;
            let (rgb, w, ht) = draw_view(data, labels, dims, spacing, (fixed, index), h, v, window);
            let png = wf_trainer::plot::encode_png(&rgb, (w, ht))?;
            views.push(View {
                name,
                axis: fixed,
                index,
                png,
                edges: [
                    direction(&affine, h, false),
                    direction(&affine, h, true),
                    direction(&affine, v, true),
                    direction(&affine, v, false),
                ],
            });
        }
        channels.push(Channel {
            name: names
                .get(ch)
                .cloned()
                .unwrap_or_else(|| format!("channel {ch}")),
            views,
        });
    }
    Ok(SamplePictures {
        case: sample.case_id().to_string(),
        copy: sample.copy(),
        shape,
        spacing,
        region_voxels,
        channels,
    })
}

/// The anatomical direction array axis `axis` points to (its end when `positive`), by the largest
/// component of its world direction in RAS+.
fn direction(affine: &wf_imaging::transforms::Affine, axis: usize, positive: bool) -> &'static str {
    let col = [affine[0][axis], affine[1][axis], affine[2][axis]];
    let Some((j, v)) = col
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite() && **v != 0.0)
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
    else {
        return "?";
    };
    let toward_plus = (*v > 0.0) == positive;
    match (j, toward_plus) {
        (0, true) => "R",
        (0, false) => "L",
        (1, true) => "A",
        (1, false) => "P",
        (2, true) => "S",
        _ => "I",
    }
}

/// (low, high) intensities shown black and white: the 0.5th and 99.5th percentiles of the
/// channel's non-zero finite voxels (all finite voxels when none is non-zero), from at most 2^18 of
/// them.
fn window(data: &[f32]) -> (f32, f32) {
    let stride = (data.len() / (1 << 18)).max(1);
    let pick = |nonzero: bool| -> Vec<f32> {
        data.iter()
            .step_by(stride)
            .copied()
            .filter(|v| v.is_finite() && (!nonzero || *v != 0.0))
            .collect()
    };
    let mut vals = pick(true);
    if vals.is_empty() {
        vals = pick(false);
    }
    if vals.is_empty() {
        return (0.0, 1.0);
    }
    let mut q = |p: f64| {
        let k = ((vals.len() - 1) as f64 * p).round() as usize;
        *vals.select_nth_unstable_by(k, f32::total_cmp).1
    };
    let (lo, hi) = (q(0.005), q(0.995));
    if hi > lo { (lo, hi) } else { (lo, lo + 1.0) }
}

/// One view: RGB pixels, width, height. `fixed` = (axis held, its index); `h` runs right, `v` up.
#[allow(clippy::too_many_arguments)]
fn draw_view(
    data: &[f32],
    labels: Option<&[u8]>,
    dims: [usize; 3],
    spacing: [f64; 3],
    fixed: (usize, usize),
    h: usize,
    v: usize,
    (lo, hi): (f32, f32),
) -> (Vec<u8>, u32, u32) {
    let (eh, ev) = (dims[h] as f64 * spacing[h], dims[v] as f64 * spacing[v]);
    let scale = VIEW_PIXELS / eh.max(ev);
    let w = ((eh * scale).round() as usize).clamp(1, 1024);
    let ht = ((ev * scale).round() as usize).clamp(1, 1024);
    let at = |px: usize, py: usize| -> usize {
        let mut idx = [0usize; 3];
        idx[fixed.0] = fixed.1;
        idx[h] = ((px * 2 + 1) * dims[h] / (2 * w)).min(dims[h] - 1);
        // Row 0 is the top: the highest index along `v`.
        idx[v] = (((ht - 1 - py) * 2 + 1) * dims[v] / (2 * ht)).min(dims[v] - 1);
        (idx[0] * dims[1] + idx[1]) * dims[2] + idx[2]
    };
    let mut bits = vec![0u8; w * ht];
    let mut rgb = vec![0u8; w * ht * 3];
    for py in 0..ht {
        for px in 0..w {
            let i = at(px, py);
            let g = data[i];
            let g = if g.is_finite() {
                ((g - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0
            } else {
                0.0
            };
            let p = (py * w + px) * 3;
            rgb[p..p + 3].fill(g.round() as u8);
            if let Some(l) = labels {
                bits[py * w + px] = l[i];
            }
        }
    }
    if labels.is_some() {
        for (bit, color) in regions() {
            for py in 0..ht {
                for px in 0..w {
                    if bits[py * w + px] & bit == 0 {
                        continue;
                    }
                    let outside = |dx: isize, dy: isize| {
                        let (nx, ny) = (px as isize + dx, py as isize + dy);
                        nx < 0
                            || ny < 0
                            || nx >= w as isize
                            || ny >= ht as isize
                            || bits[ny as usize * w + nx as usize] & bit == 0
                    };
                    let edge = outside(-1, 0) || outside(1, 0) || outside(0, -1) || outside(0, 1);
                    let p = (py * w + px) * 3;
                    for k in 0..3 {
                        rgb[p + k] = if edge {
                            color[k]
                        } else {
                            (rgb[p + k] as f32 * (1.0 - FILL) + color[k] as f32 * FILL).round()
                                as u8
                        };
                    }
                }
            }
        }
    }
    (rgb, w as u32, ht as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wf_imaging::sample::{SAMPLE_FORMAT_VERSION, Sample, write_sample};
    use wf_imaging::transforms::Affine;

    fn make(shape: [u32; 4], image: Vec<f32>, labels: Vec<u8>, affine: Affine) -> Sample {
        Sample {
            format_version: SAMPLE_FORMAT_VERSION,
            case_id: "BRATS_001".into(),
            copy: 0,
            seed: 0,
            shape,
            affine,
            image,
            labels,
            drawn: Default::default(),
        }
    }

    /// A 2-channel sample, 8x6x4 voxels of 2x1x1 mm in RAS, with a tumour near the +x, +y corner.
    fn sample(dir: &std::path::Path) -> SampleFile {
        let (x, y, z) = (8, 6, 4);
        let mut image = vec![0f32; 2 * x * y * z];
        let mut labels = vec![0u8; x * y * z];
        for i in 0..x {
            for j in 0..y {
                for k in 0..z {
                    let v = (i * y + j) * z + k;
                    image[v] = 1.0 + i as f32;
                    image[x * y * z + v] = 1.0 + j as f32;
                    if i >= 5 && j >= 3 {
                        labels[v] = WT | if i >= 6 { TC } else { 0 } | if i >= 7 { ET } else { 0 };
                    }
                }
            }
        }
        let s = make(
            [2, x as u32, y as u32, z as u32],
            image,
            labels,
            [
                [2.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        );
        let path = dir.join("s.wfs");
        write_sample(&path, &s).unwrap();
        SampleFile::open(&path).unwrap()
    }

    fn decode(png: &[u8]) -> (u32, u32, Vec<[u8; 3]>) {
        let mut r = png::Decoder::new(std::io::Cursor::new(png))
            .read_info()
            .unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        let px = buf[..info.buffer_size()]
            .chunks(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect();
        (info.width, info.height, px)
    }

    #[test]
    fn views_follow_the_layout_and_show_the_regions() {
        let dir = tempfile::tempdir().unwrap();
        let p = render(&sample(dir.path()), &["FLAIR".into()]).unwrap();
        assert_eq!(p.shape, [2, 8, 6, 4]);
        assert_eq!(p.spacing, [2.0, 1.0, 1.0]);
        assert_eq!(p.channels[0].name, "FLAIR");
        assert_eq!(p.channels[1].name, "channel 1");
        assert_eq!(p.region_voxels, Some([3 * 3 * 4, 2 * 3 * 4, 3 * 4]));
        let axial = &p.channels[0].views[0];
        assert_eq!((axial.name, axial.axis, axial.index), ("axial", 2, 2));
        assert_eq!(axial.edges, ["L", "R", "A", "P"]);
        assert_eq!(p.channels[0].views[1].edges, ["L", "R", "S", "I"]);
        assert_eq!(p.channels[0].views[2].edges, ["P", "A", "S", "I"]);
        // Axial: 16 mm wide, 6 mm high → 192 x 72 pixels.
        let (w, h, px) = decode(&axial.png);
        assert_eq!((w, h), (192, 72));
        // Channel 0 grows with x: darker left, brighter right (away from the tumour rows).
        let lum = |x: u32, y: u32| px[(y * w + x) as usize][0] as i32;
        assert!(
            lum(5, h - 5) < lum(w / 2, h - 5),
            "brightness follows +x to the right"
        );
        // The tumour (+x, +y) is at the top right, in the region colors; none at the bottom left.
        let colored = |x: u32, y: u32| {
            let c = px[(y * w + x) as usize];
            c[0] != c[1] || c[1] != c[2]
        };
        assert!(colored(w - 3, 3));
        assert!(!colored(3, h - 3));
        let [wt, tc, et] = regions().map(|r| r.1);
        assert!(px.contains(&wt) && px.contains(&tc) && px.contains(&et));
    }

    #[test]
    fn a_sample_without_labels_draws_plain_slices() {
        let dir = tempfile::tempdir().unwrap();
        let s = make(
            [1, 4, 4, 4],
            (0..64).map(|v| v as f32).collect(),
            vec![],
            [
                [-1.0, 0.0, 0.0, 0.0],
                [0.0, -1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        );
        let path = dir.path().join("s.wfs");
        write_sample(&path, &s).unwrap();
        let p = render(&SampleFile::open(&path).unwrap(), &[]).unwrap();
        assert_eq!(p.region_voxels, None);
        // LPS-like axes: the first points left, the second posterior.
        assert_eq!(p.channels[0].views[0].edges, ["R", "L", "P", "A"]);
        let (_, _, px) = decode(&p.channels[0].views[0].png);
        assert!(px.iter().all(|c| c[0] == c[1] && c[1] == c[2]), "gray only");
    }

    #[test]
    fn windowing_ignores_background_and_outliers() {
        let mut data = vec![0f32; 1000];
        for (i, v) in data.iter_mut().enumerate().skip(500) {
            *v = i as f32;
        }
        data[999] = 1e9;
        let (lo, hi) = window(&data);
        assert!(
            (500.0..510.0).contains(&lo) && (990.0..1000.0).contains(&hi),
            "{lo} {hi}"
        );
        assert_eq!(window(&[0.0; 4]), (0.0, 1.0));
        assert_eq!(window(&[f32::NAN; 4]), (0.0, 1.0));
    }
}
