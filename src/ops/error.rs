//! The ops layer's failures: what a verb could not do, and why, in terms of
//! VMs and their states. Lower layers' errors pass through unchanged (each
//! knows its own kind); these are the ones a verb itself decides.

use std::time::Duration;

use crate::error::{Classified, Kind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No VM of that name on that host (or not one of project-vm's).
    #[error("no VM named {name}{host}", host = at(host))]
    NoSuchVm { name: String, host: Option<String> },
    /// The VM exists but is not running, and the verb needs it to be.
    #[error("{vm} is not running (state {state}): start it with `project-vm start {vm} --wait`")]
    NotRunning { vm: String, state: String },
    /// Nowhere to reach the guest yet.
    #[error(
        "no address known for {vm} (state {state}): start it with `project-vm start {vm} --wait`, or set \"tailnet\""
    )]
    NoAddress { vm: String, state: String },
    /// The guest runs but could not be reached where the verb must reach it (ssh).
    #[error("{0}")]
    Unreachable(String),
    /// The VM has no serial log to show (yet).
    #[error("{0}")]
    NoSerialLog(String),
    /// A wait ran out.
    #[error("{vm}: {what} did not finish within {}", humantime::format_duration(*.after))]
    Timeout { vm: String, what: String, after: Duration },
    /// The guest came up but was not provisioned.
    #[error("{vm} is not provisioned: {why}")]
    NotProvisioned { vm: String, why: String },
    /// The guest did not report ready in time (`phase`: how far it got); it is still running.
    #[error(
        "{vm} did not report ready within {}s ({phase}); it is still running: follow it with `project-vm logs {vm} --follow` or `project-vm console {vm}`, then `project-vm start {vm} --wait` again",
        .after.as_secs()
    )]
    ReadyTimeout { vm: String, phase: String, after: Duration },
    /// cloud-init reported a result other than done (its status word and errors).
    #[error(
        "cloud-init in {vm} finished with status {status:?}{}\nthe VM is running: inspect it with `project-vm ssh {vm} -- sudo cloud-init status --long` or `project-vm logs {vm}`",
        .errors.iter().map(|e| format!("\n  {e}")).collect::<String>()
    )]
    CloudInit { vm: String, status: String, errors: Vec<String> },
    /// The VM has no snapshot of that name.
    #[error("{vm} has no snapshot {name}: see `project-vm snapshot list {vm}`")]
    NoSuchSnapshot { vm: String, name: String },
    /// The VM is half-made (its create or destroy did not finish): the message
    /// says how to finish or undo it.
    #[error("{0}")]
    HalfMade(String),
    /// Bad input that the verb itself found.
    #[error("{0}")]
    Invalid(String),
    /// The environment stopped the verb (a tool missing, a file it may not read).
    #[error("{0}")]
    Environment(String),
    /// Nothing of that name where the verb looked (across a fleet's hosts,
    /// say); the message says where and what to do.
    #[error("{0}")]
    NotFound(String),
    /// Something the verb was working on went away under it (a pool, a volume).
    #[error("{what} is gone")]
    Gone { what: String },
    /// `apply` carried out what it could; these VMs failed (each result says why).
    #[error("{failed} of the VMs failed to apply (see above)")]
    ApplyFailed { failed: usize },
}

fn at(host: &Option<String>) -> String {
    host.as_ref().map(|h| format!(" on {h}")).unwrap_or_default()
}

impl Classified for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::NoSuchVm { .. } | Error::NoSuchSnapshot { .. } | Error::NotFound(_) => Kind::NotFound,
            Error::NotRunning { .. }
            | Error::NoAddress { .. }
            | Error::NoSerialLog(_)
            | Error::HalfMade(_)
            | Error::Unreachable(_) => Kind::NotReady,
            Error::Timeout { .. } | Error::ReadyTimeout { .. } => Kind::Timeout,
            Error::NotProvisioned { .. } | Error::CloudInit { .. } => Kind::Provisioning,
            Error::Invalid(_) => Kind::Invalid,
            Error::Environment(_) => Kind::Environment,
            Error::Gone { .. } => Kind::NotFound,
            Error::ApplyFailed { .. } => Kind::Failed,
        }
    }
}
