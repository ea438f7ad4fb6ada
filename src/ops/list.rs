//! `list`: one line per project-vm VM.

use std::collections::HashMap;

use serde::Serialize;
use virt::storage_pool::StoragePool;

use super::addresses;
use super::Ctx;
use crate::libvirt::storage;
use crate::libvirt::vms::{self, State, Vm};

#[derive(Debug, Serialize)]
pub struct Entry {
    pub name: String,
    pub domain: String,
    pub state: State,
    pub vcpus: u32,
    /// Bytes.
    pub memory: u64,
    /// Bytes allocated on the host by the root and project disks.
    pub disk_usage: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub autostart: bool,
}

/// `pool`: the VM's storage pool, if it still exists.
fn entry(vm: &Vm, pool: Option<&StoragePool>) -> anyhow::Result<Entry> {
    let info = vm.dom.info().map_err(|e| crate::libvirt::explain(e, "reading domain info"))?;
    let mut disk_usage = 0;
    if let Some(pool) = pool {
        for name in [&vm.own.root_volume, &vm.own.data_volume] {
            if let Some(v) = storage::find_volume(pool, name)? {
                disk_usage += v.info().map(|i| i.allocation).unwrap_or(0);
            }
        }
    }
    // Only a running guest has an address (and user networking's forward).
    let state = vm.state();
    let address = vm.spec().ok().filter(|_| state == State::Running).and_then(|spec| {
        let addrs = addresses::known(vm, &spec, state);
        addresses::ssh_target(&spec, &addrs)
            .map(|t| if t.port == 22 { t.host } else { format!("{}:{}", t.host, t.port) })
    });
    Ok(Entry {
        name: vm.name.to_string(),
        domain: vm.name.domain(),
        state,
        vcpus: info.nr_virt_cpu,
        memory: info.max_mem * 1024,
        disk_usage,
        address,
        autostart: vm.dom.autostart().unwrap_or(false),
    })
}

pub fn list(ctx: &Ctx) -> anyhow::Result<Vec<Entry>> {
    // VMs almost always share one pool: look each pool up once.
    let mut pools: HashMap<String, Option<StoragePool>> = HashMap::new();
    let mut out = Vec::new();
    for vm in vms::list(&ctx.conn)? {
        if !pools.contains_key(&vm.own.pool) {
            pools.insert(vm.own.pool.clone(), ctx.vm_pool(&vm)?);
        }
        out.push(entry(&vm, pools[&vm.own.pool].as_ref())?);
    }
    Ok(out)
}
