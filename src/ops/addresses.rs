//! Addresses libvirt can report for a VM, and the one `ssh` uses.
//!
//! Each source is asked only when it can answer: DHCP leases exist only on
//! libvirt networks, ARP only with a host-side tap, the guest agent only while
//! the guest runs (libvirt answers at once when the agent is not connected).

use serde::Serialize;
use virt::sys;

use crate::libvirt::vms::{State, Vm};
use crate::settings::Network;
use crate::spec::VmSpec;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Address {
    /// `lease`, `agent` or `arp`.
    pub source: &'static str,
    pub interface: String,
    pub address: String,
    pub prefix: u64,
}

/// `state`: the VM's state, as the caller already read it.
pub fn known(vm: &Vm, spec: &VmSpec, state: State) -> Vec<Address> {
    if state != State::Running {
        return Vec::new();
    }
    let mut sources: Vec<(&'static str, u32)> = Vec::new();
    match spec.network {
        Network::Network { .. } => {
            sources.push(("lease", sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE));
            sources.push(("arp", sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP));
        }
        Network::Bridge { .. } => sources.push(("arp", sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP)),
        Network::User { .. } => {}
    }
    sources.push(("agent", sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT));
    let mut out = Vec::new();
    for (label, src) in sources {
        match vm.dom.interface_addresses(src, 0) {
            Ok(ifaces) => {
                for iface in ifaces {
                    if iface.name == "lo" {
                        continue;
                    }
                    for a in iface.addrs {
                        out.push(Address {
                            source: label,
                            interface: iface.name.clone(),
                            address: a.addr,
                            prefix: a.prefix,
                        });
                    }
                }
            }
            Err(e) => tracing::debug!(source = label, "no addresses: {}", e.message()),
        }
    }
    out
}

/// Where `ssh` connects.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// `tailnet`, `lease`, `agent`, `arp` or `forward` (user networking's loopback port).
    pub via: String,
}

/// True when [`ssh_target`] needs the addresses libvirt reports (a call or
/// two to the daemon, one of them to the guest agent): not for a tailnet
/// name, nor for user networking's forward.
fn needs_lookup(spec: &VmSpec) -> bool {
    spec.tailnet.is_none() && !matches!(spec.network, Network::User { .. })
}

/// Where `ssh` connects to `vm`, asking libvirt for addresses only when
/// the answer depends on them.
pub fn ssh_target_of(vm: &Vm, spec: &VmSpec, state: State) -> Option<SshTarget> {
    let addrs = match needs_lookup(spec) {
        true => known(vm, spec, state),
        false => Vec::new(),
    };
    ssh_target(spec, &addrs)
}

/// The tailnet name when set, else the first usable IPv4 libvirt reports, else
/// the loopback forward of user networking.
pub fn ssh_target(spec: &VmSpec, addresses: &[Address]) -> Option<SshTarget> {
    let user = spec.ssh_user.clone();
    if let Some(tailnet) = &spec.tailnet {
        return Some(SshTarget {
            host: format!("{}.{tailnet}", spec.name.domain()),
            port: 22,
            user,
            via: "tailnet".into(),
        });
    }
    if let Network::User { .. } = spec.network {
        // The guest's own address under passt is a copy of the host's: not reachable.
        let port = spec.ssh_port?;
        return Some(SshTarget { host: "127.0.0.1".into(), port, user, via: "forward".into() });
    }
    let usable = |a: &&Address| {
        a.address.parse::<std::net::IpAddr>().is_ok_and(|ip| match ip {
            std::net::IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
            std::net::IpAddr::V6(_) => false,
        })
    };
    addresses.iter().find(usable).map(|a| SshTarget { host: a.address.clone(), port: 22, user, via: a.source.into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::domain_xml::tests::spec;
    use crate::settings::Accel;

    fn addr(source: &'static str, a: &str) -> Address {
        Address { source, interface: "eth0".into(), address: a.into(), prefix: 24 }
    }

    #[test]
    fn tailnet_wins() {
        let mut s = spec(Network::default(), Accel::Kvm);
        s.tailnet = Some("example.ts.net".into());
        let t = ssh_target(&s, &[addr("lease", "192.0.2.5")]).unwrap();
        assert_eq!((t.host.as_str(), t.port, t.via.as_str()), ("project-foo.example.ts.net", 22, "tailnet"));
    }

    #[test]
    fn first_usable_ipv4() {
        let s = spec(Network::default(), Accel::Kvm);
        let t = ssh_target(&s, &[addr("agent", "fe80::1"), addr("agent", "169.254.1.1"), addr("arp", "192.0.2.7")])
            .unwrap();
        assert_eq!((t.host.as_str(), t.via.as_str()), ("192.0.2.7", "arp"));
        assert_eq!(ssh_target(&s, &[]), None);
    }

    #[test]
    fn user_network_uses_the_forward() {
        let mut s = spec(Network::User { ssh_port: 22022 }, Accel::Tcg);
        s.ssh_port = Some(22023);
        let t = ssh_target(&s, &[addr("agent", "10.0.2.15")]).unwrap();
        assert_eq!((t.host.as_str(), t.port, t.via.as_str()), ("127.0.0.1", 22023, "forward"));
    }
}
