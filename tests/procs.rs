//! End-to-end tests of process control: every process a command step starts ends with its step, however
//! wf is stopped (SIGINT, SIGTERM, SIGHUP, SIGKILL, its supervisor killed), a background job cannot hang
//! a run, the output a step keeps is bounded, and a run waiting for another run's lock can be stopped.
//!
//! Each test gives the processes it starts a unique argument (`sleep 981.<pid><n>`), finds them through
//! /proc by that argument, and kills whatever is left of them when it ends, passed or failed.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Long enough for any wait below on a loaded machine; a hang fails the test instead of stalling it.
const PATIENCE: Duration = Duration::from_secs(60);

/// A fresh `sleep` duration no other test or process uses: the processes of one test are found by it.
fn unique_sleep() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "981.{}{:03}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Live processes that have `arg` as one of their arguments (zombies have no command line).
fn holding(arg: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|&b| b == 0).any(|a| a == arg.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// The parent of process `pid`, from /proc/PID/stat (the field after the parenthesised name).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// The live children of process `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let mut kids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>()
            && parent_of(p) == Some(pid)
        {
            kids.push(p);
        }
    }
    kids
}

/// Kills (SIGKILL) what is left of the processes holding its argument when dropped: they were started
/// by the test, through wf, and must not outlive it even when it fails.
struct Leftovers(String);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for pid in holding(&self.0) {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Polls `cond` until it holds or `PATIENCE` runs out.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < PATIENCE, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `wf ARGS` in the background, its stdout and stderr going to files (a full pipe must not block it);
/// killed with SIGKILL when dropped before it ended.
struct Background {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

struct Ended {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Background {
    fn start(dir: &Path, name: &str, args: &[&str]) -> Background {
        let out = dir.join(format!("{name}.stdout"));
        let err = dir.join(format!("{name}.stderr"));
        let child = Command::new(wf_bin())
            .args(args)
            .current_dir(dir)
            .env_remove("WF_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("wf starts");
        Background {
            child: Some(child),
            out,
            err,
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn signal(&self, sig: i32) {
        // The child is not reaped before `wait` takes it, so the pid is still ours.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    fn stderr_now(&self) -> String {
        read(&self.err)
    }

    /// Waits for the end, failing the test (and killing wf) if it takes longer than `PATIENCE`.
    fn wait(mut self) -> Ended {
        let mut child = self.child.take().expect("running");
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed() > PATIENCE {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "wf did not end within {PATIENCE:?}; its stderr:\n{}",
                    read(&self.err)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ended {
            status,
            stdout: read(&self.out),
            stderr: read(&self.err),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn json_of(e: &Ended) -> serde_json::Value {
    serde_json::from_str(&e.stdout).unwrap_or_else(|err| {
        panic!(
            "stdout is not JSON ({err}):\n{}\nstderr:\n{}",
            e.stdout, e.stderr
        )
    })
}

fn step<'a>(v: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {v}"))
}

/// Step `a` starts three sleeps that try to outlive it: a background job, one whose parent exits at
/// once (`( … &)`), and one in a session of its own (`setsid`); `b` depends on it. `a` touches
/// `started` once all three run.
fn escaping_tree(dir: &Path, sleep: &str) {
    std::fs::write(
        dir.join("wf.yaml"),
        format!(
            r#"name: tree
steps:
  a: {{ uses: command, with: {{ run: "(sleep {sleep} &); setsid sleep {sleep} & sleep {sleep} & touch started; wait" }} }}
  b: {{ uses: command, inputs: {{ x: a }}, with: {{ run: "true" }} }}
"#
        ),
    )
    .unwrap();
}

fn wait_for_tree(dir: &Path, sleep: &str, wf: &Background) {
    wait_until("step a started its three sleeps", || {
        dir.join("started").exists() && holding(sleep).len() == 3
    });
    assert!(!wf.stderr_now().contains("FAILED"), "{}", wf.stderr_now());
}

#[test]
fn sigint_sigterm_and_sighup_end_the_step_tree_and_exit_128_plus_the_signal() {
    for (sig, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let sleep = unique_sleep();
        let _leftovers = Leftovers(sleep.clone());
        escaping_tree(dir, &sleep);
        let run = Background::start(dir, "run", &["run", "wf.yaml", "--json"]);
        wait_for_tree(dir, &sleep, &run);
        run.signal(sig);
        let end = run.wait();
        assert_eq!(
            end.status.code(),
            Some(128 + sig),
            "{name}: {:?}\n{}",
            end.status,
            end.stderr
        );
        assert!(
            holding(&sleep).is_empty(),
            "{name}: processes of the step outlived wf: {:?}",
            holding(&sleep)
        );
        assert!(
            end.stderr.contains(&format!("interrupted ({name})")),
            "{name}: {}",
            end.stderr
        );
        let v = json_of(&end);
        assert_eq!(v["interrupted"], name, "{v}");
        assert_eq!(step(&v, "a")["status"], "failed", "{v}");
        assert_eq!(step(&v, "a")["error"], "interrupted", "{v}");
        assert_eq!(step(&v, "b")["status"], "skipped", "{v}");
    }
}

#[test]
fn a_sigkilled_wf_leaves_no_process_behind() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let sleep = unique_sleep();
    let _leftovers = Leftovers(sleep.clone());
    escaping_tree(dir, &sleep);
    let run = Background::start(dir, "run", &["run", "wf.yaml"]);
    wait_for_tree(dir, &sleep, &run);
    run.signal(libc::SIGKILL);
    let end = run.wait();
    assert_eq!(end.status.code(), None);
    // Nothing of wf is left to report; its guard ends the tree within the stop's grace period.
    wait_until("the step's processes are gone", || {
        holding(&sleep).is_empty()
    });
}

#[test]
fn killing_the_supervisor_of_a_command_still_ends_its_tree() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let sleep = unique_sleep();
    let _leftovers = Leftovers(sleep.clone());
    escaping_tree(dir, &sleep);
    let run = Background::start(dir, "run", &["run", "wf.yaml", "--json"]);
    wait_for_tree(dir, &sleep, &run);
    // wf's one child is the process that supervises the step's shell.
    let kids = children_of(run.pid());
    assert_eq!(kids.len(), 1, "children of wf: {kids:?}");
    assert_eq!(unsafe { libc::kill(kids[0], libc::SIGKILL) }, 0);
    let end = run.wait();
    assert_eq!(end.status.code(), Some(1), "{}", end.stderr);
    assert!(
        holding(&sleep).is_empty(),
        "processes of the step outlived it: {:?}",
        holding(&sleep)
    );
    let v = json_of(&end);
    assert_eq!(step(&v, "a")["status"], "failed", "{v}");
    assert!(
        step(&v, "a")["error"]
            .as_str()
            .unwrap()
            .contains("supervis"),
        "{v}"
    );
}

#[test]
fn a_background_job_holding_stderr_does_not_hang_the_step_and_is_ended() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let sleep = unique_sleep();
    let _leftovers = Leftovers(sleep.clone());
    std::fs::write(
        dir.join("wf.yaml"),
        format!(
            "steps:\n  a: {{ uses: command, with: {{ run: \"sleep {sleep} & echo hi > $WF_OUT/x\" }} }}\n"
        ),
    )
    .unwrap();
    let end = Background::start(dir, "run", &["run", "wf.yaml", "--json"]).wait();
    assert!(end.status.success(), "{}", end.stderr);
    assert!(
        holding(&sleep).is_empty(),
        "the background job outlived its step: {:?}",
        holding(&sleep)
    );
    let v = json_of(&end);
    let a = step(&v, "a");
    assert_eq!(a["status"], "ran", "{v}");
    let out = Path::new(a["output"]["path"].as_str().unwrap());
    assert_eq!(read(out.join("x")), "hi\n");
    let warning = "left processes running";
    assert!(
        a["warnings"][0].as_str().unwrap_or("").contains(warning),
        "{v}"
    );
    assert!(end.stderr.contains(warning), "{}", end.stderr);
}

#[test]
fn a_command_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let sleep = unique_sleep();
    let _leftovers = Leftovers(sleep.clone());
    // An ignored signal stays ignored in children: the sleep ignores SIGTERM too.
    std::fs::write(
        dir.join("wf.yaml"),
        format!(
            "steps:\n  a: {{ uses: command, with: {{ run: \"trap '' TERM; touch started; sleep {sleep}; true\" }} }}\n"
        ),
    )
    .unwrap();
    let run = Background::start(dir, "run", &["run", "wf.yaml"]);
    wait_until("the step started", || {
        dir.join("started").exists() && holding(&sleep).len() == 1
    });
    run.signal(libc::SIGINT);
    let end = run.wait();
    assert_eq!(end.status.code(), Some(130), "{}", end.stderr);
    assert!(holding(&sleep).is_empty(), "{:?}", holding(&sleep));
}

/// Peak resident memory of the largest child this test process has waited for, in bytes.
fn children_peak_rss() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) },
        0
    );
    ru.ru_maxrss as u64 * 1024
}

#[test]
fn huge_output_is_bounded_in_memory_in_the_summary_and_in_the_log() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    // 70 MB of stderr on one line, then a failure: more than the 64 MiB log cap.
    std::fs::write(
        dir.join("wf.yaml"),
        "steps:\n  a: { uses: command, with: { run: \"echo first line >&2; head -c 70000000 /dev/zero | tr '\\\\0' x >&2; echo >&2; echo last line >&2; exit 3\" } }\n",
    )
    .unwrap();
    let end = Background::start(dir, "run", &["run", "wf.yaml", "--json"]).wait();
    assert_eq!(end.status.code(), Some(1));
    assert!(
        children_peak_rss() < 100 << 20,
        "peak RSS {} MiB",
        children_peak_rss() >> 20
    );
    let v = json_of(&end);
    let a = step(&v, "a");
    assert_eq!(a["error"], "command exited with status 3", "{}", end.stderr);
    let detail = a["detail"].as_str().unwrap();
    assert!(detail.len() <= 16 << 10, "detail of {} bytes", detail.len());
    assert!(
        detail.ends_with("xxx\nlast line"),
        "{}",
        detail.chars().take(200).collect::<String>()
    );
    assert!(end.stderr.len() <= 64 << 10, "{} bytes", end.stderr.len());
    let log = a["log"].as_str().unwrap();
    let size = std::fs::metadata(log).unwrap().len();
    assert!(
        size > 60 << 20 && size <= (64 << 20) + 4096,
        "log of {size} bytes"
    );
    let text = std::fs::read(log).unwrap();
    assert!(text.starts_with(b"first line\nxxx"));
    let tail = String::from_utf8_lossy(&text[text.len() - 400..]).into_owned();
    assert!(tail.contains("log capped at 64 MiB"), "{tail}");
}

#[test]
fn a_run_waiting_for_another_runs_lock_stops_on_ctrl_c() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let sleep = unique_sleep();
    let _leftovers = Leftovers(sleep.clone());
    std::fs::write(
        dir.join("wf.yaml"),
        format!(
            "steps:\n  a: {{ uses: command, with: {{ run: \"touch started; sleep {sleep}; echo > $WF_OUT/x\" }} }}\n"
        ),
    )
    .unwrap();
    let first = Background::start(dir, "first", &["run", "wf.yaml"]);
    wait_until("the first run started the step", || {
        dir.join("started").exists() && holding(&sleep).len() == 1
    });
    let second = Background::start(dir, "second", &["run", "wf.yaml"]);
    // The second run has opened the step's lock file: it waits for the first.
    wait_until("the second run waits for the step's lock", || {
        std::fs::read_dir(format!("/proc/{}/fd", second.pid()))
            .map(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|p| p.to_string_lossy().contains("/locks/"))
                })
            })
            .unwrap_or(false)
    });
    second.signal(libc::SIGINT);
    let end = second.wait();
    assert_eq!(end.status.code(), Some(130), "{}", end.stderr);
    assert!(
        end.stderr.contains("waiting for another wf process"),
        "{}",
        end.stderr
    );
    assert!(end.stderr.contains("interrupted"), "{}", end.stderr);
    // The first run is still computing the step, undisturbed.
    assert_eq!(holding(&sleep).len(), 1);
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait().status.code(), Some(143));
    assert!(holding(&sleep).is_empty());
}
