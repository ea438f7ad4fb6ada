//! Locks across project-vm processes on the machine that runs the CLI.
//!
//! libvirt has no lock a client can hold across several calls, so two
//! project-vm processes that import the same image, or pick a port, would
//! race. These are `flock(2)` locks on files under a runtime directory: the
//! kernel drops them when the process dies (SIGKILL included), so a killed
//! run never leaves a stale lock behind. The holder writes its pid into the
//! file so a waiter can say whom it waits for.
//!
//! Scope: processes on this machine that share a lock directory, talking to
//! one libvirt daemon. Locks are keyed by the daemon's identity (see
//! [`crate::ops::Ctx::lock_scope`]), not by how its URI is spelled, so
//! `qemu:///system` and `qemu+unix:///system?socket=...` share them. Two
//! machines driving one remote libvirtd are not serialised by this.
//!
//! The directory: root uses /run/project-vm/locks; other users their
//! `$XDG_RUNTIME_DIR`, else their state directory in their home (never a
//! predictable name under a shared /tmp, where another user could plant it
//! first). Whatever it is, project-vm's own directories must be real
//! directories (not symlinks) owned by this user with mode 0700, or nothing
//! is locked and the run stops; lock files are opened without following a
//! symlink and never truncated.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// A held lock; released when dropped (or when the process dies).
pub struct Lock {
    _file: Flock<File>,
    path: PathBuf,
}

/// The lock directory and the directory below which project-vm made it
/// (everything from there down must be ours).
fn dir() -> (PathBuf, PathBuf) {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        let top = PathBuf::from("/run/project-vm");
        return (top.join("locks"), top);
    }
    let top = match crate::paths::runtime_dir() {
        Some(d) => d.join("project-vm"),
        None => match crate::paths::state_home() {
            Some(d) => d.join("project-vm"),
            // No home at all: a directory of our own under /tmp, checked below.
            None => std::env::temp_dir().join(format!("project-vm-{uid}")),
        },
    };
    (top.join("locks"), top)
}

/// Makes `dir` (0700), and checks that it and every directory between `top`
/// and it are real directories owned by this user that nobody else can
/// write or list. A directory of ours that is too open is tightened; one
/// that is someone else's, or a symlink, is refused.
pub fn secure_dir(dir: &Path, top: &Path) -> anyhow::Result<()> {
    secure_dir_for(dir, top, "lock directory", "XDG_RUNTIME_DIR")
}

/// [`secure_dir`] for a directory of another purpose (`what`), whose place
/// the environment variable `var` can move.
pub fn secure_dir_for(dir: &Path, top: &Path, what: &str, var: &str) -> anyhow::Result<()> {
    let refuse = |p: &Path, why: String| {
        Unusable(format!(
            "refusing to use the {what} {}: {} {why}; remove it (or set {var} to a directory of your own)",
            dir.display(),
            p.display()
        ))
    };
    let cannot = |p: &Path, e: std::io::Error| Unusable(format!("cannot create the {what} {}: {e}", p.display()));
    if let Some(parent) = top.parent() {
        std::fs::create_dir_all(parent).map_err(|e| cannot(parent, e))?;
    }
    let uid = nix::unistd::geteuid().as_raw();
    // Top down, each checked before anything is made inside it.
    let below: Vec<_> = dir.strip_prefix(top).map(|r| r.components().collect()).unwrap_or_default();
    let mut p = top.to_path_buf();
    for next in std::iter::once(None).chain(below.into_iter().map(Some)) {
        if let Some(c) = next {
            p.push(c);
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(cannot(&p, e).into()),
            _ => {}
        }
        let m = std::fs::symlink_metadata(&p).map_err(|e| Unusable(format!("cannot inspect {}: {e}", p.display())))?;
        if m.file_type().is_symlink() {
            return Err(refuse(&p, "is a symlink".into()).into());
        }
        if !m.is_dir() {
            return Err(refuse(&p, "is not a directory".into()).into());
        }
        if m.uid() != uid {
            return Err(refuse(&p, format!("belongs to uid {}, not to you (uid {uid})", m.uid())).into());
        }
        if m.mode() & 0o077 != 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| refuse(&p, format!("has mode {:o} and cannot be made 0700: {e}", m.mode() & 0o7777)))?;
        }
    }
    Ok(())
}

/// The lock file for `what` on the daemon `scope`: the name is a hash, so
/// any scope or volume name makes a valid file name.
fn path(scope: &str, what: &str) -> anyhow::Result<PathBuf> {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{scope}\n{what}").as_bytes());
    let (dir, top) = dir();
    secure_dir(&dir, &top)?;
    Ok(dir.join(format!("{}.lock", hex::encode(&h[..12]))))
}

/// Opens (or makes, 0600) a lock file: never through a symlink, never truncated.
pub fn open_file(p: &Path) -> anyhow::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(p)
        .map_err(|e| Unusable(format!("cannot open lock file {}: {e}", p.display())))?;
    let m = f.metadata().map_err(|e| Unusable(format!("cannot inspect {}: {e}", p.display())))?;
    if !m.is_file() {
        return Err(Unusable(format!("lock file {} is not a regular file", p.display())).into());
    }
    Ok(f)
}

fn open(scope: &str, what: &str) -> anyhow::Result<(File, PathBuf)> {
    let p = path(scope, what)?;
    Ok((open_file(&p)?, p))
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

/// Another project-vm holds the lock, and this command does not wait for it
/// (exit 7).
#[derive(Debug, thiserror::Error)]
#[error("{what} is busy: another project-vm{} is {}{hint}", holder.pid_note(), holder.doing.as_deref().unwrap_or("working on it"))]
pub struct Busy {
    pub what: String,
    pub holder: Holder,
    /// What to do about it, with its leading separator (`: wait for it, ...`), or empty.
    pub hint: String,
}

/// The lock directory or a lock file cannot be used: not ours, not a
/// directory, not writable (exit 4). Nothing is locked and the run stops.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unusable(pub String);

impl crate::error::Classified for Unusable {
    fn kind(&self) -> crate::error::Kind {
        crate::error::Kind::Environment
    }
}

impl crate::error::Classified for Busy {
    fn kind(&self) -> crate::error::Kind {
        crate::error::Kind::Busy
    }
}

fn read_holder(file: &mut File) -> Holder {
    let mut s = String::new();
    // A holder writes `PID DOING`: a few bytes; more is not read.
    if file.rewind().is_err() || Read::take(&mut *file, 4096).read_to_string(&mut s).is_err() {
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
        let mut s = String::new();
        File::open(self.stamp_path()).ok()?.take(4096).read_to_string(&mut s).ok()?;
        Some(s).filter(|s| !s.is_empty())
    }

    /// Says "changed" to every other process's cache; returns the new token.
    /// Written aside (a new file, never through a symlink) and renamed, so a
    /// reader never sees half a token.
    pub fn restamp(&self) -> anyhow::Result<String> {
        let token = uuid::Uuid::new_v4().to_string();
        let tmp = self.path.with_extension(format!("stamp.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| f.write_all(token.as_bytes()))
            .and_then(|_| std::fs::rename(&tmp, self.stamp_path()))
            .map_err(|e| Unusable(format!("cannot write {}: {e}", self.stamp_path().display())))?;
        Ok(token)
    }
}

/// Takes the lock for `what` on the daemon `scope`, waiting for another process that holds it.
/// `waiting` is called once, with the holder, if we have to wait.
pub fn acquire(scope: &str, what: &str, doing: &str, waiting: impl FnOnce(Holder)) -> anyhow::Result<Lock> {
    acquire_as(scope, what, doing, false, waiting)
}

/// Takes the lock for `what` shared: any number of shared holders at once,
/// none while an exclusive holder has it (`create` reading an image shares
/// it; `image rm` and a pull take it exclusively).
pub fn acquire_shared(scope: &str, what: &str, doing: &str, waiting: impl FnOnce(Holder)) -> anyhow::Result<Lock> {
    acquire_as(scope, what, doing, true, waiting)
}

fn acquire_as(
    scope: &str,
    what: &str,
    doing: &str,
    shared: bool,
    waiting: impl FnOnce(Holder),
) -> anyhow::Result<Lock> {
    let now = match shared {
        true => FlockArg::LockSharedNonblock,
        false => FlockArg::LockExclusiveNonblock,
    };
    let (file, path) = open(scope, what)?;
    match Flock::lock(file, now) {
        // Shared holders write their pid too (the last one's stays): a waiter names one of them.
        Ok(f) => Ok(claim(f, path, doing)),
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
                    Err((_, e)) => return Err(Unusable(format!("cannot lock {what}: {e}")).into()),
                }
            };
            Ok(claim(f, path, doing))
        }
        Err((_, e)) => Err(Unusable(format!("cannot lock {what}: {e}")).into()),
    }
}

/// Takes the lock for `what` on the daemon `scope`, or says who holds it.
pub fn try_acquire(scope: &str, what: &str, doing: &str) -> anyhow::Result<Result<Lock, Holder>> {
    let (file, path) = open(scope, what)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(f) => Ok(Ok(claim(f, path, doing))),
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => Ok(Err(holder(&mut file))),
        Err((_, e)) => Err(Unusable(format!("cannot lock {what}: {e}")).into()),
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
        let _ = std::fs::remove_file(path("test:///lock", &what).unwrap());
    }

    #[test]
    fn a_planted_symlink_is_never_followed_nor_a_file_truncated() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let lock = t.path().join("x.lock");
        std::os::unix::fs::symlink(&victim, &lock).unwrap();
        let err = open_file(&lock).unwrap_err();
        assert!(err.downcast_ref::<Unusable>().is_some(), "{err:#}");
        assert_eq!(crate::exit::code(&err), 4, "{err:#}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        // An existing lock file is opened as it is: never truncated.
        std::fs::write(t.path().join("y.lock"), "123 creating").unwrap();
        drop(open_file(&t.path().join("y.lock")).unwrap());
        assert_eq!(std::fs::read_to_string(t.path().join("y.lock")).unwrap(), "123 creating");
    }

    #[test]
    fn the_lock_directory_must_be_ours_and_closed() {
        let t = tempfile::tempdir().unwrap();
        let top = t.path().join("project-vm-1");
        // Made fresh: 0700.
        secure_dir(&top.join("locks"), &top).unwrap();
        for d in [&top, &top.join("locks")] {
            assert_eq!(std::fs::metadata(d).unwrap().mode() & 0o777, 0o700, "{}", d.display());
        }
        // Ours but too open: tightened.
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o777)).unwrap();
        secure_dir(&top.join("locks"), &top).unwrap();
        assert_eq!(std::fs::metadata(&top).unwrap().mode() & 0o777, 0o700);
        // A planted symlink (to a directory the planter chose) is refused.
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let planted = t.path().join("project-vm-2");
        std::os::unix::fs::symlink(&elsewhere, &planted).unwrap();
        let err = secure_dir(&planted.join("locks"), &planted).unwrap_err();
        assert!(err.downcast_ref::<Unusable>().is_some(), "{err:#}");
        assert!(format!("{err:#}").contains("symlink"), "{err:#}");
        assert_eq!(crate::exit::code(&err), 4);
        // Someone else's directory is refused (only root can make one here).
        if nix::unistd::geteuid().is_root() {
            let theirs = t.path().join("project-vm-3");
            std::fs::create_dir(&theirs).unwrap();
            nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let err = secure_dir(&theirs.join("locks"), &theirs).unwrap_err();
            assert!(format!("{err:#}").contains("belongs to uid 65534"), "{err:#}");
        }
    }
}
