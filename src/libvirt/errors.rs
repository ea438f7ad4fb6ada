//! Deciding on libvirt's failures from what libvirt says in numbers: the error
//! code, the error domain and, for system errors, the errno libvirt carries
//! beside them. Never from the message: libvirt translates it (the daemon by
//! its own locale, the client library by the client's), so a decision made on
//! its words would change with the host's language. The message is only ever
//! shown, with one exception by design: [`qemu_permission_denied`] reads the
//! words QEMU and qemu-img themselves wrote (libvirt runs them with
//! `LC_ALL=C`, so those do not change with the language).

use virt::error::{Error as VirtError, ErrorDomain, ErrorNumber};

/// The libvirt layer's failures. A libvirt call's error is kept whole, and
/// its kind decided from its code and domain ([`classify`]), never its text.
///
/// Display and `Error` are written out rather than derived: libvirt's error
/// is held inside (`source`) but is not the chain's next link, because its
/// own Display repeats the message with its level, code and domain, and
/// `{:#}` would then say libvirt's words twice.
#[derive(Debug)]
pub enum Error {
    /// A libvirt call failed: what was being done, and libvirt's error.
    Call { what: String, source: VirtError },
    /// A failed libvirt call the host's owner can mend (a file's
    /// permissions, a directory libvirtd cannot use): libvirt's error, and
    /// the hint for the daemon that was asked.
    Mendable { what: String, source: VirtError, hint: String },
    /// The daemon could not be reached, or refused this user; the message
    /// carries the hint.
    Connect(String),
    /// A URI that is not one project-vm can use.
    BadUri(String),
    /// No VM of that name on this host; the message names it and the fix.
    NoSuchVm(String),
    /// A domain of that name exists but is not project-vm's: never touched.
    Foreign(String),
    /// Bad input found against the libvirt host: a network, bridge or
    /// device that is not there, a directory nobody may share.
    Invalid(String),
    /// The host cannot do it: a tool missing, a directory libvirtd cannot
    /// use, data that ended early.
    Environment(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Call { what, source } => write!(f, "{what}: {}", source.message()),
            Error::Mendable { what, source, hint } => write!(f, "{what}: {}\nhint: {hint}", source.message()),
            Error::Connect(m)
            | Error::BadUri(m)
            | Error::NoSuchVm(m)
            | Error::Foreign(m)
            | Error::Invalid(m)
            | Error::Environment(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    pub fn call(what: impl Into<String>, source: virt::error::Error) -> Error {
        Error::Call { what: what.into(), source }
    }

    /// libvirt's own error, when this is a failed call.
    pub fn libvirt(&self) -> Option<&VirtError> {
        match self {
            Error::Call { source, .. } | Error::Mendable { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl crate::error::Classified for Error {
    fn kind(&self) -> crate::error::Kind {
        use crate::error::Kind;
        match self {
            Error::Call { source, .. } => classify(source),
            Error::Mendable { .. } | Error::Connect(_) | Error::Environment(_) => Kind::Environment,
            Error::BadUri(_) | Error::Foreign(_) | Error::Invalid(_) => Kind::Invalid,
            Error::NoSuchVm(_) => Kind::NotFound,
        }
    }
}

/// The kind of a libvirt error, from its code and domain.
pub fn classify(e: &virt::error::Error) -> crate::error::Kind {
    use crate::error::Kind;
    let code = e.code();
    let not_found = [
        ErrorNumber::NoDomain,
        ErrorNumber::NoStoragePool,
        ErrorNumber::NoStorageVolume,
        ErrorNumber::NoDomainSnapshot,
        ErrorNumber::NoNetwork,
        ErrorNumber::NoNodeDevice,
    ];
    if not_found.iter().any(|n| code.is(*n)) {
        return Kind::NotFound;
    }
    if refused(e) || code.is(ErrorNumber::NoConnect) || code.is(ErrorNumber::NoSupport) {
        return Kind::Environment;
    }
    if code.is(ErrorNumber::OperationInvalid) {
        return Kind::NotReady;
    }
    if code.is(ErrorNumber::OperationTimeout) {
        return Kind::Timeout;
    }
    if code.is(ErrorNumber::XmlError) || code.is(ErrorNumber::InvalidArg) || code.is(ErrorNumber::ConfigUnsupported) {
        return Kind::Invalid;
    }
    Kind::Failed
}

/// The errno of a system error (`VIR_ERR_SYSTEM_ERROR`): libvirt keeps it in
/// the error's `int1`, also across its remote protocol. The virt crate does not
/// copy that field, so it is read from libvirt's thread-local last error,
/// which is this same error as long as no other libvirt call came in between
/// (checked: the code and the message must be the same).
pub fn errno(e: &VirtError) -> Option<i32> {
    if !e.code().is(ErrorNumber::SystemError) {
        return None;
    }
    // SAFETY: virGetLastError returns libvirt's thread-local error or null;
    // it is only read here, on the thread that made the failed call.
    unsafe {
        let last = virt::sys::virGetLastError();
        if last.is_null() || (*last).code != virt::sys::VIR_ERR_SYSTEM_ERROR as i32 || (*last).message.is_null() {
            return None;
        }
        let same = std::ffi::CStr::from_ptr((*last).message).to_string_lossy() == e.message();
        same.then_some((*last).int1).filter(|n| *n > 0)
    }
}

/// The operating system refused a file or socket (EACCES, EPERM), or
/// libvirt's access control refused the call.
pub fn permission_denied(e: &VirtError) -> bool {
    qemu_permission_denied(e)
        || e.code().is(ErrorNumber::AccessDenied)
        || e.code().is(ErrorNumber::OperationDenied)
        || matches!(errno(e), Some(n) if n == nix::libc::EACCES || n == nix::libc::EPERM)
}

/// A program libvirt ran could not open a file: QEMU (a disk, a backing
/// file) or `qemu-img` (a volume in a pool directory it may not write).
/// libvirt relays the program's own words in an internal error, and runs
/// these programs with `LC_ALL=C`, so those words are the same whatever the
/// daemon's or the client's language (tests/daemons.rs shows it against a
/// daemon that speaks German): this is the one place a message is read, and
/// only the program's part of it.
pub fn qemu_permission_denied(e: &VirtError) -> bool {
    // QEMU's errors come from its driver; a helper's from libvirt's command
    // runner, which names no domain.
    (e.domain().is(ErrorDomain::Qemu) || e.domain().is(ErrorDomain::Storage) || e.domain().is(ErrorDomain::None))
        && (e.code().is(ErrorNumber::InternalError) || e.code().is(ErrorNumber::OperationFailed))
        && e.message().contains(": Permission denied")
}

/// The daemon (or its socket) said no to this user, as opposed to nobody
/// answering: a permission, authentication or polkit refusal.
pub fn refused(e: &VirtError) -> bool {
    permission_denied(e)
        || e.code().is(ErrorNumber::AuthFailed)
        || e.code().is(ErrorNumber::AuthCancelled)
        || e.code().is(ErrorNumber::AuthUnavailable)
        || polkit(e)
}

/// The refusal came from polkit, or from the system D-Bus it needs.
pub fn polkit(e: &VirtError) -> bool {
    e.domain().is(ErrorDomain::Polkit) || e.domain().is(ErrorDomain::Dbus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_nobody_may_open_is_permission_denied_by_errno() {
        // The client library's own system error: a socket that is not there.
        // (EACCES is tested against a daemon of a test's own: tests/locale.rs.)
        virt::error::clear_error_callback();
        let missing =
            virt::connect::Connect::open(Some("qemu+unix:///session?socket=/nonexistent-pv/sock")).unwrap_err();
        assert_eq!(errno(&missing), Some(nix::libc::ENOENT), "{missing:?}");
        assert!(!permission_denied(&missing) && !refused(&missing));
    }
}
