//! Allocation sizes, checked before allocating: an operation whose buffers would not fit is refused
//! with an error naming what they were for, instead of the allocator aborting the process
//! ("memory allocation failed", exit 134) or the kernel killing it.
//!
//! The limit, for the new buffers of one operation (a resampled grid, a sliding-window pass):
//! - the memory available when the operation starts: `MemAvailable` of `/proc/meminfo` on Linux
//!   (what can be allocated without swapping), [`FALLBACK_LIMIT`] where that cannot be read;
//! - lowered by `WF_MEMORY_LIMIT` when set: bytes, or a number with a `K`, `M`, `G` or `T` suffix
//!   (powers of 1024), e.g. `WF_MEMORY_LIMIT=8G` on a machine shared with other work.
//!
//! The estimates callers pass are lower bounds (the buffers they are sure to allocate), so a refusal
//! means the operation could not have finished; passing the check does not promise it will.

use std::fmt;

/// The limit where `/proc/meminfo` cannot be read (not Linux, or a restricted sandbox).
pub const FALLBACK_LIMIT: u64 = 16 << 30;

/// The environment variable that lowers the limit.
pub const LIMIT_ENV: &str = "WF_MEMORY_LIMIT";

/// The limit now, and where it comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub bytes: u64,
    pub source: &'static str,
}

/// A byte count as people read it: `1.5 GiB`.
pub struct Bytes(pub u128);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
        let mut v = self.0 as f64;
        let mut unit = 0;
        while v >= 1024.0 && unit + 1 < UNITS.len() {
            v /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} bytes", self.0)
        } else {
            write!(f, "{v:.1} {}", UNITS[unit])
        }
    }
}

/// `MemAvailable` from the text of `/proc/meminfo`, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut parts = line["MemAvailable:".len()..].split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => n.checked_mul(1024),
        Some(_) => None,
    }
}

/// `WF_MEMORY_LIMIT`'s value in bytes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = s[digits.len()..].to_ascii_uppercase();
    let shift = match suffix.trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// The limit from what the machine reports and what the environment asks for.
fn limit_from(meminfo: Option<&str>, env: Option<&str>) -> Result<Limit, String> {
    let machine = match meminfo.and_then(mem_available) {
        Some(bytes) => Limit {
            bytes,
            source: "available memory (MemAvailable)",
        },
        None => Limit {
            bytes: FALLBACK_LIMIT,
            source: "the memory limit where /proc/meminfo cannot be read",
        },
    };
    let Some(text) = env.filter(|t| !t.trim().is_empty()) else {
        return Ok(machine);
    };
    let bytes = parse_size(text).ok_or_else(|| {
        format!("{LIMIT_ENV}={text} is not a size (bytes, or a number with K, M, G or T)")
    })?;
    Ok(if bytes < machine.bytes {
        Limit {
            bytes,
            source: LIMIT_ENV,
        }
    } else {
        machine
    })
}

/// The limit now (see the module docs).
pub fn limit() -> Result<Limit, String> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let env = std::env::var(LIMIT_ENV).ok();
    limit_from(meminfo.as_deref(), env.as_deref())
}

/// Refuses `bytes` of new buffers over the limit; the error says how much was asked and allowed,
/// to be prefixed with what the buffers are for.
pub fn check(bytes: u128) -> Result<(), String> {
    let l = limit()?;
    if bytes > l.bytes as u128 {
        return Err(format!(
            "needs at least {} of memory, more than the {} of {}",
            Bytes(bytes),
            Bytes(l.bytes as u128),
            l.source
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str =
        "MemTotal:       24683784 kB\nMemFree:         2000000 kB\nMemAvailable:   22724716 kB\n";

    #[test]
    fn the_limit_is_mem_available_or_lower() {
        let avail = 22724716 * 1024;
        assert_eq!(limit_from(Some(MEMINFO), None).unwrap().bytes, avail);
        assert_eq!(
            limit_from(Some(MEMINFO), Some("1G")).unwrap(),
            Limit {
                bytes: 1 << 30,
                source: LIMIT_ENV
            }
        );
        // The environment lowers the limit, never raises it past what is there.
        assert_eq!(limit_from(Some(MEMINFO), Some("1T")).unwrap().bytes, avail);
        assert_eq!(limit_from(None, None).unwrap().bytes, FALLBACK_LIMIT);
        assert_eq!(
            limit_from(Some("junk"), None).unwrap().bytes,
            FALLBACK_LIMIT
        );
        assert!(
            limit_from(Some(MEMINFO), Some("lots"))
                .unwrap_err()
                .contains("WF_MEMORY_LIMIT=lots")
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("1t"), Some(1 << 40));
        assert_eq!(parse_size("3X"), None);
        assert_eq!(parse_size("99999999999T"), None);
        assert_eq!(Bytes(512).to_string(), "512 bytes");
        assert_eq!(Bytes(3 << 29).to_string(), "1.5 GiB");
    }
}
