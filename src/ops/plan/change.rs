//! The changes `plan` finds between what a VM is and what the file declares:
//! one typed value each, made once by [`diff`] and carried out as is by
//! `apply` (an exhaustive `match`, never a comparison of names). Each knows
//! its [`ChangeClass`]; its text for people and its JSON (`field`, `from`,
//! `to`, `class`, `note`) come from it too.

use serde::{Serialize, Serializer};

use crate::settings::{Accel, Network};
use crate::spec::{Firmware, PciAddress, Resources, Share, Size, StaticNetwork, VmSpec};

/// How a change reaches the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeClass {
    /// Applied by `apply` right away.
    Now,
    /// Written to the definition; the guest sees it after a restart (`apply --restart` does it).
    NextRestart,
    /// Only by rebuilding the root disk: `apply --recreate` (the project disk is kept).
    NeedsRecreate,
    /// Not applied: cloud-init runs once per instance. Reported so it is never silently ignored.
    NotApplied,
    /// Refused (shrinking a disk would lose data).
    Impossible,
}

impl ChangeClass {
    /// `apply` carries it out on the VM as it is (no rebuild).
    pub fn applies(self) -> bool {
        matches!(self, ChangeClass::Now | ChangeClass::NextRestart)
    }

    /// Only a rebuild (`--recreate`) carries it out.
    pub fn needs_rebuild(self) -> bool {
        matches!(self, ChangeClass::NeedsRecreate | ChangeClass::NotApplied)
    }

    /// As `plan` prints it.
    pub fn label(self) -> &'static str {
        match self {
            ChangeClass::Now => "applies now",
            ChangeClass::NextRestart => "applies at next restart",
            ChangeClass::NeedsRecreate => "needs --recreate",
            ChangeClass::NotApplied => "NOT APPLIED",
            ChangeClass::Impossible => "IMPOSSIBLE, refused",
        }
    }
}

/// One of a VM's two disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disk {
    Root,
    Project,
}

impl Disk {
    /// Its key in the file (and the change's `field`).
    pub fn field(self) -> &'static str {
        match self {
            Disk::Root => "disk",
            Disk::Project => "project_disk",
        }
    }

    /// Its target device in the domain.
    pub fn device(self) -> &'static str {
        match self {
            Disk::Root => "vda",
            Disk::Project => "vdb",
        }
    }

    /// Its size in `r`, to be changed.
    pub fn size_mut(self, r: &mut Resources) -> &mut Size {
        match self {
            Disk::Root => &mut r.disk,
            Disk::Project => &mut r.project_disk,
        }
    }

    fn grow_note(self) -> &'static str {
        match self {
            Disk::Root => "the root filesystem grows at next boot",
            Disk::Project => "the filesystem on /project grows at next boot",
        }
    }
}

/// What differs, with both values.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Memory { from: Size, to: Size },
    Cpus { from: u32, to: u32 },
    Accel { from: Accel, to: Accel },
    Network { from: Network, to: Network },
    /// The base image the root disk is built on.
    Image { from: String, to: String },
    /// The fingerprint of what went into the guest's cloud-config.
    CloudInit { from: String, to: String },
    Firmware { from: Firmware, to: Firmware },
    Hostdevs { from: Vec<PciAddress>, to: Vec<PciAddress> },
    Shares { from: Vec<Share>, to: Vec<Share> },
    NetworkConfig { from: Option<StaticNetwork>, to: Option<StaticNetwork> },
    Autostart { from: bool, to: bool },
    /// A disk grows (`from` is the volume's real capacity).
    Grow { disk: Disk, from: Size, to: Size },
    /// A disk would shrink: refused.
    Shrink { disk: Disk, from: Size, to: Size },
    /// A disk would grow but has internal snapshots: refused.
    GrowWithSnapshots { disk: Disk, from: Size, to: Size },
    /// A VM of this name lives in another pool: refused.
    Pool { from: String, to: String },
    /// The VM moves to another fleet host: a rebuild there.
    Host { from: String, to: String },
}

impl Change {
    pub fn class(&self) -> ChangeClass {
        use ChangeClass::*;
        match self {
            Change::Autostart { .. } | Change::Grow { .. } => Now,
            Change::Memory { .. }
            | Change::Cpus { .. }
            | Change::Accel { .. }
            | Change::Network { .. }
            | Change::Hostdevs { .. }
            | Change::Shares { .. } => NextRestart,
            Change::Image { .. } | Change::Firmware { .. } | Change::Host { .. } => NeedsRecreate,
            Change::CloudInit { .. } | Change::NetworkConfig { .. } => NotApplied,
            Change::Shrink { .. } | Change::GrowWithSnapshots { .. } | Change::Pool { .. } => Impossible,
        }
    }

    /// What changes, as the file (or the plan) names it.
    pub fn field(&self) -> &'static str {
        match self {
            Change::Memory { .. } => "memory",
            Change::Cpus { .. } => "cpus",
            Change::Accel { .. } => "accel",
            Change::Network { .. } => "network",
            Change::Image { .. } => "image",
            Change::CloudInit { .. } => "cloud-init",
            Change::Firmware { .. } => "firmware",
            Change::Hostdevs { .. } => "hostdevs",
            Change::Shares { .. } => "shares",
            Change::NetworkConfig { .. } => "network_config",
            Change::Autostart { .. } => "autostart",
            Change::Grow { disk, .. } | Change::Shrink { disk, .. } | Change::GrowWithSnapshots { disk, .. } => {
                disk.field()
            }
            Change::Pool { .. } => "pool",
            Change::Host { .. } => "host",
        }
    }

    /// The values as shown: sizes as sizes, the rest as their JSON text
    /// (`tcg`, `{"type":"user",...}`).
    pub fn texts(&self) -> (String, String) {
        fn pair<T: ToString>(from: &T, to: &T) -> (String, String) {
            (from.to_string(), to.to_string())
        }
        fn json_pair<T: Serialize>(from: &T, to: &T) -> (String, String) {
            (json(from), json(to))
        }
        match self {
            Change::Memory { from, to } => pair(from, to),
            Change::Cpus { from, to } => pair(from, to),
            Change::Accel { from, to } => json_pair(from, to),
            Change::Network { from, to } => json_pair(from, to),
            Change::Image { from, to } | Change::CloudInit { from, to } => pair(from, to),
            Change::Firmware { from, to } => json_pair(from, to),
            Change::Hostdevs { from, to } => json_pair(from, to),
            Change::Shares { from, to } => json_pair(from, to),
            Change::NetworkConfig { from, to } => json_pair(from, to),
            Change::Autostart { from, to } => pair(from, to),
            Change::Grow { from, to, .. } | Change::Shrink { from, to, .. } => pair(from, to),
            Change::GrowWithSnapshots { from, to, .. } => pair(from, to),
            Change::Pool { from, to } | Change::Host { from, to } => pair(from, to),
        }
    }

    /// Why it is classed so, or what follows from it ("" when it goes without saying).
    pub fn note(&self) -> &'static str {
        match self {
            Change::Memory { .. }
            | Change::Cpus { .. }
            | Change::Accel { .. }
            | Change::Network { .. }
            | Change::Autostart { .. } => "",
            Change::Image { .. } => "rebuilds the root disk from the new image; the project disk is kept",
            Change::CloudInit { .. } => "cloud-init (user, keys, features, user_data, tailnet) only runs on a VM's first boot; --recreate applies it and keeps the project disk",
            Change::Firmware { .. } => "the root disk must boot the new way; --recreate rebuilds it, keeping the project disk",
            Change::Hostdevs { .. } => "devices are attached when the VM starts",
            Change::Shares { .. } => "virtiofs devices come with the next start (mounted by fstab, nofail)",
            Change::NetworkConfig { .. } => "cloud-init applies network config on the first boot only; --recreate applies it (project disk kept)",
            Change::Grow { disk, .. } => disk.grow_note(),
            Change::Shrink { .. } => "disks only grow; shrinking would lose data",
            Change::GrowWithSnapshots { .. } => "qcow2 cannot grow a disk that has snapshots: delete them first (`project-vm snapshot list`, `snapshot delete`)",
            Change::Pool { .. } => "a VM of this name lives in another pool (made with other settings): plan and apply never reach into another pool; manage it there, pass --all-pools to manage it from here, or give this one another name",
            Change::Host { .. } => "the VM is rebuilt on its new host with a new project disk; the old project disk stays on the old host (copy what you need first)",
        }
    }

    /// One line of `plan`'s report, indented under its VM.
    pub fn describe(&self) -> String {
        let class = self.class().label();
        let note = match self.note() {
            "" => String::new(),
            n => format!(" ({n})"),
        };
        match self {
            // The values are fingerprints: nothing to read in them.
            Change::CloudInit { .. } => format!("  cloud-init changed: {class}{note}"),
            _ => {
                let (from, to) = self.texts();
                format!("  {}: {from} -> {to}: {class}{note}", self.field())
            }
        }
    }

    /// Its values differ as shown (libvirt's defaults never make a change).
    fn differs(&self) -> bool {
        let (from, to) = self.texts();
        from != to
    }
}

/// As JSON: `{"field", "from", "to", "class", "note"}`.
impl Serialize for Change {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shown<'a> {
            field: &'a str,
            from: String,
            to: String,
            class: ChangeClass,
            note: &'a str,
        }
        let (from, to) = self.texts();
        Shown { field: self.field(), from, to, class: self.class(), note: self.note() }.serialize(s)
    }
}

/// What exists, beyond the recorded spec.
#[derive(Debug, Clone, Copy)]
pub struct Actual {
    pub root_capacity: u64,
    pub data_capacity: u64,
    pub autostart: bool,
    pub running: bool,
    /// The running guest's memory and CPUs differ from the definition.
    pub restart_pending: bool,
    /// Snapshots the VM has: qcow2 cannot grow a disk with internal snapshots.
    pub snapshots: u32,
}

/// The changes from `current` (recorded) and `actual` to `desired`. Pure: the
/// heart of `plan`, tested table-driven.
pub fn diff(current: &VmSpec, actual: &Actual, desired: &VmSpec) -> Vec<Change> {
    let mut out = definition_changes(current, desired);
    out.extend(Some(Change::Autostart { from: actual.autostart, to: desired.autostart }).filter(Change::differs));
    // Disks compare against the volumes' real capacity, and may only grow.
    let want = &desired.resources;
    out.extend(disk_change(Disk::Root, actual.root_capacity, want.disk, actual.snapshots));
    out.extend(disk_change(Disk::Project, actual.data_capacity, want.project_disk, actual.snapshots));
    out
}

/// What the definition records, compared as shown.
fn definition_changes(cur: &VmSpec, want: &VmSpec) -> Vec<Change> {
    let (c, w) = (&cur.resources, &want.resources);
    let candidates = vec![
        Change::Memory { from: c.memory, to: w.memory },
        Change::Cpus { from: c.cpus, to: w.cpus },
        Change::Accel { from: cur.accel, to: want.accel },
        Change::Network { from: cur.network.clone(), to: want.network.clone() },
        Change::Image { from: cur.base_image.clone(), to: want.base_image.clone() },
        Change::CloudInit { from: cur.cloud_init_hash.clone(), to: want.cloud_init_hash.clone() },
        Change::Firmware { from: cur.firmware, to: want.firmware },
        Change::Hostdevs { from: cur.hostdevs.clone(), to: want.hostdevs.clone() },
        Change::Shares { from: cur.shares.clone(), to: want.shares.clone() },
        Change::NetworkConfig { from: cur.network_config.clone(), to: want.network_config.clone() },
    ];
    candidates.into_iter().filter(Change::differs).collect()
}

fn disk_change(disk: Disk, actual: u64, desired: Size, snapshots: u32) -> Option<Change> {
    let (from, to) = (Size(actual), desired);
    if desired.bytes() > actual && snapshots > 0 {
        Some(Change::GrowWithSnapshots { disk, from, to })
    } else if desired.bytes() > actual {
        Some(Change::Grow { disk, from, to })
    } else if desired.bytes() < actual {
        Some(Change::Shrink { disk, from, to })
    } else {
        None
    }
}

/// A value as shown in a change: its JSON text (`tcg`, `{"type":"user",...}`).
fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default().trim_matches('"').to_owned()
}
