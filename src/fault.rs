//! Fault injection for the crash-safety tests, compiled in only with the
//! `fault-injection` cargo feature (`scripts/test.sh` turns it on; a release
//! build and the Nix package leave it off, and there every function here does
//! nothing whatever the environment says).
//!
//! With the feature and `PROJECT_VM_FAULT_AFTER=N` in the environment, the
//! process SIGKILLs itself right after its Nth change to libvirt state (a
//! volume made, written or deleted, a domain defined, started or undefined,
//! metadata written). Tests drive N through every step of a command, then run
//! the same command again and check that it converges.

#[cfg(feature = "fault-injection")]
mod hooks {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    static DONE: AtomicUsize = AtomicUsize::new(0);

    fn limit() -> Option<usize> {
        static LIMIT: OnceLock<Option<usize>> = OnceLock::new();
        *LIMIT.get_or_init(|| std::env::var("PROJECT_VM_FAULT_AFTER").ok()?.parse().ok())
    }

    pub fn mutated(what: &str) {
        let n = DONE.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::trace!(n, what, "libvirt state changed");
        if limit() == Some(n) {
            crate::messages::note(format!("fault injection: SIGKILL after change {n} ({what})"));
            let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
        }
    }

    pub fn stream_write(sent: u64) -> anyhow::Result<()> {
        static AT: OnceLock<Option<u64>> = OnceLock::new();
        match *AT.get_or_init(|| std::env::var("PROJECT_VM_FAULT_STREAM_AT").ok()?.parse().ok()) {
            Some(at) if sent >= at => anyhow::bail!("fault injection: stream write failed after {sent} bytes"),
            _ => Ok(()),
        }
    }

    pub fn pause(point: &str) {
        static AT: OnceLock<Option<(String, u64)>> = OnceLock::new();
        let at = AT.get_or_init(|| {
            let v = std::env::var("PROJECT_VM_PAUSE_AT").ok()?;
            let (p, ms) = v.split_once(':')?;
            Some((p.to_owned(), ms.parse().ok()?))
        });
        if let Some((p, ms)) = at {
            if p == point {
                crate::messages::note(format!("test hook: pausing {ms} ms at {point}"));
                std::thread::sleep(std::time::Duration::from_millis(*ms));
            }
        }
    }
}

/// Records one change to libvirt state, just made.
pub fn mutated(what: &str) {
    #[cfg(feature = "fault-injection")]
    hooks::mutated(what);
    #[cfg(not(feature = "fault-injection"))]
    tracing::trace!(what, "libvirt state changed");
}

/// Test hook: with `PROJECT_VM_FAULT_STREAM_AT=N`, an upload's stream write
/// fails once N bytes have been sent, as a write error from libvirtd would
/// (ENOSPC, say): the crash tests check that the stream is aborted and the
/// partial volume removed. Never makes a real write fail.
pub fn stream_write(sent: u64) -> anyhow::Result<()> {
    #[cfg(feature = "fault-injection")]
    return hooks::stream_write(sent);
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = sent;
        Ok(())
    }
}

/// Test hook: with `PROJECT_VM_PAUSE_AT=POINT:MS`, the process sleeps MS
/// milliseconds when it reaches POINT, so a test can run another command
/// inside a window that is otherwise too short to hit.
pub fn pause(point: &str) {
    #[cfg(feature = "fault-injection")]
    hooks::pause(point);
    #[cfg(not(feature = "fault-injection"))]
    let _ = point;
}

#[cfg(all(test, not(feature = "fault-injection")))]
mod tests {
    /// The default build has no switch: the variables change nothing. (Were
    /// the hook compiled in, this process would SIGKILL itself, or fail.)
    #[test]
    fn the_default_build_ignores_the_variables() {
        std::env::set_var("PROJECT_VM_FAULT_AFTER", "1");
        std::env::set_var("PROJECT_VM_FAULT_STREAM_AT", "0");
        std::env::set_var("PROJECT_VM_PAUSE_AT", "here:60000");
        let t0 = std::time::Instant::now();
        super::mutated("a test change");
        super::mutated("another");
        super::pause("here");
        assert!(super::stream_write(1 << 20).is_ok());
        assert!(t0.elapsed() < std::time::Duration::from_secs(30), "paused");
    }
}
