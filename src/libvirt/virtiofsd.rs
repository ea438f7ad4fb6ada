//! Finding virtiofsd, the daemon libvirt runs for each shared directory.
//! Distributions ship it (Debian 13: /usr/libexec/virtiofsd); older ones do
//! not, and `cargo install virtiofsd` puts it in ~/.cargo/bin.

use std::path::{Path, PathBuf};

use super::errors::Error;

/// virtiofsd on this machine, if installed.
pub fn find() -> Option<PathBuf> {
    candidates().find(|p| p.is_file())
}

pub fn missing() -> anyhow::Error {
    Error::Environment(
        "shares need virtiofsd, which is not installed: `apt install virtiofsd` (Debian 13, Ubuntu 24.04 and later), your distribution's package, or `cargo install --locked virtiofsd` (needs libseccomp-dev and libcap-ng-dev)"
            .into(),
    )
    .into()
}

/// The virtiofsd for `shares` on `daemon`'s VMs, or why they cannot have one.
///
/// The system daemon runs virtiofsd as root. A session daemon runs it as its
/// user, unprivileged: it must be a virtiofsd that user can run (not one in
/// root's home), and it can serve only directories that user can read (and,
/// unless read-only, write); in the guest, files keep that user's rights.
pub fn for_daemon(daemon: &super::daemon::Daemon, shares: &[crate::spec::Share]) -> anyhow::Result<PathBuf> {
    use super::daemon::{R, W, X};
    let Some(user) = daemon.user() else {
        return find().ok_or_else(missing);
    };
    // A directory the user cannot reach is wrong input wherever it runs: said first.
    for s in shares {
        let want = if s.readonly { R | X } else { R | W | X };
        if let Some(why) = user.blocked(&s.source, want) {
            return Err(Error::Invalid(format!(
                "cannot share {} with the guest: {why}; {} runs virtiofsd as {}, unprivileged, so it serves only what {} may {}: choose a directory of {}'s, or use the system daemon (root, qemu:///system)",
                s.source.display(),
                daemon.describe(),
                user.name,
                user.name,
                if s.readonly { "read" } else { "read and write" },
                user.name
            ))
            .into());
        }
    }
    let found = candidates().find(|p| p.is_file() && user.blocked(p, X).is_none());
    let Some(bin) = found else {
        // What we can see that the daemon's user may not run (root's ~/.cargo/bin, say).
        let hidden: Vec<String> = candidates().filter(|p| p.is_file()).map(|p| p.display().to_string()).collect();
        let why = match hidden.is_empty() {
            true => String::new(),
            false => format!(" ({} is there, but not one {} may run)", hidden.join(", "), user.name),
        };
        return Err(Error::Environment(format!(
                "shares need virtiofsd, which {} runs as {}: none that {} can run is installed{why}; install your distribution's package (`apt install virtiofsd` on Debian 13 and Ubuntu 24.04), or `cargo install --locked virtiofsd` as {}",
                daemon.describe(), user.name, user.name, user.name
            ))
            .into());
    };
    let lacking = unprivileged_lacks(user);
    if !shares.is_empty() && !lacking.is_empty() {
        return Err(Error::Environment(format!(
                "shares on {} need virtiofsd to run unprivileged in a user namespace, and this host cannot give it one: {}. \
                 As root: `apt install uidmap` and `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {}`; \
                 or use the system daemon (root, qemu:///system)",
                daemon.describe(),
                lacking.join(", "),
                user.name
            ))
            .into());
    }
    Ok(bin)
}

/// What this host lacks for `user`'s unprivileged virtiofsd: libvirt (10.0
/// and later) runs a session's virtiofsd in a user namespace where the
/// guest's root is the user and every other id one of the user's
/// subordinate ids, mapped with the setuid newuidmap/newgidmap.
pub fn unprivileged_lacks(user: &super::daemon::DaemonUser) -> Vec<String> {
    let mut lacking = Vec::new();
    for (file, what) in [("/etc/subuid", "subordinate user ids"), ("/etc/subgid", "subordinate group ids")] {
        if !has_range(file, user) {
            lacking.push(format!("no {what} for {} in {file}", user.name));
        }
    }
    for tool in ["newuidmap", "newgidmap"] {
        if !["/usr/bin", "/bin", "/usr/sbin", "/usr/local/bin"].iter().any(|d| Path::new(d).join(tool).is_file()) {
            lacking.push(format!("no {tool} (package uidmap)"));
        }
    }
    lacking
}

fn candidates() -> impl Iterator<Item = PathBuf> {
    // On PATH (the `which` crate, as doctor looks), then where packages and
    // `cargo install` put it outside PATH.
    let on_path = which::which_all("virtiofsd").into_iter().flatten();
    let home = crate::settings::invoking_home().map(|h| h.join(".cargo/bin"));
    let known = ["/usr/libexec", "/usr/lib/qemu", "/usr/local/bin", "/usr/local/libexec", "/root/.cargo/bin"]
        .map(PathBuf::from);
    on_path.chain(home.into_iter().chain(known).map(|d| d.join("virtiofsd")))
}

/// `file` (`/etc/subuid`, `/etc/subgid`) gives `user` a range, by name or uid.
fn has_range(file: &str, user: &super::daemon::DaemonUser) -> bool {
    // Bounded, as every file read: these are small tables.
    let text = crate::files::read_text(Path::new(file), "subordinate id file", 1 << 20).unwrap_or_default();
    let uid = user.uid.to_string();
    text.lines().any(|l| {
        let mut f = l.trim().split(':');
        let who = f.next().unwrap_or("");
        (who == user.name || who == uid) && f.nth(1).and_then(|n| n.trim().parse::<u64>().ok()).is_some_and(|n| n > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::daemon::{Daemon, DaemonUser};

    #[test]
    fn a_session_refuses_a_share_its_user_cannot_reach_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let closed = dir.path().join("closed");
        std::fs::create_dir(&closed).unwrap();
        std::fs::set_permissions(&closed, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&closed).unwrap());
        let other = DaemonUser {
            uid: owner + 4242,
            gid: owner + 4242,
            name: "alice".into(),
            home: "/nonexistent".into(),
            is_me: false,
        };
        let share = crate::spec::Share { source: closed.clone(), target: "/mnt/x".into(), readonly: true };
        let d = Daemon::Session { user: Some(other) };
        match for_daemon(&d, &[share]) {
            Err(e) => {
                assert_eq!(crate::exit::code(&e), 2, "{e}");
                let e = e.to_string();
                assert!(e.contains("alice cannot read and enter") && e.contains(&closed.display().to_string()), "{e}");
            }
            Ok(p) => panic!("shared a directory alice cannot read, with {}", p.display()),
        }
    }
}
