//! One error type and one set of exit codes for every `wf` command (README.md): 0 success, 1 a step
//! (or a service call) failed, 2 invalid input (workflow file, arguments, data), and 128 + the signal's
//! number when a signal stopped the work (129 SIGHUP, 130 SIGINT, 143 SIGTERM; `signals.rs`).

/// A command's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Failed = 1,
    Invalid = 2,
    /// SIGHUP stopped the work.
    Hangup = 129,
    /// SIGINT (Ctrl-C) stopped the work.
    Interrupted = 130,
    /// SIGTERM stopped the work.
    Terminated = 143,
}

impl Exit {
    /// The exit code for work stopped by `signal` (one of those `signals.rs` handles).
    pub fn for_signal(signal: i32) -> Exit {
        match signal {
            libc::SIGHUP => Exit::Hangup,
            libc::SIGTERM => Exit::Terminated,
            _ => Exit::Interrupted,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// A command that ends early: the exit code and the text printed on stderr (empty: nothing).
#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
}

impl CliError {
    /// Exit 2: the input (file, arguments, data) is wrong.
    pub fn invalid(message: impl Into<String>) -> CliError {
        CliError {
            exit: Exit::Invalid,
            message: message.into(),
        }
    }

    /// Exit 1: the work itself failed.
    pub fn failed(message: impl Into<String>) -> CliError {
        CliError {
            exit: Exit::Failed,
            message: message.into(),
        }
    }
}

pub type CliResult<T = Exit> = Result<T, CliError>;
