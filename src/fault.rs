//! Fault injection for the crash-safety tests: with `PROJECT_VM_FAULT_AFTER=N`
//! in the environment, the process SIGKILLs itself right after its Nth change
//! to libvirt state (a volume made, written or deleted, a domain defined,
//! started or undefined, metadata written). Tests drive N through every step
//! of a command, then run the same command again and check that it converges.
//! Without the variable this is one relaxed atomic increment per change.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

static DONE: AtomicUsize = AtomicUsize::new(0);

fn limit() -> Option<usize> {
    static LIMIT: OnceLock<Option<usize>> = OnceLock::new();
    *LIMIT.get_or_init(|| std::env::var("PROJECT_VM_FAULT_AFTER").ok()?.parse().ok())
}

/// Records one change to libvirt state, just made.
pub fn mutated(what: &str) {
    let n = DONE.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::trace!(n, what, "libvirt state changed");
    if limit() == Some(n) {
        eprintln!("fault injection: SIGKILL after change {n} ({what})");
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
}
