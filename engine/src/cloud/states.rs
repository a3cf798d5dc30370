//! State names of a compiled state machine (docs/cloud.md §4, §7): the compiler names its states
//! with these, and `wf status` maps an execution's history back to steps with `State::parse`.

/// The first state of every compiled machine.
pub const INIT: &str = "Init";

/// The part of a step's state name after `<step id>.`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Key,
    Lookup,
    Run,
    Commit,
    Published,
    Done,
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
}

impl Fsx {
    const ALL: [Fsx; 10] = [
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
        }
    }
}

impl State {
    const PLAIN: [State; 7] = [
        State::Key,
        State::Lookup,
        State::Run,
        State::Commit,
        State::Published,
        State::Done,
        State::Failed,
    ];

    fn suffix(self) -> &'static str {
        match self {
            State::Key => "Key",
            State::Lookup => "Lookup",
            State::Run => "Run",
            State::Commit => "Commit",
            State::Published => "Published",
            State::Done => "Done",
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
        assert_eq!(State::parse("x.Other"), None);
        assert!(
            State::longest("t")
                .chars()
                .count()
                .ge(&State::Lookup.of("t").len())
        );
    }
}
