//! Names, sizes and the one resolved description of a VM ([`VmSpec`]).
//!
//! Everything that reaches libvirt goes through a `VmSpec`: CLI arguments and
//! declarative files are both turned into one, by [`VmSpec::resolve`] (what the
//! host settings give every VM, plus the VM's [`Declaration`]), before any
//! object is touched. The types a spec is made of live here, below the
//! settings and the declarative file that are read into them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::error::ConfigError;

pub const DOMAIN_PREFIX: &str = "project-";
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A validated VM name: `^[a-z][a-z0-9-]{0,47}$`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmName(String);

impl VmName {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let mut chars = s.chars();
        let ok = matches!(chars.next(), Some('a'..='z'))
            && s.len() <= 48
            && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'));
        if !ok {
            return Err(ConfigError::VmName { name: s.to_owned() }.into());
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The libvirt domain name, also the guest's hostname and ssh alias.
    pub fn domain(&self) -> String {
        format!("{DOMAIN_PREFIX}{}", self.0)
    }
    pub fn root_volume(&self) -> String {
        format!("{DOMAIN_PREFIX}{}-root.qcow2", self.0)
    }
    pub fn data_volume(&self) -> String {
        format!("{DOMAIN_PREFIX}{}-data.qcow2", self.0)
    }
    pub fn seed_volume(&self) -> String {
        format!("{DOMAIN_PREFIX}{}-seed.iso", self.0)
    }
    /// A stable locally-administered MAC in QEMU's 52:54:00 range, derived from the
    /// name so a re-created VM keeps its DHCP lease and its address.
    pub fn mac(&self) -> String {
        use sha2::{Digest, Sha256};
        let h = Sha256::digest(format!("project-vm:{}", self.0).as_bytes());
        format!("52:54:00:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2])
    }
}

impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for VmName {
    type Error = anyhow::Error;
    fn try_from(s: String) -> anyhow::Result<Self> {
        Self::parse(&s)
    }
}

impl From<VmName> for String {
    fn from(n: VmName) -> String {
        n.0
    }
}

/// A size in bytes, written and read in binary units (`512M`, `8G` = 8 GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(s: &str) -> Result<Self, String> {
        let cfg = parse_size::Config::new().with_binary();
        match cfg.parse_size(s.trim()) {
            Ok(0) => Err(format!("{s:?} is zero; give a size like 512M or 8G")),
            Ok(n) => Ok(Size(n)),
            Err(_) => Err(format!("{s:?} is not a size like 512M or 8G")),
        }
    }
    pub fn bytes(self) -> u64 {
        self.0
    }
    pub fn mib(self) -> u64 {
        self.0 / MIB
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b % GIB == 0 {
            write!(f, "{}G", b / GIB)
        } else if b % MIB == 0 {
            write!(f, "{}M", b / MIB)
        } else if b >= GIB {
            write!(f, "{:.1}G", b as f64 / GIB as f64)
        } else if b >= MIB {
            write!(f, "{:.1}M", b as f64 / MIB as f64)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Size::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Size::parse(s)
    }
}

pub const MIN_MEMORY: Size = Size(128 * MIB);
/// Above what libvirt and QEMU accept on x86_64 hosts (and far above any
/// real host): caught at input rather than as a libvirt error later.
pub const MAX_MEMORY: Size = Size(16 << 40);
/// qcow2's virtual size limit with default clusters is far higher; this is
/// the largest disk project-vm will ask for.
pub const MAX_DISK: Size = Size(64 << 40);

/// The smallest project disk: room for ext4 and its journal, formatted on first boot.
pub const MIN_PROJECT_DISK: Size = Size(64 * MIB);
/// The most vCPUs a VM gets: past 255, x86 guests need x2APIC with interrupt
/// remapping (an emulated IOMMU), which project-vm does not set up.
pub const MAX_CPUS: u32 = 255;

/// The sizes of a VM, checked against each other and against sane minimums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub memory: Size,
    pub cpus: u32,
    pub disk: Size,
    pub project_disk: Size,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { memory: Size(4 * GIB), cpus: 2, disk: Size(20 * GIB), project_disk: Size(50 * GIB) }
    }
}

impl Resources {
    /// The sizes checked against each other and against sane limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let memory = self.memory.to_string();
        if self.memory < MIN_MEMORY {
            return Err(ConfigError::MemoryTooSmall { memory, min: MIN_MEMORY.to_string() });
        }
        if self.memory.0 % MIB != 0 {
            return Err(ConfigError::MemoryNotWholeMib { memory });
        }
        if self.memory > MAX_MEMORY {
            return Err(ConfigError::MemoryTooLarge { memory, max: MAX_MEMORY.to_string() });
        }
        for (what, size) in [("disk", self.disk), ("project_disk", self.project_disk)] {
            if size > MAX_DISK {
                return Err(ConfigError::DiskTooLarge { what, size: size.to_string(), max: MAX_DISK.to_string() });
            }
        }
        if self.project_disk < MIN_PROJECT_DISK {
            let (size, min) = (self.project_disk.to_string(), MIN_PROJECT_DISK.to_string());
            return Err(ConfigError::ProjectDiskTooSmall { size, min });
        }
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(ConfigError::CpusOutOfRange { cpus: self.cpus, max: MAX_CPUS });
        }
        Ok(())
    }
}

/// The firmware a VM boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    #[default]
    Bios,
    /// UEFI (OVMF), chosen by libvirt's firmware autoselection, with a
    /// per-VM NVRAM that `destroy` removes.
    Efi,
}

/// A fixed address instead of DHCP, for the VM's one NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticNetwork {
    /// The address with its prefix, e.g. `10.0.0.5/24`.
    pub address: ipnet::IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<std::net::IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<std::net::IpAddr>,
}

impl StaticNetwork {
    /// Problems that would make the guest unreachable, or cloud-init refuse it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.problem().map_or(Ok(()), |why| Err(ConfigError::Invalid(why)))
    }

    fn problem(&self) -> Option<String> {
        let a = self.address;
        let host = a.addr();
        if a.prefix_len() == a.max_prefix_len() && a.prefix_len() != 32 && a.prefix_len() != 128 {
            return Some(format!("address {a} has no room for a host"));
        }
        if a.prefix_len() < a.max_prefix_len() - 1 && (host == a.network() || host == a.broadcast()) {
            return Some(format!(
                "address {a} is the {} of its network, not a host in it",
                if host == a.network() { "network address" } else { "broadcast address" }
            ));
        }
        if let Some(gw) = self.gateway {
            if !a.trunc().contains(&gw) {
                return Some(format!("gateway {gw} is outside the VM's network {}", a.trunc()));
            }
            if gw == host {
                return Some(format!("gateway {gw} is the VM's own address"));
            }
        }
        None
    }
}

/// A host directory shared into the VM through virtiofs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Share {
    /// The directory on the libvirt host.
    pub source: std::path::PathBuf,
    /// Where the guest mounts it.
    pub target: std::path::PathBuf,
    /// Mounted read-only in the guest.
    #[serde(default)]
    pub readonly: bool,
}

impl Share {
    /// `/host/dir:/mnt/x[:ro]`, as `--share` takes it.
    pub fn parse(s: &str) -> Result<Share, String> {
        let bad = || format!("{s:?} is not SOURCE:TARGET[:ro], e.g. /srv/data:/mnt/data:ro");
        let mut parts = s.split(':');
        let (Some(source), Some(target)) = (parts.next(), parts.next()) else { return Err(bad()) };
        let readonly = match parts.next() {
            None => false,
            Some("ro") => true,
            Some("rw") => false,
            Some(_) => return Err(bad()),
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        let share = Share { source: source.into(), target: target.into(), readonly };
        share.validate().map_err(|e| e.to_string())?;
        Ok(share)
    }

    /// `SOURCE:TARGET`, as messages name the share.
    pub fn label(&self) -> String {
        format!("{}:{}", self.source.display(), self.target.display())
    }

    /// What can be checked from the paths alone, anywhere: both are clean
    /// absolute paths; the source is not `/`, a system directory that holds
    /// secrets, or libvirt's own; the target is not `/project` (the project
    /// disk), above or below it, nor one of the guest system's own
    /// directories. [`check_source`] adds what only the libvirt host knows.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.problem().map_or(Ok(()), |why| Err(ConfigError::UnsafeShare { share: self.label(), why }))
    }

    /// Why [`Share::validate`] refuses the share.
    fn problem(&self) -> Option<String> {
        if let Err(e) = clean_absolute(&self.source) {
            return Some(format!("source {e}"));
        }
        if let Err(e) = clean_absolute(&self.target) {
            return Some(format!("target {e}"));
        }
        if let Err(e) = check_source(&self.source, &[]) {
            return Some(e);
        }
        let t = self.target.as_path();
        if t == std::path::Path::new("/") {
            return Some("the target is the guest's root directory".into());
        }
        if t.starts_with("/project") {
            return Some("the target is /project or inside it, where the project disk is mounted".into());
        }
        if let Some(d) = GUEST_SYSTEM_TREES.iter().find(|d| t.starts_with(d)) {
            return Some(format!("the target is the guest's system directory {d} or inside it"));
        }
        if let Some(d) = GUEST_SYSTEM_DIRS.iter().find(|d| t == std::path::Path::new(d)) {
            return Some(format!("the target is the guest's {d} itself: mount it in a directory of its own below"));
        }
        None
    }

    /// The virtiofs tag the guest mounts by: stable for a target, at most 36 bytes.
    pub fn tag(&self) -> String {
        use sha2::{Digest, Sha256};
        let h = Sha256::digest(self.target.to_string_lossy().as_bytes());
        format!("pv-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}", h[0], h[1], h[2], h[3], h[4], h[5])
    }
}

/// Host directories no share may be, lie in, or contain: the host's secrets
/// and system state, and libvirt's own (its disks, its configuration, its
/// sockets).
pub const HOST_PRIVATE_DIRS: &[&str] = &[
    "/etc",
    "/root",
    "/boot",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/var/lib",
    "/var/run",
    "/var/log",
    "/var/cache/libvirt",
    "/var/lib/libvirt",
    "/etc/libvirt",
    "/run/libvirt",
];

/// Guest directories a share may neither be nor lie in.
const GUEST_SYSTEM_TREES: &[&str] = &[
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/dev", "/proc", "/sys", "/run",
    "/var/lib", "/var/run", "/var/log",
];

/// Guest directories a share may lie in but not be.
const GUEST_SYSTEM_DIRS: &[&str] = &["/var", "/home", "/root", "/tmp", "/var/tmp", "/srv", "/opt", "/mnt", "/media"];

/// `/a/b`: absolute, no `.` or `..`, no `//`, no trailing `/`, no blanks.
pub fn clean_absolute(p: &std::path::Path) -> Result<(), String> {
    let s = p.to_string_lossy();
    let bad = |why: &str| Err(format!("{s:?} {why}"));
    if !s.starts_with('/') {
        return bad("is not an absolute path");
    }
    if s.contains("//") || (s.len() > 1 && s.ends_with('/')) {
        return bad("is not a clean path (no `//`, no trailing `/`)");
    }
    if s.split('/').any(|c| c == "." || c == "..") {
        return bad("is not a clean path (no `.` or `..`)");
    }
    if s.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return bad("contains blanks or control characters");
    }
    Ok(())
}

/// Why a share source (a clean absolute path, resolved on the libvirt host
/// when that is this machine) may not be shared: `/`, or the same as, inside
/// or above a host directory that holds secrets, libvirt's own, or one of
/// `pools` (the storage pools' directories: a guest that can write there
/// can write every VM's disks).
pub fn check_source(source: &std::path::Path, pools: &[std::path::PathBuf]) -> Result<(), String> {
    if source == std::path::Path::new("/") {
        return Err("the source is the host's whole filesystem (/)".into());
    }
    let clash = |d: &std::path::Path| source.starts_with(d) || d.starts_with(source);
    for d in pools {
        if clash(d) {
            return Err(format!(
                "the source {} is, lies in or contains the storage pool directory {}: the guest could reach VM disks",
                source.display(),
                d.display()
            ));
        }
    }
    if let Some(d) = HOST_PRIVATE_DIRS.iter().map(std::path::Path::new).find(|d| clash(d)) {
        return Err(format!(
            "the source {} is, lies in or contains the host's {}, which holds the host's secrets or libvirt's own state",
            source.display(),
            d.display()
        ));
    }
    Ok(())
}

impl std::str::FromStr for Share {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Share::parse(s)
    }
}

/// A host PCI device passed through to the VM, `DDDD:BB:SS.F`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    pub domain: u16,
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
}

impl PciAddress {
    /// `0000:01:00.0`, or `01:00.0` (domain 0).
    pub fn parse(s: &str) -> Result<PciAddress, String> {
        let bad = || {
            format!("{s:?} is not a PCI address like 0000:01:00.0 (see `lspci -D` or `virsh nodedev-list --cap pci`)")
        };
        let (rest, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, slot) = match parts.as_slice() {
            [d, b, sl] => (*d, *b, *sl),
            [b, sl] => ("0", *b, *sl),
            _ => return Err(bad()),
        };
        let hex = |v: &str, max: u32, digits: usize| -> Result<u32, String> {
            if v.is_empty() || v.len() > digits {
                return Err(bad());
            }
            u32::from_str_radix(v, 16).ok().filter(|n| *n <= max).ok_or_else(bad)
        };
        Ok(PciAddress {
            domain: hex(domain, 0xffff, 4)? as u16,
            bus: hex(bus, 0xff, 2)? as u8,
            slot: hex(slot, 0x1f, 2)? as u8,
            function: hex(function, 0x7, 1)? as u8,
        })
    }

    /// libvirt's node device name: `pci_0000_01_00_0`.
    pub fn node_device(&self) -> String {
        format!("pci_{:04x}_{:02x}_{:02x}_{:x}", self.domain, self.bus, self.slot, self.function)
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{:x}", self.domain, self.bus, self.slot, self.function)
    }
}

impl std::str::FromStr for PciAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PciAddress::parse(s)
    }
}

impl Serialize for PciAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PciAddress::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The hypervisor acceleration. `tcg` is software emulation (libvirt domain type
/// `qemu`), for hosts where KVM is missing or broken (nested virtualisation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    #[default]
    Kvm,
    Tcg,
}

impl Accel {
    pub fn domain_type(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "qemu",
        }
    }
}

/// How a guest's one NIC is attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Network {
    /// A libvirt virtual network (NAT by default).
    Network { name: String },
    /// A host bridge.
    Bridge { name: String },
    /// User-mode networking (passt): no host configuration, works for
    /// unprivileged `qemu:///session`. The guest's port 22 is forwarded from
    /// 127.0.0.1; `ssh_port` is the first port tried, each VM takes the next free one.
    User { ssh_port: u16 },
}

impl Default for Network {
    fn default() -> Self {
        Network::Network { name: "default".into() }
    }
}

/// The firmware and the devices of a VM beyond the standard set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Devices {
    pub firmware: Firmware,
    pub network_config: Option<StaticNetwork>,
    pub hostdevs: Vec<PciAddress>,
    pub shares: Vec<Share>,
    /// Guest ports forwarded from the libvirt host (user networking).
    pub ports: Vec<Port>,
}

impl Devices {
    /// Passthrough wants UEFI: GPUs and their option ROMs expect it.
    pub fn firmware(&self) -> Firmware {
        if self.hostdevs.is_empty() {
            self.firmware
        } else {
            Firmware::Efi
        }
    }
}

/// What goes into a VM's cloud-config besides per-instance secrets.
#[derive(Serialize)]
pub struct Fingerprint<'a> {
    pub ssh_user: &'a str,
    pub authorized_keys: &'a [String],
    pub features: &'a [String],
    pub user_data: Option<&'a str>,
    pub tailnet: Option<&'a str>,
    pub tailscale: bool,
    /// The application script, as written (absent: hashes stay as before).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_script: Option<&'a str>,
    /// A digest of the user's own features' content (absent with built-ins
    /// only: hashes stay as before), so an edited feature file is a change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub own_features: Option<&'a str>,
}

/// A stable hash of a [`Fingerprint`]: equal inputs, equal cloud-config.
pub fn fingerprint(f: &Fingerprint) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(f).expect("json");
    format!("{:x}", Sha256::digest(&json))[..16].to_owned()
}

/// What the host settings give every VM made there (see
/// `settings::Settings::host`).
#[derive(Debug, Clone, Copy)]
pub struct Host<'a> {
    pub accel: Accel,
    pub network: &'a Network,
    pub ssh_user: &'a str,
    /// The public keys the guest authorizes, read once by the caller.
    pub authorized_keys: &'a [String],
    pub tailnet: Option<&'a str>,
    /// A Tailscale auth key file is set (its contents never reach a spec).
    pub tailscale: bool,
}

/// One VM as declared, on the command line or in a declarative file.
#[derive(Debug, Clone)]
pub struct Declaration<'a> {
    pub name: &'a VmName,
    pub resources: Resources,
    pub autostart: bool,
    pub features: &'a [String],
    pub devices: &'a Devices,
    /// The user's cloud-config, as written (only its fingerprint is kept).
    pub user_data: Option<&'a str>,
    /// Snapshots `pre-configured` and `final-form` on first provisioning.
    pub stage_snapshots: bool,
    /// The application script, as written (only its fingerprint is kept).
    pub application_script: Option<&'a str>,
    /// Health checks (recorded: `check` and `--wait` run them).
    pub checks: &'a [crate::health::Check],
    /// [`Fingerprint::own_features`]: the digest of the user's features
    /// among `features` (made by the caller, which reads the library).
    pub own_features: Option<String>,
}

/// The transport a forwarded port carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

fn loopback() -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
}

fn is_loopback_v4(a: &std::net::IpAddr) -> bool {
    *a == loopback()
}

/// A port of the guest's, reachable on the libvirt host: `host` on
/// `address` (127.0.0.1 unless asked) forwards to the guest's `guest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub host: u16,
    pub guest: u16,
    #[serde(default = "loopback", skip_serializing_if = "is_loopback_v4")]
    pub address: std::net::IpAddr,
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: Protocol,
}

/// The lowest port an unprivileged process may listen on, by default.
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

impl Port {
    /// `HOST:GUEST`, `ADDRESS:HOST:GUEST` (`[::1]:HOST:GUEST`), each with an
    /// optional `/tcp` or `/udp`, as `create --port` takes it.
    pub fn parse(s: &str) -> Result<Port, String> {
        let bad = || format!("{s:?} is not HOST:GUEST[/udp] or ADDRESS:HOST:GUEST, e.g. 8080:80");
        let (rest, protocol) = match s.rsplit_once('/') {
            Some((r, "tcp")) => (r, Protocol::Tcp),
            Some((r, "udp")) => (r, Protocol::Udp),
            Some(_) => return Err(bad()),
            None => (s, Protocol::Tcp),
        };
        let (rest, guest) = rest.rsplit_once(':').ok_or_else(bad)?;
        let (address, host) = match rest.rsplit_once(':') {
            Some((a, h)) => (a.trim_start_matches('[').trim_end_matches(']').parse().map_err(|_| bad())?, h),
            None => (loopback(), rest),
        };
        let number = |v: &str| v.parse::<u16>().map_err(|_| bad());
        let port = Port { host: number(host)?, guest: number(guest)?, address, protocol };
        port.validate()?;
        Ok(port)
    }

    /// `127.0.0.1:8080 -> 80/tcp`, as messages name it.
    pub fn label(&self) -> String {
        let address = match self.address {
            std::net::IpAddr::V6(a) => format!("[{a}]"),
            a => a.to_string(),
        };
        format!("{address}:{} -> {}/{}", self.host, self.guest, self.protocol.as_str())
    }

    /// What the port alone says: neither side is 0.
    pub fn validate(&self) -> Result<(), String> {
        if self.host == 0 || self.guest == 0 {
            return Err(format!("port {}: 0 is not a port: give one from 1 to 65535", self.label()));
        }
        Ok(())
    }
}

/// The ports of one VM: each valid, and no host port (with its protocol)
/// given twice. (Two host ports may reach one guest port.)
pub fn check_ports(ports: &[Port]) -> Result<(), String> {
    let mut hosts = std::collections::BTreeSet::new();
    for p in ports {
        p.validate()?;
        if !hosts.insert((p.host, p.protocol)) {
            return Err(format!("port {}: host port {}/{} is given twice", p.label(), p.host, p.protocol.as_str()));
        }
    }
    Ok(())
}

impl std::str::FromStr for Port {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Port::parse(s)
    }
}

/// A live tunnel of `forward`: `local` on this machine's loopback reaches
/// the guest's `guest` (the same number unless given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Tunnel {
    pub local: u16,
    pub guest: u16,
}

impl Tunnel {
    /// `HOST_PORT[:GUEST_PORT]`.
    pub fn parse(s: &str) -> Result<Tunnel, String> {
        let bad = || format!("{s:?} is not HOST_PORT[:GUEST_PORT], e.g. 8080:80 or 8080");
        let number = |v: &str| match v.parse::<u16>() {
            Ok(0) => Err(format!("{s:?}: 0 is not a port: give one from 1 to 65535")),
            Ok(n) => Ok(n),
            Err(_) => Err(bad()),
        };
        match s.split_once(':') {
            Some((l, g)) => Ok(Tunnel { local: number(l)?, guest: number(g)? }),
            None => number(s).map(|n| Tunnel { local: n, guest: n }),
        }
    }
}

impl std::str::FromStr for Tunnel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Tunnel::parse(s)
    }
}

/// Everything needed to build a VM's volumes, seed and domain. Built from CLI
/// args or a declarative file plus the host settings; stored (as JSON) in the
/// domain's metadata so later commands know what was asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: VmName,
    #[serde(flatten)]
    pub resources: Resources,
    pub base_image: String,
    pub accel: Accel,
    pub network: Network,
    pub ssh_user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tailnet: Option<String>,
    #[serde(default)]
    pub autostart: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub firmware: Firmware,
    /// A fixed address (first boot only, like all cloud-init network config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_config: Option<StaticNetwork>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostdevs: Vec<PciAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<Share>,
    /// Guest ports forwarded from the libvirt host (user networking).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// Fingerprint of everything that went into the guest's cloud-config
    /// (user, keys, features, user-data, tailnet), to notice a change without
    /// storing content that may hold secrets in domain metadata.
    #[serde(default)]
    pub cloud_init_hash: String,
    /// The first provisioning's `--wait` takes the stage snapshots
    /// `pre-configured` and `final-form` (see `ops::stages`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stage_snapshots: bool,
    /// Health checks, run by `check` and after `--wait`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::health::Check>,
    /// An application script went into the seed (its content is not kept).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub application_script: bool,
}

impl VmSpec {
    /// The one resolved description of a VM: what `host` gives every VM,
    /// what `decl` asks for, the base image's recorded name and, for user
    /// networking, its forwarded port. `create` records it; `plan` compares
    /// it with what a VM records.
    pub fn resolve(host: &Host, decl: &Declaration, base_image: String, ssh_port: Option<u16>) -> VmSpec {
        VmSpec {
            name: decl.name.clone(),
            resources: decl.resources,
            base_image,
            accel: host.accel,
            network: host.network.clone(),
            ssh_user: host.ssh_user.to_owned(),
            ssh_port,
            tailnet: host.tailnet.map(str::to_owned),
            autostart: decl.autostart,
            features: decl.features.to_vec(),
            firmware: decl.devices.firmware(),
            network_config: decl.devices.network_config.clone(),
            hostdevs: decl.devices.hostdevs.clone(),
            shares: decl.devices.shares.clone(),
            ports: decl.devices.ports.clone(),
            cloud_init_hash: fingerprint(&Fingerprint {
                ssh_user: host.ssh_user,
                authorized_keys: host.authorized_keys,
                features: decl.features,
                user_data: decl.user_data,
                tailnet: host.tailnet,
                tailscale: host.tailscale,
                application_script: decl.application_script,
                own_features: decl.own_features.as_deref(),
            }),
            stage_snapshots: decl.stage_snapshots,
            checks: decl.checks.to_vec(),
            application_script: decl.application_script.is_some(),
        }
    }

    /// The spec of the throwaway domain that seals an image copy of this
    /// VM (`image save`): user networking forwarded from `port`, none of the
    /// VM's shares (it needs only its own disk), none of its declared
    /// ports (the VM itself may hold them).
    pub fn for_sealing(&self, port: u16) -> VmSpec {
        VmSpec {
            network: Network::User { ssh_port: port },
            ssh_port: Some(port),
            shares: Vec::new(),
            ports: Vec::new(),
            ..self.clone()
        }
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_networks_are_checked() {
        let net = |a: &str, g: Option<&str>| StaticNetwork {
            address: a.parse().unwrap(),
            gateway: g.map(|g| g.parse().unwrap()),
            dns: vec![],
        };
        assert!(net("10.0.0.5/24", Some("10.0.0.1")).validate().is_ok());
        assert!(net("fd00::5/64", Some("fd00::1")).validate().is_ok());
        let why = |n: StaticNetwork| match n.validate() {
            Err(ConfigError::Invalid(why)) => why,
            other => panic!("{other:?}"),
        };
        assert!(why(net("10.0.0.5/24", Some("10.0.1.1"))).contains("outside"));
        assert!(why(net("10.0.0.0/24", None)).contains("network address"));
        assert!(why(net("10.0.0.255/24", None)).contains("broadcast"));
        assert!(why(net("10.0.0.5/24", Some("10.0.0.5"))).contains("own address"));
        assert!(serde_json::from_str::<StaticNetwork>(r#"{"address":"10.0.0.5"}"#).is_err(), "a prefix is required");
    }

    #[test]
    fn shares_parse() {
        let s = Share::parse("/srv/data:/mnt/data:ro").unwrap();
        assert_eq!((s.source.to_str(), s.target.to_str(), s.readonly), (Some("/srv/data"), Some("/mnt/data"), true));
        assert!(!Share::parse("/a:/b").unwrap().readonly);
        assert_eq!(s.tag(), Share::parse("/x:/mnt/data").unwrap().tag(), "the tag follows the target");
        assert!(s.tag().len() <= 36);
        for bad in ["/a", "a:/b", "/a:b", "/a:/b:rx", "/a:/", "/a:/b:ro:x"] {
            assert!(Share::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shares_refuse_host_secrets_and_guest_system_paths() {
        let refused = [
            ("/:/mnt/host", "whole filesystem"),
            ("/etc:/mnt/etc", "/etc"),
            ("/etc/ssh:/mnt/x", "/etc"),
            ("/root:/mnt/x", "/root"),
            ("/var:/mnt/x", "/var/lib"),
            ("/var/lib/libvirt/images:/mnt/x", "/var/lib"),
            ("/run/libvirt:/mnt/x", "/run"),
            ("/proc:/mnt/x", "/proc"),
            ("/dev/sda:/mnt/x", "/dev"),
            ("/boot:/mnt/x", "/boot"),
            ("/sys:/mnt/x", "/sys"),
            ("/srv/../etc:/mnt/x", "clean path"),
            ("/srv/./d:/mnt/x", "clean path"),
            ("/srv//d:/mnt/x", "clean path"),
            ("/srv/d/:/mnt/x", "clean path"),
            ("/srv/d:/project", "/project"),
            ("/srv/d:/project/sub", "/project"),
            ("/srv/d:/mnt/../project", "clean path"),
            ("/srv/d:/mnt/./x", "clean path"),
            ("/srv/d:/mnt//x", "clean path"),
            ("/srv/d:mnt/x", "absolute"),
            ("/srv/d:/etc", "system directory /etc"),
            ("/srv/d:/usr/local/x", "system directory /usr"),
            ("/srv/d:/bin", "/bin"),
            ("/srv/d:/boot", "/boot"),
            ("/srv/d:/dev/x", "/dev"),
            ("/srv/d:/proc", "/proc"),
            ("/srv/d:/sys", "/sys"),
            ("/srv/d:/run", "/run"),
            ("/srv/d:/var", "/var itself"),
            ("/srv/d:/home", "/home itself"),
            ("/srv/d:/var/lib/cloud", "/var/lib"),
        ];
        for (s, want) in refused {
            let (source, target) = s.split_once(':').unwrap();
            let share = Share { source: source.into(), target: target.into(), readonly: false };
            match share.validate() {
                Err(ConfigError::UnsafeShare { share: label, why }) => {
                    assert!(why.contains(want), "{s}: {why}");
                    assert_eq!(label, s, "the error names the share");
                }
                other => panic!("{s}: {other:?}"),
            }
            let e = Share::parse(s).unwrap_err();
            assert!(e.starts_with(&format!("share {s}: ")), "{s}: the message names the share: {e}");
        }
        for ok in ["/srv/data:/mnt/data", "/home/me/src:/home/dev/src", "/var/www:/var/www/site", "/data:/projects"] {
            assert!(Share::parse(ok).is_ok(), "{ok}: {:?}", Share::parse(ok));
        }
        let pools = [std::path::PathBuf::from("/srv/vms")];
        for bad in ["/srv", "/srv/vms", "/srv/vms/x"] {
            assert!(check_source(std::path::Path::new(bad), &pools).unwrap_err().contains("pool"), "{bad}");
        }
        assert!(check_source(std::path::Path::new("/srv/other"), &pools).is_ok());
    }

    #[test]
    fn ports_parse_and_refuse_zero_and_duplicates() {
        let p = Port::parse("8080:80").unwrap();
        assert_eq!((p.host, p.guest, p.address.to_string(), p.protocol), (8080, 80, "127.0.0.1".into(), Protocol::Tcp));
        assert_eq!(Port::parse("0.0.0.0:5353:53/udp").unwrap().label(), "0.0.0.0:5353 -> 53/udp");
        assert_eq!(Port::parse("[::1]:8080:80").unwrap().label(), "[::1]:8080 -> 80/tcp");
        for bad in ["", "8080", "8080:", "x:80", "8080:80/sctp", "70000:80", "nope:8080:80", "8080:80:90:1"] {
            assert!(Port::parse(bad).is_err(), "{bad}");
        }
        assert!(Port::parse("0:80").unwrap_err().contains("0 is not a port"));
        assert!(Port::parse("8080:0").unwrap_err().contains("0 is not a port"));
        let twice = [Port::parse("8080:80").unwrap(), Port::parse("8080:81").unwrap()];
        assert!(check_ports(&twice).unwrap_err().contains("given twice"));
        let tcp_and_udp = [Port::parse("8080:80").unwrap(), Port::parse("8080:80/udp").unwrap()];
        assert!(check_ports(&tcp_and_udp).is_ok(), "tcp and udp are separate ports");
        let two_to_one = [Port::parse("8080:80").unwrap(), Port::parse("8081:80").unwrap()];
        assert!(check_ports(&two_to_one).is_ok());
        let json: Port = serde_json::from_str(r#"{"host": 8080, "guest": 80}"#).unwrap();
        assert_eq!(json, p);
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"host":8080,"guest":80}"#,
            "defaults stay out of the record"
        );
        assert!(serde_json::from_str::<Port>(r#"{"host": 8080, "guest": 80, "proto": "udp"}"#).is_err());
    }

    #[test]
    fn tunnels_parse() {
        assert_eq!(Tunnel::parse("8080:80").unwrap(), Tunnel { local: 8080, guest: 80 });
        assert_eq!(Tunnel::parse("3000").unwrap(), Tunnel { local: 3000, guest: 3000 });
        assert!(Tunnel::parse("0").unwrap_err().contains("0 is not a port"));
        assert!(Tunnel::parse("8080:0").unwrap_err().contains("0 is not a port"));
        for bad in ["", "x", "8080:", ":80", "1:2:3", "65536"] {
            assert!(Tunnel::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pci_addresses() {
        let a = PciAddress::parse("0000:01:00.0").unwrap();
        assert_eq!((a.to_string(), a.node_device()), ("0000:01:00.0".into(), "pci_0000_01_00_0".into()));
        assert_eq!(PciAddress::parse("3b:00.1").unwrap().to_string(), "0000:3b:00.1");
        for bad in ["", "01:00", "0000:01:20.0", "0000:01:00.8", "zz:00.0", "0000:100:00.0"] {
            assert!(PciAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        for ok in ["a", "foo", "my-app-2", &"a".repeat(48)] {
            assert!(VmName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Foo", "1abc", "-a", "a_b", "a.b", "a b", &"a".repeat(49), "é"] {
            let err = VmName::parse(bad).unwrap_err();
            assert_eq!(crate::exit::code(&err), 2, "{bad}");
            assert!(err.to_string().contains("invalid VM name"));
        }
    }

    #[test]
    fn derived_names_and_mac() {
        let n = VmName::parse("foo").unwrap();
        assert_eq!(n.domain(), "project-foo");
        assert_eq!(n.root_volume(), "project-foo-root.qcow2");
        assert_eq!(n.data_volume(), "project-foo-data.qcow2");
        assert_eq!(n.seed_volume(), "project-foo-seed.iso");
        let mac = n.mac();
        assert!(mac.starts_with("52:54:00:") && mac.len() == 17, "{mac}");
        assert_eq!(mac, VmName::parse("foo").unwrap().mac(), "stable");
        assert_ne!(mac, VmName::parse("bar").unwrap().mac());
    }

    #[test]
    fn sizes_are_binary() {
        assert_eq!(Size::parse("8G").unwrap().bytes(), 8 << 30);
        assert_eq!(Size::parse("50G").unwrap().bytes(), 50 << 30);
        assert_eq!(Size::parse("512M").unwrap().bytes(), 512 << 20);
        assert_eq!(Size::parse("1GiB").unwrap().bytes(), 1 << 30);
        assert_eq!(Size::parse("2T").unwrap().bytes(), 2 << 40);
        assert!(Size::parse("0").unwrap_err().contains("zero"));
        assert!(Size::parse("8X").unwrap_err().contains("not a size"));
        assert!(Size::parse("").is_err());
        assert!(Size::parse("-1G").is_err());
        assert_eq!(Size(8 << 30).to_string(), "8G");
        assert_eq!(Size(512 << 20).to_string(), "512M");
    }

    #[test]
    fn resources_validate() {
        use ConfigError as E;
        let check = |r: Resources| r.validate().unwrap_err();
        assert!(Resources::default().validate().is_ok());
        let small = check(Resources { memory: Size(64 << 20), ..Resources::default() });
        assert!(matches!(small, E::MemoryTooSmall { .. }), "{small:?}");
        assert!(small.to_string().contains("minimum"));
        let odd = check(Resources { memory: Size((1 << 30) + 1), ..Resources::default() });
        assert!(matches!(odd, E::MemoryNotWholeMib { .. }), "{odd:?}");
        assert!(matches!(
            check(Resources { memory: Size(32 << 40), ..Resources::default() }),
            E::MemoryTooLarge { .. }
        ));
        let disk = check(Resources { disk: Size(100 << 40), ..Resources::default() });
        assert!(matches!(disk, E::DiskTooLarge { what: "disk", .. }), "{disk:?}");
        let project = check(Resources { project_disk: Size(100 << 40), ..Resources::default() });
        assert!(matches!(project, E::DiskTooLarge { what: "project_disk", .. }), "{project:?}");
        let tiny = check(Resources { project_disk: Size(32 << 20), ..Resources::default() });
        assert!(matches!(tiny, E::ProjectDiskTooSmall { .. }), "{tiny:?}");
        assert!(matches!(check(Resources { cpus: 0, ..Resources::default() }), E::CpusOutOfRange { cpus: 0, .. }));
        let many = check(Resources { cpus: MAX_CPUS + 1, ..Resources::default() });
        assert!(matches!(many, E::CpusOutOfRange { cpus: 256, max: MAX_CPUS }), "{many:?}");
        assert!(Resources { cpus: MAX_CPUS, ..Resources::default() }.validate().is_ok());
    }

    fn resolved(devices: &Devices, user_data: Option<&str>, keys: &[String]) -> VmSpec {
        let name = VmName::parse("web").unwrap();
        let network = Network::User { ssh_port: 22022 };
        let host = Host {
            accel: Accel::Tcg,
            network: &network,
            ssh_user: "dev",
            authorized_keys: keys,
            tailnet: Some("example.ts.net"),
            tailscale: false,
        };
        let features = vec!["base".to_string()];
        let decl = Declaration {
            name: &name,
            resources: Resources::default(),
            autostart: true,
            features: &features,
            devices,
            user_data,
            stage_snapshots: false,
            application_script: None,
            checks: &[],
            own_features: None,
        };
        VmSpec::resolve(&host, &decl, "debian-12".into(), Some(22023))
    }

    #[test]
    fn resolve_takes_the_host_and_the_declaration() {
        let keys = vec!["ssh-ed25519 AAAA k".to_string()];
        let s = resolved(&Devices::default(), None, &keys);
        assert_eq!((s.name.as_str(), s.base_image.as_str(), s.ssh_port), ("web", "debian-12", Some(22023)));
        assert_eq!((s.accel, s.network.clone()), (Accel::Tcg, Network::User { ssh_port: 22022 }));
        assert_eq!((s.ssh_user.as_str(), s.tailnet.as_deref(), s.autostart), ("dev", Some("example.ts.net"), true));
        assert_eq!((s.features.clone(), s.firmware), (vec!["base".to_string()], Firmware::Bios));
        // The fingerprint follows what goes into the cloud-config, and only that.
        assert_eq!(s.cloud_init_hash, resolved(&Devices::default(), None, &keys).cloud_init_hash);
        assert_ne!(
            s.cloud_init_hash,
            resolved(
                &Devices::default(),
                Some(
                    "#cloud-config
"
                ),
                &keys
            )
            .cloud_init_hash
        );
        assert_ne!(s.cloud_init_hash, resolved(&Devices::default(), None, &[]).cloud_init_hash);
        // A passthrough device wants UEFI.
        let gpu = Devices { hostdevs: vec![PciAddress::parse("01:00.0").unwrap()], ..Devices::default() };
        let s = resolved(&gpu, None, &keys);
        assert_eq!((s.firmware, s.hostdevs.len()), (Firmware::Efi, 1));
        // The sealing boot: user networking on its own port, no shares, no declared ports.
        let shared = Devices {
            shares: vec![Share::parse("/srv/d:/mnt/d").unwrap()],
            ports: vec![Port::parse("8080:80").unwrap()],
            ..Devices::default()
        };
        let declared = resolved(&shared, None, &keys);
        assert_eq!(declared.ports.len(), 1, "the resolved spec records the declared ports");
        let seal = declared.for_sealing(30000);
        assert_eq!(
            (seal.network, seal.ssh_port, seal.shares.len(), seal.ports.len()),
            (Network::User { ssh_port: 30000 }, Some(30000), 0, 0)
        );
    }
}
