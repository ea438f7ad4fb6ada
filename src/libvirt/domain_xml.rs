//! The libvirt domain definition as a typed model, built from a [`VmSpec`].
//!
//! Only what project-vm sets is modelled; libvirt fills in the rest (PCI
//! addresses, controllers, the emulator path) and may reorder it, so nothing
//! compares this XML byte for byte with what libvirt returns.

use serde::Serialize;

use super::metadata::Ownership;
use crate::spec::{Accel, Firmware, Network, VmSpec};

/// Channel the guest writes its cloud-init result to (see `readiness`).
pub const READY_CHANNEL: &str = "org.project-vm.ready.0";
pub const AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";
/// Serial of the project disk: the guest finds it at /dev/disk/by-id/virtio-project-data.
pub const DATA_DISK_SERIAL: &str = "project-data";

#[derive(Debug, Serialize)]
#[serde(rename = "domain")]
pub struct DomainXml {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub name: String,
    /// Set when redefining an existing domain, so it keeps its identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    pub metadata: MetadataXml,
    pub memory: Memory,
    #[serde(rename = "currentMemory")]
    pub current_memory: Memory,
    #[serde(rename = "memoryBacking", skip_serializing_if = "Option::is_none")]
    pub memory_backing: Option<MemoryBacking>,
    pub vcpu: u32,
    pub os: Os,
    pub features: Features,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    pub clock: Clock,
    pub on_poweroff: &'static str,
    pub on_reboot: &'static str,
    pub on_crash: &'static str,
    pub devices: Devices,
}

#[derive(Debug, Serialize)]
pub struct MetadataXml {
    #[serde(rename = "projectvm:vm")]
    pub vm: Ownership,
}

#[derive(Debug, Serialize)]
pub struct Memory {
    #[serde(rename = "@unit")]
    pub unit: &'static str,
    #[serde(rename = "$text")]
    pub value: u64,
}

#[derive(Debug, Serialize)]
pub struct Os {
    /// `efi`: libvirt picks the distribution's OVMF build and makes the VM
    /// its own NVRAM from the template.
    #[serde(rename = "@firmware", skip_serializing_if = "Option::is_none")]
    pub firmware: Option<&'static str>,
    #[serde(rename = "type")]
    pub os_type: OsType,
    #[serde(rename = "firmware", skip_serializing_if = "Option::is_none")]
    pub firmware_features: Option<FirmwareFeatures>,
    pub boot: Boot,
}

/// Constraints on the autoselected firmware.
#[derive(Debug, Serialize)]
pub struct FirmwareFeatures {
    pub feature: Vec<FirmwareFeature>,
}

#[derive(Debug, Serialize)]
pub struct FirmwareFeature {
    #[serde(rename = "@enabled")]
    pub enabled: &'static str,
    #[serde(rename = "@name")]
    pub name: &'static str,
}

#[derive(Debug, Serialize)]
pub struct OsType {
    #[serde(rename = "@arch")]
    pub arch: &'static str,
    #[serde(rename = "@machine")]
    pub machine: &'static str,
    #[serde(rename = "$text")]
    pub value: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Boot {
    #[serde(rename = "@dev")]
    pub dev: &'static str,
}

#[derive(Debug, Serialize, Default)]
pub struct Empty {}

#[derive(Debug, Serialize)]
pub struct Features {
    pub acpi: Empty,
    pub apic: Empty,
    /// QEMU's own IOAPIC: what PCI passthrough on q35 wants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ioapic: Option<Ioapic>,
}

#[derive(Debug, Serialize)]
pub struct Ioapic {
    #[serde(rename = "@driver")]
    pub driver: &'static str,
}

/// A host PCI device, passed through; libvirt detaches it from its host
/// driver when the VM starts (`managed`) and gives it back when it stops.
#[derive(Debug, Serialize)]
pub struct Hostdev {
    #[serde(rename = "@mode")]
    pub mode: &'static str,
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@managed")]
    pub managed: &'static str,
    pub source: HostdevSource,
}

#[derive(Debug, Serialize)]
pub struct HostdevSource {
    pub address: PciAddressXml,
}

#[derive(Debug, Serialize)]
pub struct PciAddressXml {
    #[serde(rename = "@domain")]
    pub domain: String,
    #[serde(rename = "@bus")]
    pub bus: String,
    #[serde(rename = "@slot")]
    pub slot: String,
    #[serde(rename = "@function")]
    pub function: String,
}

#[derive(Debug, Serialize)]
pub struct Cpu {
    #[serde(rename = "@mode")]
    pub mode: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Clock {
    #[serde(rename = "@offset")]
    pub offset: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Devices {
    #[serde(rename = "$value")]
    pub items: Vec<Device>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Disk(Disk),
    Controller(Controller),
    Interface(Interface),
    Serial(Serial),
    Console(Console),
    Channel(Channel),
    Rng(Rng),
    Hostdev(Hostdev),
    Filesystem(Filesystem),
}

/// A host directory shared over virtiofs (libvirt starts virtiofsd for it).
#[derive(Debug, Serialize)]
pub struct Filesystem {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@accessmode")]
    pub accessmode: &'static str,
    pub driver: FsDriver,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary: Option<FsBinary>,
    pub source: FsSource,
    pub target: FsTarget,
}

#[derive(Debug, Serialize)]
pub struct FsDriver {
    #[serde(rename = "@type")]
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
pub struct FsBinary {
    #[serde(rename = "@path")]
    pub path: String,
}

#[derive(Debug, Serialize)]
pub struct FsSource {
    #[serde(rename = "@dir")]
    pub dir: String,
}

#[derive(Debug, Serialize)]
pub struct FsTarget {
    #[serde(rename = "@dir")]
    pub dir: String,
}

/// virtiofs needs the guest's memory shared with virtiofsd.
#[derive(Debug, Serialize)]
pub struct MemoryBacking {
    pub source: MemorySource,
    pub access: MemoryAccess,
}

#[derive(Debug, Serialize)]
pub struct MemorySource {
    #[serde(rename = "@type")]
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
pub struct MemoryAccess {
    #[serde(rename = "@mode")]
    pub mode: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Disk {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@device")]
    pub device: &'static str,
    pub driver: DiskDriver,
    pub source: VolumeSource,
    pub target: DiskTarget,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readonly: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct DiskDriver {
    #[serde(rename = "@name")]
    pub name: &'static str,
    #[serde(rename = "@type")]
    pub format: &'static str,
    #[serde(rename = "@discard", skip_serializing_if = "Option::is_none")]
    pub discard: Option<&'static str>,
}

/// A disk named by pool and volume, never by path: the path only exists on the
/// libvirt host, which need not be the machine running project-vm.
#[derive(Debug, Serialize)]
pub struct VolumeSource {
    #[serde(rename = "@pool")]
    pub pool: String,
    #[serde(rename = "@volume")]
    pub volume: String,
}

#[derive(Debug, Serialize)]
pub struct DiskTarget {
    #[serde(rename = "@dev")]
    pub dev: &'static str,
    #[serde(rename = "@bus")]
    pub bus: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Controller {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@index")]
    pub index: u32,
    #[serde(rename = "@model")]
    pub model: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Interface {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub mac: Mac,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<InterfaceSource>,
    pub model: Model,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// passt's forwards: the ssh port first, then the declared ports.
    #[serde(rename = "portForward", skip_serializing_if = "Vec::is_empty")]
    pub port_forward: Vec<PortForward>,
}

#[derive(Debug, Serialize)]
pub struct Mac {
    #[serde(rename = "@address")]
    pub address: String,
}

#[derive(Debug, Serialize)]
pub struct InterfaceSource {
    #[serde(rename = "@network", skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(rename = "@bridge", skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Model {
    #[serde(rename = "@type")]
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Backend {
    #[serde(rename = "@type")]
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
pub struct PortForward {
    #[serde(rename = "@proto")]
    pub proto: &'static str,
    #[serde(rename = "@address")]
    pub address: String,
    pub range: PortRange,
}

#[derive(Debug, Serialize)]
pub struct PortRange {
    #[serde(rename = "@start")]
    pub start: u16,
    #[serde(rename = "@to")]
    pub to: u16,
}

#[derive(Debug, Serialize)]
pub struct Serial {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub target: SerialTarget,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<Log>,
}

#[derive(Debug, Serialize)]
pub struct SerialTarget {
    #[serde(rename = "@port")]
    pub port: u32,
}

#[derive(Debug, Serialize)]
pub struct Log {
    #[serde(rename = "@file")]
    pub file: String,
    #[serde(rename = "@append")]
    pub append: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Console {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub target: ConsoleTarget,
}

#[derive(Debug, Serialize)]
pub struct ConsoleTarget {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@port")]
    pub port: u32,
}

#[derive(Debug, Serialize)]
pub struct Channel {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub target: ChannelTarget,
}

#[derive(Debug, Serialize)]
pub struct ChannelTarget {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@name")]
    pub name: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Rng {
    #[serde(rename = "@model")]
    pub model: &'static str,
    pub backend: RngBackend,
}

#[derive(Debug, Serialize)]
pub struct RngBackend {
    #[serde(rename = "@model")]
    pub model: &'static str,
    #[serde(rename = "$text")]
    pub source: &'static str,
}

fn volume_disk(pool: &str, volume: &str, format: &'static str, dev: &'static str) -> Disk {
    Disk {
        kind: "volume",
        device: "disk",
        driver: DiskDriver { name: "qemu", format, discard: Some("unmap") },
        source: VolumeSource { pool: pool.into(), volume: volume.into() },
        target: DiskTarget { dev, bus: "virtio" },
        readonly: None,
        serial: None,
    }
}

fn interface(spec: &VmSpec) -> Interface {
    let mac = Mac { address: spec.name.mac() };
    let model = Model { kind: "virtio" };
    match &spec.network {
        Network::Network { name } => Interface {
            kind: "network",
            mac,
            source: Some(InterfaceSource { network: Some(name.clone()), bridge: None }),
            model,
            backend: None,
            port_forward: Vec::new(),
        },
        Network::Bridge { name } => Interface {
            kind: "bridge",
            mac,
            source: Some(InterfaceSource { network: None, bridge: Some(name.clone()) }),
            model,
            backend: None,
            port_forward: Vec::new(),
        },
        Network::User { ssh_port } => Interface {
            kind: "user",
            mac,
            source: None,
            model,
            backend: Some(Backend { kind: "passt" }),
            port_forward: std::iter::once(PortForward {
                proto: "tcp",
                address: "127.0.0.1".into(),
                range: PortRange { start: spec.ssh_port.unwrap_or(*ssh_port), to: 22 },
            })
            .chain(spec.ports.iter().map(|p| PortForward {
                proto: p.protocol.as_str(),
                address: p.address.to_string(),
                range: PortRange { start: p.host, to: p.guest },
            }))
            .collect(),
        },
    }
}

/// Files on the libvirt host that a definition names.
#[derive(Debug, Clone, Default)]
pub struct HostFiles {
    /// Receives the serial console (for `logs`).
    pub serial_log: Option<String>,
    /// The virtiofsd binary for shares; `None`: libvirt's own choice.
    pub virtiofsd: Option<String>,
}

/// What a definition is for: the domain's identity, and which of the VM's
/// disks it has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Purpose {
    /// The VM itself, with the uuid its record names (`create`).
    #[default]
    Vm,
    /// The VM redefined in place: it keeps the uuid libvirt knows it by,
    /// whatever its record says (`apply`).
    Redefine { uuid: String },
    /// The throwaway domain that seals an image copy (`image save`): a name
    /// of its own, a uuid of libvirt's choosing, and of the VM's disks only
    /// the root (the copy); the VM's project disk stays out of it.
    Seal,
}

/// The name of the domain that seals an image copy of VM `name`.
pub fn seal_domain(name: &crate::spec::VmName) -> String {
    format!("pvseal-{name}")
}

/// Builds the domain definition for `spec`, as `create` defines it.
pub fn build(spec: &VmSpec, ownership: &Ownership, files: &HostFiles) -> DomainXml {
    build_for(spec, ownership, files, &Purpose::Vm)
}

/// Builds the domain definition for `spec`, for `purpose`.
pub fn build_for(spec: &VmSpec, ownership: &Ownership, files: &HostFiles, purpose: &Purpose) -> DomainXml {
    let mut items = disks(ownership, purpose);
    items.extend(standard_devices(spec, files));
    items.extend(spec.shares.iter().map(|s| Device::Filesystem(filesystem(s, files))));
    items.extend(spec.hostdevs.iter().map(|a| Device::Hostdev(hostdev(a))));
    let (name, uuid) = match purpose {
        Purpose::Vm => (spec.name.domain(), ownership.uuid.clone()),
        Purpose::Redefine { uuid } => (spec.name.domain(), Some(uuid.clone())),
        Purpose::Seal => (seal_domain(&spec.name), None),
    };
    let mib = spec.resources.memory.mib();
    DomainXml {
        kind: spec.accel.domain_type(),
        name,
        uuid,
        metadata: MetadataXml { vm: Ownership { xmlns: Some(super::metadata::NAMESPACE.into()), ..ownership.clone() } },
        memory: Memory { unit: "MiB", value: mib },
        current_memory: Memory { unit: "MiB", value: mib },
        memory_backing: (!spec.shares.is_empty()).then_some(MemoryBacking {
            source: MemorySource { kind: "memfd" },
            access: MemoryAccess { mode: "shared" },
        }),
        vcpu: spec.resources.cpus,
        os: os(spec.firmware),
        features: Features {
            acpi: Empty {},
            apic: Empty {},
            ioapic: (!spec.hostdevs.is_empty()).then_some(Ioapic { driver: "qemu" }),
        },
        // With KVM the guest sees the host CPU; TCG emulates its default model.
        cpu: (spec.accel == Accel::Kvm).then_some(Cpu { mode: "host-passthrough" }),
        clock: Clock { offset: "utc" },
        on_poweroff: "destroy",
        on_reboot: "restart",
        on_crash: "destroy",
        devices: Devices { items },
    }
}

/// The root disk, the project disk (but for a sealing boot) and the seed.
fn disks(ownership: &Ownership, purpose: &Purpose) -> Vec<Device> {
    let pool = &ownership.pool;
    let mut items = vec![Device::Disk(volume_disk(pool, &ownership.root_volume, "qcow2", "vda"))];
    if *purpose != Purpose::Seal {
        items.push(Device::Disk(Disk {
            serial: Some(DATA_DISK_SERIAL),
            ..volume_disk(pool, &ownership.data_volume, "qcow2", "vdb")
        }));
    }
    if let Some(seed) = &ownership.seed_volume {
        // virtio-scsi, not SATA: many cloud kernels have no AHCI driver and
        // would never see a SATA CD-ROM, so cloud-init would silently do nothing.
        items.push(Device::Controller(Controller { kind: "scsi", index: 0, model: "virtio-scsi" }));
        items.push(Device::Disk(seed_cdrom(pool, seed)));
    }
    items
}

/// The cloud-init seed's CD-ROM, on the virtio-scsi controller.
pub fn seed_cdrom(pool: &str, volume: &str) -> Disk {
    Disk {
        kind: "volume",
        device: "cdrom",
        driver: DiskDriver { name: "qemu", format: "raw", discard: None },
        source: VolumeSource { pool: pool.into(), volume: volume.into() },
        target: DiskTarget { dev: "sda", bus: "scsi" },
        readonly: Some(Empty {}),
        serial: None,
    }
}

/// The NIC, the serial console and its log, the guest agent's and the
/// readiness reporter's channels, and an entropy source.
fn standard_devices(spec: &VmSpec, files: &HostFiles) -> [Device; 6] {
    [
        Device::Interface(interface(spec)),
        Device::Serial(Serial {
            kind: "pty",
            target: SerialTarget { port: 0 },
            log: files.serial_log.clone().map(|file| Log { file, append: "on" }),
        }),
        Device::Console(Console { kind: "pty", target: ConsoleTarget { kind: "serial", port: 0 } }),
        Device::Channel(Channel { kind: "unix", target: ChannelTarget { kind: "virtio", name: AGENT_CHANNEL } }),
        Device::Channel(Channel { kind: "unix", target: ChannelTarget { kind: "virtio", name: READY_CHANNEL } }),
        Device::Rng(Rng { model: "virtio", backend: RngBackend { model: "random", source: "/dev/urandom" } }),
    ]
}

fn filesystem(s: &crate::spec::Share, files: &HostFiles) -> Filesystem {
    Filesystem {
        kind: "mount",
        accessmode: "passthrough",
        driver: FsDriver { kind: "virtiofs" },
        binary: files.virtiofsd.clone().map(|path| FsBinary { path }),
        source: FsSource { dir: s.source.display().to_string() },
        target: FsTarget { dir: s.tag() },
    }
}

fn hostdev(a: &crate::spec::PciAddress) -> Hostdev {
    Hostdev {
        mode: "subsystem",
        kind: "pci",
        managed: "yes",
        source: HostdevSource {
            address: PciAddressXml {
                domain: format!("0x{:04x}", a.domain),
                bus: format!("0x{:02x}", a.bus),
                slot: format!("0x{:02x}", a.slot),
                function: format!("0x{:x}", a.function),
            },
        },
    }
}

fn os(firmware: Firmware) -> Os {
    let efi = firmware == Firmware::Efi;
    Os {
        firmware: efi.then_some("efi"),
        os_type: OsType { arch: "x86_64", machine: "q35", value: "hvm" },
        // Cloud images boot without Secure Boot, which would also need SMM.
        firmware_features: efi
            .then(|| FirmwareFeatures { feature: vec![FirmwareFeature { enabled: "no", name: "secure-boot" }] }),
        boot: Boot { dev: "hd" },
    }
}

impl Disk {
    /// The disk alone as device XML, for attaching and detaching it.
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        let ser = quick_xml::se::Serializer::with_root(&mut out, Some("disk")).expect("a valid root name");
        self.serialize(ser).expect("disk model serializes");
        out
    }
}

impl DomainXml {
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        let mut ser = quick_xml::se::Serializer::new(&mut out);
        ser.indent(' ', 2);
        self.serialize(ser).expect("domain model serializes");
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::libvirt::metadata::Phase;
    use crate::spec::{Resources, Size, VmName};

    pub fn spec(network: Network, accel: Accel) -> VmSpec {
        VmSpec {
            name: VmName::parse("foo").unwrap(),
            resources: Resources { memory: Size(1 << 30), cpus: 2, disk: Size(5 << 30), project_disk: Size(2 << 30) },
            base_image: "base.qcow2".into(),
            accel,
            network,
            ssh_user: "dev".into(),
            ssh_port: None,
            tailnet: None,
            autostart: false,
            features: vec![],
            firmware: Default::default(),
            network_config: None,
            hostdevs: vec![],
            shares: vec![],
            ports: vec![],
            cloud_init_hash: String::new(),
            stage_snapshots: false,
            checks: vec![],
            application_script: false,
        }
    }

    pub fn ownership(spec: &VmSpec) -> Ownership {
        Ownership {
            xmlns: None,
            version: 1,
            name: spec.name.to_string(),
            uuid: None,
            phase: Phase::Creating,
            pool: "project-vm".into(),
            root_volume: spec.name.root_volume(),
            data_volume: spec.name.data_volume(),
            data_kept: false,
            seed_volume: Some(spec.name.seed_volume()),
            created: 1,
            host_key: None,
            spec_json: serde_json::to_string(spec).unwrap(),
        }
    }

    #[test]
    fn renders_the_expected_devices() {
        let s = spec(Network::User { ssh_port: 22022 }, Accel::Tcg);
        let files = HostFiles { serial_log: Some("/var/log/x.log".into()), virtiofsd: None };
        let xml = build(&s, &ownership(&s), &files).to_xml();
        for needle in [
            r#"<domain type="qemu">"#,
            "<name>project-foo</name>",
            r#"<projectvm:vm xmlns:projectvm="https://project-vm.dev/xmlns/domain/1" version="1" name="foo" phase="creating""#,
            r#"<memory unit="MiB">1024</memory>"#,
            "<vcpu>2</vcpu>",
            r#"<source pool="project-vm" volume="project-foo-root.qcow2"/>"#,
            r#"<target dev="vdb" bus="virtio"/>"#,
            "<serial>project-data</serial>",
            r#"<controller type="scsi" index="0" model="virtio-scsi"/>"#,
            r#"<target dev="sda" bus="scsi"/>"#,
            "<readonly/>",
            r#"<backend type="passt"/>"#,
            r#"<range start="22022" to="22"/>"#,
            r#"<log file="/var/log/x.log" append="on"/>"#,
            r#"name="org.qemu.guest_agent.0""#,
            r#"name="org.project-vm.ready.0""#,
            "/dev/urandom",
        ] {
            assert!(xml.contains(needle), "missing {needle} in\n{xml}");
        }
        assert!(!xml.contains("host-passthrough"), "tcg must not ask for the host cpu");
        assert!(xml.contains(&s.name.mac()));
    }

    #[test]
    fn declared_ports_follow_the_ssh_forward_with_user_networking_only() {
        let mut s = spec(Network::User { ssh_port: 22022 }, Accel::Tcg);
        s.ports = vec!["8080:80".parse().unwrap(), "[::1]:5353:53/udp".parse().unwrap()];
        let xml = build(&s, &ownership(&s), &HostFiles::default()).to_xml();
        let forwards: Vec<&str> = xml.lines().filter(|l| l.contains("<portForward") || l.contains("<range")).collect();
        assert_eq!(
            forwards.iter().map(|l| l.trim()).collect::<Vec<_>>(),
            [
                r#"<portForward proto="tcp" address="127.0.0.1">"#,
                r#"<range start="22022" to="22"/>"#,
                r#"<portForward proto="tcp" address="127.0.0.1">"#,
                r#"<range start="8080" to="80"/>"#,
                r#"<portForward proto="udp" address="::1">"#,
                r#"<range start="5353" to="53"/>"#,
            ],
            "{xml}"
        );
        s.network = Network::default();
        let xml = build(&s, &ownership(&s), &HostFiles::default()).to_xml();
        assert!(!xml.contains("portForward"), "a libvirt network reaches the guest's address: nothing to forward");
    }

    #[test]
    fn kvm_bridge_and_no_seed() {
        let s = spec(Network::Bridge { name: "br0".into() }, Accel::Kvm);
        let mut o = ownership(&s);
        o.seed_volume = None;
        let xml = build(&s, &o, &HostFiles::default()).to_xml();
        assert!(xml.contains(r#"<domain type="kvm">"#));
        assert!(xml.contains(r#"<cpu mode="host-passthrough"/>"#));
        assert!(xml.contains(r#"<source bridge="br0"/>"#));
        assert!(!xml.contains("cdrom") && !xml.contains("virtio-scsi"));
        assert!(!xml.contains("<log"));
    }

    #[test]
    fn purposes_set_identity_and_disks() {
        let s = spec(Network::default(), Accel::Tcg);
        let mut o = ownership(&s);
        o.uuid = Some("0d5a2a5e-8f43-4c1e-9a55-3f1d2b6c7e01".into());
        let vm = build(&s, &o, &HostFiles::default());
        assert_eq!((vm.name.as_str(), vm.uuid.as_deref()), ("project-foo", o.uuid.as_deref()));
        let uuid = "6b3c9b7e-2f0e-4d55-8b1a-1c2d3e4f5a6b".to_string();
        let again = build_for(&s, &o, &HostFiles::default(), &Purpose::Redefine { uuid: uuid.clone() });
        assert_eq!((again.name.as_str(), again.uuid.as_deref()), ("project-foo", Some(uuid.as_str())));
        assert!(again.to_xml().contains(&format!("<uuid>{uuid}</uuid>")));
        let seal = build_for(&s, &o, &HostFiles::default(), &Purpose::Seal);
        assert_eq!((seal.name.as_str(), seal.uuid.as_ref()), ("pvseal-foo", None));
        let xml = seal.to_xml();
        let source = |v: &str| format!(r#"volume="{v}""#);
        assert!(!xml.contains("<uuid>") && !xml.contains(&source(&o.data_volume)) && !xml.contains("vdb"), "{xml}");
        assert!(xml.contains(&source(&o.root_volume)), "{xml}");
    }

    #[test]
    fn the_seed_device_is_the_definitions_own() {
        let s = spec(Network::default(), Accel::Tcg);
        let o = ownership(&s);
        let seed = seed_cdrom(&o.pool, o.seed_volume.as_deref().unwrap()).to_xml();
        assert!(seed.starts_with(r#"<disk type="volume" device="cdrom">"#), "{seed}");
        for needle in
            [r#"<source pool="project-vm" volume="project-foo-seed.iso"/>"#, r#"<target dev="sda" bus="scsi"/>"#]
        {
            assert!(seed.contains(needle), "missing {needle} in {seed}");
        }
        let whole = build(&s, &o, &HostFiles::default()).to_xml();
        let compact: String = whole.split('\n').map(str::trim).collect();
        assert!(compact.contains(&seed), "{seed} not in\n{whole}");
    }
}
