//! Typed test steps shaped like the real pipeline (fetch → preprocess → train → export), so engine
//! tests exercise slots, artifact types and params without the imaging or training code.

use std::sync::Arc;
use wf_engine::params::ParamType;
use wf_engine::*;

pub struct TestStep {
    pub kind: &'static str,
    pub params: &'static [ParamSpec],
    pub inputs: &'static [(&'static str, ArtifactType)],
    pub output: ArtifactType,
}

impl Step for TestStep {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "test step"
    }
    fn params(&self) -> &'static [ParamSpec] {
        self.params
    }
    fn inputs(&self) -> Slots {
        Slots::Fixed(self.inputs)
    }
    fn output(&self, _params: &Params) -> ArtifactType {
        self.output
    }
    /// Writes its params and its inputs' file lists into the output, so outputs depend on both.
    fn run(&self, cx: &RunContext<'_>) -> Result<(), StepError> {
        if self.kind == "preprocess" {
            cx.progress.warn("skipped case BRATS_007: NaN voxels");
        }
        if self.kind == "train-unet" {
            // A fact that differs every run, as a timing does; the output does not.
            static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            cx.progress
                .fact("train_seconds", serde_json::json!(1.5 + n as f64));
            if cx.params.key_value()["lr"]
                .as_f64()
                .is_some_and(|lr| lr < 0.0)
            {
                return Err(StepError::new("lr must be positive"));
            }
        }
        let mut text = cx.params.key_value().to_string();
        for (slot, input) in cx.inputs {
            text.push_str(&format!("\n{slot}={}", input.digest));
        }
        std::fs::write(cx.out_dir.join("out.txt"), text)?;
        Ok(())
    }
    fn remote(&self, _params: &Params) -> RemoteTask {
        RemoteTask::Processing {
            instances: 1,
            sharded_input: false,
        }
    }

    /// fetch-dataset declares its source (with its position); passthrough passes facts on.
    fn facts(&self, params: &Params, cx: &CheckContext<'_>) -> Option<Facts> {
        match self.kind {
            "fetch-dataset" => Some(Facts::new(SourceFact {
                source: params.get("source")?.as_str()?.to_string(),
                span: params.span_of("source"),
            })),
            "passthrough" => cx.inputs.get("in").cloned(),
            _ => None,
        }
    }

    /// guard refuses an upstream source named `forbidden`, pointing at it.
    fn check(&self, _params: &Params, cx: &CheckContext<'_>, diags: &mut Diagnostics) {
        if let (true, Some(fact)) = (self.kind == "guard", cx.input::<SourceFact>("in"))
            && fact.source == "forbidden"
        {
            diags.error(
                fact.span,
                format!(
                    "step `{}`: its data comes from a forbidden source",
                    cx.step_id
                ),
            );
        }
    }
}

/// What the test fetch-dataset declares about its output.
pub struct SourceFact {
    pub source: String,
    pub span: Span,
}

const FETCH: &[ParamSpec] = &[
    ParamSpec::required("source", ParamType::Str, "where the data comes from"),
    ParamSpec::optional("md5", ParamType::Str, "null", "checksum"),
];
const PREPROCESS: &[ParamSpec] = &[
    ParamSpec::required("shards", ParamType::int_min(1), "parallel workers").not_in_key(),
    ParamSpec::optional(
        "labels",
        ParamType::Enum(&["msd", "brats"]),
        "\"msd\"",
        "label convention",
    ),
    ParamSpec::optional(
        "pixdim",
        ParamType::List(&ParamType::Float),
        "[1.5,1.5,2.0]",
        "target spacing",
    ),
];
const TRAIN: &[ParamSpec] = &[
    ParamSpec::optional(
        "epochs",
        ParamType::int_min(1),
        "10",
        "passes over the data",
    ),
    ParamSpec::optional("lr", ParamType::Float, "0.0001", "learning rate"),
    ParamSpec::optional("bf16", ParamType::Bool, "false", "mixed precision"),
];

pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(TestStep {
        kind: "fetch-dataset",
        params: FETCH,
        inputs: &[],
        output: ArtifactType::Dataset,
    });
    r.register(TestStep {
        kind: "preprocess",
        params: PREPROCESS,
        inputs: &[("dataset", ArtifactType::Dataset)],
        output: ArtifactType::Samples,
    });
    r.register(TestStep {
        kind: "train-unet",
        params: TRAIN,
        inputs: &[("samples", ArtifactType::Samples)],
        output: ArtifactType::Model,
    });
    r.register(TestStep {
        kind: "export-checkpoint",
        params: &[],
        inputs: &[("model", ArtifactType::Model)],
        output: ArtifactType::Export,
    });
    r.register(TestStep {
        kind: "guard",
        params: &[],
        inputs: &[("in", ArtifactType::Dataset)],
        output: ArtifactType::Files,
    });
    r.register(TestStep {
        kind: "passthrough",
        params: &[],
        inputs: &[("in", ArtifactType::Dataset)],
        output: ArtifactType::Dataset,
    });
    r
}

#[allow(dead_code)]
pub fn arc_registry() -> Arc<Registry> {
    Arc::new(registry())
}
