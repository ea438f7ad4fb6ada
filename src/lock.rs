//! Locks across project-vm processes on the machine that runs the CLI.
//!
//! libvirt has no lock a client can hold across several calls, so two
//! project-vm processes that import the same image, or pick a port, would
//! race. These are `flock(2)` locks on files under a runtime directory: the
//! kernel drops them when the process dies (SIGKILL included), so a killed
//! run never leaves a stale lock behind. The holder writes its pid into the
//! file so a waiter can say whom it waits for.
//!
//! Scope: processes on this machine that share a lock directory (root uses
//! /run/project-vm/locks, other users their XDG runtime directory). Two
//! machines driving one remote libvirtd are not serialised by this.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{failure, Kind};

/// A held lock; released when dropped (or when the process dies).
pub struct Lock {
    _file: Flock<File>,
    path: PathBuf,
}

fn dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/project-vm/locks");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("project-vm/locks"),
        None => std::env::temp_dir().join(format!("project-vm-{}/locks", nix::unistd::geteuid())),
    }
}

/// The lock file for `what` on libvirt `uri`: the name is a hash, so any
/// URI or volume name makes a valid file name.
fn path(uri: &str, what: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{uri}\n{what}").as_bytes());
    dir().join(format!("{}.lock", hex::encode(&h[..12])))
}

fn open(uri: &str, what: &str) -> anyhow::Result<File> {
    let p = path(uri, what);
    let parent = p.parent().expect("lock files live in a directory");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(|e| {
        failure(Kind::Environment, format!("cannot create the lock directory {}: {e}", parent.display()))
    })?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&p)
        .map_err(|e| failure(Kind::Environment, format!("cannot open lock file {}: {e}", p.display())))
}

/// Who holds a lock, as far as its file says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Holder {
    pub pid: Option<u32>,
    /// What it is doing ("creating", "destroying"), if it said.
    pub doing: Option<String>,
}

impl Holder {
    /// ` (pid N)`, or nothing.
    pub fn pid_note(&self) -> String {
        self.pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    }
}

fn read_holder(file: &mut File) -> Holder {
    let mut s = String::new();
    if file.rewind().is_err() || file.read_to_string(&mut s).is_err() {
        return Holder::default();
    }
    let mut parts = s.trim().splitn(2, ' ');
    Holder { pid: parts.next().and_then(|p| p.parse().ok()), doing: parts.next().map(String::from) }
}

/// Who holds the lock. The holder writes its line just after it got the
/// lock: a reader that comes in between waits a moment for it.
fn holder(file: &mut File) -> Holder {
    for _ in 0..50 {
        let h = read_holder(file);
        if h.pid.is_some() {
            return h;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    read_holder(file)
}

fn claim(mut f: Flock<File>, path: PathBuf, doing: &str) -> Lock {
    // Best effort: this only makes a waiter's message friendlier. Written in
    // place, then trimmed, so a reader never finds the file empty.
    let line = format!("{} {doing}", std::process::id());
    let _ = f.rewind().and_then(|_| f.write_all(line.as_bytes())).and_then(|_| f.set_len(line.len() as u64));
    Lock { _file: f, path }
}

impl Lock {
    fn stamp_path(&self) -> PathBuf {
        self.path.with_extension("stamp")
    }

    /// A token that changes each time a holder of this lock calls
    /// [`Lock::restamp`]. A process that cached what it read under the lock
    /// compares tokens to know whether another process changed it since.
    /// `None` when never stamped (or unreadable): then nothing cached holds.
    pub fn stamp(&self) -> Option<String> {
        std::fs::read_to_string(self.stamp_path()).ok().filter(|s| !s.is_empty())
    }

    /// Says "changed" to every other process's cache; returns the new token.
    /// Written aside and renamed, so a reader never sees half a token.
    pub fn restamp(&self) -> anyhow::Result<String> {
        let token = uuid::Uuid::new_v4().to_string();
        let tmp = self.path.with_extension(format!("stamp.{}", std::process::id()));
        std::fs::write(&tmp, &token)
            .and_then(|_| std::fs::rename(&tmp, self.stamp_path()))
            .map_err(|e| failure(Kind::Environment, format!("cannot write {}: {e}", self.stamp_path().display())))?;
        Ok(token)
    }
}

/// Takes the lock for `what`, waiting for another process that holds it.
/// `waiting` is called once, with the holder, if we have to wait.
pub fn acquire(uri: &str, what: &str, doing: &str, waiting: impl FnOnce(Holder)) -> anyhow::Result<Lock> {
    acquire_as(uri, what, doing, false, waiting)
}

/// Takes the lock for `what` shared: any number of shared holders at once,
/// none while an exclusive holder has it (`create` reading an image shares
/// it; `image rm` and a pull take it exclusively).
pub fn acquire_shared(uri: &str, what: &str, doing: &str, waiting: impl FnOnce(Holder)) -> anyhow::Result<Lock> {
    acquire_as(uri, what, doing, true, waiting)
}

fn acquire_as(uri: &str, what: &str, doing: &str, shared: bool, waiting: impl FnOnce(Holder)) -> anyhow::Result<Lock> {
    let now = match shared {
        true => FlockArg::LockSharedNonblock,
        false => FlockArg::LockExclusiveNonblock,
    };
    let file = open(uri, what)?;
    match Flock::lock(file, now) {
        // Shared holders write their pid too (the last one's stays): a waiter names one of them.
        Ok(f) => Ok(claim(f, path(uri, what), doing)),
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            waiting(holder(&mut file));
            let mut file = file;
            // Polled, so a SIGINT or SIGTERM ends the wait at once: the
            // signal may be handled on another thread, which would not
            // interrupt a blocking flock here.
            let mut pause = std::time::Duration::from_millis(1);
            let f = loop {
                crate::interrupt::check()?;
                match Flock::lock(file, now) {
                    Ok(f) => break f,
                    Err((f, nix::errno::Errno::EWOULDBLOCK | nix::errno::Errno::EINTR)) => {
                        file = f;
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(std::time::Duration::from_millis(10));
                    }
                    Err((_, e)) => return Err(failure(Kind::Environment, format!("cannot lock {what}: {e}"))),
                }
            };
            Ok(claim(f, path(uri, what), doing))
        }
        Err((_, e)) => Err(failure(Kind::Environment, format!("cannot lock {what}: {e}"))),
    }
}

/// Takes the lock for `what`, or says who holds it.
pub fn try_acquire(uri: &str, what: &str, doing: &str) -> anyhow::Result<Result<Lock, Holder>> {
    let file = open(uri, what)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(f) => Ok(Ok(claim(f, path(uri, what), doing))),
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => Ok(Err(holder(&mut file))),
        Err((_, e)) => Err(failure(Kind::Environment, format!("cannot lock {what}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_names_its_holder_and_frees_on_drop() {
        let what = format!("test-{}", std::process::id());
        let held = try_acquire("test:///lock", &what, "testing").unwrap().expect("free at first");
        // flock locks belong to the open file description: a second open in
        // this process contends like another process would.
        let holder = try_acquire("test:///lock", &what, "x").unwrap().err().expect("held");
        assert_eq!(holder, Holder { pid: Some(std::process::id()), doing: Some("testing".into()) });
        drop(held);
        let again = try_acquire("test:///lock", &what, "x").unwrap().expect("free after drop");
        assert_eq!(again.stamp(), None, "never stamped");
        let t = again.restamp().unwrap();
        assert_eq!(again.stamp(), Some(t.clone()));
        assert_ne!(again.restamp().unwrap(), t, "each stamp is new");
        let _ = std::fs::remove_file(again.stamp_path());
        let _ = std::fs::remove_file(path("test:///lock", &what));
    }
}
