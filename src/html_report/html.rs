//! The small pieces of HTML the report is made of: escaping, data URIs, the model card's
//! markdown subset, durations and dates.

use std::fmt::Write;

/// Text for element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An `<img>` whose PNG bytes are inside it.
pub fn png_img(png: &[u8], alt: &str, class: &str) -> String {
    format!(
        "<img class=\"{}\" alt=\"{}\" src=\"data:image/png;base64,{}\">",
        escape(class),
        escape(alt),
        base64(png)
    )
}

/// Inline markdown of the model card: `code` spans; everything else as text.
fn inline(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in s.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", escape(part));
        } else {
            out.push_str(&escape(part));
        }
    }
    out
}

/// The markdown the model card is written in: `#` headings, `-` lists, paragraphs, code spans.
pub fn markdown(text: &str) -> String {
    let mut out = String::new();
    let mut in_list = false;
    for line in text.lines() {
        let t = line.trim_end();
        let item = t.strip_prefix("- ");
        if in_list && item.is_none() {
            out.push_str("</ul>\n");
            in_list = false;
        }
        if let Some(item) = item {
            if !in_list {
                out.push_str("<ul>\n");
                in_list = true;
            }
            let _ = writeln!(out, "<li>{}</li>", inline(item));
        } else if let Some(h) = t.strip_prefix('#') {
            let level = 1 + h.chars().take_while(|&c| c == '#').count();
            let h = h.trim_start_matches('#').trim();
            // The card sits inside a section: its headings start one level below the section's.
            let level = (level + 3).min(6);
            let _ = writeln!(out, "<h{level}>{}</h{level}>", inline(h));
        } else if !t.is_empty() {
            let _ = writeln!(out, "<p>{}</p>", inline(t));
        }
    }
    if in_list {
        out.push_str("</ul>\n");
    }
    out
}

/// `0.42 s`, `12.3 s`, `7 min 03 s`, `2 h 05 min`.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".into();
    }
    if seconds < 10.0 {
        return format!("{seconds:.2} s");
    }
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    let s = seconds.round() as u64;
    if s < 3600 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{} h {:02} min", s / 3600, s % 3600 / 60)
    }
}

/// `2026-12-06 14:05 UTC`.
pub fn date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Days since 1970-01-01 → civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn markup_is_escaped_and_the_card_subset_renders() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let html = markdown("# Title <b>\n\n- a `x<y`\n- b\ntext\n");
        assert_eq!(
            html,
            "<h4>Title &lt;b&gt;</h4>\n<ul>\n<li>a <code>x&lt;y</code></li>\n<li>b</li>\n</ul>\n<p>text</p>\n"
        );
    }

    #[test]
    fn durations_and_dates_read_as_people_write_them() {
        assert_eq!(duration(0.0123), "0.01 s");
        assert_eq!(duration(42.25), "42.2 s");
        assert_eq!(duration(423.0), "7 min 03 s");
        assert_eq!(duration(7500.0), "2 h 05 min");
        assert_eq!(date(0), "1970-01-01 00:00 UTC");
        assert_eq!(date(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(date(1_798_761_599), "2026-12-31 23:59 UTC");
    }
}
