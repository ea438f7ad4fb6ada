//! Ports: the host-side checks of a VM's declared ports, and `forward`, a
//! live tunnel to guest ports through ssh with the pinned host key.
//!
//! Declared ports (`"ports"`, `create --port`) are passt's own forwards in
//! the domain definition: they exist while the VM runs, on the libvirt host,
//! with user networking only (a libvirt network or a bridge already makes
//! the guest's address reachable, and `status` says so). `forward` works on
//! any network and for remote hosts: `ssh -N -L` on this machine's loopback,
//! through the same target, pinned key and proxy command as `ssh`.

use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Ctx, Error};
use crate::libvirt::vms::{self, State, Vm};
use crate::output::Report;
use crate::settings::Network;
use crate::spec::{Port, Protocol, Tunnel, VmName};

/// How long ssh may take to log in and listen before `forward` gives up.
const ESTABLISH: Duration = Duration::from_secs(60);

/// The lowest port an unprivileged process may listen on: the kernel's
/// `ip_unprivileged_port_start` on this machine, 1024 elsewhere.
pub fn unprivileged_floor(local: bool) -> u16 {
    let read = || std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").ok()?.trim().parse().ok();
    match local {
        true => read().unwrap_or(crate::spec::FIRST_UNPRIVILEGED_PORT),
        false => crate::spec::FIRST_UNPRIVILEGED_PORT,
    }
}

/// Whether `port` on `address` can be listened on here now: a port something
/// already listens on (or is bound to) is taken, an address this machine
/// does not have is refused.
pub fn probe(address: IpAddr, port: u16, protocol: Protocol) -> Result<(), String> {
    let bound = match protocol {
        Protocol::Tcp => std::net::TcpListener::bind((address, port)).map(drop),
        Protocol::Udp => std::net::UdpSocket::bind((address, port)).map(drop),
    };
    let proto = protocol.as_str();
    match bound.map_err(|e| e.kind()) {
        Ok(()) => Ok(()),
        Err(io::ErrorKind::AddrInUse) => Err(format!(
            "host port {port}/{proto} on {address} is in use on this host now (`ss -lnp 'sport = :{port}'` shows by what): pick another port, or stop what listens there"
        )),
        Err(io::ErrorKind::AddrNotAvailable) => {
            Err(format!("{address} is not an address of this host: give one it has (127.0.0.1 by default)"))
        }
        Err(io::ErrorKind::PermissionDenied) => Err(privileged(port, "this user may not listen on it")),
        Err(_) => Ok(()),
    }
}

fn privileged(port: u16, why: &str) -> String {
    format!(
        "host port {port} is privileged (below {}): {why}; pick a port from 1024 up (e.g. 8080)",
        unprivileged_floor(true)
    )
}

/// A VM's declared ports, before anything is made or changed: each valid
/// and given once; with user networking, for each port not in `current`
/// (what the VM forwards already): not privileged (passt forwards as an
/// unprivileged user: the session's, or QEMU's on the system daemon), not
/// another VM's (its declared ports or its ssh forward), and on a local host
/// not in use now. Exit 2, naming the port, otherwise.
pub fn check_declared(ctx: &Ctx, name: &VmName, ports: &[Port], current: &[Port]) -> anyhow::Result<()> {
    let invalid = |e: String| Error::Invalid(format!("VM {name}: {e}"));
    crate::spec::check_ports(ports).map_err(invalid)?;
    if !matches!(ctx.settings.network, Network::User { .. }) {
        return Ok(());
    }
    let new: Vec<&Port> = ports.iter().filter(|p| !current.contains(p)).collect();
    if new.is_empty() {
        return Ok(());
    }
    let floor = unprivileged_floor(ctx.is_local());
    if let Some(p) = new.iter().find(|p| p.host < floor) {
        return Err(invalid(format!(
            "port {}: {}",
            p.label(),
            privileged(p.host, "passt forwards it as an unprivileged user")
        ))
        .into());
    }
    for vm in vms::list(&ctx.conn())? {
        let Ok(spec) = vm.spec() else { continue };
        for p in &new {
            if p.protocol == Protocol::Tcp && spec.ssh_port == Some(p.host) {
                return Err(invalid(format!(
                    "port {}: host port {} is VM {}'s ssh forward",
                    p.label(),
                    p.host,
                    vm.name
                ))
                .into());
            }
            if vm.name != *name && spec.ports.iter().any(|q| q.host == p.host && q.protocol == p.protocol) {
                return Err(invalid(format!(
                    "port {}: host port {}/{} is forwarded to VM {} already: give each VM its own",
                    p.label(),
                    p.host,
                    p.protocol.as_str(),
                    vm.name
                ))
                .into());
            }
        }
    }
    if ctx.is_local() {
        for p in &new {
            probe(p.address, p.host, p.protocol).map_err(|e| invalid(format!("port {}: {e}", p.label())))?;
        }
    }
    Ok(())
}

/// Where a VM's declared ports are reached, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortStatus {
    pub port: Port,
    /// `host:port` to connect to, when it is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reach: Option<String>,
    pub note: String,
}

/// Each declared port as `status` tells it: forwarded by passt (user
/// networking), or reached at the guest's own address (a libvirt network or
/// a bridge, where nothing is forwarded).
pub fn port_status(spec: &crate::spec::VmSpec, running: bool, address: Option<IpAddr>) -> Vec<PortStatus> {
    let at = |a: IpAddr, port: u16| match a {
        IpAddr::V6(a) => format!("[{a}]:{port}"),
        a => format!("{a}:{port}"),
    };
    spec.ports
        .iter()
        .map(|p| match &spec.network {
            Network::User { .. } => PortStatus {
                port: *p,
                reach: Some(at(p.address, p.host)),
                note: match running {
                    true => format!("{}: forwarded by passt on the libvirt host", p.label()),
                    false => format!("{}: forwarded by passt while the VM runs", p.label()),
                },
            },
            Network::Network { .. } | Network::Bridge { .. } => PortStatus {
                port: *p,
                reach: address.map(|a| at(a, p.guest)),
                note: format!(
                    "{}/{}: not forwarded: on a libvirt network or a bridge the guest's own address is reachable{}",
                    p.guest,
                    p.protocol.as_str(),
                    match address {
                        Some(a) => format!(", at {}", at(a, p.guest)),
                        None => String::from(" once it has one"),
                    }
                ),
            },
        })
        .collect()
}

/// The tunnels of one `forward`: each local port given once, one this user
/// may listen on, and free now.
pub fn check_tunnels(tunnels: &[Tunnel]) -> anyhow::Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    let root = nix::unistd::geteuid().is_root();
    let floor = unprivileged_floor(true);
    for t in tunnels {
        if !seen.insert(t.local) {
            return Err(Error::Invalid(format!("forward: local port {} is given twice", t.local)).into());
        }
        if !root && t.local < floor {
            return Err(
                Error::Invalid(format!("forward: {}", privileged(t.local, "only root may listen on it"))).into()
            );
        }
        probe(IpAddr::from([127, 0, 0, 1]), t.local, Protocol::Tcp)
            .map_err(|e| Error::Invalid(format!("forward: {e}")))?;
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct Forwarding {
    pub vm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub forwards: Vec<ForwardLine>,
    /// How ssh reaches the guest (`forward`, `lease`, `agent`, `tailnet`...).
    pub via: String,
}

#[derive(Debug, Serialize)]
pub struct ForwardLine {
    pub local: String,
    pub guest: u16,
}

impl Report for Forwarding {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        for f in &self.forwards {
            writeln!(out, "forwarding {} -> {} port {} (ssh via {})", f.local, self.vm, f.guest, self.via)?;
        }
        writeln!(out, "Ctrl-C stops")
    }
}

/// `forward`: runs `ssh -N -L` for `tunnels` until interrupted (exit 130)
/// or until ssh ends (the VM stopped, the network went away: exit 4).
/// Reports the tunnels once ssh listens on every local port.
pub fn forward(ctx: &Ctx, vm: &Vm, tunnels: &[Tunnel], identity: Option<&Path>, json: bool) -> anyhow::Result<()> {
    check_tunnels(tunnels)?;
    let state = vm.state();
    if state != State::Running {
        return Err(Error::NotRunning { vm: vm.name.to_string(), state: state.as_str().into() }.into());
    }
    let (target, opts) = super::ssh::prepare(ctx, vm)?;
    crate::interrupt::install();
    let mut child = spawn_ssh(&target, &opts, tunnels, identity)?;
    let result = established(&mut child, tunnels).and_then(|()| {
        let report = Forwarding {
            vm: vm.name.to_string(),
            host: ctx.host_name.clone(),
            forwards: tunnels
                .iter()
                .map(|t| ForwardLine { local: format!("127.0.0.1:{}", t.local), guest: t.guest })
                .collect(),
            via: target.via.to_string(),
        };
        crate::output::emit(json, &report)?;
        supervise(&mut child)
    });
    stop(&mut child);
    result
}

fn spawn_ssh(
    target: &super::addresses::SshTarget,
    opts: &[String],
    tunnels: &[Tunnel],
    identity: Option<&Path>,
) -> anyhow::Result<Child> {
    let mut cmd = Command::new("ssh");
    cmd.arg("-N").args(["-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15"]);
    for o in opts {
        cmd.arg("-o").arg(o);
    }
    if let Some(id) = identity {
        cmd.arg("-i").arg(id).arg("-o").arg("IdentitiesOnly=yes");
    }
    for t in tunnels {
        // The guest resolves `localhost` itself: a service on ::1 or 127.0.0.1 answers.
        cmd.arg("-L").arg(format!("127.0.0.1:{}:localhost:{}", t.local, t.guest));
    }
    cmd.arg("-p").arg(target.port.to_string()).arg(format!("{}@{}", target.user, target.host));
    cmd.stdin(std::process::Stdio::null());
    // SAFETY: prctl only; ssh goes with project-vm, however project-vm ends.
    unsafe {
        cmd.pre_exec(|| {
            nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGTERM);
            Ok(())
        });
    }
    tracing::debug!(?cmd, "spawning ssh for forward");
    cmd.spawn().map_err(|e| Error::Environment(format!("cannot run ssh: {e}: install the OpenSSH client")).into())
}

/// Until ssh listens on every local port (each one cannot be bound any more).
fn established(child: &mut Child, tunnels: &[Tunnel]) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        crate::interrupt::check()?;
        if let Some(status) = child.try_wait()? {
            return Err(ended(status));
        }
        let listening = tunnels.iter().all(|t| {
            std::net::TcpListener::bind(("127.0.0.1", t.local)).is_err_and(|e| e.kind() == io::ErrorKind::AddrInUse)
        });
        if listening {
            return Ok(());
        }
        if started.elapsed() > ESTABLISH {
            return Err(
                Error::Timeout { vm: String::from("forward"), what: "ssh's login".into(), after: ESTABLISH }.into()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Until ssh ends or an interrupt asks to stop.
fn supervise(child: &mut Child) -> anyhow::Result<()> {
    loop {
        crate::interrupt::check()?;
        if let Some(status) = child.try_wait()? {
            return Err(ended(status));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// ssh's end: a Ctrl-C at the terminal reaches ssh too, and is still an interrupt.
fn ended(status: std::process::ExitStatus) -> anyhow::Error {
    if crate::interrupt::requested() {
        return crate::interrupt::Interrupted.into();
    }
    Error::Environment(format!("ssh ended ({status}): the tunnels are closed; see ssh's message above")).into()
}

fn stop(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_in_use_is_refused_and_a_free_one_is_not() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let e = probe(IpAddr::from([127, 0, 0, 1]), port, Protocol::Tcp).unwrap_err();
        assert!(e.contains("in use on this host now"), "{e}");
        drop(taken);
        assert!(probe(IpAddr::from([127, 0, 0, 1]), port, Protocol::Tcp).is_ok());
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        assert!(probe(IpAddr::from([127, 0, 0, 1]), port, Protocol::Udp).is_err());
        assert!(probe("192.0.2.1".parse().unwrap(), 8080, Protocol::Tcp).unwrap_err().contains("not an address"));
    }

    #[test]
    fn tunnels_are_checked_before_ssh_runs() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let e = check_tunnels(&[Tunnel { local: port, guest: 80 }]).unwrap_err();
        assert_eq!(crate::exit::code(&e), 2);
        let twice = [Tunnel { local: 40123, guest: 80 }, Tunnel { local: 40123, guest: 81 }];
        assert!(check_tunnels(&twice).unwrap_err().to_string().contains("given twice"));
    }

    #[test]
    fn status_says_where_ports_are_reached() {
        use crate::libvirt::domain_xml::tests::spec;
        use crate::settings::Accel;
        let mut s = spec(Network::User { ssh_port: 22022 }, Accel::Tcg);
        s.ports = vec!["8080:80".parse().unwrap()];
        let st = port_status(&s, true, None);
        assert_eq!(st[0].reach.as_deref(), Some("127.0.0.1:8080"));
        assert!(st[0].note.contains("forwarded by passt"), "{}", st[0].note);
        s.network = Network::default();
        let st = port_status(&s, true, Some("192.168.122.5".parse().unwrap()));
        assert_eq!(st[0].reach.as_deref(), Some("192.168.122.5:80"));
        assert!(st[0].note.contains("not forwarded") && st[0].note.contains("192.168.122.5:80"), "{}", st[0].note);
    }
}
