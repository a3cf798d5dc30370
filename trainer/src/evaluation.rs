//! The Report artifact of the evaluate step (`wf-report-v1`): per-case Dice and HD95 of each region
//! (TC, WT, ET) on whole volumes, their summary, and the files that hold them:
//!
//! - `report.json` ([`EvalReport`]): how the cases were segmented, every case's scores, the summary;
//! - `cases.csv`: one row per case and region (`case,region,dice,hd95_mm,pred_voxels,label_voxels,empty`);
//! - `boxplot.png`: Dice and HD95 per region, one box per region over the cases.
//!
//! Empty regions follow MONAI (`wf_imaging::metrics`): Dice is NaN when the label is empty
//! (`ignore_empty=True`), HD95 is NaN when either side is empty (MONAI's percentile of infinite
//! distances). A NaN is `null` in JSON and empty in the CSV, with `empty` naming the side. The
//! summary of a region is over the cases where the value is finite (MONAI's `nanmean`): the count,
//! mean, median and standard deviation (population, numpy's default `ddof=0`), and how many cases
//! were left out.

use crate::error::{Result, TrainerError};
use serde::{Deserialize, Serialize};
use std::path::Path;
use wf_imaging::metrics::RegionScore;

pub const REPORT_FORMAT: &str = "wf-report-v1";
pub const REPORT_FILE: &str = "report.json";
pub const CSV_FILE: &str = "cases.csv";
pub const BOXPLOT_FILE: &str = "boxplot.png";

/// One region of one case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionResult {
    pub region: String,
    /// `None` where MONAI's is NaN (see `empty`).
    pub dice: Option<f64>,
    pub hd95_mm: Option<f64>,
    pub pred_voxels: usize,
    pub label_voxels: usize,
    /// `both empty`, `empty prediction` or `empty label` when a side has no voxel.
    pub empty: Option<String>,
}

impl RegionResult {
    pub fn new(region: &str, s: &RegionScore) -> RegionResult {
        let finite = |v: f64| v.is_finite().then_some(v);
        RegionResult {
            region: region.to_string(),
            dice: finite(s.dice),
            hd95_mm: finite(s.hd95),
            pred_voxels: s.pred_voxels,
            label_voxels: s.label_voxels,
            empty: crate::segment::empty_side(s).map(str::to_string),
        }
    }
}

/// One evaluated case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    pub case: String,
    /// Relative to the Dataset.
    pub image: String,
    pub label: String,
    pub shape: [usize; 3],
    pub spacing_mm: [f64; 3],
    pub regions: Vec<RegionResult>,
}

/// A metric over the cases of one region.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Cases with a finite value.
    pub n: usize,
    /// Cases left out (NaN: an empty side).
    pub skipped: usize,
    pub mean: Option<f64>,
    pub median: Option<f64>,
    pub std: Option<f64>,
}

impl Stats {
    pub fn of(values: &[Option<f64>]) -> Stats {
        let mut v: Vec<f64> = values.iter().flatten().copied().collect();
        let n = v.len();
        v.sort_by(f64::total_cmp);
        let (mean, median, std) = if n == 0 {
            (None, None, None)
        } else {
            let mean = v.iter().sum::<f64>() / n as f64;
            let median = if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            };
            let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
            (Some(mean), Some(median), Some(var.sqrt()))
        };
        Stats {
            n,
            skipped: values.len() - n,
            mean,
            median,
            std,
        }
    }
}

/// The summary of one region.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionSummary {
    pub region: String,
    pub dice: Stats,
    pub hd95_mm: Stats,
}

/// `report.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// `wf-report-v1`.
    pub format: String,
    /// The Export's training-run summary: which cases it held out, if it says.
    pub held_out: Option<Vec<String>>,
    /// Which cases were chosen (`held-out`, `all`, or `listed`).
    pub cases_from: String,
    /// The label convention, sliding window and resampling used.
    pub labels: String,
    pub roi: [usize; 3],
    pub overlap: f64,
    /// `constant` or `gaussian`.
    pub blend: String,
    pub resample: String,
    pub cases: Vec<CaseResult>,
    pub summary: Vec<RegionSummary>,
}

/// The summary of each region of `cases`, in the order the first case lists them.
pub fn summarize(cases: &[CaseResult]) -> Vec<RegionSummary> {
    let names: Vec<String> = cases
        .first()
        .map(|c| c.regions.iter().map(|r| r.region.clone()).collect())
        .unwrap_or_default();
    names
        .into_iter()
        .map(|name| {
            let of = |f: &dyn Fn(&RegionResult) -> Option<f64>| -> Vec<Option<f64>> {
                cases
                    .iter()
                    .map(|c| c.regions.iter().find(|r| r.region == name).and_then(f))
                    .collect()
            };
            RegionSummary {
                dice: Stats::of(&of(&|r| r.dice)),
                hd95_mm: Stats::of(&of(&|r| r.hd95_mm)),
                region: name,
            }
        })
        .collect()
}

fn json_error(path: &Path, source: serde_json::Error) -> TrainerError {
    TrainerError::Json {
        path: path.to_path_buf(),
        source,
    }
}

impl EvalReport {
    /// `report.json` of the Report in `dir`; an error names the file.
    pub fn read_in(dir: &Path) -> Result<EvalReport> {
        let path = dir.join(REPORT_FILE);
        let bytes = std::fs::read(&path).map_err(|source| TrainerError::Io {
            path: path.clone(),
            source,
        })?;
        let r: EvalReport = serde_json::from_slice(&bytes).map_err(|e| json_error(&path, e))?;
        if r.format != REPORT_FORMAT {
            return Err(TrainerError::Config {
                field: "format",
                detail: format!(
                    "{}: format `{}`, expected `{REPORT_FORMAT}`",
                    path.display(),
                    r.format
                ),
            });
        }
        Ok(r)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reports serialize") + "\n"
    }

    /// `cases.csv`: a header, then one row per case and region; a case id holding a comma, a quote
    /// or a line break is quoted (RFC 4180). An empty `dice` or `hd95_mm` is NaN (`empty` says why).
    pub fn to_csv(&self) -> String {
        let num = |v: Option<f64>| v.map(|x| format!("{x}")).unwrap_or_default();
        let mut s = String::from("case,region,dice,hd95_mm,pred_voxels,label_voxels,empty\n");
        for c in &self.cases {
            for r in &c.regions {
                s.push_str(&format!(
                    "{},{},{},{},{},{},{}\n",
                    csv_field(&c.case),
                    r.region,
                    num(r.dice),
                    num(r.hd95_mm),
                    r.pred_voxels,
                    r.label_voxels,
                    r.empty.as_deref().unwrap_or("")
                ));
            }
        }
        s
    }

    /// The per-region table `wf run` prints and `wf report` shows: mean ± std and median of Dice
    /// and HD95 (mm), and the cases they are over: one number when every case counted, else
    /// `D/H of N` (Dice over D cases, HD95 over H, of N).
    pub fn table(&self) -> String {
        let f = |v: Option<f64>, p: usize| v.map_or("n/a".to_string(), |x| format!("{x:.p$}"));
        let mut out = format!(
            "{:<6} {:>17} {:>11} {:>19} {:>13} {:>7}\n",
            "region",
            "Dice mean ± std",
            "Dice median",
            "HD95 mm mean ± std",
            "HD95 median",
            "cases"
        );
        for s in &self.summary {
            let cases = if s.dice.skipped + s.hd95_mm.skipped == 0 {
                format!("{}", s.dice.n)
            } else {
                format!("{}/{} of {}", s.dice.n, s.hd95_mm.n, self.cases.len())
            };
            out.push_str(&format!(
                "{:<6} {:>17} {:>11} {:>19} {:>13} {:>7}\n",
                s.region,
                format!("{} ± {}", f(s.dice.mean, 4), f(s.dice.std, 4)),
                f(s.dice.median, 4),
                format!("{} ± {}", f(s.hd95_mm.mean, 2), f(s.hd95_mm.std, 2)),
                f(s.hd95_mm.median, 2),
                cases
            ));
        }
        out
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(name: &str, dice: Option<f64>, hd: Option<f64>) -> RegionResult {
        RegionResult {
            region: name.into(),
            dice,
            hd95_mm: hd,
            pred_voxels: 1,
            label_voxels: 1,
            empty: None,
        }
    }

    fn case(id: &str, regions: Vec<RegionResult>) -> CaseResult {
        CaseResult {
            case: id.into(),
            image: format!("imagesTr/{id}.nii.gz"),
            label: format!("labelsTr/{id}.nii.gz"),
            shape: [2, 2, 2],
            spacing_mm: [1.0; 3],
            regions,
        }
    }

    #[test]
    fn stats_skip_nan_and_use_population_std() {
        let s = Stats::of(&[Some(1.0), None, Some(3.0), Some(2.0), Some(6.0)]);
        assert_eq!((s.n, s.skipped), (4, 1));
        assert_eq!(s.mean, Some(3.0));
        assert_eq!(s.median, Some(2.5));
        // numpy.std([1, 3, 2, 6]) = sqrt(3.5)
        assert!((s.std.unwrap() - 3.5f64.sqrt()).abs() < 1e-12);
        let odd = Stats::of(&[Some(5.0), Some(1.0), Some(4.0)]);
        assert_eq!(odd.median, Some(4.0));
        let none = Stats::of(&[None, None]);
        assert_eq!((none.n, none.skipped, none.mean), (0, 2, None));
    }

    #[test]
    fn summary_csv_and_table() {
        let mut cases = vec![
            case(
                "A",
                vec![
                    region("TC", Some(0.5), Some(2.0)),
                    region("WT", Some(0.9), Some(1.0)),
                ],
            ),
            case(
                "B,1",
                vec![region("TC", Some(0.7), Some(4.0)), region("WT", None, None)],
            ),
        ];
        cases[1].regions[1].empty = Some("empty label".into());
        let summary = summarize(&cases);
        assert_eq!(summary.len(), 2);
        assert_eq!(summary[0].region, "TC");
        assert!((summary[0].dice.mean.unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(summary[1].dice.n, 1);
        let r = EvalReport {
            format: REPORT_FORMAT.into(),
            held_out: None,
            cases_from: "all".into(),
            labels: "msd".into(),
            roi: [16, 16, 16],
            overlap: 0.5,
            blend: "constant".into(),
            resample: "linear".into(),
            cases,
            summary,
        };
        let csv = r.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 5, "{csv}");
        assert_eq!(lines[1], "A,TC,0.5,2,1,1,");
        assert_eq!(lines[4], "\"B,1\",WT,,,1,1,empty label");
        let table = r.table();
        assert!(table.contains("0.6000 ± 0.1000"), "{table}");
        let wt = table.lines().find(|l| l.starts_with("WT")).unwrap();
        assert!(wt.ends_with("1/1 of 2"), "{table}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(REPORT_FILE), r.to_json()).unwrap();
        assert_eq!(EvalReport::read_in(dir.path()).unwrap(), r);
        std::fs::write(
            dir.path().join(REPORT_FILE),
            r.to_json().replace(REPORT_FORMAT, "wf-report-v9"),
        )
        .unwrap();
        let e = EvalReport::read_in(dir.path()).unwrap_err().to_string();
        assert!(e.contains("wf-report-v9") && e.contains(REPORT_FILE), "{e}");
    }
}
