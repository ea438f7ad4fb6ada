//! `status`: everything project-vm knows about one VM.

use std::io::{self, Write};

use serde::Serialize;

use super::addresses::{self, Address, SshTarget};
use super::Ctx;
use crate::libvirt::metadata::Phase;
use crate::libvirt::storage;
use crate::libvirt::vms::{State, Vm};
use crate::output::{human, Report};
use crate::settings::Network;

#[derive(Debug, Serialize)]
pub struct Disk {
    /// `root`, `data` or `seed`.
    pub role: &'static str,
    pub volume: String,
    pub exists: bool,
    pub allocation: u64,
    pub capacity: u64,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub name: String,
    /// The libvirt host the VM was found on: the fleet host's name (with
    /// `hosts`), else the URI connected to.
    pub host: String,
    /// The URI of that host.
    pub uri: String,
    pub domain: String,
    pub uuid: String,
    pub state: State,
    pub phase: Phase,
    pub vcpus: u32,
    pub memory: u64,
    pub autostart: bool,
    pub base_image: String,
    pub pool: String,
    pub disks: Vec<Disk>,
    pub addresses: Vec<Address>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tailnet_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshTarget>,
    pub firmware: crate::spec::Firmware,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_config: Option<crate::spec::StaticNetwork>,
    /// Passed-through PCI devices, as the host describes them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hostdevs: Vec<crate::libvirt::nodedev::PciDevice>,
    pub snapshots: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<crate::spec::Share>,
    /// What the guest reaches on the libvirt host over its network.
    pub host_reach: HostReach,
    /// The last health-check results (`check`, `--wait`), kept in the
    /// user's state directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_checks: Option<super::check::CheckReport>,
    /// The declared ports, and where each is reached.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<super::forward::PortStatus>,
}

/// What a guest reaches on the libvirt host over its network, by network type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostReach {
    /// Services the host keeps on its loopback (127.0.0.1, ::1) for itself
    /// answer the guest.
    pub host_loopback: bool,
    pub note: &'static str,
}

impl HostReach {
    pub fn of(network: &Network) -> HostReach {
        match network {
            // libvirt starts passt with --one-off, --socket, --pid and the
            // forwarded ports only: not with --no-map-gw, and the domain XML
            // has no way to ask for it, so passt maps the guest's gateway
            // address to the host's loopback (tests/e2e.rs reads passt's
            // command line to keep this true).
            Network::User { .. } => HostReach {
                host_loopback: true,
                note: "user networking (passt): the guest reaches this host's loopback services at its gateway address; libvirt offers no way to turn that mapping off, so use a libvirt network or a bridge for a VM that must not",
            },
            Network::Network { .. } => HostReach {
                host_loopback: false,
                note: "libvirt network: the guest reaches this host at the network's own address (services listening there or on all addresses), never its loopback",
            },
            Network::Bridge { .. } => HostReach {
                host_loopback: false,
                note: "bridge: the guest is a machine on the bridged network and reaches this host as any machine there does, never its loopback",
            },
        }
    }
}

pub fn status(ctx: &Ctx, vm: &Vm) -> anyhow::Result<Status> {
    let spec = vm.spec()?;
    let info = vm.dom.info().map_err(|e| crate::libvirt::explain(e, "reading domain info"))?;
    let pool = ctx.vm_pool(vm)?;
    let mut disks = Vec::new();
    let mut roles = vec![("root", vm.own.root_volume.clone()), ("data", vm.own.data_volume.clone())];
    if let Some(seed) = &vm.own.seed_volume {
        roles.push(("seed", seed.clone()));
    }
    for (role, volume) in roles {
        let vol = match &pool {
            Some(p) => storage::find_volume(p, &volume)?,
            None => None,
        };
        let (allocation, capacity) =
            vol.and_then(|v| v.info().ok()).map(|i| (i.allocation, i.capacity)).unwrap_or((0, 0));
        disks.push(Disk { role, exists: capacity > 0, volume, allocation, capacity });
    }
    let state = vm.state();
    let addrs = addresses::known(vm, &spec, state);
    let ssh = addresses::ssh_target(&spec, &addrs);
    let guest_address = addrs.iter().find_map(|a| a.address.parse::<std::net::IpAddr>().ok());
    let ports = super::forward::port_status(&spec, state == State::Running, guest_address);
    Ok(Status {
        name: vm.name.to_string(),
        host: ctx.host_name.clone().unwrap_or_else(|| ctx.uri.clone()),
        uri: ctx.uri.clone(),
        domain: vm.name.domain(),
        uuid: vm.dom.uuid_string().unwrap_or_default(),
        state,
        phase: vm.own.phase,
        vcpus: info.nr_virt_cpu,
        memory: info.max_mem * 1024,
        autostart: vm.dom.autostart().unwrap_or(false),
        base_image: spec.base_image.clone(),
        pool: vm.own.pool.clone(),
        disks,
        addresses: addrs,
        tailnet_name: spec.tailnet.as_ref().map(|t| format!("{}.{t}", vm.name.domain())),
        ssh,
        firmware: spec.firmware,
        network_config: spec.network_config.clone(),
        hostdevs: spec.hostdevs.iter().map(|a| hostdev(ctx, a)).collect(),
        snapshots: vm.dom.num_snapshots(0).unwrap_or(0),
        shares: spec.shares.clone(),
        host_reach: HostReach::of(&spec.network),
        last_checks: super::check::last(vm),
        ports,
    })
}

/// A passed-through device as the host describes it; one that has gone from
/// the host is still listed, by address.
fn hostdev(ctx: &Ctx, a: &crate::spec::PciAddress) -> crate::libvirt::nodedev::PciDevice {
    crate::libvirt::nodedev::pci(&ctx.conn(), a).unwrap_or_else(|_| crate::libvirt::nodedev::PciDevice {
        address: a.to_string(),
        vendor_id: String::new(),
        vendor: None,
        product_id: String::new(),
        product: Some("(not on this host)".into()),
    })
}

impl Report for Status {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let s = self;
        writeln!(out, "{} ({})", s.name, s.domain)?;
        writeln!(out, "  on:        {}", s.host)?;
        let half = if s.phase == Phase::Creating { " (create did not finish)" } else { "" };
        writeln!(out, "  state:     {}{half}", s.state.as_str())?;
        writeln!(out, "  cpus:      {}", s.vcpus)?;
        writeln!(out, "  memory:    {}", human(s.memory))?;
        writeln!(out, "  autostart: {}", if s.autostart { "yes" } else { "no" })?;
        writeln!(out, "  image:     {} (pool {})", s.base_image, s.pool)?;
        for d in &s.disks {
            if d.exists {
                writeln!(
                    out,
                    "  disk {:<5} {}: {} used of {}",
                    d.role,
                    d.volume,
                    human(d.allocation),
                    human(d.capacity)
                )?;
            } else {
                writeln!(out, "  disk {:<5} {}: missing", d.role, d.volume)?;
            }
        }
        for a in &s.addresses {
            writeln!(out, "  address:   {}/{} on {} ({})", a.address, a.prefix, a.interface, a.source)?;
        }
        if let Some(t) = &s.tailnet_name {
            writeln!(out, "  tailnet:   {t}")?;
        }
        if s.firmware == crate::spec::Firmware::Efi {
            writeln!(out, "  firmware:  efi")?;
        }
        if let Some(n) = &s.network_config {
            let gw = n.gateway.map(|g| format!(", gateway {g}")).unwrap_or_default();
            let dns: Vec<String> = n.dns.iter().map(|d| d.to_string()).collect();
            let dns = if dns.is_empty() { String::new() } else { format!(", dns {}", dns.join(" ")) };
            writeln!(out, "  static:    {}{gw}{dns}", n.address)?;
        }
        for d in &s.hostdevs {
            let what = [d.vendor.as_deref(), d.product.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(" ");
            writeln!(out, "  hostdev:   {} {}:{} {what}", d.address, d.vendor_id, d.product_id)?;
        }
        for sh in &s.shares {
            let ro = if sh.readonly { " (read-only)" } else { "" };
            writeln!(out, "  share:     {} -> {}{ro}", sh.source.display(), sh.target.display())?;
        }
        if s.snapshots > 0 {
            writeln!(out, "  snapshots: {}", s.snapshots)?;
        }
        for p in &s.ports {
            writeln!(out, "  port:      {}", p.note)?;
        }
        writeln!(out, "  host:      {}", s.host_reach.note)?;
        checks_lines(out, s.last_checks.as_ref())?;
        match &s.ssh {
            Some(t) => writeln!(out, "  ssh:       {}@{} port {} (via {})", t.user, t.host, t.port, t.via),
            None => writeln!(out, "  ssh:       no address yet"),
        }
    }
}

/// The last checks: one line each (result, attempts, time), and when.
fn checks_lines(out: &mut dyn Write, last: Option<&super::check::CheckReport>) -> io::Result<()> {
    let Some(last) = last else { return Ok(()) };
    let ago = super::now_unix().saturating_sub(last.at);
    for c in &last.checks {
        let (name, verdict) = (&c.name, c.verdict());
        writeln!(out, "  check:     {name} {verdict} ({} attempts, {:.1}s; {ago}s ago)", c.attempts, c.elapsed_s)?;
    }
    Ok(())
}
