//! What a failure means to the person who ran the command: its [`Kind`], whose
//! discriminant is the exit code. This module knows no layer; each layer has
//! its own `thiserror` enum that says its [`Kind`] through [`Classified`], and
//! `crate::exit` is the one place that turns any error into an exit code.
//!
//! | layer | its error |
//! |---|---|
//! | libvirt | `crate::libvirt::errors::Error`, decided by libvirt's error code and domain |
//! | images | `crate::images::Error` |
//! | config, settings, spec, features, cloud-config | `crate::config::ConfigError` |
//! | ops | `crate::ops::Error` |
//! | locks, interrupts | `crate::lock::Busy`, `crate::interrupt::Interrupted` |

/// What went wrong, from the user's point of view. The discriminant is the
/// exit code, each meaning one thing; the README's table is held to
/// [`Kind::ALL`] by `tests/docs.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Kind {
    /// Anything not classified below: a bug, or a libvirt failure with no
    /// more precise meaning. The message says what failed.
    Failed = 1,
    /// Bad input: a name, a size, a file, a key, a name already taken. Nothing was changed.
    Invalid = 2,
    /// The VM, image or snapshot named does not exist (a domain of that name
    /// that project-vm did not make is a refusal, [`Kind::Invalid`]).
    NotFound = 3,
    /// The environment: libvirt unreachable or refusing, permission denied, a tool missing, no room.
    Environment = 4,
    /// The guest was not provisioned: cloud-init reported errors or did not run on a first boot.
    Provisioning = 5,
    /// A wait ran out (`--wait`, a graceful stop); the VM is left as it is.
    Timeout = 6,
    /// Another project-vm is working on the same VM or image, and this command does not wait.
    Busy = 7,
    /// The VM exists but is not in a state for this: not running, no address, no serial log yet.
    NotReady = 8,
    /// The guest is up and provisioned, but a health check failed (`check`, `--wait`).
    CheckFailed = 9,
    /// Stopped by SIGINT or SIGTERM (after undoing what it had made), as a shell reports a signal.
    Interrupted = 130,
}

impl Kind {
    /// Every kind, in exit-code order.
    pub const ALL: [Kind; 10] = [
        Kind::Failed,
        Kind::Invalid,
        Kind::NotFound,
        Kind::Environment,
        Kind::Provisioning,
        Kind::Timeout,
        Kind::Busy,
        Kind::NotReady,
        Kind::CheckFailed,
        Kind::Interrupted,
    ];

    pub fn exit_code(self) -> u8 {
        self as u8
    }

    /// One line for the README's exit-code table and `--help`.
    pub fn meaning(self) -> &'static str {
        match self {
            Kind::Failed => "failed for another reason; the message says what",
            Kind::Invalid => "bad input; nothing was changed",
            Kind::NotFound => "no such VM, image or snapshot",
            Kind::Environment => "libvirt unreachable or refusing, permission denied, a tool missing, no room",
            Kind::Provisioning => "the guest was not provisioned: cloud-init failed or did not run",
            Kind::Timeout => "a wait ran out; the VM is left as it is",
            Kind::Busy => "another project-vm is working on the same VM or image",
            Kind::NotReady => "the VM is not in a state for this (not running, no address, no serial log)",
            Kind::CheckFailed => "a health check failed; the VM is left running",
            Kind::Interrupted => "interrupted by SIGINT or SIGTERM, after undoing what it had made",
        }
    }
}

/// An error that knows its [`Kind`].
pub trait Classified: std::error::Error {
    fn kind(&self) -> Kind;
}
