//! The `fsx-import` step, local half: Samples → Samples. Verifies every file of the samples against
//! their manifest and either passes them through (hard links: no copy, and the output is the same
//! artifact) or stages a verified copy on a fast local disk (`stage_dir:`), recording where in
//! `staged.json` so the trainer's loader reads from there. In the cloud the same step becomes an FSx for
//! Lustre file system linked to the samples' S3 prefix (see the Step Functions compiler).

use serde::Deserialize;
use std::path::Path;
use wf_engine::manifest::{self, Manifest};
use wf_engine::params::ParamType;
use wf_engine::{
    ArtifactType, CheckContext, Diagnostics, Facts, ParamSpec, Params, RemoteTask, RunContext,
    Slots, Step, StepError, plural,
};
use wf_imaging::samples::{STAGED_FILE, Staged};

pub struct FsxImport;

const PARAMS: &[ParamSpec] = &[ParamSpec::optional(
    "stage_dir",
    ParamType::Str,
    "\"\"",
    "a directory on a fast local disk to copy the samples to; empty: pass through",
)
.shape(
    "absolute path, or empty",
    || serde_json::json!({ "type": "string", "pattern": "^(/.*)?$" }),
)];

#[derive(Debug, Deserialize)]
struct FsxParams {
    stage_dir: String,
}

impl Step for FsxImport {
    fn kind(&self) -> &'static str {
        "fsx-import"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "stage samples on fast storage (FSx for Lustre in the cloud, a local directory here), verified"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> Slots {
        Slots::Fixed(&[("samples", ArtifactType::Samples)])
    }
    fn output(&self, _params: &Params) -> ArtifactType {
        ArtifactType::Samples
    }

    fn check(&self, params: &Params, cx: &CheckContext<'_>, diags: &mut Diagnostics) {
        if let Some(dir) = params.get("stage_dir").and_then(|v| v.as_str())
            && !dir.is_empty()
            && !Path::new(dir).is_absolute()
        {
            diags.error(
                    params.span_of("stage_dir"),
                    format!("step `{}`: `stage_dir` must be an absolute path (a fast local disk), found `{dir}`", cx.step_id),
                );
        }
    }

    /// The samples pass through (or are copied) unchanged: so are their facts.
    fn facts(&self, _params: &Params, cx: &CheckContext<'_>) -> Option<Facts> {
        cx.inputs.get("samples").cloned()
    }

    fn run(&self, cx: &RunContext<'_>) -> Result<(), StepError> {
        let p: FsxParams = cx
            .params
            .decode()
            .map_err(|e| StepError::new(format!("invalid params: {e}")))?;
        let input = cx
            .inputs
            .get("samples")
            .ok_or_else(|| StepError::new("missing input `samples`"))?;
        let manifest = cx
            .store
            .manifest(&input.digest)
            .map_err(|e| StepError::new(format!("cannot read the samples' manifest: {e}")))?;
        cx.progress.message(&format!(
            "verifying {}",
            plural(manifest.entries.len(), "file")
        ));
        fail_on(
            manifest::verify_tree(&input.path, &manifest, cx.threads),
            "the samples in the cache",
        )?;
        link_tree(&input.path, cx.out_dir, &manifest)?;
        if p.stage_dir.is_empty() {
            return Ok(());
        }
        let target = Path::new(&p.stage_dir).join(input.digest.to_hex());
        if !target.is_dir() || !manifest::verify_tree(&target, &manifest, cx.threads).is_empty() {
            cx.progress
                .message(&format!("copying to {}", target.display()));
            copy_tree(&input.path, &target, &manifest)?;
        }
        fail_on(
            manifest::verify_tree(&target, &manifest, cx.threads),
            "the staged copy",
        )?;
        let staged = Staged::new(target, input.digest.to_hex());
        std::fs::write(cx.out_dir.join(STAGED_FILE), staged.to_json())?;
        Ok(())
    }

    fn remote(&self, _params: &Params) -> RemoteTask {
        RemoteTask::FsxImport
    }
}

fn fail_on(problems: Vec<String>, what: &str) -> Result<(), StepError> {
    if problems.is_empty() {
        return Ok(());
    }
    let n = problems.len();
    Err(StepError::with_detail(
        format!(
            "{what} failed verification ({n} problem{})",
            if n == 1 { "" } else { "s" }
        ),
        problems.into_iter().take(20).collect::<Vec<_>>().join("\n"),
    ))
}

/// Hard-links every file of `manifest` from `src` into `dst` (copies where a link is impossible).
fn link_tree(src: &Path, dst: &Path, manifest: &Manifest) -> Result<(), StepError> {
    for e in &manifest.entries {
        let to = dst.join(&e.path);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let from = src.join(&e.path);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)
                .map_err(|err| StepError::new(format!("{}: {err}", from.display())))?;
        }
    }
    Ok(())
}

/// Copies into a temporary sibling and renames, so a killed copy never looks complete.
fn copy_tree(src: &Path, target: &Path, manifest: &Manifest) -> Result<(), StepError> {
    let parent = target
        .parent()
        .ok_or_else(|| StepError::new("stage_dir has no parent"))?;
    std::fs::create_dir_all(parent)
        .map_err(|e| StepError::new(format!("cannot create {}: {e}", parent.display())))?;
    let tmp = parent.join(format!(
        ".{}.{}.partial",
        target.file_name().and_then(|n| n.to_str()).unwrap_or("x"),
        std::process::id()
    ));
    wf_engine::store::remove_tree(&tmp);
    for e in &manifest.entries {
        let to = tmp.join(&e.path);
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::copy(src.join(&e.path), &to)
            .map_err(|err| StepError::new(format!("copying {}: {err}", e.path)))?;
    }
    wf_engine::store::remove_tree(target);
    std::fs::rename(&tmp, target)
        .map_err(|e| StepError::new(format!("cannot move into {}: {e}", target.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use wf_engine::key::{KEY_SCHEMA, KeyComponents};
    use wf_engine::step::NoProgress;
    use wf_engine::store::Producer;
    use wf_engine::{CancelToken, InputArtifact, Store};

    /// Commits a small Samples artifact into a fresh store and returns it as an input.
    fn samples(store: &Store) -> InputArtifact {
        let st = store.stage("src").unwrap();
        std::fs::create_dir_all(st.out.join("BRATS_001")).unwrap();
        std::fs::write(st.out.join("BRATS_001/0.wfs"), vec![7u8; 4096]).unwrap();
        std::fs::write(st.out.join("index.json"), "{}").unwrap();
        let c = KeyComponents {
            schema: KEY_SCHEMA,
            kind: "t".into(),
            version: 1,
            params: "{}".into(),
            seed: None,
            inputs: BTreeMap::new(),
            files: BTreeMap::new(),
            external: None,
        };
        let producer = Producer {
            workflow: "w".into(),
            step: "s".into(),
        };
        let e = store
            .commit(
                &st,
                &c.key(),
                &c,
                ArtifactType::Samples,
                producer,
                Default::default(),
                1,
            )
            .unwrap();
        InputArtifact {
            ty: ArtifactType::Samples,
            digest: e.artifact,
            path: store.artifact_path(&e.artifact),
        }
    }

    fn run(
        store: &Store,
        input: InputArtifact,
        stage_dir: &str,
    ) -> (
        Result<(), StepError>,
        std::path::PathBuf,
        wf_engine::store::Staging,
    ) {
        let params =
            Params::from_values([("stage_dir".to_string(), serde_json::json!(stage_dir))].into());
        let inputs: BTreeMap<String, InputArtifact> = [("samples".to_string(), input)].into();
        let st = store.stage("fsx").unwrap();
        let cancel = CancelToken::default();
        let cx = RunContext {
            resume_dir: None,
            step_id: "stage",
            workflow_dir: Path::new("."),
            params: &params,
            inputs: &inputs,
            out_dir: &st.out,
            scratch_dir: &st.scratch,
            log_path: &st.log,
            seed: 0,
            threads: 2,
            local_files: &BTreeMap::new(),
            external: None,
            cancel: &cancel,
            progress: &NoProgress,
            store,
        };
        let r = FsxImport.run(&cx);
        (r, st.out.clone(), st)
    }

    #[test]
    fn pass_through_is_the_same_artifact() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let input = samples(&store);
        let (r, out, _st) = run(&store, input.clone(), "");
        r.unwrap();
        let listed = manifest::list_files(&out).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(manifest::verify_tree(&out, &store.manifest(&input.digest).unwrap(), 1).is_empty());
    }

    #[test]
    fn stages_a_verified_copy_and_records_it() {
        let t = tempfile::tempdir().unwrap();
        let fast = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let input = samples(&store);
        let (r, out, _st) = run(&store, input.clone(), fast.path().to_str().unwrap());
        r.unwrap();
        let staged = Staged::read_in(&out).unwrap().unwrap();
        assert_eq!(staged.path, fast.path().join(input.digest.to_hex()));
        assert_eq!(
            std::fs::read(staged.path.join("BRATS_001/0.wfs")).unwrap(),
            vec![7u8; 4096]
        );
        // A damaged staged copy is replaced on the next run.
        std::fs::write(staged.path.join("BRATS_001/0.wfs"), b"bad").unwrap();
        let (r, _, _st) = run(&store, input, fast.path().to_str().unwrap());
        r.unwrap();
        assert_eq!(
            std::fs::read(staged.path.join("BRATS_001/0.wfs")).unwrap(),
            vec![7u8; 4096]
        );
    }

    #[test]
    fn damaged_samples_in_the_cache_fail_with_the_file_named() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let input = samples(&store);
        let victim = input.path.join("index.json");
        let mut perms = std::fs::metadata(&victim).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&victim, perms).unwrap();
        std::fs::write(&victim, "{\"tampered\":1}").unwrap();
        let (r, _, _st) = run(&store, input, "");
        let e = r.unwrap_err();
        assert!(e.message.contains("failed verification"), "{e:?}");
        assert!(e.detail.unwrap().contains("index.json"));
    }
}
