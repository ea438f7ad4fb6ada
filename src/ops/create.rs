//! `create`: volumes, seed and domain for a new VM, in four named phases.
//!
//! 1. **claim**: define the domain with project-vm's record in phase
//!    `creating`, naming every volume this run will make. libvirt refuses a
//!    duplicate name, so the name is claimed atomically, and there is never a
//!    volume without a record of its owner.
//! 2. **volumes**: the root overlay and (unless a kept one is reattached) the
//!    project disk.
//! 3. **seed**: the cloud-init ISO, uploaded through libvirt.
//! 4. **finalize**: the record flips to `ready`.
//!
//! A failure (or Ctrl-C) undoes exactly what this run made. A SIGKILL leaves a
//! `creating` record, and running `create` again undoes what it names and
//! starts over ([`clear_leftovers`]). A reattached project disk is never
//! deleted on the way: the record says it was kept.

use std::io::{self, Write};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use virt::domain::Domain;
use virt::storage_pool::StoragePool;

use super::Error;
use super::{now_unix, Ctx};
use crate::cloudinit::{self, hostkey::HostKey, SeedInput};
use crate::config::ConfigError;
use crate::images::store::Image;
use crate::interrupt;
use crate::libvirt::metadata::{Ownership, Phase};
use crate::libvirt::storage::{self, VolumeInfo};
use crate::libvirt::vms::{self, Lookup};
use crate::libvirt::{domain_xml, explain};
use crate::output::{human, Report};
use crate::progress::Progress;
use crate::spec::{Declaration, Network, Resources, Share, VmName, VmSpec};

pub use crate::cloudinit::Fingerprint;

/// What the user asked for; settings fill in the rest.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub name: VmName,
    pub resources: Resources,
    /// Image name or file; `None`: the `base_image` setting.
    pub image: Option<String>,
    pub user_data: Option<(Value, String)>,
    /// Feature snippets (cloud-init/features) merged before the user-data.
    pub features: Vec<String>,
    pub autostart: bool,
    pub devices: Devices,
    /// Take the stage snapshots on first provisioning (`ops::stages`).
    pub stage_snapshots: bool,
    /// The application script and health checks.
    pub provision: Provision,
}

pub use crate::spec::Devices;

/// What runs after the features on the first boot: the application script
/// (its text, read at input) and the health checks.
#[derive(Debug, Clone, Default)]
pub struct Provision {
    pub application_script: Option<String>,
    pub checks: Vec<crate::health::Check>,
}

impl Provision {
    /// From a declaration's application script path (read, bounded) and checks.
    pub fn load(script: Option<&std::path::Path>, checks: Vec<crate::health::Check>) -> anyhow::Result<Provision> {
        let application_script = script.map(crate::health::load_application_script).transpose()?;
        Ok(Provision { application_script, checks })
    }
}

/// Bad input this verb itself found (the ops layer's [`Error::Invalid`]).
fn invalid(message: String) -> anyhow::Error {
    Error::Invalid(message).into()
}

impl Devices {
    /// What the libvirt host must have, and what must hold together; the
    /// devices as they are to be recorded (share sources resolved).
    ///
    /// Shares: each passes [`Share::validate`]; on a local libvirt host its
    /// source must be a directory, and is resolved (symlinks) before it is
    /// checked and recorded; the source may not be, lie in or contain any
    /// storage pool's directory (nor `storage_dir`); no two shares mount at
    /// one target, and none over the ssh user's home.
    pub fn check(&self, ctx: &Ctx) -> anyhow::Result<Devices> {
        if let Some(net) = &self.network_config {
            net.validate().map_err(|e| ConfigError::Value { what: "network_config".into(), why: e.to_string() })?;
        }
        self.check_hostdevs(ctx)?;
        let mut out = self.clone();
        if self.shares.is_empty() {
            return Ok(out);
        }
        let guard = ShareGuard::new(ctx)?;
        let home = std::path::Path::new("/home").join(&ctx.settings.ssh_user);
        let mut targets = std::collections::BTreeSet::new();
        for s in &mut out.shares {
            guard.check(ctx, s)?;
            if s.target == home {
                return Err(unsafe_share(
                    s,
                    format!(
                        "the target is the home of the ssh user {}: mount it in a directory below",
                        ctx.settings.ssh_user
                    ),
                ));
            }
            if !targets.insert(s.target.clone()) {
                return Err(unsafe_share(s, format!("two shares mount at {}", s.target.display())));
            }
        }
        if ctx.is_local() {
            // Who runs virtiofsd, and whether it can serve these: refused
            // before anything is made (a session's is unprivileged).
            crate::libvirt::virtiofsd::for_daemon(&ctx.settings.daemon, &out.shares)?;
        }
        Ok(out)
    }

    /// Each device given once, and there on the libvirt host.
    fn check_hostdevs(&self, ctx: &Ctx) -> anyhow::Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        for a in &self.hostdevs {
            if !seen.insert(a.to_string()) {
                return Err(Error::Invalid(format!("hostdev {a} is given twice: a device goes to a VM once")).into());
            }
            crate::libvirt::nodedev::pci(&ctx.conn(), a)?;
        }
        Ok(())
    }
}

fn unsafe_share(s: &Share, why: String) -> anyhow::Error {
    ConfigError::UnsafeShare { share: s.label(), why }.into()
}

/// What share sources are checked against on this libvirt host.
struct ShareGuard {
    /// The storage pools' directories (and `storage_dir`), resolved on a local host.
    pools: Vec<std::path::PathBuf>,
    /// Protected directories as this host resolves them, for the mount checks.
    protected: Vec<std::path::PathBuf>,
    /// This host's mounts, read on first need.
    mounts: std::cell::OnceCell<anyhow::Result<Vec<crate::mounts::Mount>>>,
}

impl ShareGuard {
    fn new(ctx: &Ctx) -> anyhow::Result<ShareGuard> {
        let mut pools = storage::pool_dirs(&ctx.conn())?;
        pools.extend(ctx.settings.storage_dir.clone());
        if ctx.is_local() {
            pools = pools.into_iter().map(|p| std::fs::canonicalize(&p).unwrap_or(p)).collect();
        }
        let protected: Vec<std::path::PathBuf> = match ctx.is_local() {
            true => crate::spec::HOST_PRIVATE_DIRS
                .iter()
                .filter_map(|d| std::fs::canonicalize(d).ok())
                .chain(pools.iter().cloned())
                .collect(),
            false => Vec::new(),
        };
        Ok(ShareGuard { pools, protected, mounts: std::cell::OnceCell::new() })
    }

    /// `s` by its paths, then (on a local host) by what its source really
    /// is; the source is recorded resolved.
    fn check(&self, ctx: &Ctx, s: &mut Share) -> anyhow::Result<()> {
        s.validate()?;
        crate::spec::check_source(&s.source, &self.pools).map_err(|why| unsafe_share(s, why))?;
        if ctx.is_local() {
            s.source = self.check_local(s)?;
        }
        Ok(())
    }

    /// The source resolved on this host: a directory, not a protected one
    /// by path, nor reached another way in (a bind mount of a protected
    /// directory, or a mount below the source).
    fn check_local(&self, s: &Share) -> anyhow::Result<std::path::PathBuf> {
        let real = std::fs::canonicalize(&s.source).ok().filter(|r| r.is_dir()).ok_or_else(|| {
            unsafe_share(
                s,
                format!(
                    "the source {} is not a directory on this host: create it, or fix the path",
                    s.source.display()
                ),
            )
        })?;
        let via = match real != s.source {
            true => format!(" ({} resolves to {})", s.source.display(), real.display()),
            false => String::new(),
        };
        crate::spec::check_source(&real, &self.pools).map_err(|why| unsafe_share(s, format!("{why}{via}")))?;
        let mounts = self
            .mounts
            .get_or_init(crate::mounts::read)
            .as_ref()
            .map_err(|e| unsafe_share(s, format!("cannot tell what the source exposes through mounts: {e:#}")))?;
        if let Some(p) = crate::mounts::same_inode(&real, &self.protected) {
            return Err(unsafe_share(
                s,
                format!(
                    "the source {} is, or lies in, {} by device and inode (a bind mount of it): it holds the host's secrets, libvirt's own state or a storage pool",
                    real.display(),
                    p.display()
                ),
            ));
        }
        if let Some(why) = crate::mounts::clash(mounts, &real, &self.protected) {
            return Err(unsafe_share(
                s,
                format!("{why}: it holds the host's secrets, libvirt's own state or a storage pool"),
            ));
        }
        Ok(real)
    }
}

impl CreateRequest {
    /// The request as [`VmSpec::resolve`] reads it.
    pub fn declaration(&self) -> Declaration<'_> {
        Declaration {
            name: &self.name,
            resources: self.resources,
            autostart: self.autostart,
            features: &self.features,
            devices: &self.devices,
            user_data: self.user_data.as_ref().map(|(_, text)| text.as_str()),
            stage_snapshots: self.stage_snapshots,
            application_script: self.provision.application_script.as_deref(),
            checks: &self.provision.checks,
            own_features: crate::features::own_digest(&self.features),
        }
    }

    pub fn load_user_data(path: &std::path::Path) -> anyhow::Result<(Value, String)> {
        let text = crate::files::read_text(path, "user-data file", crate::files::USER_DATA_MAX)?;
        let value = cloudinit::parse_user_data(&text, &path.display().to_string())?;
        Ok((value, text))
    }
}

#[derive(Debug, Serialize)]
pub struct CreateReport {
    pub name: String,
    pub domain: String,
    pub uuid: String,
    pub root_volume: String,
    pub data_volume: String,
    /// True when an existing project disk (kept by `destroy --keep-data`) was reattached.
    pub data_reattached: bool,
    pub data_capacity: u64,
    pub seed_volume: String,
    pub base_image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    pub elapsed_ms: u128,
}

/// `create [--start] [--wait]`: the create, and the readiness report if waited for.
#[derive(Debug, Serialize)]
pub struct Created {
    pub create: CreateReport,
    pub ready: Option<super::ready::ReadyReport>,
    /// The stage snapshots the wait took (`stage_snapshots`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stage_snapshots: Vec<String>,
}

impl Created {
    /// Exit 5 or 6 when the guest did not come up clean.
    pub fn check(&self) -> anyhow::Result<()> {
        super::ready::check_opt(&self.ready)
    }
}

impl Report for Created {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let r = &self.create;
        let data = if r.data_reattached {
            format!("reattached {} ({})", r.data_volume, human(r.data_capacity))
        } else {
            format!("{} ({})", r.data_volume, human(r.data_capacity))
        };
        writeln!(
            out,
            "created {} in {} ms: root {} on {}, project disk {data}",
            r.domain, r.elapsed_ms, r.root_volume, r.base_image
        )?;
        super::ready::announce(&self.ready);
        Ok(())
    }
}

/// The `create` command: create, then start and wait if asked.
pub fn run(ctx: &Ctx, req: &CreateRequest, start: bool, wait: Option<std::time::Duration>) -> anyhow::Result<Created> {
    let progress = Progress::spinner(ctx.json, format!("creating {}", req.name));
    let create = create(ctx, req, &progress)?;
    progress.finish();
    let (mut ready, mut stage_snapshots) = (None, Vec::new());
    if start || wait.is_some() {
        let vm = vms::get(&ctx.conn(), &req.name)?;
        super::power::start(ctx, &vm)?;
        (ready, stage_snapshots) = super::stages::wait_if(ctx, &vm, wait)?;
    }
    if req.stage_snapshots && wait.is_none() {
        crate::messages::warn(format!(
            "{}: stage snapshots are taken by the first provisioning's --wait: `project-vm start {} --wait` takes them, if it is the first boot",
            req.name, req.name
        ));
    }
    Ok(Created { create, ready, stage_snapshots })
}

/// What this run has made so far; undone when dropped while armed
/// (`create`'s, and `clone`'s: `doing` names which in the warnings).
pub(super) struct Made<'a> {
    pub(super) pool: &'a StoragePool,
    pub(super) dom: Option<Domain>,
    pub(super) volumes: Vec<String>,
    pub(super) armed: bool,
    pub(super) doing: &'static str,
}

impl Drop for Made<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for v in self.volumes.iter().rev() {
            match storage::delete(self.pool, v) {
                Ok(_) => tracing::info!(volume = %v, "rolled back volume"),
                Err(e) => {
                    crate::messages::warn(format!("could not remove volume {v} while undoing {}: {e:#}", self.doing))
                }
            }
        }
        if let Some(d) = &self.dom {
            match d.undefine() {
                Ok(()) => crate::fault::mutated("undefined the domain"),
                Err(e) => crate::messages::warn(format!(
                    "could not undefine {} while undoing {}: {}",
                    d.name().unwrap_or_default(),
                    self.doing,
                    e.message()
                )),
            }
        }
    }
}

/// Everything checked and computed before the first change to libvirt.
struct Prepared {
    pool: StoragePool,
    base: VolumeInfo,
    base_image: String,
    authorized_keys: Vec<String>,
    tailscale_auth_key: Option<String>,
    /// A project disk kept by `destroy --keep-data`, to reattach.
    kept_data: Option<VolumeInfo>,
    user_config: Option<Value>,
    provision: Provision,
    /// The base image's lock, shared, until the overlay is made.
    _image_lock: Option<crate::lock::Lock>,
}

/// The base image's name as the spec records it.
pub fn base_name(ctx: &Ctx, requested: Option<&str>) -> String {
    super::pull::image_name(requested.unwrap_or(&ctx.settings.base_image))
}

/// [`VmSpec::resolve`] for `req` on `ctx`'s host (what `create` records, the
/// ssh port aside). `keys`: the settings' authorized keys, read once.
pub fn desired_spec(
    ctx: &Ctx,
    req: &CreateRequest,
    keys: &[String],
    base_image: String,
    ssh_port: Option<u16>,
) -> VmSpec {
    VmSpec::resolve(&ctx.settings.host(keys), &req.declaration(), base_image, ssh_port)
}

/// Serialises port choice and the define that records it, across threads
/// (apply --jobs) and processes, so no two VMs get the same forwarded port.
/// (Each call opens the lock file anew, so threads contend like processes.)
pub(super) fn port_lock(ctx: &Ctx) -> anyhow::Result<crate::lock::Lock> {
    crate::lock::acquire(&ctx.lock_scope()?, "ssh-ports", "choosing a port", |_| {})
}

/// For user networking: the first forwarded port at or above `base` that no
/// VM records. Call with the port lock held.
///
/// Finding the ports VMs record reads every VM's record: done once per run,
/// then kept in the cache together with the lock's stamp. A process that
/// takes a port restamps the lock ([`ports_taken`]), so a cache whose stamp
/// no longer matches was overtaken by another process and is read anew.
/// (Ports freed by another process's destroy are only seen then: choosing
/// around them is harmless.)
pub(super) fn pick_ssh_port(
    ctx: &Ctx,
    lock: &crate::lock::Lock,
    base: u16,
    own: &[crate::spec::Port],
) -> anyhow::Result<u16> {
    let stamp = lock.stamp();
    let mut cache = ctx.cache.ports.lock().expect("port cache");
    let used = match &mut *cache {
        Some((s, used)) if stamp.is_some() && *s == stamp => used,
        slot => {
            // Declared (tcp) ports are taken too, whether or not their VM runs.
            let specs: Vec<VmSpec> = vms::list(&ctx.conn())?.iter().filter_map(|vm| vm.spec().ok()).collect();
            let declared =
                specs.iter().flat_map(|s| s.ports.iter().filter(|p| p.protocol == crate::spec::Protocol::Tcp));
            let used = specs.iter().filter_map(|s| s.ssh_port).chain(declared.map(|p| p.host)).collect();
            &mut slot.insert((stamp, used)).1
        }
    };
    (base..=u16::MAX)
        // On a local host, a port something else already listens on is not free either.
        .find(|p| {
            !used.contains(p)
                && !own.iter().any(|o| o.host == *p)
                && (!ctx.is_local() || std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        })
        .ok_or_else(|| invalid(format!("no free ssh port at or above {base}")))
}

/// Records that `port` is now taken (a VM's definition names it), in this
/// run's cache and for every other process. Call with the port lock held.
pub(super) fn ports_taken(ctx: &Ctx, lock: &crate::lock::Lock, port: u16) -> anyhow::Result<()> {
    let stamp = lock.restamp()?;
    let mut cache = ctx.cache.ports.lock().expect("port cache");
    if let Some((s, used)) = &mut *cache {
        used.insert(port);
        *s = Some(stamp);
    }
    Ok(())
}

/// A forwarded port for a short-lived domain (`image save`'s sealing boot):
/// free now, and recorded by no VM.
pub fn free_port(ctx: &Ctx, base: u16) -> anyhow::Result<u16> {
    let lock = port_lock(ctx)?;
    pick_ssh_port(ctx, &lock, base, &[])
}

pub fn create(ctx: &Ctx, req: &CreateRequest, progress: &Progress) -> anyhow::Result<CreateReport> {
    let started = Instant::now();
    let name = &req.name;
    req.resources.validate().map_err(|e| ConfigError::OfVm { vm: name.to_string(), error: Box::new(e) })?;
    let devices = req.devices.check(ctx).map_err(|e| e.context(format!("VM {name}")))?;
    super::forward::check_declared(ctx, name, &devices.ports, &[])?;
    let req = &CreateRequest { devices, ..req.clone() };
    super::stages::check_request(&req.name, req.stage_snapshots, &req.devices)?;
    crate::libvirt::check_network(&ctx.conn(), &ctx.settings.network, ctx.is_local())
        .map_err(|e| e.context(format!("VM {name}")))?;
    let _lock = super::vm_lock(ctx, name, "creating")?;
    clear_leftovers(ctx, name, progress)?;
    let prep = prepare(ctx, req, progress)?;
    let (mut made, spec, mut own, host_key) = claim(ctx, req, &prep, progress)?;
    let data_capacity = volumes(req, &prep, &own, &mut made, progress)?;
    let seed_volume = seed(ctx, &prep, &spec, &host_key, &mut made, progress)?;
    finalize(req, &prep, &mut own, &mut made)?;
    tracing::info!(vm = %name, "created");
    Ok(CreateReport {
        name: name.to_string(),
        domain: name.domain(),
        uuid: own.uuid.clone().unwrap_or_default(),
        root_volume: own.root_volume,
        data_volume: own.data_volume,
        data_reattached: prep.kept_data.is_some(),
        data_capacity,
        seed_volume,
        base_image: prep.base_image.clone(),
        ssh_port: spec.ssh_port,
        elapsed_ms: started.elapsed().as_millis(),
    })
}

/// A half-made VM of this name (a `create` that was killed, or a `destroy`
/// killed after it removed the root disk) is undone, keeping a project disk
/// that was kept or may hold data; a whole VM is an error. Called with the
/// VM's lock held, so no live project-vm is still working on it.
fn clear_leftovers(ctx: &Ctx, name: &VmName, progress: &Progress) -> anyhow::Result<()> {
    let vm = match vms::lookup(&ctx.conn(), name)? {
        Lookup::Absent => return Ok(()),
        Lookup::Foreign(why) => return Err(vms::foreign(name, why.as_deref())),
        Lookup::Owned(vm) => vm,
    };
    let root_exists = match ctx.vm_pool(&vm)? {
        Some(pool) => storage::find_volume(&pool, &vm.own.root_volume)?.is_some(),
        None => false,
    };
    let half_made = vm.own.half_made(root_exists);
    let Some(keep_data) = half_made else {
        return Err(invalid(format!(
            "VM {name} already exists: start it with `project-vm start {name}`, or remove it with `project-vm destroy {name}` first"
        )));
    };
    progress.suspend(|| {
        crate::messages::note(format!(
            "{name}: an earlier create or destroy did not finish; undoing what it left, then creating again"
        ))
    });
    super::destroy::remove(ctx, &vm, keep_data)?;
    Ok(())
}

/// Checks and reads everything the create needs; changes nothing but, on
/// first use, the pool and its base image.
fn prepare(ctx: &Ctx, req: &CreateRequest, progress: &Progress) -> anyhow::Result<Prepared> {
    let authorized_keys = ctx.settings.authorized_keys()?;
    let tailscale_auth_key = tailscale_auth_key(ctx)?;
    let user_config = crate::features::user_config(&req.features, req.user_data.as_ref().map(|(v, _)| v))?;
    progress.set_message(format!("creating {}: base image", req.name));
    let (pool, image) = super::pull::ensure(ctx, req.image.as_deref().unwrap_or(&ctx.settings.base_image), progress)?;
    let image_lock = image_in_hand(ctx, &pool, &image)?;
    let base = image.disk;
    let base_image = image.record.name;
    check_disk_fits(req, &base, &base_image)?;
    check_no_stray_volumes(ctx, &pool, &req.name)?;
    let kept_data = kept_data(ctx, &pool, &req.name)?;
    Ok(Prepared {
        pool,
        base,
        base_image,
        authorized_keys,
        tailscale_auth_key,
        kept_data,
        user_config,
        provision: req.provision.clone(),
        _image_lock: image_lock,
    })
}

/// The Tailscale auth key, read when a tailnet wants one.
fn tailscale_auth_key(ctx: &Ctx) -> anyhow::Result<Option<String>> {
    Ok(match (&ctx.settings.tailnet, &ctx.settings.tailscale_auth_key_file) {
        (Some(_), Some(path)) => {
            Some(crate::files::read_text(path, "tailscale_auth_key_file", crate::files::KEY_MAX)?.trim().to_owned())
        }
        _ => None,
    })
}

/// The root disk holds at least the base image.
fn check_disk_fits(req: &CreateRequest, base: &VolumeInfo, base_image: &str) -> anyhow::Result<()> {
    if req.resources.disk.bytes() < base.capacity {
        return Err(invalid(format!(
            "disk {} is smaller than the base image {base_image} ({} bytes): give a disk of at least {}",
            req.resources.disk,
            base.capacity,
            crate::spec::Size(base.capacity.div_ceil(1 << 30) << 30)
        )));
    }
    Ok(())
}

/// No root disk or seed of this name that no VM owns: never adopted.
fn check_no_stray_volumes(ctx: &Ctx, pool: &StoragePool, name: &VmName) -> anyhow::Result<()> {
    for vol in [name.root_volume(), name.seed_volume()] {
        if storage::find_volume(pool, &vol)?.is_some() {
            return Err(invalid(format!(
                "volume {vol} already exists in pool {} but no VM {name} owns it: it was not made by this project-vm, so it is left alone; remove it with `virsh vol-delete {vol} --pool {}` if it is yours to remove",
                ctx.settings.pool, ctx.settings.pool
            )));
        }
    }
    Ok(())
}

/// A project disk kept for `name` by `destroy --keep-data`, to reattach;
/// any other volume of its name is refused, and a marker whose disk is
/// gone is removed.
fn kept_data(ctx: &Ctx, pool: &StoragePool, name: &VmName) -> anyhow::Result<Option<VolumeInfo>> {
    let data = storage::find_volume(pool, &name.data_volume())?.map(|v| VolumeInfo::of(&v)).transpose()?;
    let kept = storage::is_kept(pool, &name.data_volume())?;
    Ok(match (data, kept) {
        (Some(d), true) if d.format != "qcow2" => {
            return Err(invalid(format!(
                "volume {} exists but is {} rather than qcow2, so it cannot be reattached as {name}'s project disk",
                d.name, d.format
            )))
        }
        (Some(d), true) => match storage::kept_mismatch(&ctx.conn(), pool, &d.name, name.as_str())? {
            None => {
                // A disk another domain uses is not this VM's to attach (nor,
                // later, to delete), whatever its marker says.
                let in_use = crate::libvirt::vms::disks_in_use(&ctx.conn(), ctx.is_local())?;
                if let Some(other) = in_use.other_than(&d.path, &name.domain()) {
                    return Err(invalid(format!(
                        "volume {} is kept for {name}, but domain {other} uses it, so it is not reattached and nothing was changed: detach it from {other} (or undefine {other}) first, or pick another VM name",
                        d.name
                    )));
                }
                Some(d)
            }
            Some(why) if why.contains("not written by this project-vm") => {
                let marker = storage::kept_marker(&d.name);
                let pool_name = &ctx.settings.pool;
                return Err(invalid(format!(
                    "volume {} has a kept-disk marker ({marker}), but {why}. It is not adopted as {name}'s project disk and nothing was changed. A disk kept by `destroy --keep-data` on another machine or by another user is refused the same way: check what the disk holds, then either copy it to a volume of another name (`virsh vol-clone {} NEWNAME --pool {pool_name}`) and remove the original with its marker (`virsh vol-delete {} --pool {pool_name}; virsh vol-delete {marker} --pool {pool_name}`), or, if it is not needed, remove both; or pick another VM name",
                    d.name, d.name, d.name
                )));
            }
            Some(why) => {
                let marker = storage::kept_marker(&d.name);
                let pool_name = &ctx.settings.pool;
                return Err(invalid(format!(
                    "volume {} has a kept-disk marker ({marker}), but {why}: project-vm did not keep this disk for {name} (`destroy --keep-data` leaves a marker that describes its disk), so it is not adopted as {name}'s project disk and nothing was changed. If the data is yours, rename the volume or copy it out; remove the marker with `virsh vol-delete {marker} --pool {pool_name}`, or pick another VM name",
                    d.name
                )));
            }
        },
        (Some(d), false) => {
            return Err(invalid(format!(
                "volume {} already exists in pool {}, but project-vm has no record of keeping it (`destroy --keep-data` leaves one), so it is not adopted as {name}'s project disk: rename or remove it (`virsh vol-delete {} --pool {}`) if it is yours, or pick another VM name",
                d.name, ctx.settings.pool, d.name, ctx.settings.pool
            )))
        }
        (None, true) => {
            // The disk it marked is gone: the marker means nothing now.
            storage::delete(pool, &storage::kept_marker(&name.data_volume()))?;
            None
        }
        (None, false) => None,
    })
}

/// Takes the image's lock (shared with other creates, exclusive of
/// `image rm` and of a new generation being stored), then makes sure the
/// image is still there and checks the volume the VM will be built on: no
/// backing or external data file, every table within the file. The lock is
/// held until the overlay exists.
fn image_in_hand(ctx: &Ctx, pool: &StoragePool, image: &Image) -> anyhow::Result<Option<crate::lock::Lock>> {
    if crate::libvirt::uri::is_test(&ctx.uri) {
        // The test driver's stand-in images have no record and no contents to read.
        return Ok(None);
    }
    let lock = super::pull::share_image(ctx, &image.record.name)?;
    let rec = crate::images::record::record_volume_of(&image.record.volume);
    if rec.as_deref().map(|r| storage::find_volume(pool, r)).transpose()?.flatten().is_none() {
        return Err(invalid(format!(
            "image {} was removed while this create was getting ready: pull or import it again",
            image.record.name
        )));
    }
    // apply builds many VMs on one image: it is read once per run.
    let checked = ctx.cache.checked_images.lock().expect("checked images").contains(&image.record.volume);
    if !checked {
        crate::images::store::check_image(&ctx.conn(), pool, image)?;
        ctx.cache.checked_images.lock().expect("checked images").insert(image.record.volume.clone());
    }
    crate::fault::pause("create-image-checked");
    Ok(Some(lock))
}

/// With user networking: the port lock (held until the domain that records
/// the ports is defined), the declared ports checked again under it (a
/// create running beside this one may have declared one since the first
/// check), and the ssh port.
fn claim_ports(ctx: &Ctx, req: &CreateRequest) -> anyhow::Result<(Option<crate::lock::Lock>, Option<u16>)> {
    let Network::User { ssh_port } = ctx.settings.network else { return Ok((None, None)) };
    let lock = port_lock(ctx)?;
    super::forward::check_declared(ctx, &req.name, &req.devices.ports, &[])?;
    let port = pick_ssh_port(ctx, &lock, ssh_port, &req.devices.ports)?;
    Ok((Some(lock), Some(port)))
}

/// Phase 1: the domain, with a `creating` record naming every volume to come.
fn claim<'a>(
    ctx: &Ctx,
    req: &CreateRequest,
    prep: &'a Prepared,
    progress: &Progress,
) -> anyhow::Result<(Made<'a>, VmSpec, Ownership, HostKey)> {
    let name = &req.name;
    let (port_guard, ssh_port) = claim_ports(ctx, req)?;
    let host = ctx.settings.host(&prep.authorized_keys);
    let mut spec = VmSpec::resolve(&host, &req.declaration(), prep.base_image.clone(), ssh_port);
    if let Some(d) = &prep.kept_data {
        // A reattached disk keeps its size; record the truth.
        spec.resources.project_disk = crate::spec::Size(d.capacity);
    }
    let host_key = HostKey::generate(&name.domain())?;
    let own = Ownership {
        xmlns: None,
        version: 1,
        name: name.to_string(),
        uuid: Some(uuid::Uuid::new_v4().to_string()),
        phase: Phase::Creating,
        pool: ctx.settings.pool.clone(),
        root_volume: name.root_volume(),
        data_volume: name.data_volume(),
        data_kept: prep.kept_data.is_some(),
        seed_volume: Some(name.seed_volume()),
        created: now_unix(),
        host_key: Some(host_key.public_openssh.clone()),
        spec_json: serde_json::to_string(&spec)?,
    };
    interrupt::check()?;
    progress.set_message(format!("creating {name}: domain"));
    let xml = domain_xml::build(&spec, &own, &super::host_files(ctx, &spec)?).to_xml();
    tracing::debug!(%xml, "defining domain");
    let dom = ctx.conn().define_domain_xml(&xml).map_err(|e| {
        // libvirt says "already exists" in the daemon's language: ask instead
        // whether a domain of that name is there now (made concurrently).
        let taken = e.code().is(virt::error::ErrorNumber::OperationFailed)
            && ctx.conn().lookup_domain_by_name(&name.domain()).is_ok();
        match taken {
            true => invalid(format!("VM {name} already exists (created concurrently?): {}", e.message())),
            false => explain(e, format!("defining domain {}", name.domain())),
        }
    })?;
    crate::fault::mutated("defined the domain");
    let made = Made { pool: &prep.pool, dom: Some(dom), volumes: Vec::new(), armed: true, doing: "create" };
    if let (Some(lock), Some(port)) = (&port_guard, ssh_port) {
        ports_taken(ctx, lock, port)?;
    }
    drop(port_guard);
    Ok((made, spec, own, host_key))
}

/// Phase 2: the root overlay and the project disk (unless one is reattached).
///
/// libvirt makes each qcow2 volume by running `qemu-img create`, the bulk of
/// a create's time; it runs them concurrently (the pool is not locked while
/// a volume is built), so the two are asked for at once.
fn volumes(
    req: &CreateRequest,
    prep: &Prepared,
    own: &Ownership,
    made: &mut Made,
    progress: &Progress,
) -> anyhow::Result<u64> {
    let name = &req.name;
    interrupt::check()?;
    progress.set_message(format!("creating {name}: disks (overlay on {})", prep.base_image));
    let mut disks = vec![NewDisk::Root {
        name: own.root_volume.clone(),
        capacity: req.resources.disk.bytes(),
        base: prep.base.clone(),
    }];
    match &prep.kept_data {
        Some(d) => tracing::info!(volume = %d.name, "reattaching project disk"),
        None => {
            disks.push(NewDisk::Data { name: own.data_volume.clone(), capacity: req.resources.project_disk.bytes() })
        }
    }
    let names: Vec<String> = disks.iter().map(|d| d.name().to_owned()).collect();
    let pool = prep.pool.clone();
    let results = crate::fanout::map(disks, 2, move |disk| disk.make(&pool));
    // Whatever was made is recorded before any error is returned, so it is undone.
    let mut first_error = None;
    for (volume, result) in names.into_iter().zip(results) {
        match result {
            Ok(Ok(())) => made.volumes.push(volume),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            // A worker that panicked may have made its volume: recorded, so
            // it is undone (removing a volume that is not there does nothing).
            Err(panicked) => {
                made.volumes.push(volume);
                first_error.get_or_insert(panicked.into());
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(match &prep.kept_data {
        Some(d) => d.capacity,
        None => req.resources.project_disk.bytes(),
    })
}

/// A disk phase 2 makes.
enum NewDisk {
    /// The root overlay on the base image.
    Root { name: String, capacity: u64, base: VolumeInfo },
    /// An empty project disk.
    Data { name: String, capacity: u64 },
}

impl NewDisk {
    fn name(&self) -> &str {
        match self {
            NewDisk::Root { name, .. } | NewDisk::Data { name, .. } => name,
        }
    }

    fn make(self, pool: &StoragePool) -> anyhow::Result<()> {
        match self {
            NewDisk::Root { name, capacity, base } => storage::create_overlay(pool, &name, capacity, &base).map(drop),
            NewDisk::Data { name, capacity } => storage::create_qcow2(pool, &name, capacity).map(drop),
        }
    }
}

/// Phase 3: the cloud-init seed, uploaded through libvirt.
fn seed(
    ctx: &Ctx,
    prep: &Prepared,
    spec: &VmSpec,
    host_key: &HostKey,
    made: &mut Made,
    progress: &Progress,
) -> anyhow::Result<String> {
    let name = &spec.name;
    interrupt::check()?;
    progress.set_message(format!("creating {name}: cloud-init seed"));
    let uuid = made.dom.as_ref().and_then(|d| d.uuid_string().ok()).unwrap_or_default();
    let provisioning = cloudinit::Provisioning {
        application_script: prep.provision.application_script.as_deref(),
        checks: &prep.provision.checks,
    };
    let seed = cloudinit::render_provisioned(
        &SeedInput {
            spec,
            authorized_keys: &prep.authorized_keys,
            host_key: Some(host_key),
            user_data: prep.user_config.as_ref(),
            instance_id: &format!("{}-{uuid}", name.domain()),
            tailscale_auth_key: prep.tailscale_auth_key.as_deref(),
        },
        &provisioning,
    );
    let iso = cloudinit::iso::build(&seed)?;
    // 0600: the seed carries the guest's private host key (and any auth key).
    // (upload removes its own volume if it fails part-way)
    let seed_name = name.seed_volume();
    let new = storage::NewVolume { name: &seed_name, format: "raw", len: iso.len() as u64, mode: "0600" };
    storage::upload(&ctx.conn(), &prep.pool, new, &mut iso.as_slice(), &Progress::hidden())
        .context("writing the cloud-init seed")?;
    made.volumes.push(seed_name.clone());
    Ok(seed_name)
}

/// Phase 4: the record says `ready`; a reattached disk is the VM's own now.
fn finalize(req: &CreateRequest, prep: &Prepared, own: &mut Ownership, made: &mut Made) -> anyhow::Result<()> {
    interrupt::check()?;
    let dom = made.dom.as_ref().expect("claimed");
    own.phase = Phase::Ready;
    own.data_kept = false;
    own.write(dom)?;
    if req.autostart {
        dom.set_autostart(true).map_err(|e| explain(e, "setting autostart"))?;
        crate::fault::mutated("set autostart");
    }
    made.armed = false;
    if prep.kept_data.is_some() {
        storage::delete(&prep.pool, &storage::kept_marker(&own.data_volume))?;
    }
    Ok(())
}
