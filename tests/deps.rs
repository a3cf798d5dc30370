//! Dependencies point one way (DESIGN.md): wf → steps → {engine, aws, trainer}; trainer → imaging;
//! aws → engine. The engine, imaging and trainer never depend upward, and only `aws` may pull the AWS
//! SDK, only `trainer` candle. Checked over `cargo metadata`, so a new edge fails here.

use std::collections::{BTreeMap, BTreeSet};

#[test]
fn dependency_edges_point_one_way() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in meta["packages"].as_array().unwrap() {
        let names = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string());
        deps.insert(p["name"].as_str().unwrap().to_string(), names.collect());
    }
    let forbidden: &[(&str, &[&str])] = &[
        (
            "wf-engine",
            &[
                "wf-steps",
                "wf-imaging",
                "wf-trainer",
                "wf-aws",
                "candle-core",
                "candle-nn",
                "aws-config",
                "aws-sdk-s3",
            ],
        ),
        (
            "wf-imaging",
            &[
                "wf-engine",
                "wf-steps",
                "wf-trainer",
                "wf-aws",
                "candle-core",
                "aws-config",
                "aws-sdk-s3",
            ],
        ),
        (
            "wf-trainer",
            &[
                "wf-engine",
                "wf-steps",
                "wf-aws",
                "aws-config",
                "aws-sdk-s3",
            ],
        ),
        (
            "wf-aws",
            &["wf-steps", "wf-trainer", "wf-imaging", "candle-core"],
        ),
    ];
    for (pkg, banned) in forbidden {
        let Some(have) = deps.get(*pkg) else { continue };
        for b in *banned {
            assert!(!have.contains(*b), "{pkg} must not depend on {b}");
        }
    }
    for (pkg, have) in &deps {
        if pkg != "wf-aws" {
            assert!(
                !have.iter().any(|d| d.starts_with("aws-sdk-")),
                "only wf-aws may use the AWS SDK ({pkg} does)"
            );
        }
    }
    assert!(deps.contains_key("wf-engine") && deps["wf"].contains("wf-steps"));
}
