//! The changes `plan` finds between what a VM is and what the file declares:
//! one typed value each, made once by [`diff`] and carried out as is by
//! `apply` (an exhaustive `match`, never a comparison of names). Each knows
//! its [`ChangeClass`]; its text for people and its JSON (`field`, `from`,
//! `to`, `class`, `note`) come from it too.

use serde::{Serialize, Serializer};

use crate::settings::{Accel, Network};
use crate::spec::{Firmware, PciAddress, Port, Resources, Share, Size, StaticNetwork, VmSpec};

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
    Memory {
        from: Size,
        to: Size,
    },
    Cpus {
        from: u32,
        to: u32,
    },
    Accel {
        from: Accel,
        to: Accel,
    },
    Network {
        from: Network,
        to: Network,
    },
    /// The base image the root disk is built on.
    Image {
        from: String,
        to: String,
    },
    /// The fingerprint of what went into the guest's cloud-config.
    CloudInit {
        from: String,
        to: String,
    },
    Firmware {
        from: Firmware,
        to: Firmware,
    },
    Hostdevs {
        from: Vec<PciAddress>,
        to: Vec<PciAddress>,
    },
    Shares {
        from: Vec<Share>,
        to: Vec<Share>,
    },
    /// Guest ports forwarded from the libvirt host.
    Ports {
        from: Vec<Port>,
        to: Vec<Port>,
    },
    NetworkConfig {
        from: Option<StaticNetwork>,
        to: Option<StaticNetwork>,
    },
    Autostart {
        from: bool,
        to: bool,
    },
    /// A disk grows (`from` is the volume's real capacity).
    Grow {
        disk: Disk,
        from: Size,
        to: Size,
    },
    /// A disk would shrink: refused.
    Shrink {
        disk: Disk,
        from: Size,
        to: Size,
    },
    /// A disk would grow but has internal snapshots: refused.
    GrowWithSnapshots {
        disk: Disk,
        from: Size,
        to: Size,
    },
    /// A VM of this name lives in another pool: refused.
    Pool {
        from: String,
        to: String,
    },
    /// The VM moves to another fleet host: a rebuild there.
    Host {
        from: String,
        to: String,
    },
    /// The health checks (run from the host: recorded, nothing re-provisioned).
    Checks {
        from: Vec<crate::health::Check>,
        to: Vec<crate::health::Check>,
    },
}

impl Change {
    pub fn class(&self) -> ChangeClass {
        use ChangeClass::*;
        match self {
            Change::Autostart { .. } | Change::Grow { .. } | Change::Checks { .. } => Now,
            Change::Memory { .. }
            | Change::Cpus { .. }
            | Change::Accel { .. }
            | Change::Network { .. }
            | Change::Hostdevs { .. }
            | Change::Shares { .. }
            | Change::Ports { .. } => NextRestart,
            Change::Image { .. } | Change::Firmware { .. } | Change::Host { .. } => NeedsRecreate,
            Change::CloudInit { .. } | Change::NetworkConfig { .. } => NotApplied,
            Change::Shrink { .. } | Change::GrowWithSnapshots { .. } | Change::Pool { .. } => Impossible,
        }
    }

    /// `apply --reconfigure` (`reconfigure NAME`) carries it out: the guest
    /// provisioned again in place, from a new seed.
    pub fn by_reconfigure(&self) -> bool {
        matches!(self, Change::CloudInit { .. })
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
            Change::Ports { .. } => "ports",
            Change::NetworkConfig { .. } => "network_config",
            Change::Autostart { .. } => "autostart",
            Change::Grow { disk, .. } | Change::Shrink { disk, .. } | Change::GrowWithSnapshots { disk, .. } => {
                disk.field()
            }
            Change::Pool { .. } => "pool",
            Change::Host { .. } => "host",
            Change::Checks { .. } => "checks",
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
            Change::Ports { from, to } => json_pair(from, to),
            Change::NetworkConfig { from, to } => json_pair(from, to),
            Change::Autostart { from, to } => pair(from, to),
            Change::Grow { from, to, .. } | Change::Shrink { from, to, .. } => pair(from, to),
            Change::GrowWithSnapshots { from, to, .. } => pair(from, to),
            Change::Pool { from, to } | Change::Host { from, to } => pair(from, to),
            Change::Checks { from, to } => json_pair(from, to),
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
            Change::CloudInit { .. } => "cloud-init (user, keys, features, user_data, tailnet) runs once per instance: apply --reconfigure (or `project-vm reconfigure NAME`) provisions it again in place, keeping the VM's host key, machine-id and disks; --recreate rebuilds it, keeping the project disk",
            Change::Firmware { .. } => "the root disk must boot the new way; --recreate rebuilds it, keeping the project disk",
            Change::Hostdevs { .. } => "devices are attached when the VM starts",
            Change::Shares { .. } => "virtiofs devices come with the next start (mounted by fstab, nofail)",
            Change::Ports { .. } => "passt forwards the declared ports from the VM's next start (user networking)",
            Change::NetworkConfig { .. } => "cloud-init applies network config on the first boot only; --recreate applies it (project disk kept)",
            Change::Grow { disk, .. } => disk.grow_note(),
            Change::Shrink { .. } => "disks only grow; shrinking would lose data",
            Change::GrowWithSnapshots { .. } => "qcow2 cannot grow a disk that has snapshots: delete them first (`project-vm snapshot list`, `snapshot delete`)",
            Change::Pool { .. } => "a VM of this name lives in another pool (made with other settings): plan and apply never reach into another pool; manage it there, pass --all-pools to manage it from here, or give this one another name",
            Change::Checks { .. } => "`check` and `--wait` run the new checks over ssh; nothing is re-provisioned",
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
        Change::Ports { from: cur.ports.clone(), to: want.ports.clone() },
        Change::NetworkConfig { from: cur.network_config.clone(), to: want.network_config.clone() },
        Change::Checks { from: cur.checks.clone(), to: want.checks.clone() },
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::libvirt::domain_xml::tests::spec;

    pub fn base() -> VmSpec {
        spec(Network::default(), Accel::Kvm)
    }

    pub fn actual_of(s: &VmSpec) -> Actual {
        Actual {
            root_capacity: s.resources.disk.bytes(),
            data_capacity: s.resources.project_disk.bytes(),
            autostart: s.autostart,
            running: true,
            restart_pending: false,
            snapshots: 0,
        }
    }

    type Edit = fn(&mut VmSpec);

    /// One edit per kind of change `diff` finds, with its field and class.
    pub fn edits() -> Vec<(&'static str, Edit, &'static str, ChangeClass)> {
        use ChangeClass::*;
        vec![
            ("memory", |s| s.resources.memory = Size(2 << 30), "memory", NextRestart),
            ("cpus", |s| s.resources.cpus = 4, "cpus", NextRestart),
            ("grow root", |s| s.resources.disk = Size(10 << 30), "disk", Now),
            ("shrink root", |s| s.resources.disk = Size(1 << 30), "disk", Impossible),
            ("grow data", |s| s.resources.project_disk = Size(4 << 30), "project_disk", Now),
            ("shrink data", |s| s.resources.project_disk = Size(1 << 30), "project_disk", Impossible),
            ("image", |s| s.base_image = "other.qcow2".into(), "image", NeedsRecreate),
            ("cloud-init", |s| s.cloud_init_hash = "changed".into(), "cloud-init", NotApplied),
            ("autostart", |s| s.autostart = true, "autostart", Now),
            (
                "checks",
                |s| {
                    s.checks =
                        crate::health::parse_checks("c", &serde_json::json!([{"name": "web", "command": "true"}]))
                            .unwrap()
                },
                "checks",
                Now,
            ),
            ("accel", |s| s.accel = Accel::Tcg, "accel", NextRestart),
            ("network", |s| s.network = Network::Bridge { name: "br0".into() }, "network", NextRestart),
            ("firmware", |s| s.firmware = Firmware::Efi, "firmware", NeedsRecreate),
            ("hostdevs", |s| s.hostdevs = vec!["0000:01:00.0".parse().unwrap()], "hostdevs", NextRestart),
            (
                "shares",
                |s| s.shares = vec![Share { source: "/srv/a".into(), target: "/mnt/a".into(), readonly: true }],
                "shares",
                NextRestart,
            ),
            ("ports", |s| s.ports = vec!["8080:80".parse().unwrap()], "ports", NextRestart),
            (
                "static address",
                |s| s.network_config = Some(serde_json::from_str(r#"{"address":"10.0.0.5/24"}"#).unwrap()),
                "network_config",
                NotApplied,
            ),
        ]
    }

    /// The one change `edit` makes to [`base`].
    fn one(edit: Edit) -> Change {
        let (cur, mut want) = (base(), base());
        edit(&mut want);
        let mut changes = diff(&cur, &actual_of(&cur), &want);
        assert_eq!(changes.len(), 1, "{changes:?}");
        changes.remove(0)
    }

    #[test]
    fn a_grown_disk_applies_now() {
        let c = one(|s| s.resources.project_disk = Size(4 << 30));
        assert!(
            matches!(c, Change::Grow { disk: Disk::Project, from: Size(f), to: Size(t) } if f == 2 << 30 && t == 4 << 30)
        );
        assert_eq!(c.class(), ChangeClass::Now);
    }

    #[test]
    fn more_memory_applies_at_next_restart() {
        let c = one(|s| s.resources.memory = Size(2 << 30));
        assert!(matches!(c, Change::Memory { from: Size(f), to: Size(t) } if f == 1 << 30 && t == 2 << 30));
        assert_eq!(c.class(), ChangeClass::NextRestart);
    }

    #[test]
    fn a_new_image_needs_recreate() {
        let c = one(|s| s.base_image = "other.qcow2".into());
        assert!(matches!(&c, Change::Image { from, to } if from == "base.qcow2" && to == "other.qcow2"));
        assert_eq!(c.class(), ChangeClass::NeedsRecreate);
    }

    #[test]
    fn changed_cloud_init_is_not_applied() {
        let c = one(|s| s.cloud_init_hash = "changed".into());
        assert!(matches!(&c, Change::CloudInit { to, .. } if to == "changed"));
        assert_eq!(c.class(), ChangeClass::NotApplied);
        assert_eq!(c.describe(), format!("  cloud-init changed: NOT APPLIED ({})", c.note()));
    }

    #[test]
    fn reconfigure_carries_out_the_cloud_init_change_and_no_other() {
        for (what, edit, field, class) in edits() {
            let c = one(edit);
            assert_eq!(c.by_reconfigure(), field == "cloud-init", "{what}");
            if c.by_reconfigure() {
                // Still reported as not applied by a plain apply; the note names both ways.
                assert_eq!(class, ChangeClass::NotApplied, "{what}");
                assert!(c.note().contains("apply --reconfigure") && c.note().contains("--recreate"), "{}", c.note());
            }
        }
        for c in [Change::Pool { from: "a".into(), to: "b".into() }, Change::Host { from: "a".into(), to: "b".into() }]
        {
            assert!(!c.by_reconfigure(), "{c:?}");
        }
        // network_config stays a first-boot-only change (no new address under a running ssh path).
        assert!(!one(edits().into_iter().find(|e| e.0 == "static address").unwrap().1).by_reconfigure());
    }

    #[test]
    fn a_shrunk_disk_is_impossible() {
        let c = one(|s| s.resources.disk = Size(1 << 30));
        assert!(matches!(c, Change::Shrink { disk: Disk::Root, .. }));
        assert_eq!(c.class(), ChangeClass::Impossible);
        assert_eq!(c.describe(), "  disk: 5G -> 1G: IMPOSSIBLE, refused (disks only grow; shrinking would lose data)");
    }

    #[test]
    fn disks_with_snapshots_cannot_grow_and_say_why() {
        let (cur, mut want) = (base(), base());
        want.resources.project_disk = Size(4 << 30);
        let act = Actual { snapshots: 2, ..actual_of(&cur) };
        let changes = diff(&cur, &act, &want);
        assert!(matches!(changes[..], [Change::GrowWithSnapshots { disk: Disk::Project, .. }]), "{changes:?}");
        assert_eq!(changes[0].class(), ChangeClass::Impossible);
        assert!(changes[0].note().contains("snapshot delete"), "{}", changes[0].note());
    }

    #[test]
    fn classification_table() {
        for (what, edit, field, class) in edits() {
            let c = one(edit);
            assert_eq!((c.field(), c.class()), (field, class), "{what}");
        }
        let s = base();
        assert!(diff(&s, &actual_of(&s), &s).is_empty(), "no change, no plan");
    }

    #[test]
    fn disks_compare_against_real_capacity() {
        // A reattached project disk larger than declared is a shrink: refused.
        let s = base();
        let a = Actual { data_capacity: 10 << 30, ..actual_of(&s) };
        let c = diff(&s, &a, &s);
        assert!(matches!(c[..], [Change::Shrink { disk: Disk::Project, .. }]), "{c:?}");
    }

    #[test]
    fn json_keeps_its_fields() {
        let c = one(|s| s.accel = Accel::Tcg);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"field": "accel", "from": "kvm", "to": "tcg", "class": "next-restart", "note": ""})
        );
        assert_eq!(c.describe(), "  accel: kvm -> tcg: applies at next restart");
    }
}
