//! `doctor`: checks what would make a `create` fail, and says how to fix
//! each finding. Exits non-zero when a create would fail.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Ctx;
use crate::libvirt::daemon::{Daemon, DaemonUser, R, W, X};
use crate::output::Report;
use crate::settings::{Accel, Network, Settings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    /// Worth knowing; a create still works.
    Warn,
    /// A create would fail.
    Error,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub level: Level,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DoctorReport {
    pub uri: String,
    pub checks: Vec<Check>,
    /// True when nothing found would make a create fail.
    pub ok: bool,
}

fn check(check: &'static str, level: Level, message: impl Into<String>, fix: Option<String>) -> Check {
    Check { check, level, message: message.into(), fix }
}

/// Runs every check. `uri` and `settings` are checked even when libvirt
/// cannot be reached (then the libvirt-side checks are skipped).
///
/// Each check asks what the daemon `settings` were resolved for will do, as
/// the user it runs as: the system daemon creates the pool directory as root
/// and runs QEMU as its QEMU user; a session daemon does both as its user.
pub fn doctor(uri: &str, settings: &Settings) -> DoctorReport {
    let (mut checks, defined_dir) = libvirt_checks(uri, settings);
    checks.push(keys(settings));
    if Ctx::uri_is_local(uri) {
        checks.extend(local_checks(settings, defined_dir));
    } else {
        checks.extend(remote_checks(uri, settings, defined_dir));
    }
    let ok = checks.iter().all(|c| c.level != Level::Error);
    DoctorReport { uri: uri.to_owned(), checks, ok }
}

/// The checks that ask the daemon. Also the pool's directory when the pool
/// is already defined: it keeps its own, whatever "storage_dir" says now
/// (that is the one a create uses).
fn libvirt_checks(uri: &str, settings: &Settings) -> (Vec<Check>, Option<Option<PathBuf>>) {
    let conn = match crate::libvirt::connect(uri) {
        Err(e) => return (vec![check("libvirt", Level::Error, format!("{e:#}"), None)], None),
        Ok(conn) => conn,
    };
    let version = conn.lib_version().map(|v| format!("{}.{}.{}", v / 1_000_000, v / 1000 % 1000, v % 1000));
    let answers = format!("{uri} answers (libvirt {})", version.unwrap_or_default());
    let ctx = Ctx::new(conn, uri.to_owned(), settings.clone(), true);
    let mut checks = vec![
        check("libvirt", Level::Ok, answers, None),
        privileges(&settings.daemon),
        acceleration(&ctx),
        network(&ctx),
    ];
    let (c, dir) = pool(&ctx);
    checks.push(c);
    checks.push(base_image(&ctx));
    (checks, dir)
}

/// The checks of files and programs on this machine, the libvirt host.
fn local_checks(settings: &Settings, defined_dir: Option<Option<PathBuf>>) -> Vec<Check> {
    let daemon = &settings.daemon;
    let mut checks = Vec::new();
    let dir = match defined_dir {
        Some(dir) => dir,
        None => match settings.storage_dir() {
            Ok(d) => Some(d.to_owned()),
            Err(e) => {
                checks.push(check("pool path", Level::Error, format!("{e:#}"), None));
                None
            }
        },
    };
    if let Some(dir) = dir {
        checks.extend(match daemon.user() {
            Some(user) => session_pool_path(daemon, user, &dir),
            None => pool_path(&dir),
        });
        checks.push(free_space(&dir));
    }
    checks.extend(confinement());
    if let Network::User { .. } = settings.network {
        checks.push(passt(daemon));
    }
    checks.push(virtiofsd(daemon));
    checks
}

/// A remote host's files are not checked from here: say so.
fn remote_checks(uri: &str, settings: &Settings, defined_dir: Option<Option<PathBuf>>) -> Vec<Check> {
    let mut checks = Vec::new();
    if defined_dir.is_none() {
        if let Err(e) = settings.storage_dir() {
            checks.push(check("pool path", Level::Error, format!("{e:#}"), None));
        }
    }
    checks.push(check(
        "host files",
        Level::Warn,
        format!(
            "{uri} is remote: the storage directory, confinement and passt are on that host and not checked from here"
        ),
        Some("run `project-vm doctor` on that host too".into()),
    ));
    checks
}

fn privileges(daemon: &Daemon) -> Check {
    let root = nix::unistd::geteuid().is_root();
    match daemon {
        Daemon::Session { user: Some(u) } => check(
            "privileges",
            Level::Ok,
            format!(
                "{}: VMs run as {}, with {}'s rights; no libvirt networks, user networking (passt) instead",
                daemon.describe(),
                u.name,
                u.name
            ),
            None,
        ),
        Daemon::Session { user: None } => check(
            "privileges",
            Level::Ok,
            "a session daemon on another host: VMs run as its user there; user networking (passt)",
            None,
        ),
        Daemon::System if root => check("privileges", Level::Ok, "the system daemon, as root", None),
        Daemon::System => check(
            "privileges",
            Level::Ok,
            "the system daemon, through your libvirt group membership (polkit): VMs, pools and networks are the host's",
            None,
        ),
    }
}

/// A libvirt network must exist on the daemon that will run the VM (a
/// session daemon has none of the system's); a bridge needs the bridge helper.
fn network(ctx: &Ctx) -> Check {
    match &ctx.settings.network {
        Network::User { ssh_port } => check(
            "network",
            Level::Ok,
            format!("user networking (passt): each VM's ssh forwarded from 127.0.0.1, ports from {ssh_port}"),
            None,
        ),
        Network::Network { name } => match ctx.conn().lookup_network_by_name(name) {
            Ok(n) => match n.is_active() {
                Ok(true) => check("network", Level::Ok, format!("libvirt network {name} is active"), None),
                _ => check(
                    "network",
                    Level::Warn,
                    format!("libvirt network {name} is defined but not active: VMs fail to start until it is"),
                    Some(format!("`virsh -c {} net-start {name}` (and `net-autostart {name}`)", ctx.uri)),
                ),
            },
            Err(_) => check(
                "network",
                Level::Error,
                format!("{} has no libvirt network {name:?}, and \"network\" asks for it", ctx.settings.daemon.describe()),
                Some(match ctx.settings.daemon.is_session() {
                    true => "a session daemon has no libvirt networks: drop \"network\" to use user networking (the default on a session), or use qemu:///system as root".into(),
                    false => format!("define it (`virsh net-list --all`), or set \"network\" to {{\"type\": \"user\", \"ssh_port\": {}}}", crate::settings::DEFAULT_SSH_PORT),
                }),
            ),
        },
        Network::Bridge { name } if ctx.settings.daemon.is_session() => check(
            "network",
            Level::Warn,
            format!("bridge {name} from a session daemon: QEMU needs qemu-bridge-helper (setuid) and {name} allowed in /etc/qemu/bridge.conf"),
            Some("user networking needs neither: drop \"network\"".into()),
        ),
        Network::Bridge { name } => check("network", Level::Ok, format!("host bridge {name}"), None),
    }
}

/// The pool, when it is defined already: its directory is what a create
/// uses. `(check, Some(dir))` when defined (`Some(None)`: its directory is
/// not a local path), `(check, None)` when a create will define it.
fn pool(ctx: &Ctx) -> (Check, Option<Option<PathBuf>>) {
    let name = &ctx.settings.pool;
    match ctx.conn().lookup_storage_pool_by_name(name) {
        Ok(p) => {
            let dir = crate::libvirt::storage::pool_dir(&p);
            let active = p.is_active().unwrap_or(false);
            let at = dir.as_ref().map(|d| format!(" at {}", d.display())).unwrap_or_default();
            let differs = match (&dir, &ctx.settings.storage_dir) {
                (Some(d), Some(s)) if d != s => {
                    format!(" (not \"storage_dir\" {}: a defined pool keeps its directory)", s.display())
                }
                _ => String::new(),
            };
            let state = if active { "active" } else { "defined, not active (a create starts it)" };
            (check("pool", Level::Ok, format!("pool {name}{at} is {state}{differs}"), None), Some(dir))
        }
        Err(_) => (
            check(
                "pool",
                Level::Ok,
                format!(
                    "pool {name} is not defined yet: the first create defines it{}",
                    ctx.settings.storage_dir.as_ref().map(|d| format!(" at {}", d.display())).unwrap_or_default()
                ),
                None,
            ),
            None,
        ),
    }
}

/// A session daemon makes the pool directory, and QEMU opens the disks in
/// it, as the daemon's user: that user must be able to make (or write) it.
fn session_pool_path(daemon: &Daemon, user: &DaemonUser, dir: &Path) -> Vec<Check> {
    match user.blocked(dir, R | W | X) {
        None => vec![check(
            "pool path",
            Level::Ok,
            format!(
                "{} {} by {}, whom the session daemon runs as",
                dir.display(),
                if dir.exists() { "is writable" } else { "can be created" },
                user.name
            ),
            None,
        )],
        Some(why) => vec![check(
            "pool path",
            Level::Error,
            format!("{why}, and {} creates the pool directory and opens its disks as {}", daemon.describe(), user.name),
            Some(format!(
                "drop \"storage_dir\" to use the default {} (or set it to a directory {} can write), or run as root on qemu:///system",
                daemon.default_storage_dir().map(|d| d.display().to_string()).unwrap_or_default(),
                user.name
            )),
        )],
    }
}

fn virtiofsd(daemon: &Daemon) -> Check {
    let found = match daemon.user() {
        Some(_) => crate::libvirt::virtiofsd::for_daemon(daemon, &[]).map_err(|e| format!("{e:#}")),
        None => crate::libvirt::virtiofsd::find().ok_or_else(|| format!("{:#}", crate::libvirt::virtiofsd::missing())),
    };
    match found {
        Ok(p) => {
            let Some(u) = daemon.user() else {
                return check("virtiofsd", Level::Ok, format!("{} (for shares)", p.display()), None);
            };
            let lacks = crate::libvirt::virtiofsd::unprivileged_lacks(u);
            if !lacks.is_empty() {
                return check(
                    "virtiofsd",
                    Level::Warn,
                    format!(
                        "{} runs {} as {} in a user namespace, which this host cannot give: {}; VMs with shares cannot be created (VMs without work)",
                        daemon.describe(),
                        p.display(),
                        u.name,
                        lacks.join(", ")
                    ),
                    Some(format!("as root: `apt install uidmap` and `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {}`", u.name)),
                );
            }
            check(
                "virtiofsd",
                Level::Ok,
                format!(
                    "{} (for shares; run as {} unprivileged: shares must be directories {} can read and write)",
                    p.display(),
                    u.name,
                    u.name
                ),
                None,
            )
        }
        Err(why) => check(
            "virtiofsd",
            Level::Warn,
            "no virtiofsd to run for shares: VMs with shares cannot be created (VMs without work)",
            Some(why),
        ),
    }
}

fn acceleration(ctx: &Ctx) -> Check {
    let caps = ctx.conn().capabilities().unwrap_or_default();
    let kvm = offers_kvm(&caps);
    match (ctx.settings.accel, kvm) {
        (Accel::Kvm, true) => check("acceleration", Level::Ok, "KVM is available", None),
        (Accel::Kvm, false) => match ctx.settings.daemon.user() {
            Some(u) if Path::new("/dev/kvm").exists() && ctx.is_local() => check(
                "acceleration",
                Level::Error,
                format!("{} cannot use KVM: /dev/kvm is there, but {} may not open it; and \"accel\" is kvm", ctx.settings.daemon.describe(), u.name),
                Some(format!("add {} to /dev/kvm's group (usually kvm: `usermod -aG kvm {}` as root, then log in again), or set \"accel\": \"tcg\" (software emulation, much slower)", u.name, u.name)),
            ),
            _ => check(
                "acceleration",
                Level::Error,
                "KVM is not available on this host (no /dev/kvm, or the kvm module is not loaded), and \"accel\" is kvm",
                Some("load kvm_intel or kvm_amd and enable virtualisation in the firmware, or set \"accel\": \"tcg\" (software emulation, much slower)".into()),
            ),
        },
        (Accel::Tcg, true) => check(
            "acceleration",
            Level::Warn,
            "\"accel\" is tcg (software emulation) although KVM is available",
            Some("set \"accel\": \"kvm\" unless KVM is broken here (nested virtualisation)".into()),
        ),
        (Accel::Tcg, false) => check("acceleration", Level::Ok, "TCG (software emulation), as configured", None),
    }
}

fn base_image(ctx: &Ctx) -> Check {
    let image = &ctx.settings.base_image;
    match super::pull::check(ctx, image) {
        Ok(Ok(Some(_))) => check("base image", Level::Ok, format!("{image} is in pool {}", ctx.settings.pool), None),
        Ok(Ok(None)) => check(
            "base image",
            Level::Ok,
            format!("{image} is not in pool {} yet: the first create fetches it", ctx.settings.pool),
            Some(format!("`project-vm image pull {image}` fetches it now")),
        ),
        Ok(Err(why)) => check(
            "base image",
            Level::Error,
            why,
            Some("set \"base_image\" to an image from `project-vm image list` or the catalog".into()),
        ),
        Err(e) => check("base image", Level::Error, format!("{e:#}"), None),
    }
}

fn keys(settings: &Settings) -> Check {
    match settings.authorized_keys() {
        Ok(k) => check("ssh keys", Level::Ok, format!("{} public key(s) to authorize in guests", k.len()), None),
        Err(e) => check("ssh keys", Level::Error, format!("{e:#}"), None),
    }
}

/// The user QEMU runs as under the system daemon.
fn qemu_user() -> Option<nix::unistd::User> {
    let conf = crate::files::read_text(
        std::path::Path::new("/etc/libvirt/qemu.conf"),
        "libvirt's qemu.conf",
        crate::files::CONFIG_MAX,
    )
    .unwrap_or_default();
    let configured = conf.lines().map(str::trim).filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "user").then(|| v.trim().trim_matches('"').to_owned())
    });
    let candidates = match configured {
        Some(u) => vec![u],
        None => vec!["libvirt-qemu".to_owned(), "qemu".to_owned()],
    };
    candidates.iter().find_map(|n| nix::unistd::User::from_name(n).ok().flatten())
}

/// Every existing directory on the way to the pool must let QEMU through
/// (+x for its user), or it cannot open the disks: the classic "permission
/// denied" on a pool under a home directory.
fn pool_path(dir: &Path) -> Vec<Check> {
    let Some(user) = qemu_user() else {
        return vec![check(
            "pool path",
            Level::Warn,
            "cannot tell which user QEMU runs as; path permissions not checked",
            None,
        )];
    };
    let name = CString::new(user.name.clone()).unwrap_or_default();
    let groups = nix::unistd::getgrouplist(&name, user.gid).unwrap_or_else(|_| vec![user.gid]);
    let mut blocked = Vec::new();
    let mut p = PathBuf::new();
    for part in dir.components() {
        p.push(part);
        let Ok(meta) = std::fs::metadata(&p) else { break };
        let mode = meta.mode();
        let passes = if user.uid.is_root() || meta.uid() == user.uid.as_raw() {
            mode & 0o100 != 0
        } else if groups.iter().any(|g| g.as_raw() == meta.gid()) {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !passes {
            blocked.push(p.display().to_string());
        }
    }
    if blocked.is_empty() {
        return vec![check("pool path", Level::Ok, format!("{} is reachable by {}", dir.display(), user.name), None)];
    }
    vec![check(
        "pool path",
        Level::Error,
        format!("{} cannot pass through {} on the way to {}", user.name, blocked.join(", "), dir.display()),
        Some(format!("`chmod o+x {}`, or put \"storage_dir\" outside home directories", blocked.join(" "))),
    )]
}

fn free_space(dir: &Path) -> Check {
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    match nix::sys::statvfs::statvfs(existing) {
        Ok(s) => {
            let free = s.blocks_available() * s.fragment_size();
            let level = if free < (2 << 30) { Level::Warn } else { Level::Ok };
            check(
                "free space",
                level,
                format!("{} free under {}", crate::output::human(free), existing.display()),
                (level == Level::Warn).then(|| "free some space: a full disk fails uploads and guest writes".into()),
            )
        }
        Err(e) => {
            check("free space", Level::Warn, format!("cannot read free space of {}: {e}", existing.display()), None)
        }
    }
}

fn confinement() -> Vec<Check> {
    let mut out = Vec::new();
    let read = |p: &str| {
        crate::files::read_text(std::path::Path::new(p), "file", crate::files::KEY_MAX)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    if read("/sys/module/apparmor/parameters/enabled") == "Y" {
        out.push(check(
            "confinement",
            Level::Ok,
            "AppArmor is on: libvirt gives each VM a profile for its own disks (virt-aa-helper), which covers pool volumes",
            Some("if a VM cannot open a disk, look for DENIED in the kernel log (`dmesg | grep apparmor`)".into()),
        ));
    }
    if read("/sys/fs/selinux/enforce") == "1" {
        out.push(check(
            "confinement",
            Level::Warn,
            "SELinux is enforcing: the storage directory needs the virt_image_t label",
            Some(
                "`semanage fcontext -a -t virt_image_t 'DIR(/.*)?' && restorecon -R DIR` for the storage directory"
                    .into(),
            ),
        ));
    }
    if out.is_empty() {
        out.push(check("confinement", Level::Ok, "no AppArmor or SELinux confinement", None));
    }
    out
}

/// True when the capabilities XML offers a guest the `kvm` domain type
/// (`<capabilities><guest><arch><domain type='kvm'/>`), read as XML: not a
/// comment or another element's text that happens to spell it.
fn offers_kvm(caps: &str) -> bool {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(caps);
    let mut path: Vec<String> = Vec::new();
    loop {
        let (e, empty) = match reader.read_event() {
            Ok(Event::Start(e)) => (e, false),
            Ok(Event::Empty(e)) => (e, true),
            Ok(Event::End(_)) => {
                path.pop();
                continue;
            }
            Ok(Event::Eof) | Err(_) => return false,
            Ok(_) => continue,
        };
        let name = e.name().into_inner().to_owned();
        let in_arch = path.iter().map(String::as_str).eq(["capabilities", "guest", "arch"]);
        let kvm = e.attributes().flatten().any(|a| a.key.into_inner() == "type" && a.value == "kvm");
        if in_arch && name == "domain" && kvm {
            return true;
        }
        if !empty {
            path.push(name);
        }
    }
}

/// True when `program` is on PATH (or in /usr/bin, where a daemon's PATH
/// would find it when ours is bare).
fn on_path(program: &str) -> bool {
    which::which(program).is_ok() || Path::new("/usr/bin").join(program).is_file()
}

fn passt(daemon: &Daemon) -> Check {
    let runnable = match daemon.user() {
        Some(u) => {
            ["/usr/bin/passt", "/usr/local/bin/passt"].iter().any(|p| Path::new(p).is_file() && u.may(Path::new(p), X))
                || on_path("passt")
        }
        None => on_path("passt"),
    };
    if runnable {
        check("passt", Level::Ok, "passt is installed (user networking)", None)
    } else {
        check(
            "passt",
            Level::Error,
            "\"network\" is user (passt), but passt is not installed",
            Some("install it (Debian and Ubuntu: `apt install passt`), or use a libvirt network".into()),
        )
    }
}

impl DoctorReport {
    /// Exit 4 when a create would fail here.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.ok {
            return Ok(());
        }
        let n = self.checks.iter().filter(|c| c.level == Level::Error).count();
        let s = if n == 1 { "" } else { "s" };
        Err(super::Error::Environment(format!("{n} problem{s} would make a create fail (see above)")).into())
    }
}

impl Report for DoctorReport {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        for c in &self.checks {
            let mark = match c.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Error => "FAIL",
            };
            writeln!(out, "{mark}  {:<13} {}", c.check, c.message)?;
            if let (Some(fix), true) = (&c.fix, c.level != Level::Ok) {
                writeln!(out, "      {:<13} fix: {fix}", "")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kvm_is_read_from_the_capabilities_as_xml() {
        let caps = |domains: &str| {
            format!(
                "<capabilities><host><uuid>x</uuid></host><guest><os_type>hvm</os_type><arch name=\"x86_64\"><emulator>/usr/bin/qemu-system-x86_64</emulator>{domains}</arch></guest></capabilities>"
            )
        };
        assert!(super::offers_kvm(&caps("<domain type='qemu'/><domain type='kvm'/>")));
        assert!(super::offers_kvm(&caps("<domain type=\"kvm\"><emulator>x</emulator></domain>")));
        assert!(!super::offers_kvm(&caps("<domain type='qemu'/>")));
        // Spelled, but not an offer: a comment, or an element elsewhere.
        assert!(!super::offers_kvm(&caps("<domain type='qemu'/><!-- <domain type='kvm'/> -->")));
        assert!(!super::offers_kvm("<capabilities><host><domain type='kvm'/></host></capabilities>"));
        assert!(!super::offers_kvm("not xml <domain type='kvm'"));
    }
}
