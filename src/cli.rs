//! Argument parsing (clap) and the subcommands of the CLI contract in DESIGN.md.

use crate::error::{CliError, CliResult, Exit};
use crate::report::Reporter;
use clap::{Parser, Subcommand, ValueEnum};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use wf_engine::exec::{self, RunOptions};
use wf_engine::{CancelToken, LoadError, RemoteCache, Store, Workflow, plural};

#[derive(Parser)]
#[command(
    name = "wf",
    version,
    about = "Typed, cached workflows for medical-imaging model training"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a workflow file; print every problem as FILE:LINE:COL: message.
    Validate { file: PathBuf },
    /// Show, per step, its cache key, whether it is cached, and why not.
    Plan {
        file: PathBuf,
        /// Print one JSON document on stdout.
        #[arg(long)]
        json: bool,
        /// Cache directory (default: `cache:` of the workflow, else .wf/cache beside it).
        #[arg(long)]
        cache: Option<String>,
        /// Treat this step as forced (repeatable).
        #[arg(long, value_name = "STEP")]
        force: Vec<String>,
    },
    /// Run the workflow on this machine, reusing cached step outputs.
    Run {
        file: PathBuf,
        /// Print the run summary as one JSON document on stdout.
        #[arg(long)]
        json: bool,
        /// Steps that may run at the same time (default: number of cores).
        #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        jobs: Option<u32>,
        /// Recompute this step even if cached (repeatable).
        #[arg(long, value_name = "STEP")]
        force: Vec<String>,
        /// Cache directory (default: `cache:` of the workflow, else .wf/cache beside it).
        #[arg(long)]
        cache: Option<String>,
        /// Where steps run: here, or each step with a job form as a SageMaker job (targets.aws;
        /// outputs go through the S3 cache).
        #[arg(long, value_enum, default_value_t = Executor::Local)]
        executor: Executor,
        /// Start even when the steps to run would write more than the cache's file system has
        /// free (their estimated output sizes, shown by `wf plan`).
        #[arg(long)]
        no_space_check: bool,
    },
    /// Print the step graph.
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// Write deterministic synthetic BraTS-like data in the MSD Task01 layout.
    Synth {
        /// Output directory (dataset.json, imagesTr/, labelsTr/, imagesTs/).
        #[arg(long)]
        out: PathBuf,
        /// Training cases.
        #[arg(long)]
        cases: usize,
        /// Volume shape X,Y,Z (each 4 to 4096).
        #[arg(long, default_value = "240,240,155", value_parser = parse_synth_shape)]
        shape: [usize; 3],
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Test cases (images only).
        #[arg(long, default_value_t = 0)]
        test: usize,
    },
    /// Run one case through a transform chain; writes DIR/image.nii.gz and DIR/label.nii.gz.
    Transform {
        /// YAML file with a `transforms:` list (as in a sharded-transform step) and optional `labels:`.
        #[arg(long)]
        transforms: PathBuf,
        #[arg(long)]
        image: PathBuf,
        #[arg(long)]
        label: Option<PathBuf>,
        /// Workflow seed for the random transforms (copy 0 of the case).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Segment one image with an exported model; writes a label NIfTI on the input's grid.
    Predict(crate::predict::PredictArgs),
    /// Inspect and maintain a cache directory.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Create or update the workflow's Step Functions state machine (targets.aws) and publish a version.
    Deploy { file: PathBuf },
    /// Start an execution of the deployed state machine; print its ARN.
    Start {
        file: PathBuf,
        /// Wait for the end, printing each step's state; exit 1 if the execution did not succeed.
        #[arg(long)]
        wait: bool,
    },
    /// Per-step states of a Step Functions execution.
    Status {
        #[arg(value_name = "EXECUTION_ARN")]
        execution_arn: String,
    },
    /// Print the CloudWatch log tail of a step's SageMaker job in an execution (default: the
    /// failed step, else every step that ran a job).
    Logs {
        #[arg(value_name = "EXECUTION_ARN")]
        execution_arn: String,
        /// The step whose job logs to print.
        step: Option<String>,
        /// Lines per log stream (one stream per instance).
        #[arg(long, default_value_t = 100)]
        lines: i32,
    },
    /// Run one step inside a SageMaker job and publish its output to the S3 cache (docs/cloud.md).
    Worker(crate::worker::WorkerArgs),
    /// Print the workflow as an AWS Step Functions definition (ASL JSON).
    Compile(crate::compile::CompileArgs),
    /// List the step kinds; with KIND, its inputs, output and params (type, default, description).
    Steps {
        /// A step kind (`uses:`), e.g. train-unet.
        kind: Option<String>,
    },
    /// Print the JSON Schema of the workflow format, for editors (yaml-language-server):
    /// `wf schema > wf.schema.json`.
    Schema,
    /// Write one self-contained HTML page about the last run: the steps, training curves, sample
    /// slices with the tumour regions, the export's metrics and model card. Prints its path.
    Report(crate::html_report::ReportArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Executor {
    Local,
    Sagemaker,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// List cache entries.
    Ls(CacheArgs),
    /// Re-hash every stored file; exit 1 if anything is damaged.
    Verify {
        #[command(flatten)]
        args: CacheArgs,
        /// Remove damaged entries so the next run recomputes them.
        #[arg(long)]
        repair: bool,
    },
    /// Remove unreferenced data and crashed runs' leftovers.
    Gc {
        #[command(flatten)]
        args: CacheArgs,
        /// Also remove entries not used for this many days.
        #[arg(long, value_name = "DAYS")]
        older_than: Option<u64>,
    },
}

#[derive(clap::Args)]
struct CacheArgs {
    /// Cache directory (default: the workflow's, or ./.wf/cache).
    #[arg(long)]
    cache: Option<String>,
    /// Use the cache of this workflow file.
    #[arg(long)]
    workflow: Option<PathBuf>,
}

pub fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code.into(),
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("{}", e.message);
            }
            e.exit.into()
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    if let Ok(filter) = EnvFilter::try_from_env("WF_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
}

fn dispatch(cli: Cli) -> CliResult {
    match cli.command {
        Command::Validate { file } => {
            let wf = load(&file)?;
            println!(
                "{}: ok ({})",
                file.display(),
                plural(wf.steps.len(), "step")
            );
            Ok(Exit::Ok)
        }
        Command::Plan {
            file,
            json,
            cache,
            force,
        } => {
            let wf = load(&file)?;
            let force = check_force(&wf, force)?;
            let (store, remote) = open_store(&wf, cache.as_deref())?;
            let plan = exec::plan_with(&wf, &store, &force, remote.as_deref())
                .map_err(|e| CliError::failed(format!("error: {e}")))?;
            if json {
                let doc = serde_json::json!({ "steps": plan });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&doc).expect("plan serializes")
                );
            } else {
                let w = plan.iter().map(|p| p.id.len()).max().unwrap_or(0);
                let k = plan.iter().map(|p| p.kind.len()).max().unwrap_or(0);
                for p in &plan {
                    let key = p.key.map(|k| k.short()).unwrap_or_else(|| "-".repeat(12));
                    // A step after a miss: its key waits for those steps' outputs.
                    let (cache, mut reason) = if p.after.is_empty() {
                        (p.cache.to_string(), p.reason.clone())
                    } else {
                        (
                            format!("after {}", p.after.join(", ")),
                            if p.after.len() == 1 {
                                "its key depends on that step's output"
                            } else {
                                "its key depends on those steps' outputs"
                            }
                            .to_string(),
                        )
                    };
                    if let Some(r) = &p.resumes {
                        reason.push_str(&format!("; {r}"));
                    }
                    println!("{:<w$}  {:<k$}  {key}  {cache:<4}  {reason}", p.id, p.kind);
                    if let Some(size) = &p.size {
                        println!("{:<w$}  {:<k$}  output: {size}", "", "");
                    }
                }
            }
            Ok(Exit::Ok)
        }
        Command::Run {
            file,
            json,
            jobs,
            force,
            cache,
            executor,
            no_space_check,
        } => {
            let wf = load(&file)?;
            let force = check_force(&wf, force)?;
            let (store, mut remote) = open_store(&wf, cache.as_deref())?;
            let executor = match executor {
                Executor::Local => None,
                Executor::Sagemaker => {
                    let (x, cache) = crate::cloud::sagemaker_executor(&wf, remote.is_none())?;
                    remote = remote.or(cache);
                    Some(x)
                }
            };
            let mut opts = RunOptions {
                force,
                remote,
                executor,
                ..RunOptions::default()
            };
            if let Some(j) = jobs {
                opts.jobs = j as usize;
            }
            let checks = crate::preflight::Checks {
                local: opts.executor.is_none(),
                space: !no_space_check,
            };
            crate::preflight::check(&wf, &store, &opts, checks)?;
            run(wf, store, opts, json)
        }
        Command::Graph { file, format } => {
            let wf = load(&file)?;
            let text = match format {
                GraphFormat::Mermaid => wf_engine::graph::mermaid(&wf),
                GraphFormat::Dot => wf_engine::graph::dot(&wf),
            };
            print!("{text}");
            Ok(Exit::Ok)
        }
        Command::Cache { command } => cache_command(command),
        Command::Worker(args) => Ok(crate::worker::main(args)),
        Command::Deploy { file } => crate::cloud::deploy(&load(&file)?),
        Command::Start { file, wait } => crate::cloud::start(&load(&file)?, wait),
        Command::Status { execution_arn } => crate::cloud::status(&execution_arn),
        Command::Logs {
            execution_arn,
            step,
            lines,
        } => crate::cloud::logs(&execution_arn, step.as_deref(), lines),
        Command::Predict(args) => crate::predict::main(&args),
        Command::Compile(args) => crate::compile::main(&load(&args.file)?, &args),
        Command::Report(args) => crate::html_report::main(&args),
        Command::Synth {
            out,
            cases,
            shape,
            seed,
            test,
        } => {
            if cases == 0 {
                return Err(CliError::invalid("error: --cases must be at least 1"));
            }
            let summary = wf_imaging::synth::generate(&out, cases, shape, seed, test)
                .map_err(|e| CliError::failed(format!("error: {e}")))?;
            eprintln!(
                "wrote {} to {}",
                plural(summary.cases.len(), "case"),
                out.display()
            );
            Ok(Exit::Ok)
        }
        Command::Transform {
            transforms,
            image,
            label,
            seed,
            out,
        } => transform_one(&transforms, &image, label.as_deref(), seed, &out),
        Command::Steps { kind } => steps(kind.as_deref()),
        Command::Schema => {
            let schema = wf_engine::schema::workflow_schema(&wf_steps::registry());
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).expect("the schema serializes")
            );
            Ok(Exit::Ok)
        }
    }
}

/// `wf steps [KIND]`.
fn steps(kind: Option<&str>) -> CliResult {
    let registry = wf_steps::registry();
    let Some(kind) = kind else {
        print!("{}", wf_engine::reference::kinds_text(&registry));
        return Ok(Exit::Ok);
    };
    match registry.get(kind) {
        Some(step) => {
            print!("{}", wf_engine::reference::kind_text(step.as_ref()));
            Ok(Exit::Ok)
        }
        None => {
            let hint = match wf_engine::diag::did_you_mean(kind, registry.kinds()) {
                Some(best) => format!("did you mean `{best}`?"),
                None => format!(
                    "known kinds: {}",
                    registry.kinds().collect::<Vec<_>>().join(", ")
                ),
            };
            Err(CliError::invalid(format!(
                "error: unknown step kind `{kind}`\n  help: {hint}"
            )))
        }
    }
}

pub(crate) fn load(file: &Path) -> CliResult<Workflow> {
    let registry = wf_steps::registry();
    match wf_engine::load(file, &registry) {
        Ok(wf) => Ok(wf),
        Err(LoadError::Read { path, source }) => Err(CliError::invalid(format!(
            "error: cannot read workflow {}: {source}",
            path.display()
        ))),
        Err(LoadError::Invalid(list)) => {
            // Past the cap, the last line counts the problems not listed.
            let count = match list.0.len() {
                n if n > wf_engine::diag::MAX_DIAGNOSTICS => {
                    format!("more than {} problems", wf_engine::diag::MAX_DIAGNOSTICS)
                }
                n => plural(n, "problem"),
            };
            Err(CliError::invalid(format!(
                "{list}\nerror: {} is invalid ({count})",
                file.display()
            )))
        }
    }
}

fn check_force(wf: &Workflow, force: Vec<String>) -> CliResult<BTreeSet<String>> {
    for f in &force {
        if wf.step(f).is_none() {
            let ids: Vec<&str> = wf.steps.iter().map(|s| s.id.as_str()).collect();
            let hint = wf_engine::diag::did_you_mean(f, ids.iter().copied())
                .map(|b| format!(" (did you mean `{b}`?)"))
                .unwrap_or_default();
            return Err(CliError::invalid(format!(
                "error: --force {f}: no step `{f}` in {}{hint}",
                wf.path.display()
            )));
        }
    }
    Ok(force.into_iter().collect())
}

/// `--cache` (relative to the current directory) > `cache:` (relative to the workflow) > .wf/cache.
pub(crate) fn cache_dir(wf: Option<&Workflow>, flag: Option<&str>) -> CliResult<PathBuf> {
    let (text, base) = match (flag, wf) {
        (Some(f), _) => (f.to_string(), PathBuf::from(".")),
        (None, Some(wf)) => match &wf.cache {
            Some((c, _)) => (c.clone(), wf.dir.clone()),
            None => return Ok(wf.dir.join(".wf").join("cache")),
        },
        (None, None) => return Ok(PathBuf::from(".wf").join("cache")),
    };
    if text.starts_with("s3://") {
        // S3 is a shared layer; the local store stays the working copy.
        return Ok(crate::cloud::local_working_copy(wf));
    }
    Ok(base.join(text))
}

/// The local store, and the S3 layer behind it when the cache is `s3://...`.
fn open_store(
    wf: &Workflow,
    flag: Option<&str>,
) -> CliResult<(Store, Option<Arc<dyn RemoteCache>>)> {
    let dir = cache_dir(Some(wf), flag)?;
    let store = Store::open(&dir).map_err(|e| CliError::invalid(format!("error: {e}")))?;
    let remote = crate::cloud::remote_cache(wf, flag).map_err(CliError::invalid)?;
    Ok((store, remote))
}

fn run(wf: Workflow, store: Store, opts: RunOptions, json: bool) -> CliResult {
    // Orphaned processes of command steps come here, not to init, so a step can still end them.
    wf_steps::command::supervise::adopt_orphans();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("error: cannot start the runtime: {e}")))?;
    let wf = Arc::new(wf);
    let store = Arc::new(store);
    let cancel = CancelToken::default();
    let stop = crate::signals::watch(cancel.clone());
    let summary = rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let reporter = Reporter::new(&wf);
        let printer = tokio::task::spawn_blocking(move || reporter.consume(rx));
        let summary = exec::run(wf.clone(), store, opts, cancel, tx).await;
        let _ = printer.await;
        summary
    });
    if json {
        let mut doc = serde_json::to_value(&summary).expect("summary serializes");
        if let Some(name) = stop.name() {
            doc["interrupted"] = name.into();
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&doc).expect("summary serializes")
        );
    }
    Ok(match stop.exit() {
        Some(exit) => exit,
        None if summary.failed() => Exit::Failed,
        None => Exit::Ok,
    })
}

fn cache_command(command: CacheCommand) -> CliResult {
    // An existing cache directory: these commands inspect caches, they never create one.
    let resolve = |args: &CacheArgs| -> CliResult<PathBuf> {
        let wf = args.workflow.as_deref().map(load).transpose()?;
        let dir = cache_dir(wf.as_ref(), args.cache.as_deref())?;
        if !dir.is_dir() {
            return Err(CliError::invalid(format!(
                "error: no cache at {}",
                dir.display()
            )));
        }
        Ok(dir)
    };
    let open = |dir: &Path| Store::open(dir).map_err(|e| CliError::invalid(format!("error: {e}")));
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    match command {
        CacheCommand::Ls(args) => {
            let store = open(&resolve(&args)?)?;
            let mut total = 0u64;
            let entries = store.entries();
            for (path, entry) in &entries {
                match entry {
                    Ok(e) => {
                        total += e.bytes;
                        println!(
                            "{}  {:<18} {:<8} {:>12} {:>10}  {}/{}",
                            e.key.short(),
                            e.kind,
                            e.output_type,
                            plural(e.files, "file"),
                            human_bytes(e.bytes),
                            e.producer.workflow,
                            e.producer.step
                        );
                    }
                    Err(err) => println!("{}  (unreadable: {err})", path.display()),
                }
            }
            eprintln!(
                "{}, {} in {}",
                plural(entries.len(), "entry"),
                human_bytes(total),
                store.root().display()
            );
            Ok(Exit::Ok)
        }
        CacheCommand::Verify { args, repair } => {
            let store = open(&resolve(&args)?)?;
            let report = store
                .verify(repair, threads)
                .map_err(|e| CliError::failed(format!("error: {e}")))?;
            for p in &report.problems {
                println!("{p}");
            }
            eprintln!(
                "{}, {} checked, {}{}",
                plural(report.entries, "entry"),
                plural(report.files_checked, "file"),
                plural(report.problems.len(), "problem"),
                if repair {
                    format!(
                        ", {} and {} removed",
                        plural(report.removed, "entry"),
                        plural(report.objects_removed, "damaged object")
                    )
                } else {
                    String::new()
                }
            );
            Ok(if report.problems.is_empty() {
                Exit::Ok
            } else {
                Exit::Failed
            })
        }
        CacheCommand::Gc { args, older_than } => {
            let dir = resolve(&args)?;
            let report = Store::gc(&dir, older_than.map(wf_engine::store::days))
                .map_err(|e| CliError::failed(format!("error: {e}")))?;
            eprintln!(
                "removed {}, {}, {} ({}), {}, {}",
                plural(report.entries_removed, "entry"),
                plural(report.artifacts_removed, "artifact"),
                plural(report.objects_removed, "object"),
                human_bytes(report.bytes_freed),
                plural(report.staging_removed, "staging directory"),
                plural(report.derived_removed, "derived file")
            );
            Ok(Exit::Ok)
        }
    }
}

pub(crate) fn parse_shape(s: &str) -> Result<[usize; 3], String> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{s}`: {e}"))?;
    match v.as_slice() {
        [x, y, z] if *x > 0 && *y > 0 && *z > 0 => Ok([*x, *y, *z]),
        _ => Err(format!("`{s}`: expected three positive sizes X,Y,Z")),
    }
}

/// `synth --shape`: a shape whose every axis `wf_imaging::synth` can write.
fn parse_synth_shape(s: &str) -> Result<[usize; 3], String> {
    let shape = parse_shape(s)?;
    let axis = wf_imaging::synth::AXIS;
    if shape.iter().any(|n| !axis.contains(n)) {
        return Err(format!(
            "`{s}`: every axis must be in {}..={}",
            axis.start(),
            axis.end()
        ));
    }
    Ok(shape)
}

/// `wf transform`: the chain of a T.yaml over one case.
fn transform_one(
    spec: &Path,
    image: &Path,
    label: Option<&Path>,
    seed: u64,
    out: &Path,
) -> CliResult {
    use wf_engine::yaml;
    // `--out` is the directory written; refused before any work when a file holds its place.
    if out.exists() && !out.is_dir() {
        return Err(CliError::invalid(format!(
            "error: --out {}: is a file; `wf transform` writes a directory (image.nii.gz, label.nii.gz)",
            out.display()
        )));
    }
    let bytes = yaml::read_limited(spec)
        .map_err(|e| CliError::invalid(format!("error: cannot read {}: {e}", spec.display())))?;
    let mut diags = wf_engine::Diagnostics::new(spec);
    let root = yaml::decode(&bytes, &mut diags).and_then(|text| yaml::parse(text, &mut diags));
    let invalid = |diags: wf_engine::Diagnostics| {
        CliError::invalid(format!(
            "{}\nerror: {} is invalid",
            wf_engine::DiagnosticList(diags.into_sorted()),
            spec.display()
        ))
    };
    let Some(root) = root else {
        return Err(invalid(diags));
    };
    wf_engine::workflow::check_keys(
        &root,
        &["transforms", "labels"],
        "the transforms file",
        &mut diags,
    );
    let labels = match root.get("labels") {
        None => "msd".to_string(),
        Some(n) => match n.as_str() {
            Some(s) if ["msd", "brats", "brats-monai"].contains(&s) => s.to_string(),
            _ => {
                diags.error(
                    n.span,
                    format!(
                        "`labels` expects msd, brats or brats-monai, found {}",
                        n.describe()
                    ),
                );
                "msd".to_string()
            }
        },
    };
    let list = match root.get("transforms") {
        Some(n) if n.as_seq().is_some() => n,
        Some(n) => {
            diags.error(
                n.span,
                format!("`transforms` expects a list, found {}", n.describe()),
            );
            return Err(invalid(diags));
        }
        None => {
            diags.error(root.span, "missing `transforms:` list");
            return Err(invalid(diags));
        }
    };
    wf_steps::sharded_transform::check_transforms(list.as_seq().unwrap_or(&[]), None, &mut diags);
    if !diags.is_empty() {
        return Err(invalid(diags));
    }
    let chain = wf_imaging::transforms::Chain::build(&wf_engine::params::to_json(list), &labels)
        .map_err(|e| CliError::invalid(format!("error: {}: {e}", spec.display())))?;
    let name = image.file_name().and_then(|n| n.to_str()).unwrap_or("case");
    let id = name
        .trim_end_matches(".gz")
        .trim_end_matches(".nii")
        .to_string();
    let src = wf_imaging::transforms::CaseSource {
        id: id.clone(),
        image: image.to_path_buf(),
        label: label.map(Path::to_path_buf),
    };
    let data_err = |e: wf_imaging::ImagingError| CliError::invalid(format!("error: {e}"));
    let case = chain.run_prefix(&src).map_err(data_err)?;
    let mut rng = wf_imaging::Rng::for_sample(seed, &id, 0);
    let (case, drawn) = chain.apply_suffix(case, &mut rng).map_err(data_err)?;
    std::fs::create_dir_all(out)
        .map_err(|e| CliError::failed(format!("error: {}: {e}", out.display())))?;
    let label_out = out.join("label.nii.gz");
    wf_imaging::transforms::write_case(
        &case,
        &out.join("image.nii.gz"),
        case.label.as_ref().map(|_| label_out.as_path()),
    )
    .map_err(|e| CliError::failed(format!("error: {e}")))?;
    eprintln!(
        "{id}: shape {:?}, drawn {}; wrote {}",
        case.image.shape,
        serde_json::to_string(&drawn).unwrap_or_default(),
        out.display()
    );
    Ok(Exit::Ok)
}

pub use wf_engine::words::human_bytes;
