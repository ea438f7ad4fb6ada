//! Which libvirt daemon a URI reaches, and as whom it runs: that decides
//! where disks can live, how guests are networked, and who must be able to
//! read what.
//!
//! - `qemu:///system` is the privileged daemon: it runs as root, its VMs as
//!   the QEMU user (libvirt-qemu or qemu).
//! - `qemu:///session` is a daemon of the user's own, spawned by libvirt on
//!   first use; it and its VMs run as that user, with that user's rights only.
//!   For root, `qemu:///session` is answered by the privileged daemon itself
//!   (same domains and pools), so it counts as the system daemon.
//! - `qemu+unix:///session?socket=PATH` is whoever listens on PATH: root may
//!   reach another user's session daemon that way. The daemon's user is read
//!   from the socket (`SO_PEERCRED`).

use std::path::{Path, PathBuf};

use super::uri::{Mode, Uri};

/// A user a daemon runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonUser {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub home: PathBuf,
    /// The daemon runs as the user running project-vm.
    pub is_me: bool,
}

/// The daemon a URI reaches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Daemon {
    /// The privileged daemon (defaults as always: `/var/lib/project-vm`, the
    /// `default` network). Also what unknown URIs and other drivers get.
    #[default]
    System,
    /// A per-user session daemon. `user` is known when it is on this
    /// machine; over the network its home is not ours to know.
    Session { user: Option<DaemonUser> },
}

impl Daemon {
    /// What `uri` reaches, looking at this machine only when the URI is
    /// local (an explicit socket's owner; the user running project-vm).
    pub fn of(uri: &str) -> Daemon {
        let Ok(u) = Uri::parse(uri) else { return Daemon::System };
        Daemon::classify(&u, nix::unistd::geteuid().as_raw(), |sock| peer_uid(Path::new(sock)))
    }

    /// [`Daemon::of`] with the parts that look at this machine passed in.
    pub fn classify(u: &Uri, euid: u32, socket_owner: impl Fn(&str) -> Option<u32>) -> Daemon {
        if u.driver != "qemu" || u.mode() != Mode::Session {
            return Daemon::System;
        }
        if !u.is_local() {
            return Daemon::Session { user: None };
        }
        // Who listens: the socket's peer when one is named (and answers),
        // otherwise the user whose session the client library picks: ours.
        let uid = u.socket().and_then(&socket_owner).unwrap_or(euid);
        if uid == 0 {
            // root's session is the privileged daemon.
            return Daemon::System;
        }
        Daemon::Session { user: Some(user_by_uid(uid, euid)) }
    }

    pub fn is_session(&self) -> bool {
        matches!(self, Daemon::Session { .. })
    }

    /// The session daemon's user, when known.
    pub fn user(&self) -> Option<&DaemonUser> {
        match self {
            Daemon::Session { user } => user.as_ref(),
            Daemon::System => None,
        }
    }

    /// How messages name the daemon: "the system daemon (QEMU runs as
    /// libvirt-qemu)", "alice's session daemon".
    pub fn describe(&self) -> String {
        match self {
            Daemon::System => "the system libvirt daemon (qemu:///system, running as root)".into(),
            Daemon::Session { user: Some(u) } if u.is_me => {
                format!("your session libvirt daemon (qemu:///session, running as {})", u.name)
            }
            Daemon::Session { user: Some(u) } => format!("{}'s session libvirt daemon (running as {})", u.name, u.name),
            Daemon::Session { user: None } => "a session libvirt daemon on another host".into(),
        }
    }

    /// Where a session daemon's user keeps project-vm's data by default:
    /// `$XDG_DATA_HOME/project-vm` for us, else `~/.local/share/project-vm`.
    pub fn default_storage_dir(&self) -> Option<PathBuf> {
        match self {
            Daemon::System => Some(PathBuf::from(SYSTEM_STORAGE_DIR)),
            Daemon::Session { user: Some(u) } => Some(xdg_dir(u, "XDG_DATA_HOME", ".local/share").join("project-vm")),
            Daemon::Session { user: None } => None,
        }
    }

    /// The directory for serial console logs of this daemon's VMs:
    /// libvirt's own on the system daemon; the user's state directory
    /// (`$XDG_STATE_HOME/project-vm/logs`, else `~/.local/state/...`) for a
    /// session daemon on this machine; none when that is not known.
    pub fn serial_log_dir(&self) -> Option<PathBuf> {
        match self {
            Daemon::System => Some(PathBuf::from("/var/log/libvirt/qemu")),
            Daemon::Session { user: Some(u) } => {
                Some(xdg_dir(u, "XDG_STATE_HOME", ".local/state").join("project-vm/logs"))
            }
            Daemon::Session { user: None } => None,
        }
    }
}

pub const SYSTEM_STORAGE_DIR: &str = "/var/lib/project-vm";

/// What a user wants of a file, as permission bits: read 4, write 2, search/execute 1.
pub const R: u32 = 4;
pub const W: u32 = 2;
pub const X: u32 = 1;

impl DaemonUser {
    /// True when this user may use existing `path` as `want` (R, W, X
    /// or'ed), by its mode bits alone. For ourselves the kernel is asked
    /// (`access(2)`, which also knows ACLs).
    pub fn may(&self, path: &Path, want: u32) -> bool {
        use std::os::unix::fs::MetadataExt;
        if self.is_me && nix::unistd::geteuid().as_raw() == self.uid {
            let mut mode = nix::unistd::AccessFlags::empty();
            for (bit, flag) in [
                (R, nix::unistd::AccessFlags::R_OK),
                (W, nix::unistd::AccessFlags::W_OK),
                (X, nix::unistd::AccessFlags::X_OK),
            ] {
                if want & bit != 0 {
                    mode |= flag;
                }
            }
            return nix::unistd::access(path, mode).is_ok();
        }
        let Ok(meta) = std::fs::metadata(path) else { return false };
        let bits = if self.uid == 0 {
            return true;
        } else if meta.uid() == self.uid {
            meta.mode() >> 6
        } else if self.groups().contains(&meta.gid()) {
            meta.mode() >> 3
        } else {
            meta.mode()
        } & 7;
        bits & want == want
    }

    fn groups(&self) -> Vec<u32> {
        let name = std::ffi::CString::new(self.name.clone()).unwrap_or_default();
        nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(self.gid))
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|_| vec![self.gid])
    }

    /// Why this user cannot use `path` as `want`: the first directory on
    /// the way it cannot pass (+x), or the path itself. `None`: it can.
    /// A path that does not exist yet must be creatable: the nearest
    /// existing directory above it must be writable.
    pub fn blocked(&self, path: &Path, want: u32) -> Option<String> {
        let mut p = PathBuf::new();
        let parts: Vec<_> = path.components().collect();
        for (i, part) in parts.iter().enumerate() {
            p.push(part);
            let last = i + 1 == parts.len();
            if !p.exists() {
                let parent = p.parent().unwrap_or(Path::new("/"));
                return (!self.may(parent, W | X)).then(|| {
                    format!(
                        "{} cannot create {} in {}: {} is not writable by {}",
                        self.name,
                        p.display(),
                        parent.display(),
                        parent.display(),
                        self.name
                    )
                });
            }
            if !last && !self.may(&p, X) {
                return Some(format!("{} cannot pass through {} (no +x for {})", self.name, p.display(), self.name));
            }
            if last && !self.may(&p, want) {
                let what: Vec<&str> = [(R, "read"), (W, "write"), (X, if p.is_dir() { "enter" } else { "run" })]
                    .iter()
                    .filter(|(b, _)| want & b != 0)
                    .map(|(_, w)| *w)
                    .collect();
                let what = match what.split_last() {
                    Some((last, [])) => last.to_string(),
                    Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
                    None => "use".into(),
                };
                return Some(format!("{} cannot {what} {}", self.name, p.display()));
            }
        }
        None
    }
}

/// `$VAR` when the daemon's user is us and it is set (absolute), else
/// `HOME/fallback` of that user.
fn xdg_dir(u: &DaemonUser, var: &str, fallback: &str) -> PathBuf {
    if u.is_me {
        if let Some(d) = std::env::var_os(var).map(PathBuf::from).filter(|d| d.is_absolute()) {
            return d;
        }
    }
    u.home.join(fallback)
}

fn user_by_uid(uid: u32, euid: u32) -> DaemonUser {
    let is_me = uid == euid;
    let entry = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten();
    let home = match (is_me, std::env::var_os("HOME")) {
        // Our own: HOME wins, as it does for libvirt's client and everything else.
        (true, Some(h)) if Path::new(&h).is_absolute() => PathBuf::from(h),
        _ => entry.as_ref().map(|e| e.dir.clone()).unwrap_or_else(|| PathBuf::from("/")),
    };
    DaemonUser {
        uid,
        gid: entry.as_ref().map(|e| e.gid.as_raw()).unwrap_or(uid),
        name: entry.map(|e| e.name).unwrap_or_else(|| format!("uid {uid}")),
        home,
        is_me,
    }
}

/// The uid of whoever listens on a unix socket, if it answers.
fn peer_uid(socket: &Path) -> Option<u32> {
    let stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    let cred = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    Some(cred.uid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(uri: &str, euid: u32, owner: Option<u32>) -> Daemon {
        Daemon::classify(&Uri::parse(uri).unwrap(), euid, |_| owner)
    }

    #[test]
    fn system_session_and_root() {
        assert_eq!(of("qemu:///system", 1000, None), Daemon::System);
        assert_eq!(of("qemu+unix:///system?socket=/var/run/libvirt/libvirt-sock", 1000, Some(0)), Daemon::System);
        assert_eq!(of("test:///default", 1000, None), Daemon::System);
        // root's qemu:///session is the privileged daemon.
        assert_eq!(of("qemu:///session", 0, None), Daemon::System);
        let me = nix::unistd::geteuid().as_raw();
        let d = of("qemu:///session", me.max(1), None);
        assert!(d.is_session(), "{d:?}");
        // A session over another user's socket is that user's.
        let d = of("qemu+unix:///session?socket=/run/x/libvirt-sock", 0, Some(4242));
        let u = d.user().expect("known on this machine");
        assert_eq!((u.uid, u.is_me), (4242, false));
        // A session socket root listens on is root's, i.e. the system daemon.
        assert_eq!(of("qemu+unix:///session?socket=/run/libvirt/libvirt-sock", 1000, Some(0)), Daemon::System);
        // Remote: a session, its user's home unknown.
        assert_eq!(of("qemu+ssh://alice@box/session", 1000, None), Daemon::Session { user: None });
        assert_eq!(of("qemu+ssh://alice@box/system", 1000, None), Daemon::System);
    }

    #[test]
    fn blocked_names_the_directory_a_user_cannot_pass_or_write() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let owner = std::fs::metadata(dir.path()).unwrap().uid();
        let other = DaemonUser {
            uid: owner + 4242,
            gid: owner + 4242,
            name: "alice".into(),
            home: "/nonexistent".into(),
            is_me: false,
        };
        let set = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        set(dir.path(), 0o755);
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        set(&open, 0o777);
        assert_eq!(other.blocked(&open.join("pool"), R | W | X), None, "creatable in a world-writable directory");
        set(&open, 0o755);
        let e = other.blocked(&open.join("pool"), R | W | X).unwrap();
        assert!(e.contains("alice cannot create") && e.contains("not writable by alice"), "{e}");
        let closed = dir.path().join("closed");
        std::fs::create_dir_all(closed.join("inner")).unwrap();
        set(&closed, 0o700);
        let e = other.blocked(&closed.join("inner"), R | X).unwrap();
        assert!(e.contains("cannot pass through") && e.contains("closed"), "{e}");
        set(&closed, 0o755);
    }

    #[test]
    fn a_session_keeps_disks_and_logs_in_its_users_home() {
        let u = DaemonUser { uid: 4242, gid: 4242, name: "alice".into(), home: "/home/alice".into(), is_me: false };
        let d = Daemon::Session { user: Some(u) };
        assert_eq!(d.default_storage_dir(), Some(PathBuf::from("/home/alice/.local/share/project-vm")));
        assert_eq!(d.serial_log_dir(), Some(PathBuf::from("/home/alice/.local/state/project-vm/logs")));
        assert_eq!(Daemon::System.default_storage_dir(), Some(PathBuf::from("/var/lib/project-vm")));
        assert_eq!(Daemon::Session { user: None }.default_storage_dir(), None);
    }
}
