//! Ctrl-C during a multi-step change: the first one asks the operation to stop
//! at its next safe point (where it undoes what it made); a second one exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{self, SigHandler, Signal};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // Second signal: the user really wants out.
        unsafe { nix::libc::_exit(130) };
    }
}

/// Installs the handler for SIGINT and SIGTERM. Without `SA_RESTART`: a
/// call blocked in the kernel (waiting for a lock, say) returns `EINTR`, so
/// the signal is seen at once rather than when that call would have ended.
pub fn install() {
    let action =
        signal::SigAction::new(SigHandler::Handler(on_signal), signal::SaFlags::empty(), signal::SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only touches an atomic and calls _exit.
        let _ = unsafe { signal::sigaction(sig, &action) };
    }
}

/// True once a SIGINT or SIGTERM has asked the operation to stop.
pub fn requested() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Errors once an interrupt has been requested.
pub fn check() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        anyhow::bail!("interrupted");
    }
    Ok(())
}
