//! `plan`: what `apply` would do to bring the host to a declarative file.
//!
//! Desired and actual state are compared semantically: the spec recorded in
//! each domain's metadata, and the real capacities of its volumes. The XML
//! libvirt returns is never compared, so its reordering and defaults cause
//! no spurious changes, and an unchanged file plans nothing at all.

use std::io::{self, Write};

use serde::Serialize;

use super::create::{self, CreateRequest};
use super::{Ctx, PoolListings};
use crate::config::{Declared, VmDecl};
use crate::libvirt::pool_listing::PoolListing;
use crate::libvirt::vms::{self, State, Surveyed, Vm};
use crate::output::Report;
use crate::spec::{Size, VmName, VmSpec};

/// How a change reaches the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub field: &'static str,
    pub from: String,
    pub to: String,
    pub class: Class,
    pub note: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Create,
    Update,
    Nothing,
    /// In the file's place, not in the file: destroyed with `--prune`.
    Prune,
    /// Owned VM not in the file, left alone (no `--prune`).
    NotInFile,
    /// Its host did not answer: nothing can be planned (the error says why).
    Unreachable,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmPlan {
    /// The fleet host (only with `hosts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub name: String,
    pub action: Action,
    /// Why nothing could be planned (an unreachable host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Moving between hosts: `from HOST` on the create, `to HOST` on the
    /// destroy. The project disk stays where it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved: Option<String>,
    pub changes: Vec<Change>,
    /// It will be started (autostart and not running).
    pub start: bool,
    /// It will be restarted (`--restart`, running, and a next-restart change
    /// now or pending from an earlier apply).
    pub restart: bool,
    /// Running with memory or CPUs that differ from its definition: an earlier
    /// change waits for a restart.
    pub restart_pending: bool,
    /// It will be rebuilt (`--recreate` and a change that needs it).
    pub recreate: bool,
    /// Half-made: a create (or destroy) was interrupted. `apply` undoes what
    /// is left, keeping the project disk, and creates it again.
    pub interrupted: bool,
    #[serde(skip)]
    pub desired: Option<VmSpec>,
    #[serde(skip)]
    pub decl: Option<VmDecl>,
}

impl VmPlan {
    /// How reports name it: `web`, or `web (gpu)` on a fleet host.
    pub fn label(&self) -> String {
        match &self.host {
            Some(h) => format!("{} ({h})", self.name),
            None => self.name.clone(),
        }
    }

    /// A plan with no changes and nothing to start.
    pub fn new(name: &str, action: Action) -> VmPlan {
        VmPlan {
            host: None,
            name: name.into(),
            action,
            error: None,
            moved: None,
            changes: vec![],
            start: false,
            restart: false,
            restart_pending: false,
            recreate: false,
            interrupted: false,
            desired: None,
            decl: None,
        }
    }

    /// True when `apply` would change something.
    pub fn acts(&self) -> bool {
        matches!(self.action, Action::Create | Action::Prune)
            || self.start
            || self.restart
            || self.recreate
            || self.changes.iter().any(|c| matches!(c.class, Class::Now | Class::NextRestart))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub vms: Vec<VmPlan>,
    /// Hosts that did not answer, with libvirt's error: their VMs are not planned.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts_down: Vec<String>,
    /// VMs `apply` would change.
    pub changes: usize,
    /// Changes reported but not applied (cloud-init, or needing --recreate).
    pub not_applied: usize,
    /// Refused changes; `apply` does nothing while there are any.
    pub impossible: usize,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub prune: bool,
    /// Prune (and report VMs not in the file) beyond the settings' pool.
    pub all_pools: bool,
    pub restart: bool,
    pub recreate: bool,
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

fn size_change(
    field: &'static str,
    actual: u64,
    desired: Size,
    snapshots: u32,
    note_grow: &'static str,
) -> Option<Change> {
    let (from, to) = (Size(actual).to_string(), desired.to_string());
    if desired.bytes() > actual && snapshots > 0 {
        let note = "qcow2 cannot grow a disk that has snapshots: delete them first (`project-vm snapshot list`, `snapshot delete`)";
        Some(Change { field, from, to, class: Class::Impossible, note })
    } else if desired.bytes() > actual {
        Some(Change { field, from, to, class: Class::Now, note: note_grow })
    } else if desired.bytes() < actual {
        Some(Change { field, from, to, class: Class::Impossible, note: "disks only grow; shrinking would lose data" })
    } else {
        None
    }
}

/// The changes from `current` (recorded) and `actual` to `desired`. Pure: the
/// heart of `plan`, tested table-driven.
pub fn diff(current: &VmSpec, actual: &Actual, desired: &VmSpec) -> Vec<Change> {
    let mut out = Vec::new();
    let mut compare = |field: &'static str, from: String, to: String, class: Class, note: &'static str| {
        if from != to {
            out.push(Change { field, from, to, class, note });
        }
    };
    let (cur, want) = (&current.resources, &desired.resources);
    compare("memory", cur.memory.to_string(), want.memory.to_string(), Class::NextRestart, "");
    compare("cpus", cur.cpus.to_string(), want.cpus.to_string(), Class::NextRestart, "");
    compare("accel", json(&current.accel), json(&desired.accel), Class::NextRestart, "");
    compare("network", json(&current.network), json(&desired.network), Class::NextRestart, "");
    compare(
        "image",
        current.base_image.clone(),
        desired.base_image.clone(),
        Class::NeedsRecreate,
        "rebuilds the root disk from the new image; the project disk is kept",
    );
    compare(
        "cloud-init",
        current.cloud_init_hash.clone(),
        desired.cloud_init_hash.clone(),
        Class::NotApplied,
        "cloud-init (user, keys, features, user_data, tailnet) only runs on a VM's first boot; --recreate applies it and keeps the project disk",
    );
    compare(
        "firmware",
        json(&current.firmware),
        json(&desired.firmware),
        Class::NeedsRecreate,
        "the root disk must boot the new way; --recreate rebuilds it, keeping the project disk",
    );
    compare(
        "hostdevs",
        json(&current.hostdevs),
        json(&desired.hostdevs),
        Class::NextRestart,
        "devices are attached when the VM starts",
    );
    compare(
        "shares",
        json(&current.shares),
        json(&desired.shares),
        Class::NextRestart,
        "virtiofs devices come with the next start (mounted by fstab, nofail)",
    );
    compare(
        "ports",
        json(&current.ports),
        json(&desired.ports),
        Class::NextRestart,
        "passt forwards the declared ports from the VM's next start (user networking)",
    );
    compare(
        "network_config",
        json(&current.network_config),
        json(&desired.network_config),
        Class::NotApplied,
        "cloud-init applies network config on the first boot only; --recreate applies it (project disk kept)",
    );
    compare("autostart", actual.autostart.to_string(), desired.autostart.to_string(), Class::Now, "");
    // Disks compare against the volumes' real capacity, and may only grow.
    out.extend(size_change(
        "disk",
        actual.root_capacity,
        want.disk,
        actual.snapshots,
        "the root filesystem grows at next boot",
    ));
    out.extend(size_change(
        "project_disk",
        actual.data_capacity,
        want.project_disk,
        actual.snapshots,
        "the filesystem on /project grows at next boot",
    ));
    out
}

/// A value as shown in a change: its JSON text (`tcg`, `{"type":"user",...}`).
fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default().trim_matches('"').to_owned()
}

pub fn request(decl: &VmDecl) -> anyhow::Result<CreateRequest> {
    Ok(CreateRequest {
        name: decl.name.clone(),
        resources: decl.resources,
        image: decl.image.clone(),
        user_data: decl.user_data.as_deref().map(CreateRequest::load_user_data).transpose()?,
        features: decl.features.clone(),
        autostart: decl.autostart,
        devices: devices(decl),
    })
}

fn devices(decl: &VmDecl) -> super::create::Devices {
    super::create::Devices {
        firmware: decl.firmware,
        network_config: decl.network_config.clone(),
        hostdevs: decl.hostdevs.clone(),
        shares: decl.shares.clone(),
        ports: decl.ports.clone(),
    }
}

/// What exists of `s`, from the survey and its pool's listing: no call to
/// libvirt but, when a disk is to grow, the snapshot count (qcow2 cannot
/// grow a disk that has internal snapshots).
fn actual(s: &Surveyed, pool: Option<&PoolListing>, spec: &VmSpec, desired: &VmSpec) -> anyhow::Result<Actual> {
    let cap = |name: &str| -> anyhow::Result<u64> {
        Ok(match pool {
            Some(p) => p.sizes(name)?.map(|z| z.capacity).unwrap_or(0),
            None => 0,
        })
    };
    let (root_capacity, data_capacity) = (cap(&s.vm.own.root_volume)?, cap(&s.vm.own.data_volume)?);
    let grows =
        desired.resources.disk.bytes() > root_capacity || desired.resources.project_disk.bytes() > data_capacity;
    let running = s.state == State::Running;
    Ok(Actual {
        restart_pending: running && (s.max_memory != spec.resources.memory.bytes() || s.vcpus != spec.resources.cpus),
        root_capacity,
        data_capacity,
        autostart: s.autostart,
        running,
        snapshots: if grows { s.vm.dom.num_snapshots(0).unwrap_or(0) } else { 0 },
    })
}

/// The plan: one survey of the host (a few bulk calls and one per VM),
/// then a pure comparison per declared VM. A re-apply of an unchanged file
/// costs about a millisecond per VM.
pub fn plan(ctx: &Ctx, declared: &Declared, opts: Options) -> anyhow::Result<Plan> {
    let existing: std::collections::HashMap<VmName, Surveyed> =
        vms::survey(&ctx.conn())?.into_iter().map(|s| (s.vm.name.clone(), s)).collect();
    let mut pools = PoolListings::default();
    let keys = ctx.settings.authorized_keys()?;
    let mut out = Vec::new();
    for decl in declared.vms.values() {
        let mut req = request(decl)?;
        if !req.devices.shares.is_empty() {
            // As create records them (sources resolved); a refusal is reported by check_needs.
            if let Ok(d) = req.devices.check(ctx) {
                req.devices.shares = d.shares;
            }
        }
        let base = create::base_name(ctx, decl.image.as_deref());
        let found = existing.get(&decl.name);
        // A VM of this name in another pool was made with other settings:
        // never grown, redefined or rebuilt from here (nor undone when half-made).
        if let Some(s) = found.filter(|s| !opts.all_pools && s.vm.own.pool != ctx.settings.pool) {
            out.push(VmPlan {
                changes: vec![Change {
                    field: "pool",
                    from: s.vm.own.pool.clone(),
                    to: ctx.settings.pool.clone(),
                    class: Class::Impossible,
                    note: "a VM of this name lives in another pool (made with other settings): plan and apply never reach into another pool; manage it there, pass --all-pools to manage it from here, or give this one another name",
                }],
                decl: Some(decl.clone()),
                ..VmPlan::new(decl.name.as_str(), Action::Nothing)
            });
            continue;
        }
        let interrupted = match found {
            Some(s) => half_made(&s.vm, pools.get(ctx, &s.vm.own.pool)?),
            None => false,
        };
        match found.filter(|_| !interrupted) {
            None => {
                // Fails here, before anything is made, when there is no base image etc.
                if let vms::Lookup::Foreign(why) = vms::lookup(&ctx.conn(), &decl.name)? {
                    return Err(vms::foreign(&decl.name, why.as_deref()));
                }
                let desired = create::desired_spec(ctx, &req, &keys, base, None);
                out.push(VmPlan {
                    start: decl.autostart,
                    interrupted,
                    desired: Some(desired),
                    decl: Some(decl.clone()),
                    ..VmPlan::new(decl.name.as_str(), Action::Create)
                });
            }
            Some(s) => {
                let current = s.vm.spec()?;
                let desired = create::desired_spec(ctx, &req, &keys, base, current.ssh_port);
                let act = actual(s, pools.get(ctx, &s.vm.own.pool)?, &current, &desired)?;
                let changes = diff(&current, &act, &desired);
                let recreate = opts.recreate
                    && changes.iter().any(|c| matches!(c.class, Class::NeedsRecreate | Class::NotApplied));
                let restart = !recreate
                    && opts.restart
                    && act.running
                    && (act.restart_pending || changes.iter().any(|c| c.class == Class::NextRestart));
                let start = decl.autostart && !act.running && !recreate;
                let mut p = VmPlan {
                    host: None,
                    name: decl.name.to_string(),
                    action: Action::Nothing,
                    error: None,
                    moved: None,
                    changes,
                    start,
                    restart,
                    restart_pending: act.restart_pending,
                    recreate,
                    interrupted: false,
                    desired: Some(desired),
                    decl: Some(decl.clone()),
                };
                if p.acts() {
                    p.action = Action::Update;
                }
                out.push(p);
            }
        }
    }
    // Only VMs in this file's pool are this file's to prune: another user's,
    // or another settings file's, live in other pools.
    let in_scope = |vm: &&Vm| opts.all_pools || vm.own.pool == ctx.settings.pool;
    let mut others: Vec<&Vm> =
        existing.values().map(|s| &s.vm).filter(in_scope).filter(|vm| !declared.vms.contains_key(&vm.name)).collect();
    others.sort_by(|a, b| a.name.cmp(&b.name));
    for vm in others {
        out.push(VmPlan::new(vm.name.as_str(), if opts.prune { Action::Prune } else { Action::NotInFile }));
    }
    check_needs(ctx, declared, &out)?;
    let mut plan = Plan { vms: out, hosts_down: vec![], changes: 0, not_applied: 0, impossible: 0 };
    plan.recount(opts);
    Ok(plan)
}

impl Plan {
    /// Exit 4 when a host did not answer (what could be planned is shown).
    pub fn check(&self) -> anyhow::Result<()> {
        match self.hosts_down.is_empty() {
            true => Ok(()),
            false => Err(crate::error::failure(
                crate::error::Kind::Environment,
                format!("unreachable, not planned:\n  {}", self.hosts_down.join("\n  ")),
            )),
        }
    }

    /// The totals, from the VMs' plans.
    pub(super) fn recount(&mut self, opts: Options) {
        let count = |f: &dyn Fn(&Change) -> bool| self.vms.iter().flat_map(|p| &p.changes).filter(|c| f(c)).count();
        self.not_applied =
            if opts.recreate { 0 } else { count(&|c| matches!(c.class, Class::NotApplied | Class::NeedsRecreate)) };
        self.impossible = count(&|c| c.class == Class::Impossible);
        self.changes = self.vms.iter().filter(|p| p.acts()).count();
    }
}

/// Everything `apply` will need for the VMs it creates or rebuilds: an image
/// it can use or fetch, and a disk at least as large as that image. Every
/// problem is reported at once, before anything is changed.
fn check_needs(ctx: &Ctx, declared: &Declared, plans: &[VmPlan]) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let mut images: std::collections::BTreeMap<String, Result<Option<u64>, String>> = Default::default();
    if plans.iter().any(|p| p.action == Action::Create || p.recreate) {
        if let Err(e) = crate::libvirt::check_network(&ctx.conn(), &ctx.settings.network, ctx.is_local()) {
            problems.push(format!("network: {e:#}"));
        }
    }
    // Devices, for every VM that gets them now or at its next start.
    let devices_change = |p: &&VmPlan| {
        p.action == Action::Create
            || p.recreate
            || p.changes.iter().any(|c| c.field == "shares" || c.field == "hostdevs")
    };
    for p in plans.iter().filter(devices_change) {
        let Some(decl) = declared.vms.values().find(|d| d.name.as_str() == p.name) else { continue };
        if let Err(e) = devices(decl).check(ctx) {
            problems.push(format!("vms.{}: {e:#}", p.name));
        }
    }
    problems.extend(check_ports(ctx, declared, plans));
    for p in plans.iter().filter(|p| p.action == Action::Create || p.recreate) {
        let Some(decl) = declared.vms.values().find(|d| d.name.as_str() == p.name) else { continue };
        let image = decl.image.clone().unwrap_or_else(|| ctx.settings.base_image.clone());
        if !images.contains_key(&image) {
            images.insert(image.clone(), super::pull::check(ctx, &image)?);
        }
        match &images[&image] {
            Err(why) => problems.push(format!("vms.{}: {why}", p.name)),
            Ok(Some(capacity)) if decl.resources.disk.bytes() < *capacity => problems.push(format!(
                "vms.{}: disk {} is smaller than its image {image} ({}): give at least {}",
                p.name,
                decl.resources.disk,
                Size(*capacity),
                Size(capacity.div_ceil(1 << 30) << 30)
            )),
            Ok(_) => {}
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(crate::error::invalid(format!("apply would fail; nothing was changed:\n  {}", problems.join("\n  "))))
}

/// The declared ports each VM gets now or at its next start: free on the
/// host, not privileged, not another VM's (those it forwards already pass).
fn check_ports(ctx: &Ctx, declared: &Declared, plans: &[VmPlan]) -> Vec<String> {
    let mut problems = Vec::new();
    for p in plans {
        let Some(decl) = declared.vms.values().find(|d| d.name.as_str() == p.name) else { continue };
        let change = p.changes.iter().find(|c| c.field == "ports");
        let current: Vec<crate::spec::Port> = match (p.action, change) {
            (Action::Create, _) => Vec::new(),
            (_, Some(c)) => serde_json::from_str(&c.from).unwrap_or_default(),
            (_, None) => continue,
        };
        if let Err(e) = super::forward::check_declared(ctx, &decl.name, &decl.ports, &current) {
            problems.push(format!("vms.{}.ports: {e:#}", p.name));
        }
    }
    problems
}

/// A VM whose create was interrupted (its record still says `creating`), or
/// whose destroy was (its root disk is gone): never "nothing to do".
fn half_made(vm: &Vm, pool: Option<&PoolListing>) -> bool {
    vm.own.phase == crate::libvirt::metadata::Phase::Creating || !pool.is_some_and(|p| p.exists(&vm.own.root_volume))
}

/// One line per VM, for people.
pub fn describe(p: &VmPlan) -> Vec<String> {
    let mut lines = Vec::new();
    let label = p.label();
    let head = match p.action {
        Action::Create => format!(
            "{}: create{}{}{}",
            label,
            p.moved.as_ref().map(|m| format!(" (moved {m}; new project disk)")).unwrap_or_default(),
            if p.start { ", start" } else { "" },
            if p.interrupted { " (half-made by an interrupted run: undone first, project disk kept)" } else { "" }
        ),
        Action::Nothing if p.error.is_some() => format!("{label}: {}", p.error.as_deref().unwrap_or_default()),
        Action::Nothing => format!("{label}: nothing to do"),
        Action::Prune if p.moved.is_some() => format!(
            "{}: destroy (moved {}; its project disk is kept here)",
            label,
            p.moved.as_deref().unwrap_or_default()
        ),
        Action::Prune => format!("{label}: destroy (not in the file; --prune)"),
        Action::Unreachable => format!("{}: not planned: {}", label, p.error.as_deref().unwrap_or("host unreachable")),
        Action::NotInFile => {
            format!("{label}: not in the file; kept (--prune would destroy it, keeping its project disk)")
        }
        Action::Update => {
            let mut what = vec![];
            if p.recreate {
                what.push("recreate (project disk kept)");
            }
            if p.restart {
                what.push("restart");
            }
            if p.start {
                what.push("start");
            }
            if what.is_empty() {
                format!("{label}: update")
            } else {
                format!("{}: update, {}", label, what.join(", "))
            }
        }
    };
    lines.push(head);
    if p.restart_pending && !p.restart {
        lines.push(
            "  restart pending: the running guest has not picked up its new memory/cpus (apply --restart)".into(),
        );
    }
    for c in &p.changes {
        let class = match c.class {
            Class::Now => "applies now",
            Class::NextRestart => "applies at next restart",
            Class::NeedsRecreate => "needs --recreate",
            Class::NotApplied => "NOT APPLIED",
            Class::Impossible => "IMPOSSIBLE, refused",
        };
        let note = if c.note.is_empty() { String::new() } else { format!(" ({})", c.note) };
        if c.field == "cloud-init" {
            lines.push(format!("  cloud-init changed: {class}{note}"));
        } else {
            lines.push(format!("  {}: {} -> {}: {class}{note}", c.field, c.from, c.to));
        }
    }
    lines
}

impl Report for Plan {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        for p in &self.vms {
            for line in describe(p) {
                writeln!(out, "{line}")?;
            }
        }
        writeln!(
            out,
            "{} change{}, {} not applied, {} impossible",
            self.changes,
            if self.changes == 1 { "" } else { "s" },
            self.not_applied,
            self.impossible
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::domain_xml::tests::spec;
    use crate::settings::{Accel, Network};

    fn actual_of(s: &VmSpec) -> Actual {
        Actual {
            root_capacity: s.resources.disk.bytes(),
            data_capacity: s.resources.project_disk.bytes(),
            autostart: s.autostart,
            running: true,
            restart_pending: false,
            snapshots: 0,
        }
    }

    #[test]
    fn disks_with_snapshots_cannot_grow_and_say_why() {
        let base = spec(Network::default(), Accel::Kvm);
        let mut want = base.clone();
        want.resources.project_disk = Size(4 << 30);
        let act = Actual { snapshots: 2, ..actual_of(&base) };
        let changes = diff(&base, &act, &want);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].class, Class::Impossible);
        assert!(changes[0].note.contains("snapshot delete"), "{}", changes[0].note);
    }

    #[test]
    fn classification_table() {
        let base = spec(Network::default(), Accel::Kvm);
        type Edit = fn(&mut VmSpec);
        let cases: Vec<(&str, Edit, &str, Class)> = vec![
            ("memory", |s| s.resources.memory = Size(2 << 30), "memory", Class::NextRestart),
            ("cpus", |s| s.resources.cpus = 4, "cpus", Class::NextRestart),
            ("grow root", |s| s.resources.disk = Size(10 << 30), "disk", Class::Now),
            ("shrink root", |s| s.resources.disk = Size(1 << 30), "disk", Class::Impossible),
            ("grow data", |s| s.resources.project_disk = Size(4 << 30), "project_disk", Class::Now),
            ("shrink data", |s| s.resources.project_disk = Size(1 << 30), "project_disk", Class::Impossible),
            ("image", |s| s.base_image = "other.qcow2".into(), "image", Class::NeedsRecreate),
            ("cloud-init", |s| s.cloud_init_hash = "changed".into(), "cloud-init", Class::NotApplied),
            ("autostart", |s| s.autostart = true, "autostart", Class::Now),
            ("accel", |s| s.accel = Accel::Tcg, "accel", Class::NextRestart),
            ("network", |s| s.network = Network::Bridge { name: "br0".into() }, "network", Class::NextRestart),
            ("firmware", |s| s.firmware = crate::spec::Firmware::Efi, "firmware", Class::NeedsRecreate),
            ("hostdevs", |s| s.hostdevs = vec!["0000:01:00.0".parse().unwrap()], "hostdevs", Class::NextRestart),
            ("ports", |s| s.ports = vec!["8080:80".parse().unwrap()], "ports", Class::NextRestart),
            (
                "static address",
                |s| s.network_config = Some(serde_json::from_str(r#"{"address":"10.0.0.5/24"}"#).unwrap()),
                "network_config",
                Class::NotApplied,
            ),
        ];
        for (what, edit, field, class) in cases {
            let mut desired = base.clone();
            edit(&mut desired);
            let changes = diff(&base, &actual_of(&base), &desired);
            assert_eq!(changes.len(), 1, "{what}: {changes:?}");
            assert_eq!((changes[0].field, changes[0].class), (field, class), "{what}");
        }
        assert!(diff(&base, &actual_of(&base), &base).is_empty(), "no change, no plan");
    }

    #[test]
    fn disks_compare_against_real_capacity() {
        // A reattached project disk larger than declared is a shrink: refused.
        let s = spec(Network::default(), Accel::Kvm);
        let mut a = actual_of(&s);
        a.data_capacity = 10 << 30;
        let c = diff(&s, &a, &s);
        assert_eq!((c[0].field, c[0].class), ("project_disk", Class::Impossible));
    }

    #[test]
    fn what_counts_as_acting() {
        let mut p = VmPlan::new("a", Action::Nothing);
        assert!(!p.acts());
        p.changes.push(Change {
            field: "cloud-init",
            from: "a".into(),
            to: "b".into(),
            class: Class::NotApplied,
            note: "",
        });
        assert!(!p.acts(), "reported, not applied");
        p.changes.push(Change {
            field: "memory",
            from: "1G".into(),
            to: "2G".into(),
            class: Class::NextRestart,
            note: "",
        });
        assert!(p.acts());
        let lines = describe(&p);
        assert!(lines.iter().any(|l| l.contains("cloud-init changed: NOT APPLIED")), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("memory: 1G -> 2G: applies at next restart")), "{lines:?}");
    }
}
