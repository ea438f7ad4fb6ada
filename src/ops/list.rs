//! `list`: one line per project-vm VM.

use std::collections::HashMap;

use std::io::{self, Write};

use serde::Serialize;
use virt::storage_pool::StoragePool;

use super::addresses;
use super::Ctx;
use crate::libvirt::storage;
use crate::libvirt::vms::{self, State, Vm};
use crate::output::{human, table, Report};

#[derive(Debug, Serialize)]
pub struct Entry {
    pub name: String,
    pub domain: String,
    /// The storage pool its disks live in.
    pub pool: String,
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
        pool: vm.own.pool.clone(),
        state,
        vcpus: info.nr_virt_cpu,
        memory: info.max_mem * 1024,
        disk_usage,
        address,
        autostart: vm.dom.autostart().unwrap_or(false),
    })
}

/// `list`: a JSON array, or a table.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct Listing(pub Vec<Entry>);

impl Report for Listing {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let rows: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|e| {
                vec![
                    e.name.clone(),
                    e.state.as_str().into(),
                    e.vcpus.to_string(),
                    human(e.memory),
                    human(e.disk_usage),
                    e.address.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        table(out, &["NAME", "STATE", "CPUS", "MEMORY", "DISK", "ADDRESS"], &rows)
    }
}

/// The VMs whose disks are in the settings' pool (other users, or other
/// settings files, keep theirs elsewhere), or every VM with `all_pools`.
pub fn list(ctx: &Ctx, all_pools: bool) -> anyhow::Result<Listing> {
    // VMs almost always share one pool: look each pool up once.
    let mut pools: HashMap<String, Option<StoragePool>> = HashMap::new();
    let mut out = Vec::new();
    for vm in vms::list(&ctx.conn)?.into_iter().filter(|vm| all_pools || vm.own.pool == ctx.settings.pool) {
        if !pools.contains_key(&vm.own.pool) {
            pools.insert(vm.own.pool.clone(), ctx.vm_pool(&vm)?);
        }
        out.push(entry(&vm, pools[&vm.own.pool].as_ref())?);
    }
    Ok(Listing(out))
}
