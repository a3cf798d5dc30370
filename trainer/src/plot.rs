//! `plot.png`: training loss and validation Dice (TC, WT, ET, mean) per epoch, redrawn after each
//! epoch from the metrics so far. Ticks fall on whole epochs (every 1, 2, 5, 10, ... epochs, at most
//! ten), each panel's legend stands beside its data, and the best epoch (the highest validation mean
//! Dice, the earliest of equals: the one export publishes) is marked with a dashed line in both
//! panels and a ring on the mean curve. plotters without its default features (which want
//! fontconfig and freetype): bitmap backend, and text from an embedded DejaVu Sans subset
//! (`assets/DejaVuSans-subset.ttf`, license beside it), so it renders on a bare machine; the pixels
//! are encoded with `png`, so the same metrics give the same bytes.

use crate::error::{Result, TrainerError};
use crate::train::EpochMetrics;
use plotters::coord::combinators::WithKeyPoints;
use plotters::coord::types::{RangedCoordf64, RangedCoordi32};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use std::path::Path;
use std::sync::OnceLock;

/// Printable ASCII plus ° · – — − of DejaVu Sans (25 KB).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");

/// Image size in pixels.
pub const SIZE: (u32, u32) = (1200, 480);

/// Width of the legend column right of each panel's data.
const LEGEND_WIDTH: u32 = 150;

/// The series colors (also the colors `wf report` overlays the regions in).
pub const LOSS_COLOR: RGBColor = RGBColor(90, 60, 160);
pub const TC_COLOR: RGBColor = RGBColor(214, 39, 40);
pub const WT_COLOR: RGBColor = RGBColor(44, 160, 44);
pub const ET_COLOR: RGBColor = RGBColor(31, 119, 180);
/// The best-epoch marker.
pub const BEST_COLOR: RGBColor = RGBColor(255, 127, 14);

fn font_ready() -> std::result::Result<(), String> {
    static READY: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            register_font("sans-serif", FontStyle::Normal, FONT)
                .map_err(|_| "the embedded font does not parse".to_string())
        })
        .clone()
}

fn failed(path: &Path, e: impl std::fmt::Display) -> TrainerError {
    TrainerError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("plot: {e}")),
    }
}

/// Draws `metrics` (one point per epoch; missing or non-finite values are left out) into the PNG at
/// `path`, replacing it atomically (a temporary file beside it, then a rename).
pub fn write_plot(metrics: &[EpochMetrics], path: &Path) -> Result<()> {
    let bytes = plot_png(metrics).map_err(|e| failed(path, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plot.png".into());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            failed(path, e)
        })
}

/// The picture `plot.png` holds, as PNG bytes ([`SIZE`], 8-bit RGB).
pub fn plot_png(metrics: &[EpochMetrics]) -> std::result::Result<Vec<u8>, String> {
    font_ready()?;
    let mut rgb = vec![255u8; SIZE.0 as usize * SIZE.1 as usize * 3];
    draw(metrics, &mut rgb).map_err(|e| e.to_string())?;
    encode_png(&rgb, SIZE)
}

/// 8-bit RGB pixels (row-major, `w * h * 3` bytes) as PNG bytes.
pub fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> std::result::Result<Vec<u8>, String> {
    if rgb.len() != w as usize * h as usize * 3 {
        return Err(format!("{} bytes are not {w}x{h} RGB pixels", rgb.len()));
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Tick positions on the epoch axis: whole epochs from 1 to `last`, every 1, 2, 5, 10, 20, 50, ...
/// epochs, so that there are at most ten and no label repeats.
pub fn epoch_ticks(last: usize) -> Vec<usize> {
    let last = last.max(1);
    let mut step = 1;
    'find: for scale in [1usize, 10, 100, 1_000, 10_000, 100_000] {
        for m in [1, 2, 5] {
            step = m * scale;
            if last / step <= 10 {
                break 'find;
            }
        }
    }
    if step == 1 {
        return (1..=last).collect();
    }
    (1..=last / step).map(|i| i * step).collect()
}

/// The epoch export publishes: the highest finite validation mean Dice, the earliest of equals.
pub fn best_epoch(metrics: &[EpochMetrics]) -> Option<(usize, f32)> {
    metrics
        .iter()
        .filter_map(|m| {
            m.val_mean_dice
                .filter(|d| d.is_finite())
                .map(|d| (m.epoch, d))
        })
        .fold(None, |best, (e, d)| match best {
            Some((_, bd)) if bd >= d => best,
            _ => Some((e, d)),
        })
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// One plotted value of an epoch's metrics.
type Metric = dyn Fn(&EpochMetrics) -> Option<f32>;

/// How a legend entry's swatch is drawn.
#[derive(Clone, Copy)]
enum Swatch {
    /// A line with a dot, as the series.
    Line(RGBColor),
    /// A dashed line, as the best-epoch marker.
    Dashed(RGBColor),
    /// None: the text continues the entry above.
    Continued,
}

fn draw(metrics: &[EpochMetrics], rgb: &mut [u8]) -> DrawResult {
    let root = BitMapBackend::with_buffer(rgb, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let last = metrics.iter().map(|m| m.epoch).max().unwrap_or(1).max(1);
    let ticks: Vec<i32> = epoch_ticks(last).into_iter().map(|t| t as i32).collect();
    // An epoch's room on either side of the data: epochs 1..=last lie inside.
    let xs = || (0..last as i32 + 1).with_key_points(ticks.clone());
    let best = best_epoch(metrics);
    let best_entries: Vec<(String, Swatch)> = match best {
        Some((e, d)) => vec![
            (format!("best: epoch {e}"), Swatch::Dashed(BEST_COLOR)),
            (format!("mean Dice {d:.4}"), Swatch::Continued),
        ],
        None => Vec::new(),
    };

    let points = |f: &Metric| -> Vec<(i32, f64)> {
        metrics
            .iter()
            .filter_map(|m| {
                f(m).filter(|v| v.is_finite())
                    .map(|v| (m.epoch as i32, v as f64))
            })
            .collect()
    };

    let loss = points(&|m| Some(m.train_loss));
    let top = loss.iter().map(|p| p.1).fold(0.0, f64::max);
    let top = if top > 0.0 { top * 1.1 } else { 1.0 };
    let (data, legend) = left.split_horizontally(SIZE.0 / 2 - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&data)
        .caption("training loss", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(xs(), 0.0..top)?;
    mesh(&mut chart, "loss")?;
    if let Some((e, _)) = best {
        marker(&mut chart, e as i32, top)?;
    }
    series(&mut chart, &loss, LOSS_COLOR)?;
    let mut entries = vec![("train loss".to_string(), Swatch::Line(LOSS_COLOR))];
    entries.extend(best_entries.clone());
    draw_legend(&legend, &entries)?;

    let (data, legend) = right.split_horizontally(SIZE.0 / 2 - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&data)
        .caption("validation Dice", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(xs(), 0.0..1.0)?;
    mesh(&mut chart, "Dice")?;
    let dice: [(&str, RGBColor, &Metric); 4] = [
        ("TC", TC_COLOR, &|m| m.val_dice_tc),
        ("WT", WT_COLOR, &|m| m.val_dice_wt),
        ("ET", ET_COLOR, &|m| m.val_dice_et),
        ("mean", BLACK, &|m| m.val_mean_dice),
    ];
    if let Some((e, _)) = best {
        marker(&mut chart, e as i32, 1.0)?;
    }
    let mut entries = Vec::new();
    for (label, color, f) in dice {
        series(&mut chart, &points(f), color)?;
        entries.push((label.to_string(), Swatch::Line(color)));
    }
    if let Some((e, d)) = best {
        chart.draw_series(std::iter::once(Circle::new(
            (e as i32, d as f64),
            8,
            BEST_COLOR.stroke_width(3),
        )))?;
    }
    entries.extend(best_entries);
    draw_legend(&legend, &entries)?;
    root.present()?;
    Ok(())
}

/// Whole-epoch ticks on x, values on y.
type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<WithKeyPoints<RangedCoordi32>, RangedCoordf64>>;

fn mesh(chart: &mut Chart<'_, '_>, y: &str) -> DrawResult {
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(RGBColor(244, 244, 244))
        .draw()?;
    Ok(())
}

/// A line with a dot per epoch (so a single epoch shows too).
fn series(chart: &mut Chart<'_, '_>, points: &[(i32, f64)], color: RGBColor) -> DrawResult {
    chart.draw_series(LineSeries::new(
        points.iter().copied(),
        color.stroke_width(2),
    ))?;
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    Ok(())
}

/// The dashed vertical line at the best epoch.
fn marker(chart: &mut Chart<'_, '_>, epoch: i32, top: f64) -> DrawResult {
    chart.draw_series(DashedLineSeries::new(
        [(epoch, 0.0), (epoch, top)],
        6,
        5,
        BEST_COLOR.stroke_width(2),
    ))?;
    Ok(())
}

/// The legend in its own column: a swatch and a label per entry, top-aligned with the data.
fn draw_legend(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    entries: &[(String, Swatch)],
) -> DrawResult {
    let font = ("sans-serif", 14).into_font().color(&BLACK);
    let mut y = 60;
    for (label, swatch) in entries {
        match swatch {
            Swatch::Line(c) => {
                area.draw(&PathElement::new(vec![(4, y), (24, y)], c.stroke_width(2)))?;
                area.draw(&Circle::new((14, y), 3, c.filled()))?;
            }
            Swatch::Dashed(c) => {
                for x in [4, 16] {
                    area.draw(&PathElement::new(
                        vec![(x, y), (x + 7, y)],
                        c.stroke_width(2),
                    ))?;
                }
            }
            Swatch::Continued => y -= 6,
        }
        area.draw(&Text::new(label.clone(), (30, y - 8), font.clone()))?;
        y += 24;
    }
    Ok(())
}

/// The evaluate step's `boxplot.png` size in pixels.
pub const BOXPLOT_SIZE: (u32, u32) = (900, 420);

/// Quartiles with numpy's default (linear) interpolation of sorted `v` (not empty).
fn quantile(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// The evaluate step's box plot: Dice (left) and HD95 in mm (right), one box per region over the
/// cases with a finite value (quartiles, median, whiskers to the furthest value within 1.5 IQR as
/// matplotlib draws them), every case a dot. A region with no finite value has no box.
pub fn boxplot_png(report: &crate::evaluation::EvalReport) -> std::result::Result<Vec<u8>, String> {
    font_ready()?;
    let mut rgb = vec![255u8; BOXPLOT_SIZE.0 as usize * BOXPLOT_SIZE.1 as usize * 3];
    draw_boxes(report, &mut rgb).map_err(|e| e.to_string())?;
    encode_png(&rgb, BOXPLOT_SIZE)
}

fn region_color(name: &str) -> RGBColor {
    match name {
        "TC" => TC_COLOR,
        "WT" => WT_COLOR,
        "ET" => ET_COLOR,
        _ => BLACK,
    }
}

fn draw_boxes(report: &crate::evaluation::EvalReport, rgb: &mut [u8]) -> DrawResult {
    let root = BitMapBackend::with_buffer(rgb, BOXPLOT_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let names: Vec<String> = report.summary.iter().map(|s| s.region.clone()).collect();
    let values = |name: &str, f: &dyn Fn(&crate::evaluation::RegionResult) -> Option<f64>| {
        let mut v: Vec<f64> = report
            .cases
            .iter()
            .filter_map(|c| c.regions.iter().find(|r| r.region == name).and_then(f))
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let dice: Vec<Vec<f64>> = names.iter().map(|n| values(n, &|r| r.dice)).collect();
    let hd: Vec<Vec<f64>> = names.iter().map(|n| values(n, &|r| r.hd95_mm)).collect();
    let hd_top = hd.iter().flatten().copied().fold(0.0, f64::max);
    let hd_top = if hd_top > 0.0 { hd_top * 1.1 } else { 1.0 };
    let n = names.len().max(1) as f64;
    let (left, right) = root.split_horizontally(BOXPLOT_SIZE.0 / 2);
    for (area, title, y, data, top) in [
        (&left, "Dice per case", "Dice", &dice, 1.0),
        (&right, "HD95 per case", "HD95 (mm)", &hd, hd_top),
    ] {
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{title} ({} cases)", report.cases.len()),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..n, 0.0..top)?;
        let labels = names.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(names.len() * 2 + 1)
            .x_label_formatter(&move |x: &f64| {
                let i = (x - 0.5).round();
                if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(y)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(244, 244, 244))
            .draw()?;
        for (i, (name, v)) in names.iter().zip(data.iter()).enumerate() {
            let color = region_color(name);
            let x = i as f64 + 0.5;
            if !v.is_empty() {
                let (q1, med, q3) = (quantile(v, 0.25), quantile(v, 0.5), quantile(v, 0.75));
                let iqr = q3 - q1;
                // Whiskers end at the furthest value within 1.5 IQR, never inside the box.
                let lo = v
                    .iter()
                    .copied()
                    .find(|&a| a >= q1 - 1.5 * iqr)
                    .unwrap_or(q1)
                    .min(q1);
                let hi = v
                    .iter()
                    .rev()
                    .copied()
                    .find(|&a| a <= q3 + 1.5 * iqr)
                    .unwrap_or(q3)
                    .max(q3);
                let w = 0.22;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x - w, q1), (x + w, q3)],
                    color.mix(0.25).filled(),
                )))?;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x - w, q1), (x + w, q3)],
                    color.stroke_width(2),
                )))?;
                for seg in [
                    [(x - w, med), (x + w, med)],
                    [(x, q3), (x, hi)],
                    [(x, q1), (x, lo)],
                    [(x - w / 2.0, hi), (x + w / 2.0, hi)],
                    [(x - w / 2.0, lo), (x + w / 2.0, lo)],
                ] {
                    chart.draw_series(std::iter::once(PathElement::new(
                        seg.to_vec(),
                        color.stroke_width(2),
                    )))?;
                }
            }
            // Every case, spread a little sideways so equal values stay visible.
            let k = v.len().max(1) as f64;
            chart.draw_series(v.iter().enumerate().map(|(j, &a)| {
                let dx = if v.len() > 1 {
                    (j as f64 / (k - 1.0) - 0.5) * 0.3
                } else {
                    0.0
                };
                Circle::new((x + dx, a), 3, BLACK.filled())
            }))?;
        }
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(e: usize, loss: f32, dice: Option<[f32; 3]>) -> EpochMetrics {
        EpochMetrics {
            epoch: e,
            train_loss: loss,
            train_steps: 4,
            train_samples: 8,
            val_dice_per_channel: dice.map(|d| d.to_vec()).unwrap_or_default(),
            val_dice_tc: dice.map(|d| d[0]),
            val_dice_wt: dice.map(|d| d[1]),
            val_dice_et: dice.map(|d| d[2]),
            val_mean_dice: dice.map(|d| (d[0] + d[1] + d[2]) / 3.0),
            val_samples: 2,
            lr: 1e-4,
            val_dice_per_case: Vec::new(),
        }
    }

    /// (width, height, RGB pixels) of a PNG.
    fn decode(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        let px = buf[..info.buffer_size()]
            .chunks(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect();
        (info.width, info.height, px)
    }

    fn six_epochs() -> Vec<EpochMetrics> {
        (1..=6)
            .map(|e| {
                let t = e as f32 / 6.0;
                // Dice peaks at epoch 5, so the best epoch is not the last.
                let dice = (e > 1).then_some(if e == 5 {
                    [0.8, 0.9, 0.7]
                } else {
                    [0.3 + 0.4 * t, 0.5 + 0.3 * t, 0.1 + 0.4 * t]
                });
                epoch(e, 0.9 - 0.5 * t, dice)
            })
            .collect()
    }

    #[test]
    fn plot_decodes_and_shows_every_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.png");
        let metrics = six_epochs();
        write_plot(&metrics, &path).unwrap();
        let (w, h, px) = decode(&path);
        assert_eq!((w, h), SIZE);
        let count = |c: RGBColor| px.iter().filter(|p| **p == [c.0, c.1, c.2]).count();
        // Lines, dots and legend marks of each series, in their colors.
        for (name, c) in [
            ("loss", LOSS_COLOR),
            ("TC", TC_COLOR),
            ("WT", WT_COLOR),
            ("ET", ET_COLOR),
            ("best epoch", BEST_COLOR),
        ] {
            assert!(count(c) > 200, "{name}: {} pixels", count(c));
        }
        let white = count(WHITE);
        assert!(
            white > px.len() / 2 && white < px.len() * 99 / 100,
            "{white} white"
        );
        // Text (captions, ticks, legend) is drawn: dark pixels well beyond the axes' lines.
        let dark = px.iter().filter(|p| p.iter().all(|&v| v < 100)).count();
        assert!(dark > 3000, "{dark} dark pixels");
        // Redrawn in place with fewer epochs; no temporary file is left behind.
        write_plot(&metrics[..1], &path).unwrap();
        assert_eq!(decode(&path).0, SIZE.0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // The same metrics, the same bytes.
        assert_eq!(plot_png(&metrics).unwrap(), plot_png(&metrics).unwrap());
    }

    #[test]
    fn legends_stand_beside_the_data() {
        let png = plot_png(&six_epochs()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        std::fs::write(&path, png).unwrap();
        let (w, _, px) = decode(&path);
        let at = |x: u32, y: u32| px[(y * w + x) as usize];
        // Each series' swatch is in the legend column of its panel (right of the data)...
        let in_column = |x0: u32, c: RGBColor| {
            (x0..x0 + LEGEND_WIDTH)
                .flat_map(|x| (0..SIZE.1).map(move |y| (x, y)))
                .any(|(x, y)| at(x, y) == [c.0, c.1, c.2])
        };
        let left_legend = SIZE.0 / 2 - LEGEND_WIDTH;
        let right_legend = SIZE.0 - LEGEND_WIDTH;
        assert!(in_column(left_legend, LOSS_COLOR) && in_column(left_legend, BEST_COLOR));
        for c in [TC_COLOR, WT_COLOR, ET_COLOR, BEST_COLOR] {
            assert!(in_column(right_legend, c));
        }
        // ...and no series color strays there from the other panel.
        assert!(!in_column(left_legend, TC_COLOR));
    }

    #[test]
    fn ticks_are_whole_epochs_without_repeats() {
        assert_eq!(epoch_ticks(1), vec![1]);
        assert_eq!(epoch_ticks(2), vec![1, 2]);
        assert_eq!(epoch_ticks(10), (1..=10).collect::<Vec<_>>());
        assert_eq!(epoch_ticks(12), vec![2, 4, 6, 8, 10, 12]);
        assert_eq!(epoch_ticks(50), vec![5, 10, 15, 20, 25, 30, 35, 40, 45, 50]);
        for last in 1..2000 {
            let t = epoch_ticks(last);
            assert!(!t.is_empty() && t.len() <= 10, "{last}: {t:?}");
            assert!(t.windows(2).all(|w| w[0] < w[1]) && *t.last().unwrap() <= last);
        }
    }

    #[test]
    fn the_best_epoch_is_the_earliest_highest_mean_dice() {
        let mut m = six_epochs();
        assert_eq!(best_epoch(&m).map(|b| b.0), Some(5));
        m[5].val_mean_dice = m[4].val_mean_dice;
        assert_eq!(best_epoch(&m).map(|b| b.0), Some(5));
        m[2].val_mean_dice = Some(f32::NAN);
        assert_eq!(best_epoch(&m).map(|b| b.0), Some(5));
        assert_eq!(best_epoch(&m[..1]), None);
    }

    #[test]
    fn training_writes_the_plot_each_epoch() {
        let dir = tempfile::tempdir().unwrap();
        crate::testutil::train_tiny(dir.path(), 2);
        let (w, h, _) = decode(&dir.path().join("plot.png"));
        assert_eq!((w, h), SIZE);
    }

    #[test]
    fn unwritable_target_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_plot(&[epoch(1, 0.5, None)], &dir.path().join("missing/plot.png"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("plot.png"), "{e}");
    }

    /// The box plot: its size, a box in each region's colour in both panels, and the same bytes
    /// for the same report.
    #[test]
    fn boxplot_draws_a_box_per_region_in_each_panel() {
        use crate::evaluation::{CaseResult, EvalReport, REPORT_FORMAT, RegionResult, summarize};
        let case = |i: usize| CaseResult {
            case: format!("BRATS_{i:03}"),
            image: String::new(),
            label: String::new(),
            shape: [1, 1, 1],
            spacing_mm: [1.0; 3],
            regions: ["TC", "WT", "ET"]
                .iter()
                .enumerate()
                .map(|(k, r)| RegionResult {
                    region: r.to_string(),
                    dice: Some(0.5 + 0.1 * k as f64 + 0.05 * i as f64),
                    hd95_mm: (k != 2 || i > 0).then_some(2.0 + i as f64 + k as f64),
                    pred_voxels: 1,
                    label_voxels: 1,
                    empty: None,
                })
                .collect(),
        };
        let cases: Vec<CaseResult> = (0..4).map(case).collect();
        let report = EvalReport {
            format: REPORT_FORMAT.into(),
            held_out: None,
            cases_from: "all".into(),
            labels: "msd".into(),
            roi: [16, 16, 16],
            overlap: 0.5,
            blend: "constant".into(),
            resample: "linear".into(),
            summary: summarize(&cases),
            cases,
        };
        let bytes = boxplot_png(&report).unwrap();
        assert_eq!(bytes, boxplot_png(&report).unwrap(), "deterministic");
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("boxplot.png");
        std::fs::write(&path, &bytes).unwrap();
        let (w, h, px) = decode(&path);
        assert_eq!((w, h), BOXPLOT_SIZE);
        let half = (w / 2) as usize;
        for c in [TC_COLOR, WT_COLOR, ET_COLOR] {
            let want = [c.0, c.1, c.2];
            for (name, range) in [("Dice", 0..half), ("HD95", half..w as usize)] {
                let found = px
                    .iter()
                    .enumerate()
                    .any(|(i, p)| *p == want && range.contains(&(i % w as usize)));
                assert!(found, "{name} panel lacks {want:?}");
            }
        }
    }
}
