//! `plot.png`: training loss and validation Dice (TC, WT, ET, mean) per epoch, redrawn after each
//! epoch from the metrics so far. plotters without its default features (which want fontconfig and
//! freetype): bitmap backend, PNG encoder, and text from an embedded DejaVu Sans subset
//! (`assets/DejaVuSans-subset.ttf`, license beside it), so it renders on a bare machine.

use crate::error::{Result, TrainerError};
use crate::train::EpochMetrics;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use std::path::Path;
use std::sync::OnceLock;

/// Printable ASCII plus ° · – — − of DejaVu Sans (25 KB).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");

/// Image size in pixels.
pub const SIZE: (u32, u32) = (1200, 480);

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
    font_ready().map_err(|e| failed(path, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plot.png".into());
    // The backend picks the encoder from the extension, so the temporary name ends in .png too.
    let tmp = path.with_file_name(format!(".{name}.tmp.png"));
    draw(metrics, &tmp).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        failed(path, e)
    })?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        failed(path, e)
    })
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// One plotted value of an epoch's metrics.
type Metric = dyn Fn(&EpochMetrics) -> Option<f32>;

fn draw(metrics: &[EpochMetrics], path: &Path) -> DrawResult {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let last = metrics.iter().map(|m| m.epoch).max().unwrap_or(1).max(2) as f64;
    let xs = 0.5..last + 0.5;

    let points = |f: &Metric| -> Vec<(f64, f64)> {
        metrics
            .iter()
            .filter_map(|m| {
                f(m).filter(|v| v.is_finite())
                    .map(|v| (m.epoch as f64, v as f64))
            })
            .collect()
    };

    let loss = points(&|m| Some(m.train_loss));
    let top = loss.iter().map(|p| p.1).fold(0.0, f64::max);
    let top = if top > 0.0 { top * 1.1 } else { 1.0 };
    let mut chart = ChartBuilder::on(&left)
        .caption("training loss", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(xs.clone(), 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("loss")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    series(&mut chart, &loss, &RGBColor(90, 60, 160), "train loss")?;
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .border_style(BLACK.mix(0.3))
        .background_style(WHITE.mix(0.8))
        .draw()?;

    let mut chart = ChartBuilder::on(&right)
        .caption("validation Dice", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(xs, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("Dice")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    let dice: [(&str, RGBColor, &Metric); 4] = [
        ("TC", RGBColor(214, 39, 40), &|m| m.val_dice_tc),
        ("WT", RGBColor(44, 160, 44), &|m| m.val_dice_wt),
        ("ET", RGBColor(31, 119, 180), &|m| m.val_dice_et),
        ("mean", BLACK, &|m| m.val_mean_dice),
    ];
    for (label, color, f) in dice {
        series(&mut chart, &points(f), &color, label)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 14))
        .border_style(BLACK.mix(0.3))
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

/// A line with a dot per epoch (so a single epoch shows too), labelled for the legend.
fn series<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<
        'a,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    points: &[(f64, f64)],
    color: &RGBColor,
    label: &str,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let style = color.stroke_width(2);
    let c = *color;
    chart
        .draw_series(LineSeries::new(points.iter().copied(), style))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
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

    #[test]
    fn plot_decodes_and_shows_every_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.png");
        let metrics: Vec<EpochMetrics> = (1..=6)
            .map(|e| {
                let t = e as f32 / 6.0;
                let dice = (e > 1).then_some([0.3 + 0.4 * t, 0.5 + 0.4 * t, 0.1 + 0.5 * t]);
                epoch(e, 0.9 - 0.5 * t, dice)
            })
            .collect();
        write_plot(&metrics, &path).unwrap();
        let (w, h, px) = decode(&path);
        assert_eq!((w, h), SIZE);
        let count = |c: [u8; 3]| px.iter().filter(|&&p| p == c).count();
        // Lines, dots and legend marks of each series, in their colors.
        for (name, c) in [
            ("loss", [90, 60, 160]),
            ("TC", [214, 39, 40]),
            ("WT", [44, 160, 44]),
            ("ET", [31, 119, 180]),
        ] {
            assert!(count(c) > 200, "{name}: {} pixels", count(c));
        }
        let white = count([255, 255, 255]);
        assert!(
            white > px.len() / 2 && white < px.len() * 99 / 100,
            "{white} white"
        );
        // Text (captions, ticks, legend) is drawn: dark pixels well beyond the axes' lines.
        let dark = px.iter().filter(|p| p.iter().all(|&v| v < 100)).count();
        assert!(dark > 3000, "{dark} dark pixels");
        // Redrawn in place with more epochs; no temporary file is left behind.
        write_plot(&metrics[..1], &path).unwrap();
        assert_eq!(decode(&path).0, SIZE.0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
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
}
