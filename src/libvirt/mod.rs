//! Everything that talks to libvirt: the connection, storage, the domain XML
//! model and project-vm's ownership metadata.

pub mod daemon;
pub mod domain_xml;
pub mod metadata;
pub mod nodedev;
pub mod pool_listing;
pub mod snapshot_xml;
pub mod stats;
pub mod storage;
pub mod uri;
pub mod virtiofsd;
pub mod vms;

use virt::connect::Connect;
use virt::error::ErrorNumber;

use crate::error::{failure, Kind};

/// The default URI: the system daemon for root, the user's session otherwise
/// (which libvirt spawns on first use, running as that user).
pub fn default_uri() -> &'static str {
    if nix::unistd::geteuid().is_root() {
        "qemu:///system"
    } else {
        "qemu:///session"
    }
}

/// Opens a connection, turning the usual failures into messages that say which
/// URI and what to do about it.
pub fn connect(uri: &str) -> anyhow::Result<Connect> {
    // libvirt otherwise prints every error on stderr itself, including the ones
    // we handle (a lookup of a name that does not exist, say).
    virt::error::clear_error_callback();
    tracing::debug!(uri, "connecting to libvirt");
    Connect::open(Some(uri)).map_err(|e| connect_error(uri, &e))
}

fn connect_error(uri: &str, e: &virt::error::Error) -> anyhow::Error {
    let msg = e.message();
    if msg.contains("Permission denied")
        || e.code().is(ErrorNumber::AuthFailed)
        || e.code().is(ErrorNumber::AuthCancelled)
    {
        return failure(
            Kind::Environment,
            format!(
                "permission denied connecting to libvirt at {uri}: {msg}\n\
                 hint: run as root, add your user to the 'libvirt' group (then log in again), \
                 or use your own session with --connect qemu:///session"
            ),
        );
    }
    if let Some(u) = daemon::Daemon::of(uri).user() {
        let how = match u.is_me {
            true => "libvirt starts your session daemon itself on first use (libvirtd or virtqemud, as you): is it installed \
                     (Debian and Ubuntu: `apt install libvirt-daemon` with the QEMU driver)? `virsh -c qemu:///session version` shows \
                     the same error"
                .to_owned(),
            false => format!("that socket is {}'s session daemon: it must be running (started as {})", u.name, u.name),
        };
        return failure(Kind::Environment, format!("cannot connect to libvirt at {uri}: {msg}\nhint: {how}"));
    }
    let start = if std::path::Path::new("/run/systemd/system").exists() {
        "`systemctl start libvirtd` (or virtqemud)"
    } else {
        "`virtlogd -d && libvirtd -d` as root"
    };
    failure(
        Kind::Environment,
        format!(
            "cannot connect to libvirt at {uri}: {msg}\n\
             hint: is libvirtd running? Start it with {start}, or pick another URI with --connect / PROJECT_VM_URI"
        ),
    )
}

/// True when `e` is a libvirt error with code `n`.
pub fn is(e: &virt::error::Error, n: ErrorNumber) -> bool {
    e.code().is(n)
}

/// Adds a hint to libvirt errors a user can fix (permissions on files), and
/// says what we were doing.
pub fn explain(e: virt::error::Error, doing: impl std::fmt::Display) -> anyhow::Error {
    explain_for(&daemon::Daemon::System, e, doing)
}

/// [`explain`], with the hint naming the daemon (and so the user) that
/// needed the file.
pub fn explain_for(d: &daemon::Daemon, e: virt::error::Error, doing: impl std::fmt::Display) -> anyhow::Error {
    let msg = e.message().to_owned();
    if msg.contains("Permission denied") {
        return failure(Kind::Environment, format!("{doing}: {msg}\nhint: {}", permission_hint(d)));
    }
    anyhow::anyhow!("{doing}: {msg}")
}

/// Who must be able to reach a file libvirt or QEMU opened, and how to fix it.
pub fn permission_hint(d: &daemon::Daemon) -> String {
    match d.user() {
        Some(u) => format!(
            "{} and its VMs run as {name}, with {name}'s rights only: the file or directory named above must be \
             one {name} can read (and for disks and the pool, write), with +x on every parent directory. \
             Keep it under {name}'s home (the default \"storage_dir\" is {}), or run as root on qemu:///system",
            d.describe(),
            d.default_storage_dir().map(|p| p.display().to_string()).unwrap_or_default(),
            name = u.name,
        ),
        None if d.is_session() => "the session daemon on that host runs as its user: the file named above must be \
             one that user can read and write there"
            .into(),
        None => "the file named above must be readable by the user QEMU runs as (libvirt-qemu or qemu on \
             qemu:///system), and every parent directory needs +x for that user; AppArmor or SELinux \
             may also deny it (see the host's audit log)"
            .into(),
    }
}
