//! Counted nouns in messages: `1 case`, `2 cases`, `1 staging directory`.

use std::fmt::Display;

/// `n` and `noun` (singular) in the number `n` asks for: `plural(1, "case")` is `1 case`,
/// `plural(3, "entry")` `3 entries`.
pub fn plural<N: TryInto<u64> + Display + Copy>(n: N, noun: &str) -> String {
    if matches!(n.try_into(), Ok(1)) {
        format!("{n} {noun}")
    } else {
        format!("{n} {}", plural_of(noun))
    }
}

/// The plural of an English noun (or of a phrase's last word) by the regular rules (`epoch`, whose
/// `ch` sounds like `k`, excepted).
pub fn plural_of(noun: &str) -> String {
    let lower = noun.to_ascii_lowercase();
    if lower.ends_with("epoch") {
        return format!("{noun}s");
    }
    let consonant_y = lower.ends_with('y')
        && !lower[..lower.len() - 1].ends_with(['a', 'e', 'i', 'o', 'u'])
        && lower.len() > 1;
    if consonant_y {
        format!("{}ies", &noun[..noun.len() - 1])
    } else if ["s", "x", "z", "ch", "sh"]
        .iter()
        .any(|e| lower.ends_with(e))
    {
        format!("{noun}es")
    } else {
        format!("{noun}s")
    }
}

/// A byte count for people, in binary units: `512 B`, `1.5 KiB`, `810.4 GiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_is_singular_everything_else_plural() {
        assert_eq!(plural(1usize, "case"), "1 case");
        assert_eq!(plural(0u64, "case"), "0 cases");
        assert_eq!(plural(2u32, "epoch"), "2 epochs");
        assert_eq!(plural(2, "batch"), "2 batches");
        assert_eq!(plural(1, "staging directory"), "1 staging directory");
        assert_eq!(plural(5, "staging directory"), "5 staging directories");
        assert_eq!(plural(2, "entry"), "2 entries");
        assert_eq!(plural(2, "copy"), "2 copies");
        assert_eq!(plural(2, "key"), "2 keys");
        assert_eq!(plural(2, "process"), "2 processes");
        assert_eq!(plural(2, "GPU"), "2 GPUs");
        assert_eq!(plural(-1i64, "byte"), "-1 bytes");
    }
}
