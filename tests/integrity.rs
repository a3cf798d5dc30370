//! End-to-end tests of cache integrity under mishaps: a damaged object is refused and healed, user
//! files linked into an output are not adopted, names that cannot round-trip are refused, and a
//! declared directory holding the cache does not hash it.

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `a` writes two lines; `c` reads them. Each command appends its id to runs.log.
fn chain(dir: &Path) {
    std::fs::write(
        dir.join("wf.yaml"),
        r#"name: chain
steps:
  a: { uses: command, with: { run: "echo a >> runs.log; printf 'one\ntwo\n' > $WF_OUT/data.txt" } }
  c: { uses: command, inputs: { src: a }, with: { run: "echo c >> runs.log; sort -r $WF_IN_src/data.txt > $WF_OUT/out.txt" } }
"#,
    )
    .unwrap();
}

fn output_path(v: &serde_json::Value, id: &str) -> PathBuf {
    let step = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .expect("step");
    PathBuf::from(step["output"]["path"].as_str().expect("output path"))
}

/// Flips the first byte of a cached (read-only) file in place, as root or a failing disk would:
/// same inode, same size. With `keep_mtime`, the modification time is put back as well, so only
/// hashing can tell.
fn flip_first_byte(path: &Path, keep_mtime: bool) {
    use std::io::{Read, Seek, Write};
    let meta = std::fs::metadata(path).unwrap();
    let mode = meta.permissions().mode();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact(&mut b).unwrap();
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.write_all(&[b[0] ^ 0x01]).unwrap();
    if keep_mtime {
        f.set_modified(meta.modified().unwrap()).unwrap();
    }
    drop(f);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().ino(), meta.ino());
}

fn runs(dir: &Path) -> Vec<String> {
    let log = read(dir.join("runs.log"));
    std::fs::remove_file(dir.join("runs.log")).ok();
    log.lines().map(str::to_string).collect()
}

#[test]
fn a_damaged_input_fails_the_step_and_repair_heals_the_cache() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    chain(dir);
    let first = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert!(statuses(&first).iter().all(|(_, s)| s == "ran"), "{first}");
    runs(dir);
    flip_first_byte(&output_path(&first, "a").join("data.txt"), false);

    // The damaged bytes are not read: the step that would read them fails, naming file and step.
    let forced = wf(dir, &["run", "wf.yaml", "--json", "--force", "c"]);
    assert_eq!(forced.status.code(), Some(1), "{}", stderr(&forced));
    let v = json(&forced);
    assert_eq!(status_of(&v, "a"), "cached");
    assert_eq!(status_of(&v, "c"), "failed");
    let error = v["steps"][1]["error"].as_str().unwrap();
    assert!(
        error.contains("`data.txt`") && error.contains("step `a`") && error.contains("repair"),
        "{error}"
    );
    assert!(runs(dir).is_empty(), "c must not run on damaged input");

    // Repair removes the damaged object and everything computed from it; the rerun recomputes both
    // and the cache verifies clean.
    let repair = wf(
        dir,
        &["cache", "verify", "--workflow", "wf.yaml", "--repair"],
    );
    assert_eq!(repair.status.code(), Some(1), "{}", stderr(&repair));
    let rerun = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert_eq!(
        statuses(&rerun),
        [("a".into(), "ran".into()), ("c".into(), "ran".into())]
    );
    assert_eq!(runs(dir), ["a", "c"]);
    assert_eq!(output_digest(&rerun, "a"), output_digest(&first, "a"));
    assert_eq!(read(output_path(&rerun, "c").join("out.txt")), "two\none\n");
    let verify = wf(dir, &["cache", "verify", "--workflow", "wf.yaml"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
}

#[test]
fn repair_removes_entries_computed_from_silently_damaged_data() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    chain(dir);
    let first = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    runs(dir);
    // Damage that keeps size and mtime cannot be seen by a stat: `c` computes from it.
    flip_first_byte(&output_path(&first, "a").join("data.txt"), true);
    let forced = json(&wf(dir, &["run", "wf.yaml", "--json", "--force", "c"]));
    assert_eq!(status_of(&forced, "c"), "ran");
    assert_eq!(
        read(output_path(&forced, "c").join("out.txt")),
        "two\nnne\n"
    );
    runs(dir);

    let repair = wf(
        dir,
        &["cache", "verify", "--workflow", "wf.yaml", "--repair"],
    );
    assert_eq!(repair.status.code(), Some(1));
    let report = stdout(&repair);
    assert!(report.contains("computed from"), "{report}");

    // The poisoned entry of `c` went with the damaged object.
    let rerun = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert_eq!(
        statuses(&rerun),
        [("a".into(), "ran".into()), ("c".into(), "ran".into())]
    );
    assert_eq!(read(output_path(&rerun, "c").join("out.txt")), "two\none\n");
    let verify = wf(dir, &["cache", "verify", "--workflow", "wf.yaml"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
}

#[test]
fn an_output_hard_linked_to_a_user_file_is_copied_not_adopted() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "mine\n").unwrap();
    std::fs::set_permissions(&notes, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(
        dir.join("wf.yaml"),
        format!(
            "steps:\n  a: {{ uses: command, with: {{ run: \"ln {} $WF_OUT/v\" }} }}\n",
            notes.display()
        ),
    )
    .unwrap();
    let v = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert_eq!(status_of(&v, "a"), "ran", "{v}");
    let meta = std::fs::metadata(&notes).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o644,
        "the user's file keeps its mode"
    );
    assert_eq!(
        meta.nlink(),
        1,
        "the store holds no link to the user's file"
    );

    // Editing the user's file leaves the cached artifact as it was.
    std::fs::write(&notes, "mine, edited\n").unwrap();
    assert_eq!(read(output_path(&v, "a").join("v")), "mine\n");
    let verify = wf(dir, &["cache", "verify", "--workflow", "wf.yaml"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
}

#[test]
fn an_output_name_with_a_carriage_return_is_refused_at_commit() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    // What a script saved with CRLF line endings does.
    std::fs::write(
        dir.join("mk.sh"),
        "printf x > \"$WF_OUT/out.txt$(printf '\\r')\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("wf.yaml"),
        "steps:\n  crlf: { uses: command, with: { run: \"sh mk.sh\", files: [mk.sh] } }\n",
    )
    .unwrap();
    let out = wf(dir, &["run", "wf.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(status_of(&v, "crlf"), "failed");
    let error = v["steps"][0]["error"].as_str().unwrap();
    assert!(error.contains("`out.txt\\r`"), "{error}");
    let verify = wf(dir, &["cache", "verify", "--workflow", "wf.yaml"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
}

#[test]
fn declaring_the_workflow_directory_does_not_hash_the_cache_inside_it() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    std::fs::write(dir.join("data.txt"), "1\n").unwrap();
    std::fs::write(
        dir.join("wf.yaml"),
        "steps:\n  a: { uses: command, with: { run: \"cat data.txt > $WF_OUT/x\", files: [\".\"] } }\n",
    )
    .unwrap();
    let first = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert_eq!(status_of(&first, "a"), "ran", "{first}");
    let second = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert_eq!(status_of(&second, "a"), "cached", "{second}");
    // A file of the workflow directory still counts.
    std::fs::write(dir.join("data.txt"), "2\n").unwrap();
    let third = json(&wf(dir, &["run", "wf.yaml", "--json"]));
    assert_eq!(status_of(&third, "a"), "ran", "{third}");
}
