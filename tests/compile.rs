//! `wf compile --target stepfunctions`: snapshots of the compiled ASL, keys equal to local runs',
//! refusals (missing settings, payload, key length), and asl-validator over every definition.

mod common;

use common::{json, stderr, stdout, wf};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A small cloud workflow of `command` steps: a declared file, params with quotes, braces and
/// backslashes (long enough to be uploaded, not inline), a diamond, and a step whose jobs are named
/// `fail-…` (the emulator fails them).
const SMALL: &str = r#"name: small
seed: 7
steps:
  make:
    uses: command
    with: { run: "sh gen.sh > $WF_OUT/data.txt", files: [gen.sh] }
  quote:
    uses: command
    inputs: { src: make }
    with:
      run: "sed 's/\\\\/{x}/' \"$WF_IN_src/data.txt\" > $WF_OUT/q.txt"
      env:
        NOTE: "Replaces every backslash of the generated data with {x}; this note is long enough to push
          the canonical params past the 256 characters a SageMaker container argument may hold."
  fail-late:
    uses: command
    inputs: { src: make }
    with: { run: "cat $WF_IN_src/data.txt > $WF_OUT/f.txt" }
  join:
    uses: command
    inputs: { a: quote, b: fail-late }
    with: { run: "cat $WF_IN_a/q.txt $WF_IN_b/f.txt > $WF_OUT/all.txt", produces: Files }
targets:
  aws:
    region: eu-west-1
    role_arn: arn:aws:iam::123456789012:role/wf
    image_uri: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/wf:test
    bucket: s3://wf-test-bucket/ci
    steps:
      join: { instance_type: ml.m5.large, max_runtime_seconds: 600 }
"#;

/// One step feeding three that read nothing of each other.
const FAN_OUT: &str = r#"name: fan
steps:
  root: { uses: command, with: { run: "echo r > $WF_OUT/r.txt" } }
  a: { uses: command, inputs: { src: root }, with: { run: "cp $WF_IN_src/r.txt $WF_OUT/a.txt" } }
  b: { uses: command, inputs: { src: root }, with: { run: "cp $WF_IN_src/r.txt $WF_OUT/b.txt" } }
  c: { uses: command, inputs: { src: root }, with: { run: "cp $WF_IN_src/r.txt $WF_OUT/c.txt" } }
targets:
  aws:
    region: eu-west-1
    role_arn: arn:aws:iam::123456789012:role/wf
    image_uri: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/wf:test
    bucket: s3://wf-test-bucket/ci
"#;

fn small(dir: &Path) {
    std::fs::write(dir.join("wf.yaml"), SMALL).unwrap();
    std::fs::write(dir.join("gen.sh"), "echo a\necho c\n").unwrap();
}

/// quickstart.yaml with a target: a pre-existing FSx file system and one preprocessing instance
/// (no shards, so no commit job) — the branches brats.yaml does not take.
fn quickstart_cloud(dir: &Path) {
    let text = std::fs::read_to_string(Path::new(ROOT).join("workflows/quickstart.yaml")).unwrap();
    let text = format!(
        "{text}targets:\n  aws:\n    region: us-west-2\n    role_arn: arn:aws:iam::123456789012:role/wf\n    \
         image_uri: 123456789012.dkr.ecr.us-west-2.amazonaws.com/wf:1\n    subnets: [subnet-1]\n    \
         security_groups: [sg-1]\n    fsx: {{ file_system_id: fs-0123456789abcdef0 }}\ncache: s3://wf-quick\n"
    );
    std::fs::write(dir.join("wf.yaml"), text).unwrap();
}

fn compile(dir: &Path, file: &str) -> Json {
    let out = wf(dir, &["compile", file, "--target", "stepfunctions"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    json(&out)
}

/// Every state by name, those inside Parallel branches included.
fn states(def: &Json) -> serde_json::Map<String, Json> {
    let mut out = serde_json::Map::new();
    for (name, st) in def["States"].as_object().expect("States") {
        for branch in st["Branches"].as_array().into_iter().flatten() {
            out.extend(states(branch));
        }
        out.insert(name.clone(), st.clone());
    }
    out
}

#[test]
fn brats_validates_and_compiles_to_the_snapshot() {
    let root = Path::new(ROOT);
    let v = wf(root, &["validate", "workflows/brats.yaml"]);
    assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
    let def = compile(root, "workflows/brats.yaml");
    let s = states(&def);
    // The shape docs/cloud.md promises: 20 sharded instances and a commit, FSx created and polled on
    // the training step's miss path, 2 training nodes reading FSx in the VPC.
    let run = &s["preprocess.Run"]["Parameters"];
    assert_eq!(
        run["ProcessingResources"]["ClusterConfig"]["InstanceCount"],
        20
    );
    let dists: Vec<&str> = run["ProcessingInputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["S3Input"]["S3DataDistributionType"].as_str().unwrap())
        .collect();
    assert_eq!(
        dists,
        ["ShardedByS3Key", "FullyReplicated", "FullyReplicated"]
    );
    assert_eq!(s["preprocess.Run"]["Next"], "preprocess.Commit");
    assert_eq!(s["train.Lookup"]["Catch"][0]["Next"], "train.Fsx.Create");
    assert_eq!(
        s["train.Fsx.Ready"]["Choices"][0]["Next"],
        "train.Fsx.HasMount"
    );
    let train = &s["train.Run"]["Parameters"];
    assert_eq!(train["ResourceConfig"]["InstanceCount"], 2);
    assert_eq!(
        train["InputDataConfig"][0]["DataSource"]["FileSystemDataSource"]["FileSystemType"],
        "FSxLustre"
    );
    assert_eq!(train["HyperParameters"]["precision"], "bf16");
    assert!(train["VpcConfig"]["Subnets"].is_array());
    for (name, st) in s {
        if st["Type"] == "Task" {
            assert!(st["TimeoutSeconds"].as_u64().unwrap() > 0, "{name}");
            assert!(st["Catch"].is_array(), "{name} has no Catch");
        }
    }
    insta::assert_snapshot!("brats_asl", serde_json::to_string_pretty(&def).unwrap());
}

/// workflows/brats.yaml with the production settings: tags (the workflow's and the training
/// step's), a KMS key, logging and managed spot training.
fn brats_production(dir: &Path) {
    let text = std::fs::read_to_string(Path::new(ROOT).join("workflows/brats.yaml")).unwrap();
    let text = text
        .replace(
            "    steps:\n      fetch:",
            "    tags: { project: brats, team: imaging }\n    kms_key_id: alias/wf-brats\n    \
             log_level: ALL\n    tracing: true\n    steps:\n      fetch:",
        )
        .replace(
            "max_runtime_seconds: 172800 }",
            "max_runtime_seconds: 172800,\n               spot: true, tags: { team: gpu } }",
        );
    assert!(text.contains("spot: true") && text.contains("kms_key_id"));
    std::fs::write(dir.join("brats.yaml"), text).unwrap();
}

fn sagemaker_tasks(s: &serde_json::Map<String, Json>) -> Vec<(&String, &Json)> {
    s.iter()
        .filter(|(_, st)| {
            st["Resource"]
                .as_str()
                .is_some_and(|r| r.starts_with("arn:aws:states:::sagemaker:"))
        })
        .collect()
}

/// What production asks of the compiled brats.yaml: metrics on the Training job, managed spot
/// with its wait and checkpoints, tags and the KMS key on every job, and no cache read that takes
/// any error for a miss.
#[test]
fn brats_in_production_has_metrics_spot_tags_and_kms_on_every_job() {
    let plain = compile(Path::new(ROOT), "workflows/brats.yaml");
    let train = &states(&plain)["train.Run"]["Parameters"];
    let metrics: Vec<&str> = train["AlgorithmSpecification"]["MetricDefinitions"]
        .as_array()
        .expect("MetricDefinitions")
        .iter()
        .map(|m| m["Name"].as_str().unwrap())
        .collect();
    assert_eq!(
        metrics,
        [
            "train:loss",
            "validation:dice_mean",
            "validation:dice_tc",
            "validation:dice_wt",
            "validation:dice_et",
            "train:samples_per_second",
            "train:lr"
        ]
    );
    assert!(train["EnableManagedSpotTraining"].is_null());

    let t = tempfile::tempdir().unwrap();
    brats_production(t.path());
    let def = compile(t.path(), "brats.yaml");
    let s = states(&def);
    let train = &s["train.Run"]["Parameters"];
    assert_eq!(train["EnableManagedSpotTraining"], true);
    assert_eq!(train["StoppingCondition"]["MaxRuntimeInSeconds"], 172_800);
    assert_eq!(train["StoppingCondition"]["MaxWaitTimeInSeconds"], 345_600);
    assert_eq!(
        train["CheckpointConfig"]["LocalPath"],
        "/opt/ml/checkpoints"
    );
    assert_eq!(
        train["CheckpointConfig"]["S3Uri.$"],
        "States.Format('s3://wf-brats-123456789012/wf-cache/checkpoints/{}/', $.steps.train.key)"
    );
    let jobs = sagemaker_tasks(&s);
    assert_eq!(jobs.len(), 5, "fetch, preprocess + commit, train, export");
    for (name, st) in jobs {
        let p = &st["Parameters"];
        let tags: Vec<(&str, &str)> = p["Tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["Key"].as_str().unwrap(), t["Value"].as_str().unwrap()))
            .collect();
        let step = name.split('.').next().unwrap();
        let team = if step == "train" { "gpu" } else { "imaging" };
        assert_eq!(
            tags,
            [("wf:step", step), ("project", "brats"), ("team", team)],
            "{name}"
        );
        let volume_key = if p["ResourceConfig"].is_object() {
            assert_eq!(
                p["OutputDataConfig"]["KmsKeyId"], "alias/wf-brats",
                "{name}"
            );
            &p["ResourceConfig"]["VolumeKmsKeyId"]
        } else {
            &p["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"]
        };
        // p4d instances have NVMe instance storage, which SageMaker encrypts itself and for
        // which it refuses a volume key.
        if step == "train" {
            assert!(volume_key.is_null(), "{name}");
        } else {
            assert_eq!(volume_key, "alias/wf-brats", "{name}");
        }
        let args = p["AppSpecification"]["ContainerArguments.$"]
            .as_str()
            .or(p["AlgorithmSpecification"]["ContainerArguments.$"].as_str())
            .unwrap();
        assert!(
            args.contains("'--kms-key-id', 'alias/wf-brats'"),
            "{name}: the worker writes with the key"
        );
    }
    assert_eq!(
        s["train.Fsx.Create"]["Parameters"]["Tags"][2],
        serde_json::json!({ "Key": "team", "Value": "gpu" })
    );
    for (name, st) in &s {
        for c in st["Catch"].as_array().into_iter().flatten() {
            let all = c["ErrorEquals"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e == "States.ALL");
            assert!(
                !(all && (name.ends_with(".Lookup") || name.ends_with(".Published"))),
                "{name} takes any error for a missing entry"
            );
        }
    }
}

#[test]
fn small_workflow_snapshot_uploads_and_job_names() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    small(dir);
    let out = wf(
        dir,
        &[
            "compile",
            "wf.yaml",
            "--target",
            "stepfunctions",
            "-o",
            "sm.json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).contains("must be in s3://wf-test-bucket/ci"),
        "{}",
        stderr(&out)
    );
    let def: Json = serde_json::from_slice(&std::fs::read(dir.join("sm.json")).unwrap()).unwrap();
    let s = states(&def);
    let name = s["fail-late.Run"]["Parameters"]["ProcessingJobName.$"]
        .as_str()
        .unwrap();
    assert_eq!(
        name,
        "States.Format('fail-late-{}-{}', $$.Execution.Name, $$.State.RetryCount)"
    );
    let args = s["quote.Run"]["Parameters"]["AppSpecification"]["ContainerArguments.$"]
        .as_str()
        .unwrap();
    assert!(
        args.contains("'--params', 's3://wf-test-bucket/ci/params/"),
        "params over 256 characters travel as an S3 object: {args}"
    );
    let make = s["make.Run"]["Parameters"]["AppSpecification"]["ContainerArguments.$"]
        .as_str()
        .unwrap();
    assert!(make.contains("'--files', '"), "{make}");
    insta::assert_snapshot!("small_asl", serde_json::to_string_pretty(&def).unwrap());
}

/// Independent steps run at once, as they do locally: the diamond's two middle steps and the
/// fan-out's three leaves are the branches of one Parallel state each.
#[test]
fn independent_steps_run_in_parallel_branches() {
    let t = tempfile::tempdir().unwrap();
    small(t.path());
    let def = compile(t.path(), "wf.yaml");
    let top = def["States"].as_object().unwrap();
    assert_eq!(top["make.Done"]["Next"], "Parallel 2");
    let p = &top["Parallel 2"];
    assert_eq!(p["Type"], "Parallel");
    let starts: Vec<&str> = p["Branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["StartAt"].as_str().unwrap())
        .collect();
    assert_eq!(starts, ["quote.Key", "fail-late.Key"]);
    assert_eq!(p["Branches"][0]["States"]["quote.Done"]["End"], true);
    assert_eq!(
        p["Branches"][0]["States"]["quote.Done"]["OutputPath"],
        "$.steps.quote"
    );
    assert!(
        !top.contains_key("quote.Key"),
        "branch states live in the branch"
    );
    let merge = &top["Parallel 2 merge"];
    assert_eq!(merge["Next"], "join.Key");
    assert_eq!(
        merge["Parameters"]["steps"],
        serde_json::json!({
            "make.$": "$.steps.make",
            "quote.$": "$.parallel[0]",
            "fail_late.$": "$.parallel[1]",
        })
    );

    let f = tempfile::tempdir().unwrap();
    std::fs::write(f.path().join("wf.yaml"), FAN_OUT).unwrap();
    let def = compile(f.path(), "wf.yaml");
    let top = def["States"].as_object().unwrap();
    assert_eq!(top["root.Done"]["Next"], "Parallel 2");
    assert_eq!(top["Parallel 2"]["Branches"].as_array().unwrap().len(), 3);
    assert_eq!(top["Parallel 2 merge"]["End"], true);
}

/// The keys the state machine computes are the keys of a local run: run the workflow here, then
/// evaluate every `<id>.Key` state with the artifact digests the local run produced.
#[test]
fn state_machine_keys_equal_local_keys() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    small(dir);
    // Local runs do not need the cloud block; the keys do not depend on it.
    let run = wf(dir, &["run", "wf.yaml", "--json", "--cache", "cache"]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let summary = json(&run);
    let def = compile(dir, "wf.yaml");
    let s = states(&def);
    let mut payload = Json::Object(wf_engine::asl::intrinsic::constants_json());
    payload["steps"] = serde_json::json!({});
    for step in summary["steps"].as_array().unwrap() {
        let id = step["id"].as_str().unwrap();
        let key = step["key"].as_str().unwrap();
        let expr = s[&format!("{id}.Key")]["Parameters"]["key.$"]
            .as_str()
            .unwrap();
        let computed = wf_engine::asl::intrinsic::eval::eval(expr, &payload)
            .unwrap_or_else(|e| panic!("{id}: {e}\n{expr}"));
        assert_eq!(computed, key, "step {id}: {expr}");
        let entry: Json = serde_json::from_slice(
            &std::fs::read(dir.join(format!("cache/entries/{}/{key}.json", &key[..2]))).unwrap(),
        )
        .unwrap();
        payload["steps"][id.replace('-', "_")] =
            serde_json::json!({ "key": key, "artifact": entry["artifact"] });
    }
    assert_eq!(payload["steps"].as_object().unwrap().len(), 4);
}

/// A URL without a checksum is keyed by the server's validators, read when a run starts: a state
/// machine compiled beforehand cannot compute that key, so compile refuses the step (with a
/// checksum it compiles, and its key is the local one, as `state_machine_keys_equal_local_keys`
/// checks for every other step).
#[test]
fn a_url_without_a_checksum_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let targets = "targets:\n  aws:\n    region: eu-west-1\n    role_arn: arn:aws:iam::123456789012:role/wf\n    \
                   image_uri: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/wf:test\n    bucket: s3://wf-test-bucket/ci\n";
    let fetch = |with: &str| {
        format!(
            "name: url\nsteps:\n  fetch:\n    uses: fetch-dataset\n    with: {{ {with} }}\n{targets}"
        )
    };
    let url = "source: \"https://u:secret@example.org/Task01.tar?X-Amz-Signature=abc\"";
    std::fs::write(dir.join("wf.yaml"), fetch(url)).unwrap();
    let out = wf(dir, &["compile", "wf.yaml", "--target", "stepfunctions"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("wf.yaml:")
            && err.contains("step `fetch`: its cache key holds the current state of `https://***@example.org/Task01.tar?X-Amz-Signature=***`")
            && err.contains("sha256"),
        "{err}"
    );
    assert!(!err.contains("secret") && !err.contains("=abc"), "{err}");
    std::fs::write(
        dir.join("wf.yaml"),
        fetch(&format!("{url}, sha256: {}", "ab".repeat(32))),
    )
    .unwrap();
    compile(dir, "wf.yaml");
}

#[test]
fn missing_cloud_settings_are_positioned_errors() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    // No targets at all.
    std::fs::write(
        dir.join("none.yaml"),
        "steps:\n  a: { uses: command, with: { run: 'true' } }\n",
    )
    .unwrap();
    let out = wf(dir, &["compile", "none.yaml", "--target", "stepfunctions"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty());
    insta::assert_snapshot!("missing_targets", stderr(&out));

    // A partial block: every missing key named, FSx/training keys required because of fsx-import.
    std::fs::write(
        dir.join("partial.yaml"),
        "steps:\n  \
           fetch: { uses: fetch-dataset, with: { source: synthetic, cases: 2 } }\n  \
           prep: { uses: sharded-transform, inputs: { dataset: fetch }, with: { transforms: [load] } }\n  \
           stage: { uses: fsx-import, inputs: { samples: prep } }\n\
         targets:\n  aws:\n    region: us-east-1\n    steps:\n      stgae: { instance_count: 2 }\n",
    )
    .unwrap();
    let out = wf(
        dir,
        &["compile", "partial.yaml", "--target", "stepfunctions"],
    );
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!("partial_targets", stderr(&out));
    // validate does not require a cloud target.
    assert_eq!(
        wf(dir, &["validate", "partial.yaml"]).status.code(),
        Some(0)
    );
}

#[test]
fn refuses_what_step_functions_cannot_hold() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let target = "targets:\n  aws: { region: r, role_arn: a, image_uri: i, bucket: wf-bucket }\n";

    // A key string over States.Hash's 10,000 characters.
    let long = "x".repeat(10_000);
    std::fs::write(
        dir.join("long.yaml"),
        format!("steps:\n  a:\n    uses: command\n    with: {{ run: '{long}' }}\n{target}"),
    )
    .unwrap();
    let out = wf(dir, &["compile", "long.yaml", "--target", "stepfunctions"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("long.yaml:4:11: step `a`: its cache key string is 10"),
        "{}",
        stderr(&out)
    );

    // Too many steps for the 256 KiB payload.
    let mut text = String::from("steps:\n");
    for i in 0..1200 {
        text.push_str(&format!(
            "  step_{i:04}: {{ uses: command, with: {{ run: 'true' }} }}\n"
        ));
    }
    text.push_str(target);
    std::fs::write(dir.join("many.yaml"), text).unwrap();
    let out = wf(dir, &["compile", "many.yaml", "--target", "stepfunctions"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("the Step Functions payload could reach") && err.contains("262144"),
        "{err}"
    );
    assert_eq!(err.matches("payload could reach").count(), 1, "{err}");
}

/// asl-validator@4.0.0 (installed by .ci/run into .cache/npm), or `WF_ASL_VALIDATOR`, or `npx`.
fn asl_validator() -> Result<Vec<String>, String> {
    if let Ok(p) = std::env::var("WF_ASL_VALIDATOR") {
        return Ok(vec![p]);
    }
    let local = Path::new(ROOT).join(".cache/npm/node_modules/.bin/asl-validator");
    if local.exists() {
        return Ok(vec![local.display().to_string()]);
    }
    let probe = Command::new("npx")
        .args(["--no-install", "asl-validator", "--version"])
        .current_dir(ROOT)
        .output();
    match probe {
        Ok(o) if o.status.success() => Ok(vec![
            "npx".into(),
            "--no-install".into(),
            "asl-validator".into(),
        ]),
        Ok(_) => Err(
            "asl-validator is not installed (npm install asl-validator@4.0.0; see .ci/run)".into(),
        ),
        Err(e) => Err(format!("npx is not available: {e}")),
    }
}

#[test]
fn every_compiled_definition_passes_asl_validator() {
    let validator = match asl_validator() {
        Ok(v) => v,
        Err(reason) => {
            eprintln!("SKIPPED every_compiled_definition_passes_asl_validator: {reason}");
            return;
        }
    };
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut add = |name: &str, def: Json| {
        let p = dir.join(format!("{name}.asl.json"));
        std::fs::write(&p, serde_json::to_string_pretty(&def).unwrap()).unwrap();
        files.push(p);
    };
    add("brats", compile(Path::new(ROOT), "workflows/brats.yaml"));
    let production = tempfile::tempdir().unwrap();
    brats_production(production.path());
    add("brats-production", compile(production.path(), "brats.yaml"));
    let small_dir = tempfile::tempdir().unwrap();
    small(small_dir.path());
    add("small", compile(small_dir.path(), "wf.yaml"));
    let fan_dir = tempfile::tempdir().unwrap();
    std::fs::write(fan_dir.path().join("wf.yaml"), FAN_OUT).unwrap();
    add("fan-out", compile(fan_dir.path(), "wf.yaml"));
    let quick_dir = tempfile::tempdir().unwrap();
    quickstart_cloud(quick_dir.path());
    add("quickstart", compile(quick_dir.path(), "wf.yaml"));
    for f in &files {
        let out = Command::new(&validator[0])
            .args(&validator[1..])
            .arg("--json-path")
            .arg(f)
            .output()
            .expect("asl-validator runs");
        assert!(
            out.status.success(),
            "{} fails asl-validator:\n{}{}",
            f.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn quickstart_with_an_existing_file_system() {
    let t = tempfile::tempdir().unwrap();
    quickstart_cloud(t.path());
    let def = compile(t.path(), "wf.yaml");
    let s = states(&def);
    assert_eq!(s["train.Lookup"]["Catch"][0]["Next"], "train.Fsx.Describe");
    assert!(!s.contains_key("train.Fsx.Create") && !s.contains_key("train.Fsx.Delete"));
    assert!(
        !s.contains_key("preprocess.Commit"),
        "one instance: no shards"
    );
    assert_eq!(
        s["train.Run"]["Parameters"]["InputDataConfig"][0]["DataSource"]["FileSystemDataSource"]["DirectoryPath.$"],
        "States.Format('/{}/{}', $.steps.train.fsx.mount, $.steps.stage.artifact)"
    );
    assert_eq!(
        s["fetch.Lookup"]["Parameters"]["Bucket"], "wf-quick",
        "`cache: s3://wf-quick` is the cache"
    );
}
