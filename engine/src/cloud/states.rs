//! State names of a compiled state machine (docs/cloud.md §4, §7): the compiler names its states
//! with these, and `wf status` maps an execution's history back to steps with `State::parse`.

/// The first state of every compiled machine.
pub const INIT: &str = "Init";

/// The states around independent steps (docs/cloud.md §4), numbered from 1 by the depth of the
/// steps they run (`Parallel 2`: the steps two inputs deep). None of these names parses as a step's
/// state.
pub mod branches {
    /// The `Parallel` state whose branches are the independent steps.
    pub fn parallel(n: usize) -> String {
        format!("Parallel {n}")
    }

    /// The Pass after it that gathers the branches' outputs under `$.steps`.
    pub fn merge(n: usize) -> String {
        format!("Parallel {n} merge")
    }
}

pub use branches::{merge, parallel};

/// The part of a step's state name after `<step id>.`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Key,
    Lookup,
    Run,
    Commit,
    Published,
    /// The job ended without publishing the entry.
    NotPublished,
    Done,
    /// Choice: a failed SageMaker job (its description in the error's cause), or another error?
    Diagnose,
    /// Reads the failed job's description out of the error.
    Job,
    /// Choice: does the description hold a `FailureReason`?
    HasReason,
    /// Fails the step with the job's `FailureReason`.
    JobFailed,
    /// Fails the step with the error.
    Failed,
    Fsx(Fsx),
}

/// The FSx for Lustre states on a Training step's miss path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fsx {
    Create,
    Wait,
    Describe,
    Ready,
    Poll,
    HasMount,
    Mount,
    DefaultMount,
    Delete,
    DeleteAfterError,
    /// The created file system ended FAILED or did not become AVAILABLE in time.
    NotAvailable,
}

impl Fsx {
    const ALL: [Fsx; 11] = [
        Fsx::Create,
        Fsx::Wait,
        Fsx::Describe,
        Fsx::Ready,
        Fsx::Poll,
        Fsx::HasMount,
        Fsx::Mount,
        Fsx::DefaultMount,
        Fsx::Delete,
        Fsx::DeleteAfterError,
        Fsx::NotAvailable,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Fsx::Create => "Fsx.Create",
            Fsx::Wait => "Fsx.Wait",
            Fsx::Describe => "Fsx.Describe",
            Fsx::Ready => "Fsx.Ready",
            Fsx::Poll => "Fsx.Poll",
            Fsx::HasMount => "Fsx.HasMount",
            Fsx::Mount => "Fsx.Mount",
            Fsx::DefaultMount => "Fsx.DefaultMount",
            Fsx::Delete => "Fsx.Delete",
            Fsx::DeleteAfterError => "Fsx.DeleteAfterError",
            Fsx::NotAvailable => "Fsx.NotAvailable",
        }
    }
}

impl State {
    const PLAIN: [State; 12] = [
        State::Key,
        State::Lookup,
        State::Run,
        State::Commit,
        State::Published,
        State::NotPublished,
        State::Done,
        State::Diagnose,
        State::Job,
        State::HasReason,
        State::JobFailed,
        State::Failed,
    ];

    fn suffix(self) -> &'static str {
        match self {
            State::Key => "Key",
            State::Lookup => "Lookup",
            State::Run => "Run",
            State::Commit => "Commit",
            State::Published => "Published",
            State::NotPublished => "NotPublished",
            State::Done => "Done",
            State::Diagnose => "Diagnose",
            State::Job => "Job",
            State::HasReason => "HasReason",
            State::JobFailed => "JobFailed",
            State::Failed => "Failed",
            State::Fsx(f) => f.suffix(),
        }
    }

    /// `<step id>.<suffix>`.
    pub fn of(self, step: &str) -> String {
        format!("{step}.{}", self.suffix())
    }

    /// The step id and state of a state name; `None` for `Init` and names not made by `of`.
    pub fn parse(name: &str) -> Option<(&str, State)> {
        let all = State::PLAIN
            .into_iter()
            .chain(Fsx::ALL.into_iter().map(State::Fsx));
        // The longest matching suffix wins (`Fsx.Delete` inside `Fsx.DeleteAfterError`; ids may
        // hold dots themselves only in ways `of` would still end with a full suffix).
        all.filter_map(|s| {
            let id = name.strip_suffix(s.suffix())?.strip_suffix('.')?;
            (!id.is_empty()).then_some((id, s))
        })
        .max_by_key(|(_, s)| s.suffix().len())
    }

    /// The longest name a step's states can get (for Step Functions' 80-character limit).
    pub fn longest(step: &str) -> String {
        State::Fsx(Fsx::DeleteAfterError).of(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in State::PLAIN
            .into_iter()
            .chain(Fsx::ALL.into_iter().map(State::Fsx))
        {
            for id in ["train", "a.b", "fail-early"] {
                assert_eq!(State::parse(&s.of(id)), Some((id, s)), "{}", s.of(id));
            }
        }
        assert_eq!(State::parse(INIT), None);
        assert_eq!(State::parse(".Run"), None);
        for n in [branches::parallel(1), branches::merge(1)] {
            assert_eq!(State::parse(&n), None, "{n}");
        }
        assert_eq!(State::parse("x.Other"), None);
        assert!(
            State::longest("t")
                .chars()
                .count()
                .ge(&State::Lookup.of("t").len())
        );
    }
}
