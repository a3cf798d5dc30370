//! Text with holes: a value of a job request (a job name, an S3 URI, a worker argument) that is
//! partly known when the workflow is compiled and partly only when the job is submitted. The
//! compiled state machine renders each hole as a payload path inside `States.Format`; the SageMaker
//! executor fills it with the value it has. So both render the same `JobSpec`.

/// A value known only when a job is submitted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Var {
    /// The step key (64 hex).
    Key,
    /// The artifact digest (64 hex) of the input in this slot.
    Artifact(String),
    /// The execution (state machine) or run (executor) name, unique per run.
    ExecutionName,
    /// The attempt of this job within the run (0, then 1, ... on retries).
    Attempt,
    /// The FSx for Lustre file system id the job reads from.
    FsxId,
    /// That file system's mount name.
    FsxMount,
}

/// A piece of a `Text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Lit(String),
    Var(Var),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Text(Vec<Piece>);

impl Text {
    pub fn lit(s: impl Into<String>) -> Text {
        Text(vec![Piece::Lit(s.into())])
    }

    pub fn var(v: Var) -> Text {
        Text(vec![Piece::Var(v)])
    }

    pub fn then_lit(mut self, s: impl Into<String>) -> Text {
        let s = s.into();
        if s.is_empty() {
            return self;
        }
        match self.0.last_mut() {
            Some(Piece::Lit(last)) => last.push_str(&s),
            _ => self.0.push(Piece::Lit(s)),
        }
        self
    }

    pub fn then_var(mut self, v: Var) -> Text {
        self.0.push(Piece::Var(v));
        self
    }

    pub fn pieces(&self) -> &[Piece] {
        &self.0
    }

    /// The text, when it has no holes.
    pub fn as_lit(&self) -> Option<String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Var(_) => return None,
            }
        }
        Some(out)
    }

    /// The text with every hole filled by `value`.
    pub fn resolve(&self, value: &dyn Fn(&Var) -> String) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Lit(s) => s.clone(),
                Piece::Var(v) => value(v),
            })
            .collect()
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::lit(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text::lit(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_merge_and_holes_fill() {
        let t = Text::lit("a-")
            .then_lit("b-")
            .then_var(Var::ExecutionName)
            .then_lit("")
            .then_lit("-")
            .then_var(Var::Attempt);
        assert_eq!(t.pieces().len(), 4);
        assert_eq!(t.as_lit(), None);
        let s = t.resolve(&|v| match v {
            Var::ExecutionName => "run".into(),
            _ => "0".into(),
        });
        assert_eq!(s, "a-b-run-0");
        assert_eq!(Text::from("x").as_lit().as_deref(), Some("x"));
    }
}
