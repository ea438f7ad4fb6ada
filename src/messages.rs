//! Every message for the person at the terminal that is not a report: the
//! warnings and notes a verb has to say while it works. One channel, so each
//! message respects `--json` and a closed stderr the same way:
//!
//! - a **warning** (something the user should know: a thing kept, a check
//!   skipped) goes to stderr as `warning: ...`, or with `--json` as one JSON
//!   object a line, `{"warning": "..."}`, so tools reading stderr can parse it;
//! - a **note** (what is happening: waiting for a lock, fetching an image) goes
//!   to stderr as text, and is left out with `--json`, where stdout's report is
//!   the whole answer;
//! - a write that fails (stderr closed) is dropped: a message is never worth
//!   a panic or a failed command.
//!
//! Both are logged through `tracing` as well, at debug level, so `-vv` shows
//! them in order with the log.
//!
//! Reports (the results) go to stdout through `crate::output`; errors that
//! end a command are printed once by `main`.

use std::fmt::Display;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static JSON: AtomicBool = AtomicBool::new(false);
static WARNINGS: AtomicUsize = AtomicUsize::new(0);

/// Called once by `run` with the command line's `--json`.
pub fn set_json(json: bool) {
    JSON.store(json, Ordering::SeqCst);
}

/// True when the command line asked for `--json`.
pub fn json() -> bool {
    JSON.load(Ordering::SeqCst)
}

/// How many warnings this process has given.
pub fn warnings() -> usize {
    WARNINGS.load(Ordering::SeqCst)
}

/// Something the user should know that does not stop the command.
pub fn warn(message: impl Display) {
    let message = message.to_string();
    WARNINGS.fetch_add(1, Ordering::SeqCst);
    tracing::debug!(target: "project_vm::messages", "warning: {message}");
    let line = match json() {
        true => serde_json::json!({ "warning": message }).to_string(),
        false => format!("warning: {message}"),
    };
    write_line(&line);
}

/// What is happening, for a person watching; left out with `--json`.
pub fn note(message: impl Display) {
    let message = message.to_string();
    tracing::debug!(target: "project_vm::messages", "{message}");
    if !json() {
        write_line(&message);
    }
}

fn write_line(line: &str) {
    let stderr = std::io::stderr();
    let mut err = stderr.lock();
    let _ = writeln!(err, "{line}").and_then(|()| err.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_counted_whatever_the_output() {
        let before = warnings();
        warn("a thing was kept");
        assert_eq!(warnings(), before + 1);
    }
}
