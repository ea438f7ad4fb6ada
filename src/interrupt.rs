//! Ctrl-C during a multi-step change: the first one asks the operation to stop
//! at its next safe point (where it undoes what it made); a second one exits at once.
//! Should no safe point come within [`GRACE`] (a call blocked on a stalled
//! server, say), the process exits anyway: every change is ordered so that
//! being killed at any point is safe (see the README's Guarantees), so a
//! signal is always honoured.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{self, SigHandler, Signal};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How long after the first signal the operation has to reach a safe point.
pub const GRACE: std::time::Duration = std::time::Duration::from_secs(5);

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
    static WATCHDOG: std::sync::Once = std::sync::Once::new();
    WATCHDOG.call_once(|| {
        let _ = std::thread::Builder::new().name("interrupt-watchdog".into()).spawn(|| loop {
            if INTERRUPTED.load(Ordering::SeqCst) {
                std::thread::sleep(GRACE);
                // A step that a kill would leave worse off holds the exit off ([`hold`]).
                while HELD.load(Ordering::SeqCst) > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                crate::messages::note(format_args!(
                    "interrupted: no safe point within {} s, exiting now",
                    GRACE.as_secs()
                ));
                // SAFETY: ends the process, as a second signal does.
                unsafe { nix::libc::_exit(130) };
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        });
    });
    let action =
        signal::SigAction::new(SigHandler::Handler(on_signal), signal::SaFlags::empty(), signal::SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only touches an atomic and calls _exit.
        let _ = unsafe { signal::sigaction(sig, &action) };
    }
}

static HELD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// While held, the grace period's exit waits: for a step whose own cleanup
/// must run (a throwaway domain to destroy). Such a step checks [`check`]
/// often, so it ends soon after a signal. A second signal still exits.
pub struct Hold(());

pub fn hold() -> Hold {
    HELD.fetch_add(1, Ordering::SeqCst);
    Hold(())
}

impl Drop for Hold {
    fn drop(&mut self) {
        HELD.fetch_sub(1, Ordering::SeqCst);
    }
}

/// True once a SIGINT or SIGTERM has asked the operation to stop.
pub fn requested() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Errors once an interrupt has been requested.
pub fn check() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// A SIGINT or SIGTERM stopped the operation (exit 130).
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

impl crate::error::Classified for Interrupted {
    fn kind(&self) -> crate::error::Kind {
        crate::error::Kind::Interrupted
    }
}
