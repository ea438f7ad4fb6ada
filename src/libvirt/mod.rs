//! Everything that talks to libvirt: the connection, storage, the domain XML
//! model and project-vm's ownership metadata.

pub mod daemon;
pub mod domain_xml;
pub mod errors;
pub mod metadata;
pub mod nodedev;
pub mod pool_listing;
pub mod snapshot_xml;
pub mod state;
pub mod stats;
pub mod storage;
pub mod uri;
pub mod virtiofsd;
pub mod vms;

use virt::connect::Connect;
use virt::error::ErrorNumber;

use errors::Error;

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
    // A malformed URI is bad input, not an unreachable daemon.
    uri::check(uri).map_err(Error::BadUri)?;
    tracing::debug!(uri, "connecting to libvirt");
    used(uri);
    Connect::open(Some(uri)).map_err(|e| connect_error(uri, &e).into())
}

/// [`connect`] for verbs that only look (`list`, `status`, `ssh`, ...): when
/// a system daemon refuses a user read-write access (polkit, socket
/// permissions), libvirt's read-only socket still shows domains, their
/// metadata, pools and volumes.
pub fn connect_to_look(uri: &str) -> anyhow::Result<Connect> {
    virt::error::clear_error_callback();
    used(uri);
    let e = match Connect::open(Some(uri)) {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    let system = !daemon::Daemon::of(uri).is_session() && !nix::unistd::geteuid().is_root();
    if system && errors::refused(&e) {
        if let Ok(c) = Connect::open_read_only(Some(uri)) {
            crate::messages::warn(format!(
                "{uri} refused a read-write connection ({}): looking through its read-only socket",
                e.message()
            ));
            return Ok(c);
        }
    }
    Err(connect_error(uri, &e).into())
}

fn connect_error(uri: &str, e: &virt::error::Error) -> Error {
    let msg = e.message();
    if errors::permission_denied(e) || e.code().is(ErrorNumber::AuthFailed) || e.code().is(ErrorNumber::AuthCancelled) {
        return Error::Connect(format!(
            "permission denied connecting to libvirt at {uri}: {msg}\n\
                 hint: run as root, add your user to the 'libvirt' group (then log in again), \
                 or use your own session with --connect qemu:///session"
        ));
    }
    if let Some(u) = daemon::Daemon::of(uri).user() {
        let how = match u.is_me {
            true => "libvirt starts your session daemon itself on first use (libvirtd or virtqemud, as you): is it installed \
                     (Debian and Ubuntu: `apt install libvirt-daemon` with the QEMU driver)? `virsh -c qemu:///session version` shows \
                     the same error"
                .to_owned(),
            false => format!("that socket is {}'s session daemon: it must be running (started as {})", u.name, u.name),
        };
        return Error::Connect(format!("cannot connect to libvirt at {uri}: {msg}\nhint: {how}"));
    }
    if !nix::unistd::geteuid().is_root() && errors::polkit(e) {
        return Error::Connect(format!(
            "libvirt at {uri} refused you: {msg}\n\
                 hint: the system daemon checks users other than root with polkit, which needs the system D-Bus \
                 (dbus-daemon --system) and polkitd running; with them, members of the 'libvirt' group are let in. \
                 Otherwise run as root, or use your own session with --connect qemu:///session"
        ));
    }
    let start = if std::path::Path::new("/run/systemd/system").exists() {
        "`systemctl start libvirtd` (or virtqemud)"
    } else {
        "`virtlogd -d && libvirtd -d` as root"
    };
    Error::Connect(format!(
        "cannot connect to libvirt at {uri}: {msg}\n\
             hint: is libvirtd running? Start it with {start}, or pick another URI with --connect / PROJECT_VM_URI"
    ))
}

/// Who a connection talks to, whatever the URI's spelling: the driver, the
/// host UUID from the daemon's capabilities, and the URI's path (`/system`,
/// `/session`). `qemu:///system`, `qemu+unix:///system` and
/// `qemu+unix:///system?socket=/var/run/libvirt/libvirt-sock` give one
/// identity; a user's session daemon another.
pub fn daemon_identity(conn: &Connect, uri: &str) -> anyhow::Result<String> {
    let caps = conn.capabilities().map_err(|e| explain_on(conn, e, "reading the libvirt host's capabilities"))?;
    let (driver, path) = uri_driver_and_path(uri);
    Ok(match host_uuid(&caps) {
        Some(uuid) => format!("{driver}|{}|{path}", uuid.to_ascii_lowercase()),
        // No host UUID (test driver): the URI itself, as spelled.
        None => format!("uri|{uri}"),
    })
}

/// The `<host><uuid>` of a capabilities document.
pub fn host_uuid(caps: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Caps {
        host: CapsHost,
    }
    #[derive(serde::Deserialize)]
    struct CapsHost {
        uuid: Option<String>,
    }
    let c: Caps = quick_xml::de::from_str(caps).ok()?;
    c.host.uuid.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty())
}

/// `qemu+ssh://h/system?x` -> (`qemu`, `/system`), from the parsed URI (an
/// alias or an unparsable name stands for itself).
pub fn uri_driver_and_path(uri: &str) -> (String, String) {
    match uri::Uri::parse(uri) {
        Ok(u) => {
            let path = match u.path.trim_end_matches('/') {
                "" => "/".to_owned(),
                p => p.to_owned(),
            };
            (u.driver.to_ascii_lowercase(), path)
        }
        Err(_) => (uri.to_owned(), "/".to_owned()),
    }
}

/// True when `e` is a libvirt error with code `n`.
pub fn is(e: &virt::error::Error, n: ErrorNumber) -> bool {
    e.code().is(n)
}

/// The URIs this process has connected to, for hints that need to know
/// which daemon was asked when the caller has only libvirt's error.
static USED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn used(uri: &str) {
    let mut all = USED.lock().unwrap_or_else(|p| p.into_inner());
    if !all.iter().any(|u| u == uri) {
        all.push(uri.to_owned());
    }
}

/// The daemon every connection of this process reaches, when that is one
/// daemon (one host, as almost every run); `None` for a fleet of several,
/// or before any connection.
pub fn daemon_in_use() -> Option<daemon::Daemon> {
    one_daemon(&USED.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

/// The daemon all of `uris` reach, when that is one.
fn one_daemon(uris: &[String]) -> Option<daemon::Daemon> {
    let mut daemons = uris.iter().map(|u| daemon::Daemon::of(u));
    let first = daemons.next()?;
    daemons.all(|d| d == first).then_some(first)
}

/// Says what we were doing, keeping libvirt's error typed inside (so its
/// code and domain decide the exit code), with a hint for the errors a user
/// can fix (permissions on files). The hint is for the daemon this process
/// talks to ([`daemon_in_use`]); across several different daemons it names
/// both cases. [`explain_on`] and [`explain_for`] name the daemon outright.
/// The daemon is only looked at when a hint is given.
pub fn explain(e: virt::error::Error, doing: impl std::fmt::Display) -> anyhow::Error {
    explained(e, doing, || match daemon_in_use() {
        Some(d) => permission_hint(&d),
        None => ANY_DAEMON_HINT.to_owned(),
    })
}

/// [`explain`] for a call on `conn`: the hint follows the URI `conn` was
/// opened with.
pub fn explain_on(conn: &Connect, e: virt::error::Error, doing: impl std::fmt::Display) -> anyhow::Error {
    explained(e, doing, || match conn.uri() {
        Ok(u) => permission_hint(&daemon::Daemon::of(&u)),
        Err(_) => ANY_DAEMON_HINT.to_owned(),
    })
}

/// [`explain`], with the hint naming the daemon (and so the user) that
/// needed the file.
pub fn explain_for(d: &daemon::Daemon, e: virt::error::Error, doing: impl std::fmt::Display) -> anyhow::Error {
    explained(e, doing, || permission_hint(d))
}

/// libvirt's error with what was being done, and `hint` when it is one a
/// user can mend by permissions.
fn explained(e: virt::error::Error, doing: impl std::fmt::Display, hint: impl FnOnce() -> String) -> anyhow::Error {
    let what = doing.to_string();
    match errors::permission_denied(&e) {
        true => Error::Mendable { what, source: e, hint: hint() }.into(),
        false => Error::Call { what, source: e }.into(),
    }
}

/// The permission hint when the daemon is not known to be one kind.
const ANY_DAEMON_HINT: &str = "the file named above must be readable by the user the VMs run as (on qemu:///system, \
     the QEMU user, libvirt-qemu or qemu; on qemu:///session, the session daemon's own user), and every parent \
     directory needs +x for that user; AppArmor or SELinux may also deny it (see the host's audit log)";

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
            Err(e) if is(&e, ErrorNumber::NoNetwork) => Err(Error::Invalid(format!(
                "libvirt network {name:?} does not exist on this host: pick one of `virsh net-list --all`, define it, or set \"network\" in the settings (for instance {{\"type\": \"user\"}})"
            ))
            .into()),
            // Drivers without a network driver (none here) cannot be asked.
            Err(e) if is(&e, ErrorNumber::NoSupport) => Ok(()),
            Err(e) => Err(explain_on(conn, e, format!("looking up libvirt network {name}"))),
        },
        Network::Bridge { name } if local => {
            if std::path::Path::new("/sys/class/net").join(name).join("bridge").is_dir() {
                Ok(())
            } else {
                Err(Error::Invalid(format!(
                    "bridge {name:?} is not a bridge on this host (no /sys/class/net/{name}/bridge): create it (`ip link add {name} type bridge`), or set \"network\" to another bridge or network"
                ))
                .into())
            }
        }
        Network::Bridge { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_spellings_of_one_daemon_agree() {
        let system = uri_driver_and_path("qemu:///system");
        for u in ["qemu+unix:///system", "qemu+unix:///system?socket=/var/run/libvirt/libvirt-sock", "qemu:///system/"]
        {
            assert_eq!(uri_driver_and_path(u), system, "{u}");
        }
        assert_eq!(uri_driver_and_path("qemu+ssh://root@h:22/system?keyfile=/k"), system);
        assert_ne!(uri_driver_and_path("qemu:///session"), system);
        assert_eq!(uri_driver_and_path("test:///default"), ("test".into(), "/default".into()));
    }

    #[test]
    fn an_explained_libvirt_error_stays_typed_and_is_said_once() {
        let conn = connect("test:///default").unwrap();
        let e = conn.lookup_domain_by_name("project-no-such-pv-test").unwrap_err();
        let msg = e.message().to_owned();
        let err = explain_on(&conn, e, "looking up domain project-no-such-pv-test");
        // Decided by libvirt's code (no domain), not by its words.
        assert_eq!(crate::exit::kind(&err), crate::error::Kind::NotFound, "{err:#}");
        let call = err.downcast_ref::<Error>().and_then(Error::libvirt).expect("libvirt's error inside");
        assert!(call.code().is(ErrorNumber::NoDomain));
        assert_eq!(format!("{err:#}"), format!("looking up domain project-no-such-pv-test: {msg}"));
    }

    #[test]
    fn connect_failures_are_typed() {
        let bad = connect("qemu:///x").unwrap_err();
        assert!(matches!(bad.downcast_ref::<Error>(), Some(Error::BadUri(_))), "{bad:#}");
        assert_eq!(crate::exit::kind(&bad), crate::error::Kind::Invalid);
        let down = connect("qemu+unix:///session?socket=/nonexistent-pv-connect/sock").unwrap_err();
        assert!(matches!(down.downcast_ref::<Error>(), Some(Error::Connect(_))), "{down:#}");
        assert_eq!(crate::exit::kind(&down), crate::error::Kind::Environment);
        assert!(format!("{down:#}").contains("hint:"), "{down:#}");
    }

    #[test]
    fn a_missing_vm_and_a_foreign_domain_are_their_own_variants() {
        let conn = connect("test:///default").unwrap();
        let missing = crate::spec::VmName::parse("pv-no-such-vm").unwrap();
        let e = vms::get(&conn, &missing).err().expect("absent");
        assert!(matches!(e.downcast_ref::<Error>(), Some(Error::NoSuchVm(_))), "{e:#}");
        assert_eq!(crate::exit::kind(&e), crate::error::Kind::NotFound);
        let e = vms::foreign(&missing, None);
        assert!(matches!(e.downcast_ref::<Error>(), Some(Error::Foreign(_))), "{e:#}");
        assert_eq!(crate::exit::kind(&e), crate::error::Kind::Invalid);
    }

    #[test]
    fn the_permission_hint_follows_the_daemon_in_use() {
        let system = vec!["qemu:///system".to_owned(), "qemu+unix:///system".to_owned()];
        assert_eq!(one_daemon(&system), Some(daemon::Daemon::System));
        let remote_session = vec!["qemu+ssh://alice@box/session".to_owned()];
        let d = one_daemon(&remote_session).unwrap();
        assert!(d.is_session());
        assert!(
            permission_hint(&d).contains("session daemon on that host runs as its user"),
            "{}",
            permission_hint(&d)
        );
        assert!(permission_hint(&daemon::Daemon::System).contains("libvirt-qemu"));
        // A fleet of several daemons: no one daemon, so the hint names both cases.
        assert_eq!(one_daemon(&[system[0].clone(), remote_session[0].clone()]), None);
        assert_eq!(one_daemon(&[]), None);
        assert!(ANY_DAEMON_HINT.contains("qemu:///system") && ANY_DAEMON_HINT.contains("qemu:///session"));
    }

    #[test]
    fn reads_the_host_uuid() {
        let caps = "<capabilities><host><uuid>3B7F81D0-cfa6-453f-bd4e-21ae7cbc67f7</uuid><cpu><arch>x86_64</arch></cpu></host><guest/></capabilities>";
        assert_eq!(host_uuid(caps).as_deref(), Some("3B7F81D0-cfa6-453f-bd4e-21ae7cbc67f7"));
        assert_eq!(host_uuid("<capabilities><host><cpu/></host></capabilities>"), None);
    }
}
