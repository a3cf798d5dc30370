//! Source positions and user-facing diagnostics: every validation error is collected, sorted, and
//! printed as `FILE:LINE:COL: message` so editors and CI logs can jump to it.

use std::collections::BinaryHeap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A position in a source file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span {
    pub line: usize,
    pub col: usize,
}

impl Span {
    pub fn new(line: usize, col: usize) -> Self {
        Span { line, col }
    }
}

/// One problem in one file, with an optional hint ("did you mean ...").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub span: Span,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.span.line,
            self.span.col,
            self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// At most this many diagnostics of one file are listed: the first by position. The rest are counted
/// in one closing line, so a file of a million bad keys costs bounded memory and stays readable.
pub const MAX_DIAGNOSTICS: usize = 1000;

/// All diagnostics of one file, collected in any order and reported sorted by position.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    file: PathBuf,
    /// The first `MAX_DIAGNOSTICS` by position; the greatest on top, to be dropped for a lesser one.
    items: BinaryHeap<ByPosition>,
    /// How many were dropped, and the first position among them.
    omitted: usize,
    first_omitted: Option<Span>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ByPosition(Diagnostic);

impl Ord for ByPosition {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        fn key(d: &Diagnostic) -> (Span, &str, Option<&str>, &Path) {
            (d.span, &d.message, d.help.as_deref(), &d.file)
        }
        key(&self.0).cmp(&key(&other.0))
    }
}

impl PartialOrd for ByPosition {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Diagnostics {
    pub fn new(file: &Path) -> Self {
        Diagnostics {
            file: file.to_path_buf(),
            ..Diagnostics::default()
        }
    }

    /// Whether a diagnostic at `span` would be listed; one that would not is only counted, so a
    /// caller may skip working out its help.
    pub fn would_list(&self, span: Span) -> bool {
        self.items.len() < MAX_DIAGNOSTICS
            || self.items.peek().is_some_and(|top| span <= top.0.span)
    }

    /// Counts, without keeping, one that would be dropped at once: past the cap, a file of a million
    /// problems then costs no more than one of a thousand.
    fn omit(&mut self, span: Span) -> bool {
        let full = !self.would_list(span);
        if full {
            self.omitted += 1;
            self.first_omitted = Some(self.first_omitted.map_or(span, |s| s.min(span)));
        }
        full
    }

    fn push(&mut self, d: Diagnostic) {
        self.items.push(ByPosition(d));
        if self.items.len() > MAX_DIAGNOSTICS
            && let Some(ByPosition(dropped)) = self.items.pop()
        {
            self.omitted += 1;
            self.first_omitted = Some(
                self.first_omitted
                    .map_or(dropped.span, |s| s.min(dropped.span)),
            );
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn error(&mut self, span: Span, message: impl Into<String>) {
        if self.omit(span) {
            return;
        }
        self.push(Diagnostic {
            file: self.file.clone(),
            span,
            message: message.into(),
            help: None,
        });
    }

    pub fn error_with_help(
        &mut self,
        span: Span,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        if self.omit(span) {
            return;
        }
        self.push(Diagnostic {
            file: self.file.clone(),
            span,
            message: message.into(),
            help: Some(help.into()),
        });
    }

    /// Adds "did you mean `x`?" as help when a close candidate exists.
    pub fn error_suggest<'a>(
        &mut self,
        span: Span,
        message: impl Into<String>,
        got: &str,
        candidates: impl IntoIterator<Item = &'a str>,
    ) {
        match did_you_mean(got, candidates) {
            Some(best) => self.error_with_help(span, message, format!("did you mean `{best}`?")),
            None => self.error(span, message),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many were reported, listed or not.
    pub fn len(&self) -> usize {
        self.items.len() + self.omitted
    }

    /// Sorted by position, duplicates removed; past `MAX_DIAGNOSTICS`, a last line counts the rest
    /// (every one dropped sorts after every one kept).
    pub fn into_sorted(self) -> Vec<Diagnostic> {
        let mut items: Vec<Diagnostic> = self
            .items
            .into_sorted_vec()
            .into_iter()
            .map(|ByPosition(d)| d)
            .collect();
        items.dedup();
        if let Some(span) = self.first_omitted {
            items.push(Diagnostic {
                file: self.file,
                span,
                message: format!(
                    "{} more problems from here on are not listed (the first {MAX_DIAGNOSTICS} are)",
                    self.omitted
                ),
                help: None,
            });
        }
        items
    }

    pub fn extend(&mut self, other: Diagnostics) {
        for ByPosition(d) in other.items {
            self.push(d);
        }
        self.omitted += other.omitted;
        if let Some(s) = other.first_omitted {
            self.first_omitted = Some(self.first_omitted.map_or(s, |f| f.min(s)));
        }
    }
}

/// A non-empty, sorted list of diagnostics: the error type of workflow loading.
#[derive(Debug, Clone)]
pub struct DiagnosticList(pub Vec<Diagnostic>);

impl fmt::Display for DiagnosticList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DiagnosticList {}

/// Names longer than this get no suggestion: edit distance costs the product of the two lengths,
/// and a typo in a name this long is better found by reading it.
const MAX_SUGGEST_LEN: usize = 64;

/// The closest candidate by edit distance, if it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    got: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut unbounded = usize::MAX;
    did_you_mean_within(got, candidates, &mut unbounded)
}

/// `did_you_mean` that spends at most `budget` character comparisons, over as many calls as share
/// it: once it is spent, no suggestion (rather than one from a partial search).
pub fn did_you_mean_within<'a>(
    got: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    budget: &mut usize,
) -> Option<&'a str> {
    let got: Vec<char> = got.chars().collect();
    if got.len() > MAX_SUGGEST_LEN {
        return None;
    }
    let mut best: Option<(usize, &str)> = None;
    let mut row = Vec::new();
    for c in candidates {
        let n = c.chars().count();
        let limit = (n.max(got.len()) / 3).max(1);
        // The distance is at least the difference in length.
        if n > MAX_SUGGEST_LEN || n.abs_diff(got.len()) > limit {
            continue;
        }
        let cost = (n + 1) * (got.len() + 1);
        if *budget < cost {
            *budget = 0;
            return None;
        }
        *budget -= cost;
        let d = osa_distance(&got, c, &mut row);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Optimal-string-alignment distance: edits plus adjacent transpositions (`trian` → `train` is 1).
/// Three rows of the table, reused through `rows`.
fn osa_distance(a: &[char], b: &str, rows: &mut Vec<usize>) -> usize {
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    rows.clear();
    rows.resize(3 * w, 0);
    let (mut prev2, mut prev, mut cur) = (0, w, 2 * w);
    for (j, cell) in rows[prev..prev + w].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        rows[cur] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (rows[prev + j] + 1)
                .min(rows[cur + j - 1] + 1)
                .min(rows[prev + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(rows[prev2 + j - 2] + 1);
            }
            rows[cur + j] = v;
        }
        (prev2, prev, cur) = (prev, cur, prev2);
    }
    rows[prev + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("epoch", ["epochs", "lr", "seed"]),
            Some("epochs")
        );
        assert_eq!(
            did_you_mean("comand", ["command", "fetch-dataset"]),
            Some("command")
        );
        assert_eq!(did_you_mean("zzzzzz", ["command"]), None);
        assert_eq!(did_you_mean("trian", ["train", "fetch"]), Some("train"));
        assert_eq!(did_you_mean("", ["a", "bcd"]), Some("a"));
        assert_eq!(did_you_mean("ab", ["ba"]), Some("ba"));
    }

    #[test]
    fn past_the_cap_the_first_by_position_are_listed_and_the_rest_counted() {
        let mut d = Diagnostics::new(Path::new("f.yaml"));
        // Reported out of order, as validation phases do.
        for line in (1..=MAX_DIAGNOSTICS + 5).rev() {
            d.error(Span::new(line, 1), "bad");
        }
        assert_eq!(d.len(), MAX_DIAGNOSTICS + 5);
        let list = d.into_sorted();
        assert_eq!(list.len(), MAX_DIAGNOSTICS + 1);
        assert!(list.windows(2).all(|w| w[0].span <= w[1].span));
        assert_eq!(
            list[MAX_DIAGNOSTICS - 1].span,
            Span::new(MAX_DIAGNOSTICS, 1)
        );
        assert_eq!(
            list[MAX_DIAGNOSTICS].to_string(),
            format!(
                "f.yaml:{}:1: 5 more problems from here on are not listed (the first {MAX_DIAGNOSTICS} are)",
                MAX_DIAGNOSTICS + 1
            )
        );
    }

    #[test]
    fn distance_matches_the_full_table() {
        let mut rows = Vec::new();
        let d = |a: &str, b: &str, rows: &mut Vec<usize>| {
            osa_distance(&a.chars().collect::<Vec<_>>(), b, rows)
        };
        assert_eq!(d("kitten", "sitting", &mut rows), 3);
        assert_eq!(d("ca", "abc", &mut rows), 3);
        assert_eq!(d("", "abc", &mut rows), 3);
        assert_eq!(d("abc", "", &mut rows), 3);
        assert_eq!(d("trian", "train", &mut rows), 1);
        assert_eq!(d("héllo", "hello", &mut rows), 1);
    }

    #[test]
    fn suggestions_stop_when_the_budget_is_spent() {
        let ids: Vec<String> = (0..1000).map(|i| format!("step{i}")).collect();
        let mut budget = 100;
        assert_eq!(
            did_you_mean_within("step99x", ids.iter().map(String::as_str), &mut budget),
            None
        );
        assert_eq!(budget, 0);
        let mut budget = usize::MAX;
        assert_eq!(
            did_you_mean_within("step99x", ids.iter().map(String::as_str), &mut budget),
            Some("step99")
        );
        assert_eq!(
            did_you_mean(&"a".repeat(65), ["a".repeat(65).as_str()]),
            None
        );
    }
}
