//! `destroy`: power off, delete the volumes this VM's record names, undefine.
//!
//! Volumes go first and the domain (with its record) last, so a failure
//! part-way leaves the record in place and `destroy` can simply be run again.

use serde::Serialize;

use super::Ctx;
use crate::libvirt::explain;
use crate::libvirt::storage;
use crate::libvirt::vms::Vm;

#[derive(Debug, Serialize)]
pub struct DestroyReport {
    pub name: String,
    pub deleted_volumes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_data_volume: Option<String>,
}

pub fn destroy(ctx: &Ctx, vm: &Vm, keep_data: bool) -> anyhow::Result<DestroyReport> {
    if vm.dom.is_active().unwrap_or(false) {
        vm.dom.destroy().map_err(|e| explain(e, format!("powering off {}", vm.name)))?;
    }
    let mut deleted = Vec::new();
    if let Some(pool) = ctx.vm_pool(vm)? {
        for vol in vm.own.volumes(!keep_data) {
            if storage::delete(&pool, vol)? {
                deleted.push(vol.to_owned());
            }
        }
    } else {
        tracing::warn!(pool = %vm.own.pool, "storage pool of {} is gone; nothing to delete there", vm.name);
    }
    vm.dom.undefine().map_err(|e| explain(e, format!("undefining {}", vm.name.domain())))?;
    // A later VM of this name gets a new host key: its pin goes with this one.
    if let Err(e) = super::ssh::forget_host_key(&super::ssh::known_hosts_path(), &vm.name.domain()) {
        tracing::warn!("could not remove {}'s pinned host key: {e:#}", vm.name);
    }
    tracing::info!(vm = %vm.name, "destroyed");
    Ok(DestroyReport {
        name: vm.name.to_string(),
        deleted_volumes: deleted,
        kept_data_volume: keep_data.then(|| vm.own.data_volume.clone()),
    })
}
