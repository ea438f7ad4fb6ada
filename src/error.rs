//! Failures that map to documented exit codes.
//!
//! Most errors are plain `anyhow` errors (exit 1). Errors a user can act on are
//! wrapped in [`Failure`] so `main` can find the kind anywhere in the chain and
//! pick the exit code the README documents.

use std::fmt;

/// What went wrong, from the user's point of view. The discriminant is the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad input: a name, a size, a file, a name already taken. Nothing was changed.
    Invalid = 2,
    /// The VM (or image) named does not exist, or is not project-vm's.
    NotFound = 3,
    /// The environment: libvirtd unreachable, permission denied.
    Environment = 4,
    /// `start --wait`: cloud-init finished with an error or degraded.
    CloudInit = 5,
    /// `start --wait`: timed out; the VM keeps running.
    Timeout = 6,
    /// Stopped by SIGINT or SIGTERM (after undoing what it had made), as a shell reports a signal.
    Interrupted = 130,
}

impl Kind {
    pub fn exit_code(self) -> u8 {
        self as u8
    }
}

#[derive(Debug)]
pub struct Failure {
    pub kind: Kind,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

pub fn failure(kind: Kind, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure { kind, message: message.into() })
}

pub fn invalid(message: impl Into<String>) -> anyhow::Error {
    failure(Kind::Invalid, message)
}

pub fn not_found(message: impl Into<String>) -> anyhow::Error {
    failure(Kind::NotFound, message)
}

/// The exit code for an error: the first [`Failure`] in its chain, else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.chain().find_map(|e| e.downcast_ref::<Failure>()).map(|f| f.kind.exit_code()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn exit_code_found_through_context() {
        let err = Err::<(), _>(invalid("bad name")).context("creating foo").unwrap_err();
        assert_eq!(exit_code(&err), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("plain")), 1);
        assert_eq!(exit_code(&failure(Kind::Timeout, "t")), 6);
        assert_eq!(exit_code(&failure(Kind::Interrupted, "interrupted")), 130);
    }
}
