//! `wf worker` arguments as the binary parses them (no emulator needed): every malformed argument
//! list exits 2 naming what is wrong, before anything reaches the network.

mod common;

use common::{stderr, wf};

const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn worker(args: &[&str]) -> (Option<i32>, String) {
    let t = tempfile::tempdir().unwrap();
    let mut all = vec!["worker"];
    all.extend_from_slice(args);
    let out = wf(t.path(), &all);
    (out.status.code(), stderr(&out))
}

#[test]
fn malformed_worker_arguments_exit_2_naming_the_problem() {
    let base = [
        "--step",
        "s",
        "--key",
        KEY,
        "--cache",
        "s3://bkt/p",
        "--params",
        "{}",
    ];
    let with = |extra: &[&'static str]| {
        let mut v: Vec<&str> = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [&["command"][..], &with(&["--bogus"])].concat(),
            "unknown argument `--bogus`",
        ),
        (
            [&["commit"][..], &base[..]].concat(),
            "`wf worker commit` needs --kind KIND",
        ),
        (
            vec!["command", "--step", "s", "--key", "xyz"],
            "--key xyz: not a 64-hex step key",
        ),
        (
            [&["command"][..], &with(&["--input", "dataset"])].concat(),
            "--input dataset: expected SLOT=DIGEST",
        ),
        (
            [&["command"][..], &with(&["--shards", "0"])].concat(),
            "--shards 0: not a positive integer",
        ),
        (vec!["command", "--step", "s"], "missing --key"),
    ];
    for (args, want) in cases {
        let (code, err) = worker(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
