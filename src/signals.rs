//! Stopping wf from outside. SIGINT (Ctrl-C), SIGTERM (a supervisor's stop, CI's timeout, SageMaker's
//! StopTrainingJob) and SIGHUP (the terminal went away) all cancel the work the same way: running
//! steps are stopped, their processes ended, nothing partial is cached, and wf exits with 128 + the
//! signal's number, as a shell reports a command that a signal ended. A second signal exits at once;
//! command steps' process trees are still ended by their guards (steps/src/command/supervise.rs).

use crate::error::Exit;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use tokio::signal::unix::{SignalKind, signal};
use wf_engine::CancelToken;

/// The signal that stopped the work, if one did.
#[derive(Clone)]
pub struct Stop(Arc<AtomicI32>);

impl Stop {
    pub fn signal(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    /// The signal's name (`SIGTERM`), for messages and `--json`.
    pub fn name(&self) -> Option<&'static str> {
        self.signal().map(name)
    }

    /// The exit code when a signal stopped the work.
    pub fn exit(&self) -> Option<Exit> {
        self.signal().map(Exit::for_signal)
    }
}

fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Cancels `cancel` on the first of SIGINT, SIGTERM and SIGHUP; exits on the second. The handlers
/// are installed when this returns.
pub fn watch(cancel: CancelToken) -> Stop {
    let stop = Stop(Arc::new(AtomicI32::new(0)));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let seen = stop.clone();
    let watcher = move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("warning: cannot watch for signals: {e}");
                let _ = ready_tx.send(());
                return;
            }
        };
        rt.block_on(async move {
            let kinds = [
                (libc::SIGINT, SignalKind::interrupt()),
                (libc::SIGTERM, SignalKind::terminate()),
                (libc::SIGHUP, SignalKind::hangup()),
            ];
            let mut streams = Vec::new();
            for (sig, kind) in kinds {
                match signal(kind) {
                    Ok(s) => streams.push((sig, s)),
                    Err(e) => eprintln!("warning: cannot watch for {}: {e}", name(sig)),
                }
            }
            let _ = ready_tx.send(());
            loop {
                let next = next_signal(&mut streams).await;
                let Some(sig) = next else { return };
                if seen
                    .0
                    .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    eprintln!("interrupted ({}): stopping running steps", name(sig));
                    cancel.cancel();
                } else {
                    eprintln!("interrupted again ({}): exiting now", name(sig));
                    std::process::exit(Exit::for_signal(sig) as i32);
                }
            }
        });
    };
    if let Err(e) = std::thread::Builder::new()
        .name("wf-signals".into())
        .spawn(watcher)
    {
        eprintln!("warning: cannot watch for signals: {e}");
        return stop;
    }
    let _ = ready_rx.recv();
    stop
}

/// The next signal of any of `streams`.
async fn next_signal(streams: &mut [(i32, tokio::signal::unix::Signal)]) -> Option<i32> {
    std::future::poll_fn(|cx| {
        for (sig, s) in streams.iter_mut() {
            if let std::task::Poll::Ready(got) = s.poll_recv(cx) {
                return std::task::Poll::Ready(got.map(|()| *sig));
            }
        }
        std::task::Poll::Pending
    })
    .await
}
