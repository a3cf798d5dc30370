//! Time per kernel, for finding where a training step goes (`unet_speed --profile`).
//!
//! Off by default: each instrumented kernel then pays one relaxed atomic load. When on, every
//! call adds its wall time to a table keyed by the kernel and its shape, read with [`take`].
//! Keys starting with `pass: ` time a whole pass that contains kernels (the hand-written
//! backward's forward, loss and backward passes), not a kernel.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<BTreeMap<String, (u64, f64)>> = Mutex::new(BTreeMap::new());

/// Starts (or stops) recording.
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Whether kernels are being timed.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The recorded (kernel, calls, seconds), sorted by kernel name; the table is emptied.
pub fn take() -> Vec<(String, u64, f64)> {
    let mut t = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut *t)
        .into_iter()
        .map(|(k, (n, s))| (k, n, s))
        .collect()
}

/// Times the rest of the enclosing scope under the name `key()` builds (only built when on).
pub(crate) struct Scope(Option<(String, Instant)>);

pub(crate) fn scope(key: impl FnOnce() -> String) -> Scope {
    Scope(enabled().then(|| (key(), Instant::now())))
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some((k, t0)) = self.0.take() {
            let s = t0.elapsed().as_secs_f64();
            let mut t = TABLE.lock().unwrap_or_else(|p| p.into_inner());
            let e = t.entry(k).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += s;
        }
    }
}
