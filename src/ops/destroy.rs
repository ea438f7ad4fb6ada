//! `destroy`: power off, delete the volumes this VM's record names, undefine.
//!
//! Volumes go first (the root disk before the others) and the domain, with
//! its record, last: a destroy killed part-way leaves the record, and running
//! `destroy` again finishes the job (a `create` of the same name undoes the
//! rest instead, keeping the project disk). A kept project disk gets its
//! marker before the record goes, so it is never left unrecorded.

use std::io::{self, Write};

use serde::Serialize;
use virt::storage_pool::StoragePool;

use super::Ctx;
use crate::libvirt::explain;
use crate::libvirt::metadata::Phase;
use crate::libvirt::storage;
use crate::libvirt::vms::Vm;
use crate::output::Report;

#[derive(Debug, Serialize)]
pub struct DestroyReport {
    pub name: String,
    pub deleted_volumes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_data_volume: Option<String>,
}

pub fn destroy(ctx: &Ctx, vm: &Vm, keep_data: bool) -> anyhow::Result<DestroyReport> {
    let _lock = super::vm_lock(ctx, &vm.name, "destroying")?;
    // Re-read under the lock: the VM may have changed since the caller looked.
    let vm = crate::libvirt::vms::get(&ctx.conn(), &vm.name)?;
    remove(ctx, &vm, keep_data)
}

/// The work of `destroy`, for callers that hold the VM's lock. A project disk
/// that a half-made create reattached is kept whatever `keep_data` says: it
/// was kept by an earlier `destroy --keep-data`, not made by that create.
/// So is one whose kept-disk marker is still there: a reattaching create
/// removes the marker last, so a create killed after its record said
/// `ready` (but before it could say so to its user) has not yet made the
/// disk the VM's to delete.
pub fn remove(ctx: &Ctx, vm: &Vm, keep_data: bool) -> anyhow::Result<DestroyReport> {
    let pool = ctx.vm_pool(vm)?;
    let marked = match &pool {
        Some(p) => storage::is_kept(p, &vm.own.data_volume)?,
        None => false,
    };
    let keep_data = keep_data || (vm.own.phase == Phase::Creating && vm.own.data_kept) || marked;
    power_off(vm)?;
    // A kept disk carries no snapshot of a VM that is gone (they live in its
    // qcow2); otherwise the volumes go, and the undefine drops the metadata.
    let snapshots = vm.dom.num_snapshots(0).unwrap_or(0);
    if keep_data && snapshots > 0 {
        super::snapshot::delete_all(vm)?;
    }
    let deleted = match pool {
        Some(pool) => delete_volumes(ctx, &pool, vm, keep_data)?,
        None => {
            crate::messages::warn(format_args!(
                "storage pool {} of {} is gone; nothing to delete there",
                vm.own.pool, vm.name
            ));
            Vec::new()
        }
    };
    let serial_log = own_serial_log(ctx, vm);
    undefine(vm, snapshots)?;
    forget_host_files(ctx, vm, serial_log);
    tracing::info!(vm = %vm.name, "destroyed");
    Ok(DestroyReport {
        name: vm.name.to_string(),
        deleted_volumes: deleted,
        kept_data_volume: keep_data.then(|| vm.own.data_volume.clone()),
    })
}

fn power_off(vm: &Vm) -> anyhow::Result<()> {
    if vm.dom.is_active().unwrap_or(false) {
        vm.dom.destroy().map_err(|e| explain(e, format!("powering off {}", vm.name)))?;
        crate::fault::mutated("powered off");
    }
    Ok(())
}

/// Deletes the VM's volumes (the root disk first), the project disk unless
/// it is kept (then it gets its marker); returns what was deleted. A volume
/// another domain uses (a disk attached by hand, or a copy of this domain)
/// is never deleted with this VM.
fn delete_volumes(ctx: &Ctx, pool: &StoragePool, vm: &Vm, keep_data: bool) -> anyhow::Result<Vec<String>> {
    let in_use = crate::libvirt::vms::disks_in_use(&ctx.conn(), ctx.is_local())?;
    let domain = vm.name.domain();
    let foreign = |vol: &str| -> anyhow::Result<Option<String>> {
        let Some(v) = storage::find_volume(pool, vol)? else { return Ok(None) };
        let Ok(path) = v.path() else { return Ok(None) };
        Ok(in_use.other_than(&path, &domain).cloned())
    };
    let mut deleted = Vec::new();
    let mut delete = |vol: &str| -> anyhow::Result<()> {
        if let Some(other) = foreign(vol)? {
            crate::messages::warn(format_args!("volume {vol} kept: domain {other} uses it"));
            return Ok(());
        }
        if storage::delete(pool, vol)? {
            deleted.push(vol.to_owned());
        }
        Ok(())
    };
    for vol in vm.own.volumes(false) {
        delete(vol)?;
    }
    let data = &vm.own.data_volume;
    if keep_data {
        if storage::find_volume(pool, data)?.is_some() {
            storage::mark_kept(&ctx.conn(), pool, data, vm.name.as_str(), vm.own.uuid.as_deref())?;
        }
    } else if foreign(data)?.is_none() {
        delete(data)?;
        delete(&storage::kept_marker(data))?;
    } else {
        delete(data)?;
    }
    Ok(deleted)
}

/// A session VM's serial log lives in its user's state directory, which
/// project-vm chose: it goes with the VM (the system daemon's stays in
/// libvirt's log directory, as libvirt keeps it).
fn own_serial_log(ctx: &Ctx, vm: &Vm) -> Option<std::path::PathBuf> {
    match ctx.settings.daemon.is_session() && ctx.is_local() {
        true => super::logs::configured_path(vm)
            .filter(|p| ctx.settings.daemon.serial_log_dir().is_some_and(|d| p.parent() == Some(d.as_path()))),
        false => None,
    }
}

/// Undefines the domain, with its snapshots' metadata and (UEFI VMs have
/// an NVRAM file of their own) its firmware variables.
fn undefine(vm: &Vm, snapshots: u32) -> anyhow::Result<()> {
    let efi = vm.spec().is_ok_and(|s| s.firmware == crate::spec::Firmware::Efi);
    let mut flags = 0;
    if snapshots > 0 {
        flags |= virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
    }
    if efi {
        flags |= virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM;
    }
    let undefined = match flags {
        0 => vm.dom.undefine(),
        f => vm.dom.undefine_flags(f),
    };
    undefined.map_err(|e| explain(e, format!("undefining {}", vm.name.domain())))?;
    crate::fault::mutated("undefined the domain");
    Ok(())
}

/// What the VM left on this machine: its serial log (if project-vm chose
/// its place) and its pinned host key (a later VM of this name gets a new one).
fn forget_host_files(ctx: &Ctx, vm: &Vm, serial_log: Option<std::path::PathBuf>) {
    if let Some(log) = serial_log {
        if let Err(e) = std::fs::remove_file(&log) {
            if e.kind() != std::io::ErrorKind::NotFound {
                crate::messages::warn(format_args!("could not remove {}'s serial log {}: {e}", vm.name, log.display()));
            }
        }
    }
    if let Err(e) = super::ssh::forget_host_key(&super::ssh::known_hosts_path(), &ctx.ssh_alias(&vm.name)) {
        crate::messages::warn(format_args!("could not remove {}'s pinned host key: {e:#}", vm.name));
    }
}

impl Report for DestroyReport {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "destroyed project-{} (deleted {})", self.name, self.deleted_volumes.join(", "))?;
        if let Some(kept) = &self.kept_data_volume {
            writeln!(out, "kept project disk {kept}: `project-vm create {}` reattaches it", self.name)?;
        }
        Ok(())
    }
}
