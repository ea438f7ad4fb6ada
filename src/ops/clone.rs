//! `clone SRC NEW [--with-data]`: a new VM from an existing one, in the
//! phases of `create` with the root disk copied instead of made:
//!
//! 1. **check**: everything that refuses the clone (exit 2) is said before
//!    anything changes: NEW taken, a running source without `--stop`, a
//!    source with a fixed address or passthrough devices (the clone would
//!    take the same ones), a remote libvirt (sealing needs loopback).
//! 2. **claim**: NEW is defined with a `creating` record naming every volume
//!    to come, as `create` does: there is never a volume without its owner.
//! 3. **copy**: libvirt copies the source's root disk into NEW's root volume
//!    (`virStorageVolCreateXMLFrom`, a standalone qcow2 made on the libvirt
//!    host); the project disk is copied the same way with `--with-data`, or
//!    made fresh and empty.
//! 4. **seal**: the copy boots once, alone, and `image save`'s seal script
//!    removes what makes it the source (cloud-init's instance, machine-id,
//!    ssh host keys, authorized keys, logs), then powers it off.
//! 5. **seed** and **finalize**: a new cloud-init seed (a new instance id,
//!    NEW's hostname, a new host key; the MAC follows from NEW's name), and
//!    the record says `ready`. NEW's first start provisions it as a new
//!    machine.
//!
//! The source must be shut off for the copy, so the disk is consistent (no
//! writes in flight, nothing in the guest's page cache): `--stop` shuts a
//! running source down gracefully for the copy and starts it again. A
//! failure or Ctrl-C undoes what this run made; after a SIGKILL, the same
//! `clone` undoes the half-made NEW (and a sealing boot left running) and
//! starts over.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use virt::storage_pool::StoragePool;

use super::create::Made;
use super::{now_unix, Ctx, Error};
use crate::cloudinit::{self, hostkey::HostKey, SeedInput};
use crate::interrupt;
use crate::libvirt::metadata::{Ownership, Phase};
use crate::libvirt::storage;
use crate::libvirt::vms::{self, Lookup, State, Vm};
use crate::libvirt::{domain_xml, errors};
use crate::output::Report;
use crate::progress::Progress;
use crate::settings::Network;
use crate::spec::{VmName, VmSpec};

#[derive(Debug, Clone)]
pub struct CloneRequest {
    pub name: VmName,
    /// Copy the project disk too.
    pub with_data: bool,
    /// Stop a running source for the copy, and start it again after.
    pub stop: bool,
    /// The key for the sealing ssh.
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct CloneReport {
    pub name: String,
    pub source: String,
    pub domain: String,
    pub uuid: String,
    pub root_volume: String,
    pub data_volume: String,
    /// The project disk is a copy of the source's (`--with-data`); else new and empty.
    pub data_copied: bool,
    pub seed_volume: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// The source was stopped for the copy and started again.
    pub restarted: bool,
    pub elapsed_ms: u128,
}

impl Report for CloneReport {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let data = match self.data_copied {
            true => "copied",
            false => "new and empty",
        };
        writeln!(
            out,
            "cloned {} as {} in {} ms: root {} (a copy, sealed as a new machine), project disk {} ({data}){}",
            self.source,
            self.name,
            self.elapsed_ms,
            self.root_volume,
            self.data_volume,
            if self.restarted { "; started the source again" } else { "" }
        )?;
        writeln!(out, "`project-vm start {} --wait` boots it as a new instance", self.name)
    }
}

/// The `clone` command, with a spinner on a terminal.
pub fn run(ctx: &Ctx, src: &Vm, req: &CloneRequest) -> anyhow::Result<CloneReport> {
    let progress = Progress::spinner(ctx.json, format!("cloning {} as {}", src.name, req.name));
    let report = clone(ctx, src, req, &progress);
    progress.finish();
    report
}

pub fn clone(ctx: &Ctx, src: &Vm, req: &CloneRequest, progress: &Progress) -> anyhow::Result<CloneReport> {
    let started = Instant::now();
    let src_key = check_request(ctx, src, req)?;
    let _new_lock = super::vm_lock(ctx, &req.name, "creating")?;
    let _src_lock = super::vm_lock(ctx, &src.name, "cloning")?;
    // Re-read under the locks: the source may have changed since the caller looked.
    let src = vms::get(&ctx.conn(), &src.name)?;
    clear_leftovers(ctx, &src, &req.name)?;
    let pool = check_source(ctx, &src, req)?;
    check_volumes_free(&pool, &req.name)?;
    let running = src.state() != State::Shutoff;
    if running {
        progress.set_message(format!("{}: stopping for the copy", src.name));
        let stopped = super::power::stop(ctx, &src, Duration::from_secs(120), false)?;
        tracing::info!(vm = %src.name, result = stopped.result, "stopped for the copy");
    }
    let made = make(ctx, &src, req, &pool, &src_key, progress);
    if running {
        progress.set_message(format!("{}: starting again", src.name));
        super::power::start(ctx, &src)?;
    }
    let (own, spec, data_copied) = made?;
    tracing::info!(vm = %req.name, source = %src.name, "cloned");
    Ok(CloneReport {
        name: req.name.to_string(),
        source: src.name.to_string(),
        domain: req.name.domain(),
        uuid: own.uuid.clone().unwrap_or_default(),
        root_volume: own.root_volume,
        data_volume: own.data_volume,
        data_copied,
        seed_volume: own.seed_volume.unwrap_or_default(),
        ssh_port: spec.ssh_port,
        restarted: running,
        elapsed_ms: started.elapsed().as_millis(),
    })
}

fn invalid(msg: String) -> anyhow::Error {
    Error::Invalid(msg).into()
}

/// What refuses the clone whatever state things are in; the source's pinned
/// host key (the sealing ssh checks it).
fn check_request(ctx: &Ctx, src: &Vm, req: &CloneRequest) -> anyhow::Result<String> {
    if req.name == src.name {
        return Err(invalid(format!("VM {} already exists: give the clone another name", req.name)));
    }
    if !ctx.is_local() {
        return Err(invalid(format!(
            "clone seals the copy through a loopback port on the libvirt host, so it needs a local libvirt ({} is remote): run it on that host",
            ctx.uri
        )));
    }
    let spec = src.spec()?;
    if spec.network_config.is_some() {
        return Err(invalid(format!(
            "{} has a fixed address (--ip / network_config): a clone would take the same address; create a VM instead",
            src.name
        )));
    }
    if !spec.hostdevs.is_empty() {
        return Err(invalid(format!(
            "{} has PCI passthrough devices: a device goes to one VM, so a clone could never start beside it",
            src.name
        )));
    }
    src.own.host_key.clone().ok_or_else(|| {
        invalid(format!(
            "{} has no pinned host key (made by an older project-vm): it cannot be sealed safely",
            src.name
        ))
    })
}

/// A half-made NEW (a clone or create that was killed) is undone, and a
/// sealing boot of the source's copy that a killed run left running is
/// stopped; a whole NEW is refused. Called with both VMs' locks held, so no
/// live project-vm is working on either.
fn clear_leftovers(ctx: &Ctx, src: &Vm, name: &VmName) -> anyhow::Result<()> {
    let sealing = format!("pvseal-{}", src.name);
    if let Ok(dom) = ctx.conn().lookup_domain_by_name(&sealing) {
        if !dom.is_persistent().unwrap_or(true) {
            let _ = dom.destroy();
            crate::fault::mutated("stopped a leftover sealing boot");
        }
    }
    let vm = match vms::lookup(&ctx.conn(), name)? {
        Lookup::Absent => return Ok(()),
        Lookup::Foreign(why) => return Err(vms::foreign(name, why.as_deref())),
        Lookup::Owned(vm) => vm,
    };
    let root_exists = match ctx.vm_pool(&vm)? {
        Some(pool) => storage::find_volume(&pool, &vm.own.root_volume)?.is_some(),
        None => false,
    };
    let Some(keep_data) = vm.own.half_made(root_exists) else {
        return Err(invalid(format!(
            "VM {name} already exists: pick another name for the clone, or remove it with `project-vm destroy {name}` first"
        )));
    };
    if !ctx.json {
        crate::messages::note(format!(
            "{name}: an earlier clone, create or destroy did not finish; undoing what it left, then cloning again"
        ));
    }
    super::destroy::remove(ctx, &vm, keep_data)?;
    Ok(())
}

/// The source can be copied consistently: whole, and shut off (or `--stop`).
fn check_source(ctx: &Ctx, src: &Vm, req: &CloneRequest) -> anyhow::Result<StoragePool> {
    let pool = ctx
        .vm_pool(src)?
        .ok_or_else(|| invalid(format!("the storage pool {} of {} is gone", src.own.pool, src.name)))?;
    let root_exists = storage::find_volume(&pool, &src.own.root_volume)?.is_some();
    if src.own.half_made(root_exists).is_some() {
        return Err(Error::HalfMade(format!(
            "{} is half-made (its create or destroy did not finish): there is no disk to copy. Run `project-vm create {}` again, or `project-vm destroy {}`",
            src.name, src.name, src.name
        ))
        .into());
    }
    match src.state() {
        State::Shutoff => Ok(pool),
        State::Suspended => Err(invalid(format!(
            "{} is suspended: its disks belong with its saved memory, so a copy of them is not consistent. Start it and stop it (or `project-vm clone {} {} --stop` once it runs)",
            src.name, src.name, req.name
        ))),
        _ if req.stop => Ok(pool),
        _ => Err(invalid(format!(
            "{} is running: a disk copied under a running guest is not consistent. Stop it first, or pass --stop (it is shut down for the copy and started again)",
            src.name
        ))),
    }
}

/// NEW's volumes are free: none left by someone else, and no project disk
/// kept for a VM of that name (`create NEW` would reattach it).
fn check_volumes_free(pool: &StoragePool, name: &VmName) -> anyhow::Result<()> {
    let pool_name = pool.name().unwrap_or_default();
    for vol in [name.root_volume(), name.seed_volume(), name.data_volume()] {
        if storage::find_volume(pool, &vol)?.is_none() {
            continue;
        }
        let kept = vol == name.data_volume() && storage::is_kept(pool, &vol)?;
        return Err(invalid(match kept {
            true => format!(
                "volume {vol} is a project disk kept for {name} (`destroy --keep-data`): `project-vm create {name}` reattaches it; pick another name for the clone"
            ),
            false => format!(
                "volume {vol} already exists in pool {pool_name} but no VM {name} owns it: it is left alone; pick another name for the clone, or remove it with `virsh vol-delete {vol} --pool {pool_name}` if it is yours to remove"
            ),
        }));
    }
    Ok(())
}

/// Phases 2 to 5; undone on failure.
fn make(
    ctx: &Ctx,
    src: &Vm,
    req: &CloneRequest,
    pool: &StoragePool,
    src_key: &str,
    progress: &Progress,
) -> anyhow::Result<(Ownership, VmSpec, bool)> {
    let (mut made, spec, mut own, host_key) = claim(ctx, src, req, pool, progress)?;
    copy(src, req, pool, &own, &mut made, progress)?;
    interrupt::check()?;
    super::save::seal(ctx, src, &own.root_volume, src_key, req.identity.as_deref(), progress)?;
    seed(ctx, pool, &spec, &host_key, &mut made, progress)?;
    interrupt::check()?;
    own.phase = Phase::Ready;
    let dom = made.dom.as_ref().expect("claimed");
    own.write(dom)?;
    if spec.autostart {
        dom.set_autostart(true).map_err(|e| errors::Error::call("setting autostart", e))?;
        crate::fault::mutated("set autostart");
    }
    made.armed = false;
    Ok((own, spec, req.with_data))
}

/// Phase 2: NEW's domain, with a `creating` record naming its volumes, on a
/// forwarded port of its own.
fn claim<'a>(
    ctx: &Ctx,
    src: &Vm,
    req: &CloneRequest,
    pool: &'a StoragePool,
    progress: &Progress,
) -> anyhow::Result<(Made<'a>, VmSpec, Ownership, HostKey)> {
    let name = &req.name;
    // No declared port forwards: the source's host ports are the source's.
    let mut spec = VmSpec { name: name.clone(), ports: Vec::new(), ..src.spec()? };
    let port_guard = match spec.network {
        Network::User { .. } => Some(super::create::port_lock(ctx)?),
        _ => None,
    };
    if let (Network::User { ssh_port }, Some(lock)) = (&spec.network, &port_guard) {
        spec.ssh_port = Some(super::create::pick_ssh_port(ctx, lock, *ssh_port, &[])?);
    }
    let host_key = HostKey::generate(&name.domain())?;
    let own = Ownership {
        xmlns: None,
        version: 1,
        name: name.to_string(),
        uuid: Some(uuid::Uuid::new_v4().to_string()),
        phase: Phase::Creating,
        pool: src.own.pool.clone(),
        root_volume: name.root_volume(),
        data_volume: name.data_volume(),
        data_kept: false,
        seed_volume: Some(name.seed_volume()),
        created: now_unix(),
        host_key: Some(host_key.public_openssh.clone()),
        spec_json: serde_json::to_string(&spec)?,
    };
    interrupt::check()?;
    progress.set_message(format!("cloning {}: domain {}", src.name, name.domain()));
    let xml = domain_xml::build(&spec, &own, &super::host_files(ctx, &spec)?).to_xml();
    let dom = ctx.conn().define_domain_xml(&xml).map_err(|e| {
        let taken = e.code().is(virt::error::ErrorNumber::OperationFailed)
            && ctx.conn().lookup_domain_by_name(&name.domain()).is_ok();
        match taken {
            true => invalid(format!("VM {name} already exists (created concurrently?): {}", e.message())),
            false => errors::Error::call(format!("defining domain {}", name.domain()), e).into(),
        }
    })?;
    crate::fault::mutated("defined the domain");
    if let (Some(lock), Some(port)) = (&port_guard, spec.ssh_port) {
        super::create::ports_taken(ctx, lock, port)?;
    }
    let made = Made { pool, dom: Some(dom), volumes: Vec::new(), armed: true, doing: "clone" };
    Ok((made, spec, own, host_key))
}

/// Phase 3: the root disk copied by libvirt; the project disk copied or new.
fn copy(
    src: &Vm,
    req: &CloneRequest,
    pool: &StoragePool,
    own: &Ownership,
    made: &mut Made,
    progress: &Progress,
) -> anyhow::Result<()> {
    let volume = |name: &str| -> anyhow::Result<virt::storage_vol::StorageVol> {
        storage::find_volume(pool, name)?
            .ok_or_else(|| anyhow::anyhow!("{}'s volume {name} is gone from pool {}", src.name, src.own.pool))
    };
    interrupt::check()?;
    progress.set_message(format!("cloning {}: copying the root disk", src.name));
    storage::clone_flat(pool, &own.root_volume, &volume(&src.own.root_volume)?)?;
    made.volumes.push(own.root_volume.clone());
    crate::fault::pause("clone-root-copied");
    interrupt::check()?;
    if req.with_data {
        progress.set_message(format!("cloning {}: copying the project disk", src.name));
        storage::clone_flat(pool, &own.data_volume, &volume(&src.own.data_volume)?)?;
    } else {
        storage::create_qcow2(pool, &own.data_volume, src.spec()?.resources.project_disk.bytes())?;
    }
    made.volumes.push(own.data_volume.clone());
    Ok(())
}

/// Phase 5: NEW's own cloud-init seed: a new instance id, its hostname and
/// host key, the settings' authorized keys.
fn seed(
    ctx: &Ctx,
    pool: &StoragePool,
    spec: &VmSpec,
    host_key: &HostKey,
    made: &mut Made,
    progress: &Progress,
) -> anyhow::Result<()> {
    let name = &spec.name;
    interrupt::check()?;
    progress.set_message(format!("cloning as {name}: cloud-init seed"));
    let authorized_keys = ctx.settings.authorized_keys()?;
    let tailscale_auth_key = match (&spec.tailnet, &ctx.settings.tailscale_auth_key_file) {
        (Some(_), Some(path)) => {
            Some(crate::files::read_text(path, "tailscale_auth_key_file", crate::files::KEY_MAX)?.trim().to_owned())
        }
        _ => None,
    };
    let uuid = made.dom.as_ref().and_then(|d| d.uuid_string().ok()).unwrap_or_default();
    let seed = cloudinit::render(&SeedInput {
        spec,
        authorized_keys: &authorized_keys,
        host_key: Some(host_key),
        user_data: None,
        instance_id: &format!("{}-{uuid}", name.domain()),
        tailscale_auth_key: tailscale_auth_key.as_deref(),
    });
    let iso = cloudinit::iso::build(&seed)?;
    let seed_name = name.seed_volume();
    let new = storage::NewVolume { name: &seed_name, format: "raw", len: iso.len() as u64, mode: "0600" };
    storage::upload(&ctx.conn(), pool, new, &mut iso.as_slice(), &Progress::hidden())
        .map_err(|e| e.context("writing the cloud-init seed"))?;
    made.volumes.push(seed_name);
    Ok(())
}
