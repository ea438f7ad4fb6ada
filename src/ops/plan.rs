//! `plan`: what `apply` would do to bring the host to a declarative file.
//!
//! Desired and actual state are compared semantically: the spec recorded in
//! each domain's metadata, and the real capacities of its volumes. The XML
//! libvirt returns is never compared, so its reordering and defaults cause
//! no spurious changes, and an unchanged file plans nothing at all.
//!
//! The plan is typed: each VM's [`Entry`] carries what its action needs,
//! and each [`Change`] its values and its [`ChangeClass`]; `apply` consumes
//! them as they are.

pub mod change;
pub mod entry;

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};

use serde::Serialize;

pub use self::change::{diff, Actual, Change, ChangeClass, Disk};
pub use self::entry::{describe, Action, Create, Entry, Prune, Reconfigure, Recreate, Unchanged, Update, VmPlan};
use super::create::{self, CreateRequest};
use super::{Ctx, PoolListings};
use crate::config::{Declared, VmDecl};
use crate::libvirt::pool_listing::PoolListing;
use crate::libvirt::vms::{self, State, Surveyed, Vm};
use crate::ops::Error;
use crate::output::Report;
use crate::spec::{Size, VmName, VmSpec};

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
    /// Provision VMs whose cloud-init changed again in place (`reconfigure`).
    pub reconfigure: bool,
}

fn request(decl: &VmDecl) -> anyhow::Result<CreateRequest> {
    Ok(CreateRequest {
        name: decl.name.clone(),
        resources: decl.resources,
        image: decl.image.clone(),
        user_data: decl.user_data.as_deref().map(CreateRequest::load_user_data).transpose()?,
        features: decl.features.clone(),
        autostart: decl.autostart,
        devices: devices(decl),
        stage_snapshots: decl.stage_snapshots,
        provision: create::Provision::load(decl.application_script.as_deref(), decl.checks.clone())?,
    })
}

fn devices(decl: &VmDecl) -> create::Devices {
    create::Devices {
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

/// What one run of `plan` reads once and uses for every VM.
struct Survey<'a> {
    ctx: &'a Ctx,
    opts: Options,
    existing: HashMap<VmName, Surveyed>,
    pools: PoolListings,
    keys: Vec<String>,
}

/// The plan: one survey of the host (a few bulk calls and one per VM),
/// then a pure comparison per declared VM. A re-apply of an unchanged file
/// costs about a millisecond per VM.
pub fn plan(ctx: &Ctx, declared: &Declared, opts: Options) -> anyhow::Result<Plan> {
    let mut survey = Survey {
        ctx,
        opts,
        existing: vms::survey(&ctx.conn())?.into_iter().map(|s| (s.vm.name.clone(), s)).collect(),
        pools: PoolListings::default(),
        keys: ctx.settings.authorized_keys()?,
    };
    let mut out = Vec::new();
    for decl in declared.vms.values() {
        out.push(survey.declared(decl)?);
    }
    out.extend(survey.not_in_file(declared));
    check_needs(ctx, declared, &out)?;
    let mut plan = Plan::of(out);
    plan.recount(opts);
    Ok(plan)
}

impl Survey<'_> {
    /// The plan of one declared VM.
    fn declared(&mut self, decl: &VmDecl) -> anyhow::Result<VmPlan> {
        let request = request(decl)?;
        let Some(found) = self.existing.get(&decl.name) else {
            return self.create(request, false);
        };
        // A VM of this name in another pool was made with other settings:
        // never grown, redefined or rebuilt from here (nor undone when half-made).
        if !self.opts.all_pools && found.vm.own.pool != self.ctx.settings.pool {
            let change = Change::Pool { from: found.vm.own.pool.clone(), to: self.ctx.settings.pool.clone() };
            return Ok(VmPlan::new(
                &decl.name,
                Entry::Unchanged(Unchanged { changes: vec![change], restart_pending: false }),
            ));
        }
        match half_made(&found.vm, self.pools.get(self.ctx, &found.vm.own.pool)?) {
            true => self.create(request, true),
            false => self.existing(decl, request),
        }
    }

    /// A VM to create (again, when `interrupted` left it half-made).
    fn create(&self, request: CreateRequest, interrupted: bool) -> anyhow::Result<VmPlan> {
        // Fails here, before anything is made, when the name is taken by a domain not ours.
        if let vms::Lookup::Foreign(why) = vms::lookup(&self.ctx.conn(), &request.name)? {
            return Err(vms::foreign(&request.name, why.as_deref()));
        }
        let name = request.name.clone();
        let start = request.autostart;
        Ok(VmPlan::new(&name, Entry::Create(Create { request, start, interrupted, moved_from: None })))
    }

    /// An existing VM: what differs, and what `apply` does about it.
    fn existing(&mut self, decl: &VmDecl, request: CreateRequest) -> anyhow::Result<VmPlan> {
        let ctx = self.ctx;
        let s = &self.existing[&decl.name];
        let current = s.vm.spec()?;
        let host = ctx.settings.host(&self.keys);
        let desired = VmSpec::resolve(&host, &resolved(ctx, &request).declaration(), base(ctx, decl), current.ssh_port);
        let act = actual(s, self.pools.get(ctx, &s.vm.own.pool)?, &current, &desired)?;
        let changes = diff(&current, &act, &desired);
        Ok(VmPlan::new(&decl.name, decide(changes, &act, request, self.opts)))
    }

    /// Owned VMs in scope that the file does not declare: pruned or kept.
    fn not_in_file(&self, declared: &Declared) -> Vec<VmPlan> {
        // Only VMs in this file's pool are this file's to prune: another user's,
        // or another settings file's, live in other pools.
        let in_scope = |vm: &&Vm| self.opts.all_pools || vm.own.pool == self.ctx.settings.pool;
        let mut others: Vec<&Vm> = self
            .existing
            .values()
            .map(|s| &s.vm)
            .filter(in_scope)
            .filter(|vm| !declared.vms.contains_key(&vm.name))
            .collect();
        others.sort_by(|a, b| a.name.cmp(&b.name));
        let entry = || if self.opts.prune { Entry::Prune(Prune::default()) } else { Entry::NotInFile };
        others.into_iter().map(|vm| VmPlan::new(&vm.name, entry())).collect()
    }
}

/// The request with its shares as create records them (sources resolved);
/// a refusal is reported by [`check_needs`].
fn resolved(ctx: &Ctx, request: &CreateRequest) -> CreateRequest {
    let mut req = request.clone();
    if !req.devices.shares.is_empty() {
        if let Ok(d) = req.devices.check(ctx) {
            req.devices.shares = d.shares;
        }
    }
    req
}

fn base(ctx: &Ctx, decl: &VmDecl) -> String {
    create::base_name(ctx, decl.image.as_deref())
}

/// What `apply` does with an existing VM's changes: rebuild it (`--recreate`
/// and a change only a rebuild carries out), update it in place (a change
/// that applies, a start, a restart), or nothing.
pub fn decide(changes: Vec<Change>, act: &Actual, request: CreateRequest, opts: Options) -> Entry {
    let restart_pending = act.restart_pending;
    if opts.recreate && changes.iter().any(|c| c.class().needs_rebuild()) {
        return Entry::Recreate(Recreate { request, changes, restart_pending });
    }
    if opts.reconfigure && changes.iter().any(Change::by_reconfigure) {
        return Entry::Reconfigure(Reconfigure { request, changes, restart_pending });
    }
    let restart = opts.restart
        && act.running
        && (act.restart_pending || changes.iter().any(|c| c.class() == ChangeClass::NextRestart));
    let start = request.autostart && !act.running;
    if start || restart || changes.iter().any(|c| c.class().applies()) {
        Entry::Update(Update { changes, start, restart, restart_pending })
    } else {
        Entry::Unchanged(Unchanged { changes, restart_pending })
    }
}

impl Plan {
    /// A plan of these VMs, not counted yet.
    pub fn of(vms: Vec<VmPlan>) -> Plan {
        Plan { vms, hosts_down: vec![], changes: 0, not_applied: 0, impossible: 0 }
    }

    /// Exit 4 when a host did not answer (what could be planned is shown).
    pub fn check(&self) -> anyhow::Result<()> {
        match self.hosts_down.is_empty() {
            true => Ok(()),
            false => {
                Err(Error::Environment(format!("unreachable, not planned:\n  {}", self.hosts_down.join("\n  "))).into())
            }
        }
    }

    /// The totals, from the VMs' plans.
    pub(super) fn recount(&mut self, opts: Options) {
        let count = |f: &dyn Fn(ChangeClass) -> bool| {
            self.vms.iter().flat_map(|p| p.changes()).filter(|c| f(c.class())).count()
        };
        let carried = |c: &Change| opts.recreate || (opts.reconfigure && c.by_reconfigure());
        self.not_applied =
            self.vms.iter().flat_map(|p| p.changes()).filter(|c| c.class().needs_rebuild() && !carried(c)).count();
        self.impossible = count(&|c| c == ChangeClass::Impossible);
        self.changes = self.vms.iter().filter(|p| p.acts()).count();
    }

    /// Every impossible change, as `VM: field from -> to: why`.
    pub fn refused(&self) -> Vec<String> {
        let line = |p: &VmPlan, c: &Change| {
            let (from, to) = c.texts();
            format!("{}: {} {from} -> {to}: {}", p.name, c.field(), c.note())
        };
        self.vms
            .iter()
            .flat_map(|p| p.changes().iter().filter(|c| c.class() == ChangeClass::Impossible).map(move |c| line(p, c)))
            .collect()
    }
}

/// Everything `apply` will need for the VMs it creates or rebuilds: an image
/// it can use or fetch, and a disk at least as large as that image. Every
/// problem is reported at once, before anything is changed.
fn check_needs(ctx: &Ctx, declared: &Declared, plans: &[VmPlan]) -> anyhow::Result<()> {
    let builds = |p: &&VmPlan| matches!(p.entry, Entry::Create(_) | Entry::Recreate(_));
    let decl = |p: &VmPlan| declared.vms.get(&p.name);
    let mut problems = Vec::new();
    if plans.iter().any(|p| builds(&p)) {
        if let Err(e) = crate::libvirt::check_network(&ctx.conn(), &ctx.settings.network, ctx.is_local()) {
            problems.push(format!("network: {e:#}"));
        }
    }
    // Devices, for every VM that gets them now or at its next start.
    let devices_change = |p: &&VmPlan| {
        builds(p) || p.changes().iter().any(|c| matches!(c, Change::Shares { .. } | Change::Hostdevs { .. }))
    };
    for (p, d) in plans.iter().filter(devices_change).filter_map(|p| Some((p, decl(p)?))) {
        if let Err(e) = devices(d).check(ctx) {
            problems.push(format!("vms.{}: {e:#}", p.name));
        }
    }
    problems.extend(check_ports(ctx, declared, plans));
    let built: Vec<&VmDecl> = plans.iter().filter(builds).filter_map(decl).collect();
    problems.extend(check_images(ctx, &built)?);
    match problems.is_empty() {
        true => Ok(()),
        false => {
            Err(Error::Invalid(format!("apply would fail; nothing was changed:\n  {}", problems.join("\n  "))).into())
        }
    }
}

/// The declared ports each VM gets now or at its next start: free on the
/// host, not privileged, not another VM's (those it forwards already pass).
fn check_ports(ctx: &Ctx, declared: &Declared, plans: &[VmPlan]) -> Vec<String> {
    let mut problems = Vec::new();
    for p in plans {
        let Some(decl) = declared.vms.get(&p.name) else { continue };
        let current = p.changes().iter().find_map(|c| match c {
            Change::Ports { from, .. } => Some(from.clone()),
            _ => None,
        });
        let current = match (&p.entry, current) {
            (Entry::Create(_), _) => Vec::new(),
            (_, Some(from)) => from,
            (_, None) => continue,
        };
        if let Err(e) = super::forward::check_declared(ctx, &decl.name, &decl.ports, &current) {
            problems.push(format!("vms.{}.ports: {e:#}", p.name));
        }
    }
    problems
}

/// Each VM's image can be used or fetched, and its disk holds it; each
/// image is checked once.
fn check_images(ctx: &Ctx, built: &[&VmDecl]) -> anyhow::Result<Vec<String>> {
    let mut images: BTreeMap<String, Result<Option<u64>, String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for decl in built {
        let image = decl.image.clone().unwrap_or_else(|| ctx.settings.base_image.clone());
        if !images.contains_key(&image) {
            images.insert(image.clone(), super::pull::check(ctx, &image)?);
        }
        match &images[&image] {
            Err(why) => problems.push(format!("vms.{}: {why}", decl.name)),
            Ok(Some(capacity)) if decl.resources.disk.bytes() < *capacity => problems.push(format!(
                "vms.{}: disk {} is smaller than its image {image} ({}): give at least {}",
                decl.name,
                decl.resources.disk,
                Size(*capacity),
                Size(capacity.div_ceil(1 << 30) << 30)
            )),
            Ok(_) => {}
        }
    }
    Ok(problems)
}

/// A VM whose create was interrupted (its record still says `creating`), or
/// whose destroy was (its root disk is gone): never "nothing to do".
fn half_made(vm: &Vm, pool: Option<&PoolListing>) -> bool {
    vm.own.phase == crate::libvirt::metadata::Phase::Creating || !pool.is_some_and(|p| p.exists(&vm.own.root_volume))
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
    use super::change::tests::{actual_of, base, edits};
    use super::*;

    fn request(autostart: bool) -> CreateRequest {
        let s = base();
        CreateRequest {
            name: s.name.clone(),
            resources: s.resources,
            image: None,
            user_data: None,
            features: vec![],
            autostart,
            devices: Default::default(),
            stage_snapshots: false,
            provision: Default::default(),
        }
    }

    fn changes_of(edit: fn(&mut VmSpec)) -> Vec<Change> {
        let (cur, mut want) = (base(), base());
        edit(&mut want);
        diff(&cur, &actual_of(&cur), &want)
    }

    fn planned(entry: Entry) -> VmPlan {
        VmPlan::new(&base().name, entry)
    }

    #[test]
    fn what_counts_as_acting() {
        let running = actual_of(&base());
        let reported = changes_of(|s| s.cloud_init_hash = "b".into());
        let p = planned(decide(reported.clone(), &running, request(false), Options::default()));
        assert!(matches!(p.entry, Entry::Unchanged(_)) && !p.acts(), "reported, not applied");
        let mut both = reported;
        both.extend(changes_of(|s| s.resources.memory = Size(2 << 30)));
        let p = planned(decide(both, &running, request(false), Options::default()));
        assert!(matches!(&p.entry, Entry::Update(u) if !u.restart && !u.start) && p.acts());
        let lines = describe(&p);
        assert!(lines.iter().any(|l| l.contains("cloud-init changed: NOT APPLIED")), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("memory: 1G -> 2G: applies at next restart")), "{lines:?}");
        assert_eq!(lines[0], "foo: update");
    }

    #[test]
    fn an_entry_that_applies_nothing_is_unchanged() {
        // Whatever the change, apply updates in place exactly when one applies.
        for (what, edit, _, class) in edits() {
            let entry = decide(changes_of(edit), &actual_of(&base()), request(false), Options::default());
            match entry {
                Entry::Update(u) => assert!(class.applies() && u.changes.len() == 1, "{what}"),
                Entry::Unchanged(u) => assert!(!class.applies() && u.changes.len() == 1, "{what}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn recreate_takes_what_only_a_rebuild_carries_out() {
        let running = actual_of(&base());
        let opts = Options { recreate: true, restart: true, ..Default::default() };
        let p = planned(decide(changes_of(|s| s.base_image = "new".into()), &running, request(true), opts));
        assert!(matches!(&p.entry, Entry::Recreate(r) if r.request.autostart), "{p:?}");
        assert_eq!((p.action(), p.recreate(), p.restart(), p.start()), (Action::Update, true, false, false));
        assert_eq!(describe(&p)[0], "foo: update, recreate (project disk kept)");
        // Without a change that needs it, --recreate rebuilds nothing; --restart restarts.
        let p = planned(decide(changes_of(|s| s.resources.cpus = 4), &running, request(false), opts));
        assert!(matches!(&p.entry, Entry::Update(u) if u.restart), "{p:?}");
        assert_eq!(describe(&p)[0], "foo: update, restart");
    }

    #[test]
    fn reconfigure_takes_a_cloud_init_change_and_counts_it_applied() {
        let running = actual_of(&base());
        let opts = Options { reconfigure: true, ..Default::default() };
        let mut changes = changes_of(|s| s.cloud_init_hash = "b".into());
        changes.extend(changes_of(|s| s.resources.memory = Size(2 << 30)));
        let p = planned(decide(changes, &running, request(false), opts));
        assert!(matches!(&p.entry, Entry::Reconfigure(r) if r.changes.len() == 2), "{p:?}");
        assert!(p.acts() && p.reconfigure() && !p.recreate());
        assert_eq!(
            describe(&p)[0],
            "foo: update, reconfigure (provisioned again in place; host key, machine-id and disks kept)"
        );
        assert_eq!(serde_json::to_value(&p).unwrap()["reconfigure"], true);
        let mut plan = Plan::of(vec![p]);
        plan.recount(opts);
        assert_eq!((plan.changes, plan.not_applied), (1, 0));
        // What only a rebuild does stays not applied; without a cloud-init change, no reconfigure.
        let p = planned(decide(changes_of(|s| s.base_image = "new".into()), &running, request(false), opts));
        assert!(matches!(p.entry, Entry::Unchanged(_)), "{p:?}");
        assert!(serde_json::to_value(&p).unwrap().get("reconfigure").is_none());
        let mut plan = Plan::of(vec![p]);
        plan.recount(opts);
        assert_eq!(plan.not_applied, 1);
    }

    #[test]
    fn a_stopped_autostart_vm_is_started() {
        let stopped = Actual { running: false, ..actual_of(&base()) };
        let p = planned(decide(vec![], &stopped, request(true), Options::default()));
        assert!(matches!(&p.entry, Entry::Update(u) if u.start && u.changes.is_empty()), "{p:?}");
        assert_eq!(describe(&p)[0], "foo: update, start");
    }

    #[test]
    fn json_is_the_flat_record() {
        let p = VmPlan {
            host: Some("gpu".into()),
            ..planned(Entry::Create(Create {
                request: request(true),
                start: true,
                interrupted: true,
                moved_from: Some("ws".into()),
            }))
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({
                "host": "gpu", "name": "foo", "action": "create", "moved": "from ws", "changes": [],
                "start": true, "restart": false, "restart_pending": false, "recreate": false, "interrupted": true
            })
        );
        let left = planned(Entry::DeclaredElsewhere { host: "down".into() });
        let v = serde_json::to_value(&left).unwrap();
        assert_eq!((v["action"].as_str(), v.get("host")), (Some("nothing"), None));
        assert_eq!(v["error"], "declared on host down, which did not answer: left as it is");
        assert_eq!(describe(&left)[0], "foo: declared on host down, which did not answer: left as it is");
        let pruned = planned(Entry::Prune(Prune { moved_to: Some("gpu".into()) }));
        assert_eq!(serde_json::to_value(&pruned).unwrap()["moved"], "to gpu");
        assert_eq!(describe(&pruned)[0], "foo: destroy (moved to gpu; its project disk is kept here)");
    }

    #[test]
    fn totals_count_reported_and_refused_changes() {
        let running = actual_of(&base());
        let mut plan = Plan::of(vec![
            planned(decide(
                changes_of(|s| s.cloud_init_hash = "b".into()),
                &running,
                request(false),
                Options::default(),
            )),
            planned(decide(
                changes_of(|s| s.resources.disk = Size(1 << 30)),
                &running,
                request(false),
                Options::default(),
            )),
            planned(Entry::Prune(Prune::default())),
        ]);
        plan.recount(Options::default());
        assert_eq!((plan.changes, plan.not_applied, plan.impossible), (1, 1, 1));
        assert_eq!(plan.refused(), vec!["foo: disk 5G -> 1G: disks only grow; shrinking would lose data"]);
    }
}
