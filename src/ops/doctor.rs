//! `doctor`: checks what would make a `create` fail, and says how to fix
//! each finding. Exits non-zero when a create would fail.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Ctx;
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
pub fn doctor(uri: &str, settings: &Settings) -> DoctorReport {
    let mut checks = Vec::new();
    let local = Ctx::uri_is_local(uri);
    match crate::libvirt::connect(uri) {
        Err(e) => checks.push(check("libvirt", Level::Error, format!("{e:#}"), None)),
        Ok(conn) => {
            let version = conn.lib_version().map(|v| format!("{}.{}.{}", v / 1_000_000, v / 1000 % 1000, v % 1000));
            checks.push(check(
                "libvirt",
                Level::Ok,
                format!("{uri} answers (libvirt {})", version.unwrap_or_default()),
                None,
            ));
            let ctx = Ctx::new(conn, uri.to_owned(), settings.clone(), true);
            checks.push(privileges(uri));
            checks.push(acceleration(&ctx));
            checks.push(base_image(&ctx));
        }
    }
    checks.push(keys(settings));
    if local {
        checks.extend(pool_path(&settings.storage_dir));
        checks.push(free_space(&settings.storage_dir));
        checks.extend(confinement());
        if let Network::User { .. } = settings.network {
            checks.push(passt());
        }
        checks.push(match crate::libvirt::virtiofsd::find() {
            Some(p) => check("virtiofsd", Level::Ok, format!("{} (for shares)", p.display()), None),
            None => check(
                "virtiofsd",
                Level::Warn,
                "virtiofsd is not installed: VMs with shares cannot be created",
                Some(format!("{:#}", crate::libvirt::virtiofsd::missing())),
            ),
        });
    } else {
        checks.push(check(
            "host files",
            Level::Warn,
            format!("{uri} is remote: the storage directory, confinement and passt are on that host and not checked from here"),
            Some("run `project-vm doctor` on that host too".into()),
        ));
    }
    let ok = checks.iter().all(|c| c.level != Level::Error);
    DoctorReport { uri: uri.to_owned(), checks, ok }
}

fn privileges(uri: &str) -> Check {
    let root = nix::unistd::geteuid().is_root();
    if uri.ends_with("/session") {
        return check(
            "privileges",
            Level::Ok,
            "a per-user session daemon: VMs run as you; only user networking (passt) is available",
            None,
        );
    }
    let who = if root { "as root".to_owned() } else { "through your libvirt group membership".to_owned() };
    check("privileges", Level::Ok, format!("the system daemon, {who}"), None)
}

fn acceleration(ctx: &Ctx) -> Check {
    let caps = ctx.conn.capabilities().unwrap_or_default();
    let kvm = caps.contains("<domain type='kvm'");
    match (ctx.settings.accel, kvm) {
        (Accel::Kvm, true) => check("acceleration", Level::Ok, "KVM is available", None),
        (Accel::Kvm, false) => check(
            "acceleration",
            Level::Error,
            "KVM is not available on this host (no /dev/kvm, or the kvm module is not loaded), and \"accel\" is kvm",
            Some("load kvm_intel or kvm_amd and enable virtualisation in the firmware, or set \"accel\": \"tcg\" (software emulation, much slower)".into()),
        ),
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

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        || Path::new("/usr/bin").join(program).is_file()
}

fn passt() -> Check {
    if on_path("passt") {
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
        Err(crate::error::failure(
            crate::error::Kind::Environment,
            format!("{n} problem{} would make a create fail (see above)", if n == 1 { "" } else { "s" }),
        ))
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
