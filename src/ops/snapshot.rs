//! `snapshot create|list|revert|delete`: libvirt's snapshot API on the VM's
//! qcow2 disks.
//!
//! What a snapshot covers: the whole VM, so that a revert is consistent. Both
//! disks (root overlay and project disk) as qcow2 internal snapshots, and,
//! when taken while the VM runs, its memory and device state as well (libvirt's
//! internal checkpoint): reverting to it resumes the guest where it was. One
//! taken while stopped holds the disks only. The seed, a read-only CD-ROM, is
//! never part of one. Internal snapshots live inside the qcow2 files, so
//! they need no extra volumes and go when the disks go; while a VM has any,
//! qcow2 cannot grow its disks (`plan` says so).

use std::io::{self, Write};

use serde::Serialize;

use super::Ctx;
use super::Error;
use crate::libvirt::explain;
use crate::libvirt::metadata::Phase;
use crate::libvirt::snapshot_xml::{Disks, Mode, NewSnapshot, SnapshotDisk, SnapshotInfo};
use crate::libvirt::vms::{State, Vm};
use crate::output::{table, Report};

#[derive(Debug, Serialize)]
pub struct SnapshotEntry {
    pub vm: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Seconds since the epoch.
    pub created: u64,
    /// The VM's state when it was taken: `running` (memory included) or `shutoff`.
    pub state: String,
    pub memory: bool,
    /// The disks it covers (`vda` root, `vdb` project disk).
    pub disks: Vec<String>,
    /// The snapshot the VM was last taken at or reverted to.
    pub current: bool,
}

/// `snapshot list`.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct Snapshots(pub Vec<SnapshotEntry>);

#[derive(Debug, Serialize)]
pub struct Reverted {
    pub vm: String,
    pub snapshot: String,
    /// The VM's state after the revert.
    pub state: State,
    /// It was running before and is not now.
    pub stopped: bool,
}

#[derive(Debug, Serialize)]
pub struct Deleted {
    pub vm: String,
    pub snapshot: String,
}

fn validate(name: &str) -> anyhow::Result<()> {
    let mut c = name.chars();
    let ok = c.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 64
        && c.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid snapshot name {name:?}: use up to 64 letters, digits, '.', '_' and '-', starting with a letter or digit"
        ))
        .into())
    }
}

fn entry(vm: &Vm, snap: &virt::domain_snapshot::DomainSnapshot) -> anyhow::Result<SnapshotEntry> {
    let info = SnapshotInfo::parse(&snap.xml_desc(0).map_err(|e| explain(e, "reading a snapshot"))?)?;
    Ok(SnapshotEntry {
        vm: vm.name.to_string(),
        memory: info.has_memory(),
        disks: info.covered(),
        current: snap.is_current(0).unwrap_or(false),
        name: info.name,
        description: info.description,
        created: info.creation_time,
        state: info.state,
    })
}

pub fn list(_ctx: &Ctx, vm: &Vm) -> anyhow::Result<Snapshots> {
    let snaps = vm.dom.list_all_snapshots(0).map_err(|e| explain(e, format!("listing snapshots of {}", vm.name)))?;
    let mut out = snaps.iter().map(|s| entry(vm, s)).collect::<anyhow::Result<Vec<_>>>()?;
    out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    Ok(Snapshots(out))
}

fn find(vm: &Vm, name: &str) -> anyhow::Result<virt::domain_snapshot::DomainSnapshot> {
    validate(name)?;
    virt::domain::Domain::lookup_snapshot_by_name(&vm.dom, name, 0).map_err(|e| {
        match crate::libvirt::is(&e, virt::error::ErrorNumber::NoDomainSnapshot) {
            true => Error::NoSuchSnapshot { vm: vm.name.to_string(), name: name.to_owned() }.into(),
            false => explain(e, format!("looking up snapshot {name} of {}", vm.name)),
        }
    })
}

/// The default snapshot name: `snap-N`, one more than the highest taken so
/// far; past `snap-18446744073709551615` (or any number too large to add to)
/// the lowest free `snap-N` instead, so a default name is always found.
pub fn default_name<'a>(existing: impl Iterator<Item = &'a str>) -> String {
    let taken: std::collections::BTreeSet<u128> =
        existing.filter_map(|n| n.strip_prefix("snap-")?.parse::<u128>().ok()).collect();
    let next = match taken.last() {
        None => 1,
        Some(&n) if n < u64::MAX as u128 => n + 1,
        // No room above: the first gap from 1 (there is one: libvirt holds far fewer than 2^64 snapshots).
        Some(_) => (1..).find(|n| !taken.contains(n)).expect("a free number"),
    };
    format!("snap-{next}")
}

fn ready(vm: &Vm) -> anyhow::Result<()> {
    if vm.own.phase == Phase::Creating {
        return Err(Error::HalfMade(format!(
            "{} is half-made (its create did not finish): nothing to snapshot",
            vm.name
        ))
        .into());
    }
    if vm.spec().is_ok_and(|s| s.firmware == crate::spec::Firmware::Efi) {
        return Err(Error::Invalid(format!(
            "{} boots UEFI: libvirt cannot take internal snapshots of its firmware variables (NVRAM), so project-vm snapshots are for BIOS VMs",
            vm.name
        ))
        .into());
    }
    Ok(())
}

pub fn create(ctx: &Ctx, vm: &Vm, name: Option<&str>, description: Option<&str>) -> anyhow::Result<SnapshotEntry> {
    let _lock = super::vm_lock(ctx, &vm.name, "snapshotting")?;
    ready(vm)?;
    let existing = list(ctx, vm)?.0;
    let name = match name {
        Some(n) => {
            check_new_name(vm.name.as_str(), n, &existing)?;
            n.to_owned()
        }
        None => default_name(existing.iter().map(|s| s.name.as_str())),
    };
    take(vm, &name, description)
}

/// A name `snapshot create` may give: valid, not a stage snapshot's (those
/// are taken by the first provisioning alone), not taken.
fn check_new_name(vm: &str, n: &str, existing: &[SnapshotEntry]) -> anyhow::Result<()> {
    validate(n)?;
    if let Some(stage) = Stage::named(n) {
        return Err(Error::Invalid(format!(
            "{n} is the name of a stage snapshot, taken only by the first provisioning's --wait ({}): pick another name",
            stage.moment()
        ))
        .into());
    }
    if existing.iter().any(|s| s.name == n) {
        return Err(Error::Invalid(format!("{vm} already has a snapshot {n}: pick another name")).into());
    }
    Ok(())
}

/// Takes snapshot `name` of `vm` as it is now (running: disks and memory;
/// stopped: disks), with no lock taken and no name rule checked: for
/// [`create`] and the stage snapshots, whose callers did both.
pub(crate) fn take(vm: &Vm, name: &str, description: Option<&str>) -> anyhow::Result<SnapshotEntry> {
    let running = matches!(vm.state(), State::Running | State::Paused);
    let mut disks = vec![
        SnapshotDisk { name: "vda".into(), snapshot: "internal".into() },
        SnapshotDisk { name: "vdb".into(), snapshot: "internal".into() },
    ];
    if vm.own.seed_volume.is_some() {
        disks.push(SnapshotDisk { name: "sda".into(), snapshot: "no".into() });
    }
    let xml = NewSnapshot {
        name: name.to_owned(),
        description: description.map(String::from),
        memory: Mode { snapshot: if running { "internal" } else { "no" }.into() },
        disks: Disks { disk: disks },
    }
    .to_xml();
    let snap = vm
        .dom
        .create_snapshot_xml(&xml, 0)
        .map_err(|e| explain(e, format!("taking snapshot {name} of {}", vm.name)))?;
    crate::fault::mutated("took a snapshot");
    entry(vm, &snap)
}

/// Whether `vm` has a snapshot `name`.
pub(crate) fn exists(vm: &Vm, name: &str) -> anyhow::Result<bool> {
    match find(vm, name) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.downcast_ref::<Error>(), Some(Error::NoSuchSnapshot { .. })) => Ok(false),
        Err(e) => Err(e),
    }
}

/// [`ready`] for the stage snapshots: a half-made or UEFI VM has none.
pub(crate) fn snapshottable(vm: &Vm) -> anyhow::Result<()> {
    ready(vm)
}

pub fn revert(ctx: &Ctx, vm: &Vm, name: &str) -> anyhow::Result<Reverted> {
    let _lock = super::vm_lock(ctx, &vm.name, "reverting")?;
    ready(vm)?;
    let snap = find(vm, name)?;
    let was_running = vm.state() == State::Running;
    // A running VM stays running, even when the snapshot was taken stopped.
    let flags = if was_running { virt::sys::VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING } else { 0 };
    snap.revert(flags).map_err(|e| explain(e, format!("reverting {} to {name}", vm.name)))?;
    crate::fault::mutated("reverted to a snapshot");
    let state = vm.state();
    Ok(Reverted {
        vm: vm.name.to_string(),
        snapshot: name.to_owned(),
        stopped: was_running && state != State::Running,
        state,
    })
}

pub fn delete(ctx: &Ctx, vm: &Vm, name: &str) -> anyhow::Result<Deleted> {
    let _lock = super::vm_lock(ctx, &vm.name, "deleting a snapshot of")?;
    find(vm, name)?.delete(0).map_err(|e| explain(e, format!("deleting snapshot {name} of {}", vm.name)))?;
    crate::fault::mutated("deleted a snapshot");
    Ok(Deleted { vm: vm.name.to_string(), snapshot: name.to_owned() })
}

/// Every snapshot of `vm`, deleted through libvirt (which removes them from
/// the qcow2 files too): for `destroy --keep-data`, so a kept disk carries no
/// snapshot of a VM that is gone.
pub fn delete_all(vm: &Vm) -> anyhow::Result<usize> {
    let roots = vm
        .dom
        .list_all_snapshots(virt::sys::VIR_DOMAIN_SNAPSHOT_LIST_ROOTS)
        .map_err(|e| explain(e, format!("listing snapshots of {}", vm.name)))?;
    for s in &roots {
        s.delete(virt::sys::VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN)
            .map_err(|e| explain(e, format!("deleting the snapshots of {}", vm.name)))?;
        crate::fault::mutated("deleted snapshots");
    }
    Ok(roots.len())
}

impl Report for SnapshotEntry {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let what = if self.memory { "disks and memory" } else { "disks" };
        writeln!(out, "{}: snapshot {} ({what}: {})", self.vm, self.name, self.disks.join(", "))
    }
}

impl Report for Snapshots {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let rows: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|s| {
                vec![
                    format!("{}{}", s.name, if s.current { " *" } else { "" }),
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.created),
                    )
                    .to_string(),
                    s.state.clone(),
                    if s.memory { "yes".into() } else { "no".into() },
                    s.disks.join(","),
                    s.description.clone().unwrap_or_default(),
                ]
            })
            .collect();
        table(out, &["NAME", "CREATED", "STATE", "MEMORY", "DISKS", "DESCRIPTION"], &rows)
    }
}

impl Report for Reverted {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let note = if self.stopped { " (it was running; the snapshot left it stopped)" } else { "" };
        writeln!(out, "{}: reverted to {}, now {}{note}", self.vm, self.snapshot, self.state.as_str())
    }
}

impl Report for Deleted {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}: deleted snapshot {}", self.vm, self.snapshot)
    }
}

/// The stage snapshots' moments (taken by `ops::stages`); their names are
/// reserved here.
/// A point of a VM's first provisioning at which a snapshot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The features are done; the application script has not run.
    PreConfigured,
    /// The application script ran and the checks passed.
    FinalForm,
}

impl Stage {
    /// In the order a provisioning reaches them.
    pub const ALL: [Stage; 2] = [Stage::PreConfigured, Stage::FinalForm];

    /// The snapshot taken at this stage.
    pub fn snapshot_name(self) -> &'static str {
        match self {
            Stage::PreConfigured => "pre-configured",
            Stage::FinalForm => "final-form",
        }
    }

    /// The stage a snapshot name belongs to (such names are reserved).
    pub fn named(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.snapshot_name() == name)
    }

    /// When it is taken, for people (and the snapshot's description).
    pub fn moment(self) -> &'static str {
        match self {
            Stage::PreConfigured => "once the features are done, before the application script",
            Stage::FinalForm => "once the application script and the checks passed",
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Whether `name` passes the snapshot-name rules.
    pub fn valid(name: &str) -> bool {
        validate(name).is_ok()
    }

    #[test]
    fn stage_snapshot_names_are_for_the_first_provisioning_alone() {
        for n in ["pre-configured", "final-form"] {
            let e = check_new_name("web", n, &[]).unwrap_err();
            assert!(matches!(e.downcast_ref::<Error>(), Some(Error::Invalid(_))), "{e:#}");
            assert_eq!(crate::exit::code(&e), 2);
            assert!(e.to_string().contains("stage snapshot"), "{e}");
        }
        check_new_name("web", "final-form-2", &[]).unwrap();
        let taken = SnapshotEntry {
            vm: "web".into(),
            name: "mine".into(),
            description: None,
            created: 0,
            state: "running".into(),
            memory: true,
            disks: vec![],
            current: true,
        };
        let e = check_new_name("web", "mine", &[taken]).unwrap_err();
        assert_eq!(e.to_string(), "web already has a snapshot mine: pick another name");
    }

    #[test]
    fn default_names_count_up_and_never_overflow() {
        assert_eq!(default_name([].into_iter()), "snap-1");
        assert_eq!(default_name(["snap-1", "snap-7", "mine"].into_iter()), "snap-8");
        assert_eq!(default_name(["snap-18446744073709551614"].into_iter()), "snap-18446744073709551615");
        assert_eq!(default_name(["snap-18446744073709551615"].into_iter()), "snap-1");
        assert_eq!(default_name(["snap-18446744073709551615", "snap-1", "snap-2"].into_iter()), "snap-3");
        let huge = "snap-99999999999999999999999999999999999999999";
        assert_eq!(default_name([huge, "snap-1"].into_iter()), "snap-2");
    }

    #[test]
    fn a_bad_snapshot_name_is_invalid_and_a_missing_one_not_found() {
        let e = validate("-x").unwrap_err();
        assert!(matches!(e.downcast_ref::<Error>(), Some(Error::Invalid(_))), "{e:#}");
        assert_eq!(crate::exit::code(&e), 2);
        validate("before-upgrade.1").unwrap();
        let e = anyhow::Error::from(Error::NoSuchSnapshot { vm: "web".into(), name: "s1".into() });
        assert_eq!(crate::exit::code(&e), 3);
        assert_eq!(e.to_string(), "web has no snapshot s1: see `project-vm snapshot list web`");
    }
}
