//! Everything that talks to libvirt: the connection, storage, the domain XML
//! model and project-vm's ownership metadata.

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

/// The default URI: the system daemon for root, the user's session otherwise.
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
    // A malformed URI is bad input, not an unreachable daemon.
    uri::check(uri).map_err(crate::error::invalid)?;
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
    let msg = e.message().to_owned();
    if msg.contains("Permission denied") {
        return failure(
            Kind::Environment,
            format!(
                "{doing}: {msg}\n\
                 hint: the file named above must be readable by the user QEMU runs as (libvirt-qemu or qemu on \
                 qemu:///system), and every parent directory needs +x for that user; AppArmor or SELinux \
                 may also deny it (see the host's audit log)"
            ),
        );
    }
    anyhow::anyhow!("{doing}: {msg}")
}

/// The network a new VM is attached to must exist on the libvirt host, or its
/// first start fails: a libvirt network by name, a bridge (checked on this
/// machine only: libvirt has no portable way to ask a remote host about its
/// bridges). Exit 2, naming it and the fix.
pub fn check_network(conn: &Connect, net: &crate::settings::Network, local: bool) -> anyhow::Result<()> {
    use crate::settings::Network;
    match net {
        Network::User { .. } => Ok(()),
        Network::Network { name } => match conn.lookup_network_by_name(name) {
            Ok(_) => Ok(()),
            Err(e) if is(&e, ErrorNumber::NoNetwork) => Err(crate::error::invalid(format!(
                "libvirt network {name:?} does not exist on this host: pick one of `virsh net-list --all`, define it, or set \"network\" in the settings (for instance {{\"type\": \"user\"}})"
            ))),
            // Drivers without a network driver (none here) cannot be asked.
            Err(e) if is(&e, ErrorNumber::NoSupport) => Ok(()),
            Err(e) => Err(explain(e, format!("looking up libvirt network {name}"))),
        },
        Network::Bridge { name } if local => {
            if std::path::Path::new("/sys/class/net").join(name).join("bridge").is_dir() {
                Ok(())
            } else {
                Err(crate::error::invalid(format!(
                    "bridge {name:?} is not a bridge on this host (no /sys/class/net/{name}/bridge): create it (`ip link add {name} type bridge`), or set \"network\" to another bridge or network"
                )))
            }
        }
        Network::Bridge { .. } => Ok(()),
    }
}
