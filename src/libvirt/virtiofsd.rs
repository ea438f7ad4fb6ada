//! Finding virtiofsd, the daemon libvirt runs for each shared directory.
//! Distributions ship it (Debian 13: /usr/libexec/virtiofsd); older ones do
//! not, and `cargo install virtiofsd` puts it in ~/.cargo/bin.

use std::path::PathBuf;

use crate::error::{failure, Kind};

/// virtiofsd on this machine, if installed.
pub fn find() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let known = ["/usr/libexec", "/usr/lib/qemu", "/usr/local/bin", "/usr/local/libexec", "/root/.cargo/bin"]
        .map(PathBuf::from);
    on_path.chain(known).map(|d| d.join("virtiofsd")).find(|p| p.is_file())
}

pub fn missing() -> anyhow::Error {
    failure(
        Kind::Environment,
        "shares need virtiofsd, which is not installed: `apt install virtiofsd` (Debian 13, Ubuntu 24.04 and later), your distribution's package, or `cargo install --locked virtiofsd` (needs libseccomp-dev and libcap-ng-dev)",
    )
}
