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

pub fn install() {
    let handler = SigHandler::Handler(on_signal);
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only touches an atomic and calls _exit.
        let _ = unsafe { signal::signal(sig, handler) };
    }
}

/// Errors once an interrupt has been requested.
pub fn check() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        anyhow::bail!("interrupted");
    }
    Ok(())
}
