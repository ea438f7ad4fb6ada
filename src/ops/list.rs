//! `list`: one line per project-vm VM.

use serde::Serialize;

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

pub fn entry(ctx: &Ctx, vm: &Vm) -> anyhow::Result<Entry> {
    let info = vm.dom.info().map_err(|e| crate::libvirt::explain(e, "reading domain info"))?;
    let mut disk_usage = 0;
    if let Some(pool) = ctx.vm_pool(vm)? {
        for name in [&vm.own.root_volume, &vm.own.data_volume] {
            if let Some(v) = storage::find_volume(&pool, name)? {
                disk_usage += v.info().map(|i| i.allocation).unwrap_or(0);
            }
        }
    }
    // Only a running guest has an address (and user networking's forward).
    let running = vm.state() == State::Running;
    let address = vm.spec().ok().filter(|_| running).and_then(|spec| {
        let addrs = addresses::known(vm, &spec);
        addresses::ssh_target(&spec, &addrs)
            .map(|t| if t.port == 22 { t.host } else { format!("{}:{}", t.host, t.port) })
    });
    Ok(Entry {
        name: vm.name.to_string(),
        domain: vm.name.domain(),
        state: vm.state(),
        vcpus: info.nr_virt_cpu,
        memory: info.max_mem * 1024,
        disk_usage,
        address,
        autostart: vm.dom.autostart().unwrap_or(false),
    })
}

pub fn list(ctx: &Ctx) -> anyhow::Result<Vec<Entry>> {
    vms::list(&ctx.conn)?.iter().map(|vm| entry(ctx, vm)).collect()
}
