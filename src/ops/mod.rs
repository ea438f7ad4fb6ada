//! One module per verb. Each is a function over a [`Ctx`] (connection plus
//! settings) that returns a report: `main` prints it as a table or as JSON.

pub mod addresses;
pub mod apply;
pub mod check;
pub mod clone;
pub mod console;
pub mod create;
pub mod destroy;
pub mod doctor;
mod error;
pub mod feature;
pub mod fleet;
pub mod fleet_plan;
pub mod forward;
pub mod gc;
pub mod image;
pub mod list;
pub mod logs;
pub mod plan;
pub mod power;
pub mod pull;
pub mod ready;
pub mod reconfigure;
pub mod save;
pub mod seed;
pub mod snapshot;
pub mod ssh;
pub mod stages;
pub mod status;
pub mod suspend;
pub mod watch;

pub use crate::clock::now_unix;
pub use error::Error;

use std::collections::HashMap;
use std::sync::Mutex;

use virt::connect::Connect;
use virt::storage_pool::StoragePool;

use crate::libvirt::pool_listing::PoolListing;
use crate::libvirt::storage;
use crate::libvirt::vms::Vm;
use crate::settings::Settings;
use crate::spec::VmName;

pub struct Ctx {
    /// The connection ([`Ctx::conn`]); replaced when the daemon restarts
    /// under a long wait ([`Ctx::reconnect`]).
    link: std::sync::RwLock<Connect>,
    pub uri: String,
    pub settings: Settings,
    pub json: bool,
    /// The fleet host's name (with `hosts`); `None` for the one host.
    pub host_name: Option<String>,
    /// What one run looks up once rather than once per VM.
    pub cache: Cache,
    /// The daemon's identity, read on first use ([`Ctx::lock_scope`]).
    scope: std::sync::OnceLock<Result<String, String>>,
}

/// Lookups a run repeats for every VM it works on (apply creates hundreds):
/// pools and images do not change under a run; the ports in use are checked
/// against the port lock's stamp before each use.
#[derive(Default)]
pub struct Cache {
    pools: Mutex<HashMap<String, StoragePool>>,
    /// Located images by the name or location asked for.
    pub images: Mutex<HashMap<String, (StoragePool, crate::images::store::Image)>>,
    /// The forwarded ssh ports VMs record, and the port lock's stamp when read.
    pub ports: Mutex<Option<(Option<String>, std::collections::BTreeSet<u16>)>>,
    /// Image volumes whose structure this run has checked (see `images::inspect`).
    pub checked_images: Mutex<std::collections::BTreeSet<String>>,
}

impl Ctx {
    pub fn new(conn: Connect, uri: String, settings: Settings, json: bool) -> Ctx {
        Ctx {
            link: std::sync::RwLock::new(conn),
            uri,
            settings,
            json,
            host_name: None,
            cache: Cache::default(),
            scope: Default::default(),
        }
    }

    /// The connection to the host's libvirt daemon.
    pub fn conn(&self) -> Connect {
        self.link.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// After the daemon went away (a restart: a package upgrade,
    /// `nixos-rebuild switch`): a new connection for the rest of the run, if
    /// the daemon answers again. Everything looked up through the old one
    /// (pools, images) is forgotten; domains must be looked up again.
    pub fn reconnect(&self) -> anyhow::Result<Connect> {
        let conn = crate::libvirt::connect(&self.uri)?;
        *self.link.write().unwrap_or_else(|p| p.into_inner()) = conn.clone();
        self.cache.pools.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.cache.images.lock().unwrap_or_else(|p| p.into_inner()).clear();
        tracing::info!(uri = %self.uri, "reconnected to libvirt");
        Ok(conn)
    }

    /// What keys this run's locks: the libvirt daemon itself (its host UUID,
    /// driver and system or session), however its URI is spelled, so
    /// `qemu:///system` and `qemu+unix:///system?socket=...` share locks.
    /// Read from the daemon once per run.
    pub fn lock_scope(&self) -> anyhow::Result<String> {
        let got = self
            .scope
            .get_or_init(|| crate::libvirt::daemon_identity(&self.conn(), &self.uri).map_err(|e| format!("{e:#}")));
        got.clone().map_err(|e| Error::Environment(e).into())
    }

    /// The name ssh knows a VM by (`HostKeyAlias`, `ssh-config`'s `Host`):
    /// `project-NAME`, or `project-NAME.HOST` on a named fleet host, so that
    /// VMs of one name on two hosts keep their own pinned keys.
    pub fn ssh_alias(&self, name: &VmName) -> String {
        match &self.host_name {
            Some(h) => format!("{}.{h}", name.domain()),
            None => name.domain(),
        }
    }

    /// The pool a VM's volumes live in (recorded at create, so a later change
    /// of the `pool` setting does not lose track of existing VMs).
    pub fn vm_pool(&self, vm: &Vm) -> anyhow::Result<Option<StoragePool>> {
        self.pool(&vm.own.pool)
    }

    /// A pool by name, if it exists (looked up once per run).
    pub fn pool(&self, name: &str) -> anyhow::Result<Option<StoragePool>> {
        if let Some(p) = self.cache.pools.lock().expect("pool cache").get(name) {
            return Ok(Some(p.clone()));
        }
        let found = storage::find_pool(&self.conn(), name)?;
        if let Some(p) = &found {
            self.cache.pools.lock().expect("pool cache").insert(name.to_owned(), p.clone());
        }
        Ok(found)
    }

    /// True when the libvirt host is this machine (files it names are ours to read).
    pub fn is_local(&self) -> bool {
        Self::uri_is_local(&self.uri)
    }

    /// True when `uri`'s daemon is on this machine. Names that are not URIs
    /// (aliases from libvirt.conf) count as local, as libvirt's own default does.
    pub fn uri_is_local(uri: &str) -> bool {
        crate::libvirt::uri::is_local(uri)
    }

    /// True for the system (root) libvirt daemon, as opposed to a user session.
    pub fn is_system(&self) -> bool {
        !self.settings.daemon.is_session()
    }
}

/// Each pool's listing ([`PoolListing`]), read once for all the VMs in it.
#[derive(Default)]
pub struct PoolListings(HashMap<String, Option<PoolListing>>);

impl PoolListings {
    /// The listing of pool `name`, `None` when the pool is gone.
    pub fn get(&mut self, ctx: &Ctx, name: &str) -> anyhow::Result<Option<&PoolListing>> {
        if !self.0.contains_key(name) {
            let listing = ctx.pool(name)?.map(|p| PoolListing::read(p, ctx.is_local())).transpose()?;
            self.0.insert(name.to_owned(), listing);
        }
        Ok(self.0[name].as_ref())
    }
}

/// Files on the libvirt host a domain definition names: the serial console
/// log (libvirt's log directory on the system daemon; the user's state
/// directory for a session daemon on this machine; none for a session daemon
/// elsewhere, whose user's home we cannot know), and for shares the
/// virtiofsd to run.
pub fn host_files(ctx: &Ctx, spec: &crate::spec::VmSpec) -> anyhow::Result<crate::libvirt::domain_xml::HostFiles> {
    let domain = spec.name.domain();
    let virtiofsd = match (spec.shares.is_empty(), ctx.is_local()) {
        (true, _) => None,
        // On this machine: find one the daemon's user can run, or say why not.
        (false, true) => Some(crate::libvirt::virtiofsd::for_daemon(&ctx.settings.daemon, &spec.shares)?),
        // Elsewhere: libvirt finds the distribution's through its descriptors.
        (false, false) => None,
    };
    let serial_log = ctx.settings.daemon.serial_log_dir().map(|d| d.join(format!("{domain}-serial.log")));
    if let (Some(log), true) = (&serial_log, ctx.settings.daemon.is_session()) {
        make_log_dir(&ctx.settings.daemon, log)?;
    }
    Ok(crate::libvirt::domain_xml::HostFiles {
        serial_log: serial_log.map(|p| p.display().to_string()),
        virtiofsd: virtiofsd.map(|p| p.display().to_string()),
    })
}

/// A session daemon's virtlogd writes the serial log as its user but makes
/// no directories: the log's directory must be there (the user's own) when
/// the VM starts.
fn make_log_dir(daemon: &crate::libvirt::daemon::Daemon, log: &std::path::Path) -> anyhow::Result<()> {
    let (Some(dir), Some(user)) = (log.parent(), daemon.user()) else { return Ok(()) };
    if dir.is_dir() {
        return Ok(());
    }
    let me = nix::unistd::geteuid();
    if !user.is_me && !me.is_root() {
        // Another user's directory that is not there: nothing we may make.
        return Ok(());
    }
    // Each directory made here belongs to the daemon's user (root made it
    // for another user's session).
    let mut missing: Vec<&std::path::Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    missing.reverse();
    for d in missing {
        std::fs::create_dir(d).or_else(|e| if d.is_dir() { Ok(()) } else { Err(e) }).map_err(|e| {
            Error::Environment(format!(
                "cannot create {} for the serial log: {e}\nhint: {}",
                d.display(),
                crate::libvirt::permission_hint(daemon)
            ))
        })?;
        if !user.is_me {
            let _ = nix::unistd::chown(
                d,
                Some(nix::unistd::Uid::from_raw(user.uid)),
                Some(nix::unistd::Gid::from_raw(user.gid)),
            );
        }
    }
    Ok(())
}

/// Before a start: what the definition names on this machine is there (the
/// serial log's directory, which the user may have cleaned up since).
pub fn prepare_host_files(ctx: &Ctx, vm: &Vm) -> anyhow::Result<()> {
    if !ctx.settings.daemon.is_session() || !ctx.is_local() {
        return Ok(());
    }
    if let Some(log) = logs::configured_path(vm) {
        make_log_dir(&ctx.settings.daemon, &log)?;
    }
    Ok(())
}

/// The per-VM lock: one project-vm process at a time changes a VM. `doing`
/// ("creating", "destroying", "applying") is what a loser is told; a loser
/// does not wait: [`crate::lock::Busy`] (exit 7).
pub fn vm_lock(ctx: &Ctx, name: &VmName, doing: &str) -> anyhow::Result<crate::lock::Lock> {
    vm_lock_in(&ctx.lock_scope()?, name, doing)
}

fn vm_lock_in(scope: &str, name: &VmName, doing: &str) -> anyhow::Result<crate::lock::Lock> {
    match crate::lock::try_acquire(scope, &format!("vm:{name}"), doing)? {
        Ok(lock) => Ok(lock),
        Err(holder) => {
            Err(crate::lock::Busy { what: name.to_string(), holder, hint: ": try again when it has finished".into() }
                .into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_held_by_another_run_is_busy_exit_7() {
        let name = VmName::parse(&format!("lockt{}", std::process::id())).unwrap();
        let scope = "test:///ops-vm-lock";
        let held = vm_lock_in(scope, &name, "creating").unwrap();
        let err = vm_lock_in(scope, &name, "destroying").err().expect("held");
        let busy = err.downcast_ref::<crate::lock::Busy>().expect("a Busy");
        assert_eq!(busy.holder.pid, Some(std::process::id()));
        assert_eq!(busy.holder.doing.as_deref(), Some("creating"));
        assert_eq!(crate::exit::code(&err), 7);
        assert!(err.to_string().contains("another project-vm (pid"), "{err}");
        drop(held);
        vm_lock_in(scope, &name, "destroying").expect("free after drop");
    }
}
