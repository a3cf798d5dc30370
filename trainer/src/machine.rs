//! What of the machine decides the bits of a training: the CPU, the instruction-set extensions
//! detected at run time (they pick the GEMM microkernels the convolutions run on) and the threads
//! (the weight gradients of a convolution are summed in one partial sum per thread). Recorded in
//! `train.json` and the model card.
//!
//! Which determinism holds: the same workflow, commit and build retrained on the same kind of
//! machine (the same CPU model, hence the same kernels and cache-sized GEMM blocking, and the same
//! threads; or the same GPU model and CUDA libraries) gives the same bytes. Another CPU gives close
//! but different numbers: an AVX2+FMA kernel rounds differently from a scalar one, and gemm sizes
//! its blocks (the order of a dot product's partial sums) from the caches it detects. There is no
//! portable bit-exact CPU path: one would need kernels and blocking fixed regardless of the CPU and
//! a thread-independent reduction, several times slower than the tuned ones.

use serde::{Deserialize, Serialize};

/// The machine a training ran on, as far as it decides the numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// `x86_64`, `aarch64`, ...
    pub arch: String,
    /// The CPU's model name (`/proc/cpuinfo`); empty where it cannot be read.
    pub cpu: String,
    /// The extensions among those that select kernels which this CPU has, detected at run time
    /// (x86_64: `avx`, `avx2`, `fma`, `avx512f`; aarch64: `neon`).
    pub features: Vec<String>,
    /// The GEMM microkernels the convolutions run on: `fma` (AVX2 + FMA), `neon` or `scalar`. gemm
    /// is built without its AVX-512 kernels, so an AVX-512 CPU runs `fma` too.
    pub gemm_kernel: String,
    /// Data caches as the OS reports them (`L1d 48K`, `L2 2048K`, ...), which size gemm's blocks.
    #[serde(default)]
    pub caches: Vec<String>,
    /// Threads the training ran on.
    pub threads: usize,
}

impl Machine {
    /// This machine, training on `threads` threads.
    pub fn detect(threads: usize) -> Machine {
        let features = detected_features();
        let has = |f: &str| features.iter().any(|g| g == f);
        let gemm_kernel = if cfg!(any(target_arch = "x86", target_arch = "x86_64")) && has("fma") {
            "fma"
        } else if cfg!(target_arch = "aarch64") && has("neon") {
            "neon"
        } else {
            "scalar"
        };
        Machine {
            arch: std::env::consts::ARCH.to_string(),
            cpu: cpu_model().unwrap_or_default(),
            gemm_kernel: gemm_kernel.to_string(),
            features,
            caches: caches(),
            threads,
        }
    }

    /// One line for people: `Intel Xeon ... (x86_64; avx, avx2, fma; GEMM fma), 2 threads`.
    pub fn describe(&self) -> String {
        let cpu = if self.cpu.is_empty() {
            "unknown CPU"
        } else {
            &self.cpu
        };
        let features = if self.features.is_empty() {
            "no SIMD extensions".to_string()
        } else {
            self.features.join(", ")
        };
        let caches = if self.caches.is_empty() {
            String::new()
        } else {
            format!("; {}", self.caches.join(", "))
        };
        format!(
            "{cpu} ({}; {features}; GEMM kernel {}{caches}), {} thread{}",
            self.arch,
            self.gemm_kernel,
            self.threads,
            if self.threads == 1 { "" } else { "s" }
        )
    }
}

fn detected_features() -> Vec<String> {
    #[allow(unused_mut)]
    let mut out: Vec<&str> = Vec::new();
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if std::arch::is_x86_feature_detected!("avx") {
            out.push("avx");
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            out.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            out.push("fma");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            out.push("avx512f");
        }
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        out.push("neon");
    }
    out.into_iter().map(str::to_string).collect()
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| matches!(k.trim(), "model name" | "Model" | "cpu model"))
        .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|v| !v.is_empty())
}

/// `L1d 48K`-style lines for cpu0's data and unified caches (Linux sysfs).
fn caches() -> Vec<String> {
    let root = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    let mut out = Vec::new();
    for i in 0..8 {
        let dir = root.join(format!("index{i}"));
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .ok()
                .map(|s| s.trim().to_string())
        };
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
        else {
            continue;
        };
        let suffix = match kind.as_str() {
            "Data" => "d",
            "Unified" => "",
            _ => continue, // instruction caches do not decide any arithmetic
        };
        out.push(format!("L{level}{suffix} {size}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_this_machine_and_describes_it() {
        let m = Machine::detect(3);
        assert_eq!(m.arch, std::env::consts::ARCH);
        assert_eq!(m.threads, 3);
        assert!(["fma", "neon", "scalar"].contains(&m.gemm_kernel.as_str()));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            m.gemm_kernel == "fma",
            std::arch::is_x86_feature_detected!("fma")
        );
        let d = m.describe();
        assert!(d.contains("GEMM kernel") && d.ends_with("3 threads"), "{d}");
        // Stable: a second detection is the same record (train.json must not vary run to run).
        assert_eq!(Machine::detect(3), m);
    }
}
