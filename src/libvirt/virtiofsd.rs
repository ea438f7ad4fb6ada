//! Finding virtiofsd, the daemon libvirt runs for each shared directory.
//! Distributions ship it (Debian 13: /usr/libexec/virtiofsd); older ones do
//! not, and `cargo install virtiofsd` puts it in ~/.cargo/bin.

use std::path::PathBuf;

use crate::error::{failure, Kind};

/// virtiofsd on this machine, if installed.
pub fn find() -> Option<PathBuf> {
    candidates().find(|p| p.is_file())
}

pub fn missing() -> anyhow::Error {
    failure(
        Kind::Environment,
        "shares need virtiofsd, which is not installed: `apt install virtiofsd` (Debian 13, Ubuntu 24.04 and later), your distribution's package, or `cargo install --locked virtiofsd` (needs libseccomp-dev and libcap-ng-dev)",
    )
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
    let found = candidates().find(|p| p.is_file() && user.may(p, X));
    let Some(bin) = found else {
        let hidden: Vec<String> = candidates()
            .filter(|p| p.is_file() || !p.parent().is_some_and(|d| user.may(d, X)))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        let why = match hidden.is_empty() {
            true => String::new(),
            false => format!(" ({} is there, but not one {} may run)", hidden.join(", "), user.name),
        };
        return Err(failure(
            Kind::Environment,
            format!(
                "shares need virtiofsd, which {} runs as {}: none that {} can run is installed{why}; install your distribution's package (`apt install virtiofsd` on Debian 13 and Ubuntu 24.04), or `cargo install --locked virtiofsd` as {}",
                daemon.describe(), user.name, user.name, user.name
            ),
        ));
    };
    for s in shares {
        let want = if s.readonly { R | X } else { R | W | X };
        if let Some(why) = user.blocked(&s.source, want) {
            return Err(crate::error::invalid(format!(
                "cannot share {} with the guest: {why}. {} runs virtiofsd as {}, unprivileged, so it serves only what {} may {}; choose a directory of {}'s, or use the system daemon (root, qemu:///system)",
                s.source.display(),
                daemon.describe(),
                user.name,
                user.name,
                if s.readonly { "read" } else { "read and write" },
                user.name
            )));
        }
    }
    Ok(bin)
}

fn candidates() -> impl Iterator<Item = PathBuf> {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let home = crate::settings::invoking_home().map(|h| h.join(".cargo/bin"));
    let known = ["/usr/libexec", "/usr/lib/qemu", "/usr/local/bin", "/usr/local/libexec", "/root/.cargo/bin"]
        .map(PathBuf::from);
    on_path.chain(home).chain(known).map(|d| d.join("virtiofsd"))
}
