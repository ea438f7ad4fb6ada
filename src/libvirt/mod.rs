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

/// [`connect`] for verbs that only look (`list`, `status`, `ssh`, ...): when
/// a system daemon refuses a user read-write access (polkit, socket
/// permissions), libvirt's read-only socket still shows domains, their
/// metadata, pools and volumes.
pub fn connect_to_look(uri: &str) -> anyhow::Result<Connect> {
    virt::error::clear_error_callback();
    let e = match Connect::open(Some(uri)) {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    let system = !daemon::Daemon::of(uri).is_session() && !nix::unistd::geteuid().is_root();
    if system && refused(&e) {
        if let Ok(c) = Connect::open_read_only(Some(uri)) {
            tracing::warn!(
                "{uri} refused a read-write connection ({}): looking through its read-only socket",
                e.message()
            );
            return Ok(c);
        }
    }
    Err(connect_error(uri, &e))
}

/// libvirt said no to this user (as opposed to: nobody answered).
fn refused(e: &virt::error::Error) -> bool {
    let msg = e.message();
    msg.contains("Permission denied")
        || msg.contains("authentication")
        || msg.contains("polkit")
        || msg.contains("system bus")
        || e.code().is(ErrorNumber::AuthFailed)
        || e.code().is(ErrorNumber::AuthCancelled)
        || e.code().is(ErrorNumber::AuthUnavailable)
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
    if !nix::unistd::geteuid().is_root() && (msg.contains("system bus") || msg.contains("polkit")) {
        return failure(
            Kind::Environment,
            format!(
                "libvirt at {uri} refused you: {msg}\n\
                 hint: the system daemon checks users other than root with polkit, which needs the system D-Bus \
                 (dbus-daemon --system) and polkitd running; with them, members of the 'libvirt' group are let in. \
                 Otherwise run as root, or use your own session with --connect qemu:///session"
            ),
        );
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
