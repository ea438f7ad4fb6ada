//! `apply`: carries out a [`Plan`]. VMs go in dependency waves (`depends_on`);
//! within a wave they run in parallel through [`crate::fanout`], at most
//! `--jobs` at once on each host (the libvirt API is synchronous; a host's
//! connection is shared). A VM whose dependency failed is skipped, the
//! others carry on; a worker that panics is that VM's failure.
//!
//! Each plan entry is carried out as it is: the changes are the plan's own
//! values, matched exhaustively, so a change the plan reports as not applied
//! cannot be applied here by accident, nor one it applies be missed.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::fleet::Fleet;
use super::plan::{self, Action, Change, Create, Disk, Entry, Plan, Prune, Reconfigure, Recreate, Update, VmPlan};
use super::{create, destroy, power, ready, Ctx};
use crate::config::Declared;
use crate::fanout::Panicked;
use crate::libvirt::vms::{self, State, Vm};
use crate::libvirt::{domain_xml, explain, storage};
use crate::ops::Error;
use crate::output::Report;
use crate::progress::{Multi, Progress};
use crate::spec::{Size, VmName, VmSpec};

#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    pub plan: plan::Options,
    pub jobs: usize,
    /// Wait for started VMs to be ready (and dependencies before dependents).
    pub wait: bool,
    pub timeout: Duration,
    /// With prune: delete project disks too.
    pub delete_data: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub name: String,
    pub action: Action,
    /// What was done, in order (`created`, `redefined`, `resized disk`, `started`, `ready`, ...).
    pub done: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seconds: f64,
    /// The failure's exit kind (a failed health check makes `apply` exit 9).
    #[serde(skip)]
    pub kind: Option<crate::error::Kind>,
}

#[derive(Debug, Serialize)]
pub struct ApplyReport {
    pub plan: Plan,
    pub results: Vec<VmResult>,
    /// VMs changed.
    pub changes: usize,
    pub failed: usize,
}

impl ApplyReport {
    /// Exit non-zero when a VM failed to apply.
    /// Exit 4 when a host did not answer (naming it and libvirt's error).
    pub fn check(&self) -> anyhow::Result<()> {
        if !self.plan.hosts_down.is_empty() {
            return Err(Error::Environment(format!(
                "{} of the VMs failed to apply; unreachable:\n  {}",
                self.failed,
                self.plan.hosts_down.join("\n  ")
            ))
            .into());
        }
        let failures = || self.results.iter().filter(|r| r.error.is_some());
        match self.failed {
            0 => Ok(()),
            // Every failure a failed health check: exit 9, as `start --wait`.
            failed if failures().all(|r| r.kind == Some(crate::error::Kind::CheckFailed)) => {
                let vms = failures().map(|r| r.name.clone()).collect();
                Err(Error::ChecksFailedIn { failed, vms }.into())
            }
            failed => Err(Error::ApplyFailed { failed }.into()),
        }
    }
}

impl Report for ApplyReport {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        for p in &self.plan.vms {
            let lines = plan::describe(p);
            match self.results.iter().find(|r| r.name == p.name.as_str() && r.host == p.host) {
                Some(r) if r.error.is_some() => {
                    writeln!(out, "{}: FAILED: {}", p.label(), r.error.as_deref().unwrap_or_default())?
                }
                Some(r) if !r.done.is_empty() => {
                    writeln!(out, "{}: {} ({:.1}s)", p.label(), r.done.join(", "), r.seconds)?
                }
                _ => writeln!(out, "{}", lines[0])?,
            }
            for l in lines.iter().skip(1) {
                writeln!(out, "{l}")?;
            }
        }
        let s = if self.changes == 1 { "" } else { "s" };
        writeln!(out, "{} change{s}, {} failed", self.changes, self.failed)
    }
}

/// `only` (`--host`): apply on that host alone.
pub fn apply(
    fleet: &Fleet,
    declared: &Declared,
    opts: ApplyOptions,
    only: Option<&str>,
) -> anyhow::Result<ApplyReport> {
    let plan = super::fleet_plan::plan_fleet(fleet, declared, opts.plan, only)?;
    let refused = plan.refused();
    if !refused.is_empty() {
        let why = format!("refusing to apply, nothing was changed:\n  {}", refused.join("\n  "));
        return Err(Error::Invalid(why).into());
    }
    let multi = Arc::new(Multi::new(fleet.json()));
    // The hosts that answered (their connections are open already).
    let ctxs: HashMap<Option<String>, Arc<Ctx>> =
        fleet.hosts.iter().filter_map(|h| Some((h.name.clone(), fleet.ctx(h).ok()?))).collect();
    let results = execute(&ctxs, declared, &plan, opts, &multi);
    let changes = plan.changes;
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    Ok(ApplyReport { plan, results, changes, failed })
}

/// The plan's VMs in dependency waves; pruning comes last, after everything
/// declared is in place.
fn waves(declared: &Declared, plan: &Plan) -> Vec<Vec<VmPlan>> {
    // A VM moving between hosts has two entries: its create is the declared one.
    let find = |name: &VmName| plan.vms.iter().find(|p| &p.name == name && p.action() != Action::Prune).cloned();
    let mut waves: Vec<Vec<VmPlan>> = declared.waves().iter().map(|w| w.iter().filter_map(find).collect()).collect();
    waves.push(plan.vms.iter().filter(|p| p.action() == Action::Prune).cloned().collect());
    waves
}

/// A VM to carry out, with its host's connection.
struct Job {
    ctx: Arc<Ctx>,
    plan: VmPlan,
}

fn execute(
    ctxs: &HashMap<Option<String>, Arc<Ctx>>,
    declared: &Declared,
    plan: &Plan,
    opts: ApplyOptions,
    multi: &Arc<Multi>,
) -> Vec<VmResult> {
    let mut results: Vec<VmResult> = Vec::new();
    for wave in waves(declared, plan) {
        let mut jobs = Vec::new();
        for p in wave {
            match refusal(&p, ctxs, declared, &results) {
                Some(error) => results.push(VmResult { error: Some(error), ..VmResult::of(&p) }),
                None => jobs.extend(ctxs.get(&p.host).map(|ctx| Job { ctx: ctx.clone(), plan: p })),
            }
        }
        results.extend(run_wave(jobs, opts, multi));
    }
    results
}

/// Why `p` is not even tried: a dependency failed, or its host did not answer.
fn refusal(
    p: &VmPlan,
    ctxs: &HashMap<Option<String>, Arc<Ctx>>,
    declared: &Declared,
    results: &[VmResult],
) -> Option<String> {
    let depends_on = match p.is_declared() {
        true => declared.vms.get(&p.name).map(|d| d.depends_on.as_slice()).unwrap_or_default(),
        false => &[],
    };
    let failed = |dep: &&VmName| results.iter().any(|r| r.name == dep.as_str() && r.error.is_some());
    if let Some(dep) = depends_on.iter().find(failed) {
        return Some(format!("skipped: its dependency {dep} failed"));
    }
    match ctxs.contains_key(&p.host) {
        true => None,
        false => Some(p.error().unwrap_or_else(|| "its host did not answer".into())),
    }
}

/// One wave's VMs at once; a worker's panic is its VM's failure.
fn run_wave(jobs: Vec<Job>, opts: ApplyOptions, multi: &Arc<Multi>) -> Vec<VmResult> {
    let stubs: Vec<VmResult> = jobs.iter().map(|j| VmResult::of(&j.plan)).collect();
    let multi = multi.clone();
    let items = jobs.into_iter().map(|j| (j.plan.host.clone(), j)).collect();
    let results = per_host(items, opts.jobs, move |job| run_one(job, opts, &multi));
    stubs
        .into_iter()
        .zip(results)
        .map(|(stub, r)| r.unwrap_or_else(|p| VmResult { error: Some(p.to_string()), ..stub }))
        .collect()
}

/// `work` on every item: the hosts side by side (each host's daemon does
/// its own work), at most `limit` at once within each host. Results in the
/// items' order; an item whose worker panicked gets `Err(Panicked)`.
fn per_host<T, R, F>(items: Vec<(Option<String>, T)>, limit: usize, work: F) -> Vec<Result<R, Panicked>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> R + Send + Sync + 'static,
{
    let n = items.len();
    let mut hosts: Vec<(Option<String>, Vec<usize>, Vec<T>)> = Vec::new();
    for (i, (host, item)) in items.into_iter().enumerate() {
        match hosts.iter_mut().find(|(h, _, _)| *h == host) {
            Some((_, indices, group)) => {
                indices.push(i);
                group.push(item);
            }
            None => hosts.push((host, vec![i], vec![item])),
        }
    }
    let (order, groups): (Vec<Vec<usize>>, Vec<Vec<T>>) = hosts.into_iter().map(|(_, i, g)| (i, g)).unzip();
    let work = Arc::new(work);
    let answers = crate::fanout::map(groups, order.len(), move |group| {
        let work = work.clone();
        crate::fanout::map(group, limit, move |item| work(item))
    });
    let mut out: Vec<Option<Result<R, Panicked>>> = (0..n).map(|_| None).collect();
    for (indices, answer) in order.into_iter().zip(answers) {
        let each: Vec<Result<R, Panicked>> = match answer {
            Ok(each) => each,
            Err(p) => indices.iter().map(|_| Err(p.clone())).collect(),
        };
        for (i, r) in indices.into_iter().zip(each) {
            out[i] = Some(r);
        }
    }
    // Every index is in exactly one host's group.
    let lost = || Err(Panicked { message: "no result came back".into() });
    out.into_iter().map(|r| r.unwrap_or_else(lost)).collect()
}

fn run_one(job: Job, opts: ApplyOptions, multi: &Multi) -> VmResult {
    let (ctx, p) = (job.ctx, job.plan);
    let t0 = Instant::now();
    let progress = multi.spinner(format!("{}: {:?}", p.name, p.action()).to_lowercase());
    let mut done = Vec::new();
    let outcome = apply_one(&ctx, &p, opts, &progress, &mut done);
    progress.finish();
    VmResult {
        done,
        kind: outcome.as_ref().err().map(crate::exit::kind),
        error: outcome.err().map(|e| format!("{e:#}")),
        seconds: t0.elapsed().as_secs_f64(),
        ..VmResult::of(&p)
    }
}

impl VmResult {
    /// Nothing done yet.
    fn of(p: &VmPlan) -> VmResult {
        VmResult {
            host: p.host.clone(),
            name: p.name.to_string(),
            action: p.action(),
            done: vec![],
            error: None,
            seconds: 0.0,
            kind: None,
        }
    }
}

fn start_and_wait(
    ctx: &Ctx,
    vm: &Vm,
    opts: ApplyOptions,
    progress: &Progress,
    done: &mut Vec<String>,
) -> anyhow::Result<()> {
    progress.set_message(format!("{}: starting", vm.name));
    power::start(ctx, vm)?;
    done.push("started".into());
    if opts.wait {
        let (report, stage_snapshots) = super::stages::wait(ctx, vm, opts.timeout, progress)?;
        ready::check(&report)?;
        done.push("ready".into());
        done.extend(stage_snapshots.into_iter().map(|s| format!("snapshot {s}")));
    }
    Ok(())
}

/// Carries out one VM's entry.
fn apply_one(
    ctx: &Ctx,
    p: &VmPlan,
    opts: ApplyOptions,
    progress: &Progress,
    done: &mut Vec<String>,
) -> anyhow::Result<()> {
    match &p.entry {
        Entry::Unchanged(_) | Entry::NotInFile | Entry::DeclaredElsewhere { .. } => Ok(()),
        Entry::Unreachable { error } => Err(Error::Environment(error.clone()).into()),
        Entry::Prune(prune) => apply_prune(ctx, &p.name, prune, opts, progress, done),
        Entry::Create(c) => apply_create(ctx, c, opts, progress, done),
        Entry::Recreate(r) => apply_recreate(ctx, &p.name, r, opts, progress, done),
        Entry::Reconfigure(r) => apply_reconfigure(ctx, &p.name, r, opts, progress, done),
        Entry::Update(u) => apply_update(ctx, &p.name, u, opts, progress, done),
    }
}

fn apply_prune(
    ctx: &Ctx,
    name: &VmName,
    prune: &Prune,
    opts: ApplyOptions,
    progress: &Progress,
    done: &mut Vec<String>,
) -> anyhow::Result<()> {
    let vm = vms::get(&ctx.conn(), name)?;
    progress.set_message(format!("{name}: destroying"));
    // A VM that moved keeps its project disk here: it does not travel.
    let delete_data = opts.delete_data && prune.moved_to.is_none();
    destroy::destroy(ctx, &vm, !delete_data)?;
    done.push(if delete_data { "destroyed".into() } else { "destroyed (project disk kept)".into() });
    Ok(())
}

fn apply_create(
    ctx: &Ctx,
    c: &Create,
    opts: ApplyOptions,
    progress: &Progress,
    done: &mut Vec<String>,
) -> anyhow::Result<()> {
    create::create(ctx, &c.request, progress)?;
    done.push("created".into());
    if c.start {
        start_and_wait(ctx, &vms::get(&ctx.conn(), &c.request.name)?, opts, progress, done)?;
    }
    Ok(())
}

fn apply_recreate(
    ctx: &Ctx,
    name: &VmName,
    r: &Recreate,
    opts: ApplyOptions,
    progress: &Progress,
    done: &mut Vec<String>,
) -> anyhow::Result<()> {
    // Not while another project-vm works on it; destroy and create lock it themselves.
    let lock = super::vm_lock(ctx, name, "applying a change to")?;
    let vm = vms::get(&ctx.conn(), name)?;
    drop(lock);
    progress.set_message(format!("{name}: recreating (project disk kept)"));
    destroy::destroy(ctx, &vm, true)?;
    create::create(ctx, &r.request, progress)?;
    done.push("recreated (project disk kept)".into());
    if r.request.autostart {
        start_and_wait(ctx, &vms::get(&ctx.conn(), name)?, opts, progress, done)?;
    }
    Ok(())
}

/// The changes that apply, then the guest provisioned again in place (its
/// power cycle also brings in the next-restart ones); it waits whatever
/// `--wait` says: a reconfigure reports like `--wait`.
fn apply_reconfigure(
    ctx: &Ctx,
    name: &VmName,
    r: &Reconfigure,
    opts: ApplyOptions,
    progress: &Progress,
    done: &mut Vec<String>,
) -> anyhow::Result<()> {
    let lock = super::vm_lock(ctx, name, "applying a change to")?;
    update(ctx, &vms::get(&ctx.conn(), name)?, &r.changes, progress, done)?;
    drop(lock);
    let vm = vms::get(&ctx.conn(), name)?;
    let wanted = super::reconfigure::Wanted::of(&r.request);
    let report = super::reconfigure::reconfigure(ctx, &vm, &wanted, None, opts.timeout, progress)?;
    report.check()?;
    done.push(format!("reconfigured (instance {})", report.instance_id));
    Ok(())
}

fn apply_update(
    ctx: &Ctx,
    name: &VmName,
    u: &Update,
    opts: ApplyOptions,
    progress: &Progress,
    done: &mut Vec<String>,
) -> anyhow::Result<()> {
    let _lock = super::vm_lock(ctx, name, "applying a change to")?;
    let vm = vms::get(&ctx.conn(), name)?;
    update(ctx, &vm, &u.changes, progress, done)?;
    let vm = vms::get(&ctx.conn(), name)?;
    if u.restart {
        progress.set_message(format!("{name}: restarting"));
        let stop = power::stop(ctx, &vm, Duration::from_secs(120), false)?;
        done.push(format!("stopped ({})", stop.result));
        start_and_wait(ctx, &vm, opts, progress, done)?;
    } else if u.start {
        start_and_wait(ctx, &vm, opts, progress, done)?;
    }
    Ok(())
}

/// What carrying out a change takes, beyond recording it in the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A new definition (the guest sees it after a restart).
    Redefine,
    /// Only the record changes (the health checks).
    Record,
    /// The disk's volume grows.
    Grow { disk: Disk, to: Size },
    /// libvirt's autostart flag.
    Autostart(bool),
    /// Not by an update: cloud-init, a rebuild, or refused before apply begins.
    Skip,
}

/// Records `change` in `spec` and says what else it takes. The one place a
/// change is applied: every change the plan classes as applying has a step,
/// every other one is skipped (tested against [`Change::class`]).
pub fn record(spec: &mut VmSpec, change: &Change) -> Step {
    match change {
        Change::Memory { to, .. } => spec.resources.memory = *to,
        Change::Cpus { to, .. } => spec.resources.cpus = *to,
        Change::Accel { to, .. } => spec.accel = *to,
        Change::Network { to, .. } => spec.network = to.clone(),
        Change::Hostdevs { to, .. } => spec.hostdevs = to.clone(),
        Change::Shares { to, .. } => spec.shares = to.clone(),
        Change::Ports { to, .. } => spec.ports = to.clone(),
        Change::Grow { disk, to, .. } => {
            *disk.size_mut(&mut spec.resources) = *to;
            return Step::Grow { disk: *disk, to: *to };
        }
        Change::Autostart { to, .. } => {
            spec.autostart = *to;
            return Step::Autostart(*to);
        }
        Change::Checks { to, .. } => {
            spec.checks = to.clone();
            return Step::Record;
        }
        Change::Image { .. }
        | Change::CloudInit { .. }
        | Change::Firmware { .. }
        | Change::NetworkConfig { .. }
        | Change::Host { .. }
        | Change::Pool { .. }
        | Change::Shrink { .. }
        | Change::GrowWithSnapshots { .. } => return Step::Skip,
    }
    Step::Redefine
}

/// Applies the `now` and `next-restart` changes of an existing VM: disks
/// grown, autostart set, then the definition (or only the record) written.
fn update(ctx: &Ctx, vm: &Vm, changes: &[Change], progress: &Progress, done: &mut Vec<String>) -> anyhow::Result<()> {
    let mut spec = vm.spec()?;
    let steps: Vec<Step> = changes.iter().map(|c| record(&mut spec, c)).collect();
    let running = vm.state() == State::Running;
    for step in &steps {
        if let Step::Grow { disk, to } = *step {
            progress.set_message(format!("{}: growing {}", vm.name, disk.field()));
            grow(ctx, vm, running, disk, to)?;
            done.push(format!("grew {} to {to}", disk.field()));
        }
    }
    for step in &steps {
        if let Step::Autostart(on) = *step {
            vm.dom.set_autostart(on).map_err(|e| explain(e, "setting autostart"))?;
            crate::fault::mutated("set autostart");
            done.push(format!("autostart {}", if on { "on" } else { "off" }));
        }
    }
    if steps.contains(&Step::Record) {
        done.push("recorded checks".into());
    }
    save(ctx, vm, &spec, steps.contains(&Step::Redefine), done)
}

/// Grows `disk` to `to`: live through QEMU when `running`, else its volume.
fn grow(ctx: &Ctx, vm: &Vm, running: bool, disk: Disk, to: Size) -> anyhow::Result<()> {
    let volume = match disk {
        Disk::Root => &vm.own.root_volume,
        Disk::Project => &vm.own.data_volume,
    };
    if running {
        // The running QEMU holds the image: grow it through the block layer.
        vm.dom
            .block_resize(disk.device(), to.bytes(), virt::sys::VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            .map_err(|e| explain(e, format!("growing {volume}")))?;
    } else {
        let gone = |what: String| Error::Gone { what };
        let pool = ctx.vm_pool(vm)?.ok_or_else(|| gone(format!("storage pool {}", vm.own.pool)))?;
        let vol = storage::find_volume(&pool, volume)?.ok_or_else(|| gone(format!("volume {volume}")))?;
        vol.resize(to.bytes(), 0).map_err(|e| explain(e, format!("growing {volume}")))?;
    }
    crate::fault::mutated("grew a disk");
    Ok(())
}

/// Writes `spec`: a new definition when `redefine`, else only the record.
fn save(ctx: &Ctx, vm: &Vm, spec: &VmSpec, redefine: bool, done: &mut Vec<String>) -> anyhow::Result<()> {
    let mut own = vm.own.clone();
    own.spec_json = serde_json::to_string(spec)?;
    if redefine {
        // Same builder as create, same uuid: libvirt updates the persistent
        // definition; a running guest sees it after its next restart.
        let uuid = vm.dom.uuid_string().map_err(|e| explain(e, "reading uuid"))?;
        let purpose = domain_xml::Purpose::Redefine { uuid };
        let xml = domain_xml::build_for(spec, &own, &super::host_files(ctx, spec)?, &purpose);
        ctx.conn()
            .define_domain_xml(&xml.to_xml())
            .map_err(|e| explain(e, format!("redefining {}", vm.name.domain())))?;
        crate::fault::mutated("redefined the domain");
        done.push("redefined".into());
    } else if own != vm.own {
        own.write(&vm.dom)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::plan::change::tests::{actual_of, base, edits};
    use crate::ops::plan::{diff, ChangeClass};

    #[test]
    fn apply_applies_every_change_the_plan_applies_and_no_other() {
        let mut cases: Vec<(String, Change, VmSpec)> = edits()
            .into_iter()
            .map(|(what, edit, _, _)| {
                let mut want = base();
                edit(&mut want);
                let mut changes = diff(&base(), &actual_of(&base()), &want);
                assert_eq!(changes.len(), 1, "{what}");
                (what.to_string(), changes.remove(0), want)
            })
            .collect();
        // The changes only plan's fleet and pool checks make.
        cases.push(("pool".into(), Change::Pool { from: "a".into(), to: "b".into() }, base()));
        cases.push(("host".into(), Change::Host { from: "a".into(), to: "b".into() }, base()));
        for (what, change, want) in cases {
            let mut spec = base();
            let step = record(&mut spec, &change);
            if change.class().applies() {
                assert_ne!(step, Step::Skip, "{what}: the plan applies it, apply must");
                assert_eq!(spec, want, "{what}: recorded as declared");
            } else {
                assert_eq!(step, Step::Skip, "{what}: {:?} is not applied by an update", change.class());
                assert_eq!(spec, base(), "{what}: the spec is untouched");
            }
        }
    }

    #[test]
    fn a_change_plan_does_not_apply_is_not_applied() {
        let mut want = base();
        want.cloud_init_hash = "new".into();
        want.resources.memory = Size(2 << 30);
        want.base_image = "other.qcow2".into();
        let changes = diff(&base(), &actual_of(&base()), &want);
        let mut spec = base();
        let steps: Vec<Step> = changes.iter().map(|c| record(&mut spec, c)).collect();
        let classes: Vec<ChangeClass> = changes.iter().map(Change::class).collect();
        use ChangeClass::*;
        assert_eq!(classes, vec![NextRestart, NeedsRecreate, NotApplied]);
        assert_eq!(steps, vec![Step::Redefine, Step::Skip, Step::Skip]);
        assert_eq!((spec.base_image.as_str(), spec.cloud_init_hash.as_str()), ("base.qcow2", ""));
        assert_eq!(spec.resources.memory, Size(2 << 30));
    }

    #[test]
    fn steps_name_what_else_they_take() {
        let mut spec = base();
        let grow = Change::Grow { disk: Disk::Project, from: Size(2 << 30), to: Size(3 << 30) };
        assert_eq!(record(&mut spec, &grow), Step::Grow { disk: Disk::Project, to: Size(3 << 30) });
        assert_eq!(record(&mut spec, &Change::Autostart { from: false, to: true }), Step::Autostart(true));
        assert_eq!((spec.resources.project_disk, spec.autostart), (Size(3 << 30), true));
    }

    #[test]
    fn a_panicking_worker_fails_its_item_alone_and_order_is_kept() {
        let items: Vec<(Option<String>, u32)> =
            vec![(Some("a".into()), 1), (Some("b".into()), 2), (Some("a".into()), 3), (None, 4)];
        let out = per_host(items, 1, |n| {
            assert_ne!(n, 3, "three is refused");
            n * 10
        });
        assert_eq!(out[0].as_ref().unwrap(), &10);
        assert_eq!(out[1].as_ref().unwrap(), &20);
        assert!(out[2].as_ref().unwrap_err().message.contains("three is refused"));
        assert_eq!(out[3].as_ref().unwrap(), &40);
    }

    #[test]
    fn each_host_runs_at_most_limit_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let running: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let most: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let items: Vec<(Option<String>, usize)> = (0..12).map(|i| (Some(format!("h{}", i % 2)), i % 2)).collect();
        let (r, m) = (running.clone(), most.clone());
        per_host(items, 2, move |h| {
            let now = r[h].fetch_add(1, Ordering::SeqCst) + 1;
            m[h].fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            r[h].fetch_sub(1, Ordering::SeqCst);
        });
        assert!(most.iter().all(|m| m.load(Ordering::SeqCst) <= 2), "{most:?}");
    }

    #[test]
    fn apply_exits_9_when_every_failure_is_a_failed_check() {
        let plan = || Plan { vms: vec![], hosts_down: vec![], changes: 0, not_applied: 0, impossible: 0 };
        let result = |name: &str, kind| VmResult {
            host: None,
            name: name.into(),
            action: crate::ops::plan::Action::Create,
            done: vec![],
            error: Some("failed".into()),
            seconds: 1.0,
            kind: Some(kind),
        };
        use crate::error::Kind;
        let report = |results: Vec<VmResult>| ApplyReport { plan: plan(), failed: results.len(), results, changes: 0 };
        let checks = report(vec![result("a", Kind::CheckFailed), result("b", Kind::CheckFailed)]).check().unwrap_err();
        assert_eq!(crate::exit::code(&checks), 9);
        assert!(checks.to_string().ends_with("(see above): a, b"), "{checks}");
        let mixed = report(vec![result("a", Kind::CheckFailed), result("b", Kind::Provisioning)]).check().unwrap_err();
        assert_eq!(crate::exit::code(&mixed), 1);
    }
}
