//! `list`: one line per project-vm VM.

use std::collections::HashMap;

use std::io::{self, Write};

use super::addresses;
use super::Ctx;
use crate::libvirt::pool_listing::PoolListing;
use crate::libvirt::vms::{self, State, Surveyed};
use crate::output::{human, table, Report};
use serde::Serialize;

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
fn entry(s: &Surveyed, pool: Option<&PoolListing>) -> anyhow::Result<Entry> {
    let vm = &s.vm;
    let mut disk_usage = 0;
    if let Some(pool) = pool {
        for name in [&vm.own.root_volume, &vm.own.data_volume] {
            disk_usage += pool.sizes(name)?.map(|z| z.allocation).unwrap_or(0);
        }
    }
    // Only a running guest has an address (and user networking's forward).
    let address = vm.spec().ok().filter(|_| s.state == State::Running).and_then(|spec| {
        let addrs = match addresses::needs_lookup(&spec) {
            true => addresses::known(vm, &spec, s.state),
            false => Vec::new(),
        };
        addresses::ssh_target(&spec, &addrs)
            .map(|t| if t.port == 22 { t.host } else { format!("{}:{}", t.host, t.port) })
    });
    Ok(Entry {
        name: vm.name.to_string(),
        domain: vm.name.domain(),
        pool: vm.own.pool.clone(),
        state: s.state,
        vcpus: s.vcpus,
        memory: s.max_memory,
        disk_usage,
        address,
        autostart: s.autostart,
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
///
/// A fixed number of calls plus one per VM (its record): bulk statistics for
/// state, CPUs and memory, one listing per pool for disk usage. A test
/// counts them (tests/scale.rs).
pub fn list(ctx: &Ctx, all_pools: bool) -> anyhow::Result<Listing> {
    let surveyed = vms::survey(&ctx.conn)?;
    let mut pools: HashMap<String, Option<PoolListing>> = HashMap::new();
    let mut out = Vec::new();
    for s in surveyed.iter().filter(|s| all_pools || s.vm.own.pool == ctx.settings.pool) {
        let pool = &s.vm.own.pool;
        if !pools.contains_key(pool) {
            let listing = ctx.pool(pool)?.map(|p| PoolListing::read(p, ctx.is_local())).transpose()?;
            pools.insert(pool.clone(), listing);
        }
        out.push(entry(s, pools[pool].as_ref())?);
    }
    Ok(Listing(out))
}
