//! Benchmark: a no-op `wf run` of a fully cached workflow whose declared `files:` hold 1 GB in 10,000
//! files. The target is < 1 s: the file memo (path, size, mtime, inode) must spare re-reading them.
//!
//! `cargo bench --bench noop_run [-- FILES TOTAL_MB RUNS]` (defaults 10000 1024 7). Prints the first
//! (hashing) run, the median, min and max of the no-op runs, and the same no-op run with the memo
//! deleted (what it costs to re-hash everything), as lines for BENCHMARKS.md.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let files: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let total_mb: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(7);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let per_file = total_mb * 1024 * 1024 / files;
    let old = SystemTime::now() - Duration::from_secs(3600);
    let mut buf = vec![0u8; per_file];
    for i in 0..files {
        let sub = data.join(format!("{:03}", i / 100));
        std::fs::create_dir_all(&sub).unwrap();
        // Distinct content per file (a cheap xorshift stream) so nothing deduplicates.
        let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let path = sub.join(format!("f{i:05}.bin"));
        std::fs::write(&path, &buf).unwrap();
        // Data sets are old; a file written in the last 2 s is never memoized (racy-clean guard).
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    std::fs::write(
        dir.path().join("wf.yaml"),
        "name: noop\nsteps:\n  scan:\n    uses: command\n    with: { run: \"ls -R data | wc -l > $WF_OUT/count\", files: [data/] }\n  after:\n    uses: command\n    inputs: { scan: scan }\n    with: { run: \"cp $WF_IN_scan/count $WF_OUT/\" }\n",
    )
    .unwrap();
    let wf = env!("CARGO_BIN_EXE_wf");
    let run = || {
        let t = Instant::now();
        let out = Command::new(wf)
            .args(["run", "wf.yaml"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            t.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (first, _) = run();
    let mut times = Vec::new();
    for _ in 0..runs {
        let (t, err) = run();
        assert!(
            err.contains("0 ran, 2 cached"),
            "no-op run executed something: {err}"
        );
        times.push(t);
    }
    times.sort_by(f64::total_cmp);
    // Side by side: the same no-op run with the memo deleted first (every file re-read and hashed).
    let memo = dir.path().join(".wf/cache/memo/files-v1");
    let mut cold = Vec::new();
    for _ in 0..3 {
        std::fs::remove_file(&memo).expect("the memo exists after a run");
        cold.push(run().0);
    }
    cold.sort_by(f64::total_cmp);
    println!(
        "noop_run: {files} files, {} MiB declared in `files:`",
        per_file * files / (1024 * 1024)
    );
    println!("  first run (hash everything, run 2 steps): {first:.3} s");
    println!(
        "  no-op run, {runs} runs: median {:.3} s, min {:.3} s, max {:.3} s",
        times[runs / 2],
        times[0],
        times[runs - 1]
    );
    println!(
        "  same no-op run without the memo, 3 runs: median {:.3} s ({:.1}x slower)",
        cold[1],
        cold[1] / times[runs / 2]
    );
}
