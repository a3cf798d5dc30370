//! The process tree of a command: it ends with its step, however the step or wf ends.
//!
//! On Linux the shell runs under a *guard*, a small process forked from wf:
//!
//! ```text
//! wf ─ guard    own process group; child subreaper; parent-death signal SIGTERM
//!        └ sh -c RUN    process group G (its pid); parent-death signal SIGKILL
//!            └ what RUN starts    group G, unless it leaves it (setsid, setpgid)
//! ```
//!
//! The guard waits for the shell. When the shell exits, when wf asks it to stop (SIGTERM to the
//! guard) or when wf dies (the parent-death signal), it ends what is left: SIGTERM and SIGCONT to
//! group G and to each of its own children, then, after [`GRACE`], SIGKILL, repeated until nothing is
//! left. Being a child subreaper, the guard inherits every orphaned descendant of the shell, whatever
//! its group or session, so "its own children" covers double forks and `setsid` too. Then it reports
//! the shell's wait status and what it had to do on a pipe, and exits.
//!
//! What is guaranteed, for processes wf may signal (same user, no setuid program):
//! - A step ends when its shell exits. Every process the command started has ended when the step
//!   returns: SIGTERM first, SIGKILL [`GRACE`] later. Leftovers are reported
//!   ([`Ended::leftovers`]); processes that could not be ended within [`KILL_WAIT`] more (e.g. stuck
//!   in uninterruptible sleep) are reported too ([`Ended::survivors`]).
//! - wf stopped by a signal it handles (SIGINT, SIGTERM, SIGHUP) stops its steps the same way before
//!   it exits.
//! - wf killed, even by SIGKILL (or exiting at a second signal): each guard receives its parent-death
//!   signal and ends its tree the same way, within [`GRACE`] plus [`KILL_WAIT`].
//! - A guard killed: its shell dies with it (the shell's parent-death signal is SIGKILL). In a process
//!   that called [`adopt_orphans`] (`wf run`, `wf worker`) the shell's orphaned descendants come to
//!   wf, which ends them and group G.
//! - Not covered: wf and a guard both killed by SIGKILL (each by its own pid: the guard is not in
//!   wf's process group), or a guard killed in a process that did not call [`adopt_orphans`]; what
//!   the shell started then outlives them. Ending a whole cgroup or container ends the tree too.
//!
//! The parent-death signal fires when the *thread* that forked the guard exits: the step's thread
//! waits for the guard, so it cannot fire early.
//!
//! Elsewhere (not Linux) the shell leads its own process group and that group is ended the same way;
//! processes that leave the group, and the case of a killed wf, are not covered.

use std::io;
use std::process::{ChildStderr, ChildStdout, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long processes get between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);
/// How long, after SIGKILL, before giving up on processes that do not die.
pub const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often the waits look at the process and the cancel flag.
const TICK: Duration = Duration::from_millis(20);

/// How a supervised command ended.
#[derive(Debug)]
pub struct Ended {
    /// The shell's status; `None` when it is unknown (its guard was killed before it could report).
    pub status: Option<ExitStatus>,
    /// The command was stopped on request (the run was cancelled).
    pub stopped: bool,
    /// Processes outlived the shell (e.g. a background job) and were ended.
    pub leftovers: bool,
    /// Some processes could not be ended.
    pub survivors: bool,
    /// The guard itself was killed (its exit status); what remained was ended from here.
    pub guard_lost: Option<ExitStatus>,
}

/// Makes this process a child subreaper (Linux): orphaned descendants become its children instead of
/// init's, so a command step whose guard was killed can still end them. Call it only in a process
/// whose child processes are all started through this module: the step ends and reaps the children
/// that are not guards.
pub fn adopt_orphans() {
    #[cfg(target_os = "linux")]
    unsafe {
        let on: libc::c_ulong = 1;
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, on);
    }
}

pub use imp::{Supervised, spawn};

/// What [`spawn`] hands back besides the process: the command's output streams (when piped).
pub struct Streams {
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
}

impl Supervised {
    /// Waits for the command to end. When `cancelled()` turns true it is stopped: SIGTERM, then
    /// SIGKILL after [`GRACE`].
    pub fn wait(mut self, cancelled: &dyn Fn() -> bool) -> io::Result<Ended> {
        let mut stop_at: Option<Instant> = None;
        loop {
            let end = match self.poll() {
                Ok(end) => end,
                Err(e) => {
                    // Nothing more can be learned about the command: end it rather than lose it.
                    self.kill();
                    return Err(e);
                }
            };
            if let Some(end) = end {
                return Ok(Ended {
                    stopped: stop_at.is_some(),
                    ..end
                });
            }
            match stop_at {
                None if cancelled() => {
                    self.stop();
                    stop_at = Some(Instant::now());
                }
                Some(t) if t.elapsed() > GRACE + KILL_WAIT + Duration::from_secs(5) => {
                    // The guard should have ended everything by now; end it and its tree from here.
                    self.kill();
                }
                _ => {}
            }
            std::thread::sleep(TICK);
        }
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use super::*;
    use std::collections::BTreeSet;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::Child;
    use std::sync::Mutex;

    /// Guards alive in this process: the children that are not strays.
    static GUARDS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

    /// The command under its guard.
    pub struct Supervised {
        guard: Child,
        /// The shell's pid, and so its process group.
        group: libc::pid_t,
        /// Read end of the guard's report pipe (non-blocking).
        report: OwnedFd,
    }

    /// Starts `cmd` (the shell) under a guard. `cmd`'s stdio, directory and environment apply to
    /// the shell; its pre-exec hooks and process group are taken for the guard.
    pub fn spawn(cmd: &mut Command) -> io::Result<(Supervised, Streams)> {
        let (read, write) = pipe()?;
        let wf = unsafe { libc::getpid() };
        let fd = write.as_raw_fd();
        // Safety: `guard::enter` makes only async-signal-safe calls (see there).
        unsafe {
            cmd.pre_exec(move || guard::enter(wf, fd));
        }
        // The guard leads a process group of its own: a terminal's Ctrl-C reaches wf alone, which
        // then stops its steps in order.
        cmd.process_group(0);
        let mut child = {
            let mut guards = GUARDS.lock().unwrap_or_else(|e| e.into_inner());
            let child = cmd.spawn()?;
            guards.insert(child.id());
            child
        };
        drop(write);
        let streams = Streams {
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
        };
        // The guard wrote the shell's pid before the spawn returned (it closes the spawn's
        // status pipe after writing).
        let group = match read_msg(&read) {
            Some(Msg::Started(pid)) => pid,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                forget(child.id());
                return Err(io::Error::other(
                    "the command's guard process did not start",
                ));
            }
        };
        Ok((
            Supervised {
                guard: child,
                group,
                report: read,
            },
            streams,
        ))
    }

    impl Supervised {
        /// The end of the command, once its guard has exited.
        pub(super) fn poll(&mut self) -> io::Result<Option<Ended>> {
            let Some(status) = self.guard.try_wait()? else {
                return Ok(None);
            };
            forget(self.guard.id());
            if let Some(Msg::Ended { status, flags }) = read_msg(&self.report) {
                return Ok(Some(Ended {
                    status: (flags & guard::STATUS != 0).then(|| ExitStatus::from_raw(status)),
                    stopped: false,
                    leftovers: flags & guard::LEFTOVERS != 0,
                    survivors: flags & guard::SURVIVORS != 0,
                    guard_lost: None,
                }));
            }
            // Killed before it reported. Its shell died with it (parent-death signal); what the
            // shell started is in group G or, orphaned, a child of this process (a subreaper).
            let survivors = !end_strays(self.group);
            Ok(Some(Ended {
                status: None,
                stopped: false,
                leftovers: true,
                survivors,
                guard_lost: Some(status),
            }))
        }

        /// Asks the guard to end the tree.
        pub(super) fn stop(&mut self) {
            // The guard is not reaped before `poll` saw it exit, so its pid cannot be reused yet.
            unsafe {
                libc::kill(self.guard.id() as libc::pid_t, libc::SIGTERM);
            }
        }

        /// Kills the guard; `poll` then ends the tree from here.
        pub(super) fn kill(&mut self) {
            let _ = self.guard.kill();
        }
    }

    fn forget(pid: u32) {
        GUARDS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
    }

    /// Ends group `group` and, in a subreaper ([`adopt_orphans`]), this process's children that are
    /// not guards (orphans it adopted), reaping them. False if some were still there after
    /// [`KILL_WAIT`].
    fn end_strays(group: libc::pid_t) -> bool {
        let adopted = is_subreaper();
        let t0 = Instant::now();
        loop {
            let mut left = unsafe { libc::killpg(group, libc::SIGKILL) } == 0;
            if adopted {
                let guards = GUARDS.lock().unwrap_or_else(|e| e.into_inner());
                for pid in own_children() {
                    if guards.contains(&(pid as u32)) {
                        continue;
                    }
                    left = true;
                    let mut st = 0;
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                        libc::waitpid(pid, &mut st, libc::WNOHANG);
                    }
                }
            }
            if !left {
                return true;
            }
            if t0.elapsed() > KILL_WAIT {
                return false;
            }
            std::thread::sleep(TICK);
        }
    }

    fn is_subreaper() -> bool {
        let mut on: libc::c_int = 0;
        let got = unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut on as *mut libc::c_int) };
        got == 0 && on != 0
    }

    /// Children of every thread of this process (orphans are given to one of them).
    fn own_children() -> Vec<libc::pid_t> {
        let mut pids = Vec::new();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return pids;
        };
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                pids.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<libc::pid_t>().ok()),
                );
            }
        }
        pids
    }

    fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [0 as RawFd; 2];
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: pipe2 returned two fresh descriptors that nothing else owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // The guard writes blocking; only this end polls.
        unsafe {
            let flags = libc::fcntl(w.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(w.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
        Ok((r, w))
    }

    enum Msg {
        Started(libc::pid_t),
        Ended { status: i32, flags: u32 },
    }

    fn read_msg(fd: &OwnedFd) -> Option<Msg> {
        let mut buf = [0u8; guard::MSG_LEN];
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n != buf.len() as isize || buf[..4] != guard::MAGIC {
            return None;
        }
        let word = |i: usize| [buf[i], buf[i + 1], buf[i + 2], buf[i + 3]];
        let value = i32::from_le_bytes(word(8));
        let flags = u32::from_le_bytes(word(12));
        match u32::from_le_bytes(word(4)) {
            guard::STARTED => Some(Msg::Started(value)),
            guard::ENDED => Some(Msg::Ended {
                status: value,
                flags,
            }),
            _ => None,
        }
    }

    /// The guard's side. It runs in the child of `fork` inside a multithreaded process, so until it
    /// exits it makes only async-signal-safe calls: system calls on stack buffers, no allocation, no
    /// locks, nothing that can panic.
    mod guard {
        use libc::{c_int, pid_t, sigset_t};
        use std::io;
        use std::mem::zeroed;
        use std::ptr::null_mut;

        pub(super) const MAGIC: [u8; 4] = *b"wfg1";
        pub(super) const MSG_LEN: usize = 16;
        pub(super) const STARTED: u32 = 1;
        pub(super) const ENDED: u32 = 2;
        /// `Ended` flags.
        pub(super) const STATUS: u32 = 1;
        pub(super) const LEFTOVERS: u32 = 2;
        pub(super) const SURVIVORS: u32 = 4;

        const GRACE_MS: u64 = super::GRACE.as_millis() as u64;
        const KILL_WAIT_MS: u64 = super::KILL_WAIT.as_millis() as u64;

        /// The pre-exec hook, in the forked child: becomes the guard, forks the shell (which returns
        /// to exec `sh`), and never returns itself.
        pub(super) fn enter(wf: pid_t, report: c_int) -> io::Result<()> {
            unsafe {
                // The signals that wake the guard are blocked and taken with sigtimedwait, so no
                // handler inherited from wf ever runs here.
                let mut waited: sigset_t = zeroed();
                libc::sigemptyset(&mut waited);
                for s in [
                    libc::SIGTERM,
                    libc::SIGINT,
                    libc::SIGHUP,
                    libc::SIGQUIT,
                    libc::SIGCHLD,
                ] {
                    libc::sigaddset(&mut waited, s);
                }
                let mut before: sigset_t = zeroed();
                if libc::sigprocmask(libc::SIG_BLOCK, &waited, &mut before) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // Variadic arguments are passed as the kernel reads them: full words.
                let on: libc::c_ulong = 1;
                libc::prctl(libc::PR_SET_CHILD_SUBREAPER, on);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                if libc::getppid() != wf {
                    // wf died before the parent-death signal was armed.
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                // Exited children must stay waitable, whatever wf did with SIGCHLD.
                libc::signal(libc::SIGCHLD, libc::SIG_DFL);
                let me = libc::getpid();
                // A raw fork: no atfork handlers of wf's libraries run in this copy of wf.
                let none: libc::c_ulong = 0;
                let flags = libc::SIGCHLD as libc::c_ulong;
                let sh = libc::syscall(libc::SYS_clone, flags, none, none, none, none) as pid_t;
                if sh < 0 {
                    return Err(io::Error::last_os_error());
                }
                if sh == 0 {
                    // The shell-to-be: the spawn's signal mask, dies with its guard, leads group G.
                    libc::sigprocmask(libc::SIG_SETMASK, &before, null_mut());
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                    if libc::getppid() != me {
                        libc::_exit(127);
                    }
                    libc::setpgid(0, 0);
                    return Ok(());
                }
                // Also here: the group must exist before the guard may signal it.
                libc::setpgid(sh, sh);
                libc::signal(libc::SIGPIPE, libc::SIG_IGN);
                send(report, STARTED, sh, 0);
                // Every other descriptor goes, above all the write ends of the command's output
                // pipes and of the spawn's status pipe: their readers wait for EOF.
                close_all_but(report);
                run(wf, sh, report, &waited)
            }
        }

        unsafe fn run(wf: pid_t, sh: pid_t, report: c_int, waited: &sigset_t) -> ! {
            unsafe {
                let mut status: Option<c_int> = None;
                loop {
                    reap(sh, &mut status);
                    if status.is_some() || libc::getppid() != wf {
                        break;
                    }
                    match wait_signal(waited, 200) {
                        libc::SIGTERM | libc::SIGINT | libc::SIGHUP | libc::SIGQUIT => break,
                        _ => {}
                    }
                }
                let mut flags = end_tree(sh, &mut status, waited);
                let code = match status {
                    Some(s) => {
                        flags |= STATUS;
                        s
                    }
                    None => 0,
                };
                send(report, ENDED, code, flags);
                libc::_exit(0)
            }
        }

        /// Ends group `sh` and every child of the guard; the shell's status lands in `status`.
        unsafe fn end_tree(sh: pid_t, status: &mut Option<c_int>, waited: &sigset_t) -> u32 {
            unsafe {
                if !anything_left(sh, status) {
                    return 0;
                }
                signal_tree(sh, libc::SIGTERM);
                // A stopped process acts on SIGTERM only once continued.
                signal_tree(sh, libc::SIGCONT);
                let t0 = now_ms();
                while now_ms() - t0 < GRACE_MS {
                    wait_signal(waited, 20);
                    if !anything_left(sh, status) {
                        return LEFTOVERS;
                    }
                }
                let t1 = now_ms();
                while now_ms() - t1 < KILL_WAIT_MS {
                    // Again each round: a dying process may have forked.
                    signal_tree(sh, libc::SIGKILL);
                    wait_signal(waited, 20);
                    if !anything_left(sh, status) {
                        return LEFTOVERS;
                    }
                }
                LEFTOVERS | SURVIVORS
            }
        }

        /// Reaps whatever has exited; true while group `sh` has members or the guard has children.
        unsafe fn anything_left(sh: pid_t, status: &mut Option<c_int>) -> bool {
            unsafe {
                let children = reap(sh, status);
                let group = libc::kill(-sh, 0) == 0 || *libc::__errno_location() == libc::EPERM;
                children || group
            }
        }

        /// Reaps every exited child, keeping the shell's status; true if children remain.
        unsafe fn reap(sh: pid_t, status: &mut Option<c_int>) -> bool {
            unsafe {
                loop {
                    let mut st: c_int = 0;
                    let pid = libc::waitpid(-1, &mut st, libc::WNOHANG);
                    if pid == sh {
                        *status = Some(st);
                    } else if pid == 0 {
                        return true;
                    } else if pid < 0 {
                        return *libc::__errno_location() == libc::EINTR;
                    }
                }
            }
        }

        unsafe fn signal_tree(sh: pid_t, sig: c_int) {
            unsafe {
                libc::kill(-sh, sig);
                for_each_child(|pid| {
                    libc::kill(pid, sig);
                });
            }
        }

        /// Calls `f` with each child of the guard, read from /proc without allocating.
        unsafe fn for_each_child(mut f: impl FnMut(pid_t)) {
            unsafe {
                let fd = libc::open(
                    c"/proc/thread-self/children".as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                );
                if fd < 0 {
                    return;
                }
                let mut buf = [0u8; 512];
                let (mut pid, mut digits) = (0 as pid_t, false);
                loop {
                    let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                    if n <= 0 {
                        break;
                    }
                    for &b in &buf[..n as usize] {
                        if b.is_ascii_digit() {
                            pid = pid.wrapping_mul(10).wrapping_add((b - b'0') as pid_t);
                            digits = true;
                        } else if digits {
                            f(pid);
                            (pid, digits) = (0, false);
                        }
                    }
                }
                if digits {
                    f(pid);
                }
                libc::close(fd);
            }
        }

        /// The next of the `waited` signals within `ms` milliseconds, or -1.
        unsafe fn wait_signal(waited: &sigset_t, ms: i64) -> c_int {
            let ts = libc::timespec {
                tv_sec: ms / 1000,
                tv_nsec: (ms % 1000) * 1_000_000,
            };
            unsafe { libc::sigtimedwait(waited, null_mut(), &ts) }
        }

        unsafe fn now_ms() -> u64 {
            unsafe {
                let mut ts: libc::timespec = zeroed();
                libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
                ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
            }
        }

        unsafe fn send(fd: c_int, kind: u32, value: i32, flags: u32) {
            let mut msg = [0u8; MSG_LEN];
            msg[..4].copy_from_slice(&MAGIC);
            msg[4..8].copy_from_slice(&kind.to_le_bytes());
            msg[8..12].copy_from_slice(&value.to_le_bytes());
            msg[12..].copy_from_slice(&flags.to_le_bytes());
            // MSG_LEN < PIPE_BUF: the write is atomic.
            unsafe {
                while libc::write(fd, msg.as_ptr().cast(), MSG_LEN) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
            }
        }

        unsafe fn close_all_but(keep: c_int) {
            unsafe {
                let keep = keep as libc::c_ulong;
                let (first, last, flags): (libc::c_ulong, libc::c_ulong, libc::c_ulong) =
                    (0, libc::c_uint::MAX.into(), 0);
                let close_range = |a: libc::c_ulong, b: libc::c_ulong| {
                    libc::syscall(libc::SYS_close_range, a, b, flags) == 0
                };
                let below = keep == first || close_range(first, keep - 1);
                let above = close_range(keep + 1, last);
                if below && above {
                    return;
                }
                // Kernels before 5.9: one close per possible descriptor.
                let mut lim: libc::rlimit = zeroed();
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
                let max = lim.rlim_cur.min(1 << 20) as c_int;
                for fd in 0..max {
                    if fd as libc::c_ulong != keep {
                        libc::close(fd);
                    }
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Child;

    /// The shell, leading its own process group.
    pub struct Supervised {
        shell: Child,
        stop_at: Option<Instant>,
    }

    pub fn spawn(cmd: &mut Command) -> io::Result<(Supervised, Streams)> {
        let mut shell = cmd.process_group(0).spawn()?;
        let streams = Streams {
            stdout: shell.stdout.take(),
            stderr: shell.stderr.take(),
        };
        Ok((
            Supervised {
                shell,
                stop_at: None,
            },
            streams,
        ))
    }

    impl Supervised {
        fn group(&self) -> libc::pid_t {
            self.shell.id() as libc::pid_t
        }

        pub(super) fn poll(&mut self) -> io::Result<Option<Ended>> {
            if let Some(t) = self.stop_at
                && t.elapsed() > GRACE
            {
                unsafe { libc::killpg(self.group(), libc::SIGKILL) };
            }
            let Some(status) = self.shell.try_wait()? else {
                return Ok(None);
            };
            // The group outlives its leader while members remain.
            let left = || unsafe { libc::killpg(self.group(), 0) } == 0;
            let leftovers = left();
            if leftovers {
                unsafe { libc::killpg(self.group(), libc::SIGTERM) };
                let t0 = Instant::now();
                while left() && t0.elapsed() < GRACE {
                    std::thread::sleep(TICK);
                }
                unsafe { libc::killpg(self.group(), libc::SIGKILL) };
            }
            Ok(Some(Ended {
                status: Some(status),
                stopped: false,
                leftovers,
                survivors: false,
                guard_lost: None,
            }))
        }

        pub(super) fn stop(&mut self) {
            unsafe { libc::killpg(self.group(), libc::SIGTERM) };
            self.stop_at = Some(Instant::now());
        }

        pub(super) fn kill(&mut self) {
            unsafe { libc::killpg(self.group(), libc::SIGKILL) };
        }
    }
}
