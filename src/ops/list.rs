//! `list`: one line per project-vm VM.

use std::io::{self, Write};

use super::addresses;
use super::fleet::Fleet;
use super::{Ctx, PoolListings};
use crate::libvirt::pool_listing::PoolListing;
use crate::libvirt::vms::{self, State, Surveyed};
use crate::output::{human, table, Report};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Entry {
    /// The fleet host it is on (only with `hosts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
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
        addresses::ssh_target_of(vm, &spec, s.state).map(|t| {
            if t.port == 22 {
                t.host
            } else {
                format!("{}:{}", t.host, t.port)
            }
        })
    });
    Ok(Entry {
        host: None,
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

/// `list` across the fleet: every reachable host's VMs (with a HOST column
/// when hosts are named), and the hosts that did not answer.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct FleetListing {
    pub entries: Vec<Entry>,
    #[serde(skip)]
    pub down: Vec<String>,
}

impl FleetListing {
    /// Exit 4 when a host did not answer (the others are listed).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.down.is_empty() {
            return Ok(());
        }
        Err(super::Error::Environment(format!("not listed, unreachable:\n  {}", self.down.join("\n  "))).into())
    }
}

impl Report for FleetListing {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        table_of(&self.entries, out)
    }
}

fn table_of(entries: &[Entry], out: &mut dyn Write) -> io::Result<()> {
    let named = entries.iter().any(|e| e.host.is_some());
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let mut row = vec![
                e.name.clone(),
                e.state.as_str().into(),
                e.vcpus.to_string(),
                human(e.memory),
                human(e.disk_usage),
                e.address.clone().unwrap_or_else(|| "-".into()),
            ];
            if named {
                row.insert(0, e.host.clone().unwrap_or_default());
            }
            row
        })
        .collect();
    let mut head = vec!["NAME", "STATE", "CPUS", "MEMORY", "DISK", "ADDRESS"];
    if named {
        head.insert(0, "HOST");
    }
    table(out, &head, &rows)
}

/// `list` over the hosts `only` selects (all by default), asked at once.
pub fn list_fleet(fleet: &Fleet, only: Option<&str>, all_pools: bool) -> anyhow::Result<FleetListing> {
    let hosts = fleet.select(only)?;
    let answers = fleet.ask(&hosts, move |_, ctx| list(&ctx, all_pools));
    let mut out = FleetListing { entries: vec![], down: vec![] };
    for (h, answer) in answers {
        match answer {
            Ok(listing) => out.entries.extend(listing.0.into_iter().map(|e| Entry { host: h.name.clone(), ..e })),
            Err(e) if hosts.len() == 1 => return Err(e),
            Err(e) => out.down.push(format!("{e:#}")),
        }
    }
    if out.down.len() == hosts.len() {
        // Nothing to list: the error alone, as with one host.
        out.check()?;
    }
    Ok(out)
}

/// The VMs whose disks are in the settings' pool (other users, or other
/// settings files, keep theirs elsewhere), or every VM with `all_pools`.
///
/// A fixed number of calls plus one per VM (its record): bulk statistics for
/// state, CPUs and memory, one listing per pool for disk usage. A test
/// counts them (tests/scale.rs).
pub fn list(ctx: &Ctx, all_pools: bool) -> anyhow::Result<Listing> {
    let surveyed = vms::survey(&ctx.conn())?;
    let mut pools = PoolListings::default();
    let mut out = Vec::new();
    for s in surveyed.iter().filter(|s| all_pools || s.vm.own.pool == ctx.settings.pool) {
        out.push(entry(s, pools.get(ctx, &s.vm.own.pool)?)?);
    }
    Ok(Listing(out))
}
