//! `apply`: carries out a [`Plan`]. VMs go in dependency waves (`depends_on`);
//! within a wave they run in parallel on tokio's blocking pool, at most
//! `--jobs` at once on each host (the libvirt API is synchronous; a host's
//! connection is shared).
//! A VM whose dependency failed is skipped, the others carry on.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

use super::fleet::Fleet;
use super::plan::{self, Action, Class, Plan, VmPlan};
use super::{create, destroy, power, ready, Ctx};
use crate::config::Declared;
use crate::error::invalid;
use crate::libvirt::vms::{self, State, Vm};
use crate::libvirt::{domain_xml, explain, storage};
use crate::output::Report;
use crate::progress::{Multi, Progress};
use crate::spec::VmName;

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
            return Err(crate::error::failure(
                crate::error::Kind::Environment,
                format!(
                    "{} of the VMs failed to apply; unreachable:\n  {}",
                    self.failed,
                    self.plan.hosts_down.join("\n  ")
                ),
            ));
        }
        if self.failed > 0 {
            anyhow::bail!("{} of the VMs failed to apply (see above)", self.failed);
        }
        Ok(())
    }
}

impl Report for ApplyReport {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        for p in &self.plan.vms {
            let lines = plan::describe(p);
            match self.results.iter().find(|r| r.name == p.name && r.host == p.host) {
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
    if plan.impossible > 0 {
        let refused: Vec<String> = plan
            .vms
            .iter()
            .flat_map(|p| {
                p.changes
                    .iter()
                    .filter(|c| c.class == Class::Impossible)
                    .map(move |c| format!("{}: {} {} -> {}: {}", p.name, c.field, c.from, c.to, c.note))
            })
            .collect();
        return Err(invalid(format!("refusing to apply, nothing was changed:\n  {}", refused.join("\n  "))));
    }
    let multi = Arc::new(Multi::new(fleet.json()));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // The hosts that answered (their connections are open already).
    let ctxs: HashMap<Option<String>, Arc<Ctx>> =
        fleet.hosts.iter().filter_map(|h| Some((h.name.clone(), fleet.ctx(h).ok()?))).collect();
    let results = runtime.block_on(execute(&ctxs, declared, &plan, opts, multi));
    let changes = plan.changes;
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    Ok(ApplyReport { plan, results, changes, failed })
}

async fn execute(
    ctxs: &HashMap<Option<String>, Arc<Ctx>>,
    declared: &Declared,
    plan: &Plan,
    opts: ApplyOptions,
    multi: Arc<Multi>,
) -> Vec<VmResult> {
    // --jobs is per host: each host's daemon does its own work, so hosts go
    // side by side, and within a host VMs go as on a single host.
    let jobs: HashMap<Option<String>, Arc<Semaphore>> =
        ctxs.keys().map(|h| (h.clone(), Arc::new(Semaphore::new(opts.jobs.max(1))))).collect();
    let mut results: Vec<VmResult> = Vec::new();
    // A VM moving between hosts has two entries: its create is the declared one.
    let find = |name: &str| plan.vms.iter().find(|p| p.name == name && p.action != Action::Prune).cloned();
    let mut waves: Vec<Vec<VmPlan>> =
        declared.waves().into_iter().map(|w| w.iter().filter_map(|n| find(n.as_str())).collect()).collect();
    // Pruning comes last, after everything declared is in place.
    waves.push(plan.vms.iter().filter(|p| p.action == Action::Prune).cloned().collect());
    for wave in waves {
        let mut handles = Vec::new();
        for p in wave {
            let failed_dep = p.decl.as_ref().and_then(|d| {
                d.depends_on
                    .iter()
                    .find(|dep| results.iter().any(|r| r.name == dep.as_str() && r.error.is_some()))
                    .cloned()
            });
            let ctx = ctxs.get(&p.host).cloned();
            let refused = match (failed_dep, &ctx) {
                (Some(dep), _) => Some(format!("skipped: its dependency {dep} failed")),
                (None, None) => Some(p.error.clone().unwrap_or_else(|| "its host did not answer".into())),
                (None, Some(_)) => None,
            };
            if let Some(error) = refused {
                results.push(VmResult {
                    host: p.host.clone(),
                    name: p.name.clone(),
                    action: p.action,
                    done: vec![],
                    error: Some(error),
                    seconds: 0.0,
                });
                continue;
            }
            let (ctx, jobs, multi) = (ctx.expect("checked"), jobs[&p.host].clone(), multi.clone());
            handles.push(tokio::spawn(async move {
                let _permit = jobs.acquire_owned().await.expect("semaphore");
                tokio::task::spawn_blocking(move || {
                    let t0 = Instant::now();
                    let progress = multi.spinner(format!("{}: {:?}", p.name, p.action).to_lowercase());
                    let mut done = Vec::new();
                    let outcome = apply_one(&ctx, &p, opts, &progress, &mut done);
                    progress.finish();
                    VmResult {
                        host: p.host.clone(),
                        name: p.name.clone(),
                        action: p.action,
                        done,
                        error: outcome.err().map(|e| format!("{e:#}")),
                        seconds: t0.elapsed().as_secs_f64(),
                    }
                })
                .await
                .expect("apply task panicked")
            }));
        }
        for h in handles {
            results.push(h.await.expect("apply task"));
        }
    }
    results
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
        let report = ready::wait(ctx, vm, opts.timeout, progress)?;
        ready::check(&report)?;
        done.push("ready".into());
    }
    Ok(())
}

fn apply_one(
    ctx: &Ctx,
    p: &VmPlan,
    opts: ApplyOptions,
    progress: &Progress,
    done: &mut Vec<String>,
) -> anyhow::Result<()> {
    let name = VmName::parse(&p.name)?;
    match p.action {
        Action::Nothing | Action::NotInFile => Ok(()),
        Action::Unreachable => Err(anyhow::anyhow!("{}", p.error.clone().unwrap_or_default())),
        Action::Prune => {
            let vm = vms::get(&ctx.conn(), &name)?;
            progress.set_message(format!("{name}: destroying"));
            // A VM that moved keeps its project disk here: it does not travel.
            let delete_data = opts.delete_data && p.moved.is_none();
            destroy::destroy(ctx, &vm, !delete_data)?;
            done.push(if delete_data { "destroyed".into() } else { "destroyed (project disk kept)".into() });
            Ok(())
        }
        Action::Create => {
            let decl = p.decl.as_ref().expect("declared");
            create::create(ctx, &plan::request(decl)?, progress)?;
            done.push("created".into());
            if p.start {
                start_and_wait(ctx, &vms::get(&ctx.conn(), &name)?, opts, progress, done)?;
            }
            Ok(())
        }
        Action::Update => {
            let lock = super::vm_lock(ctx, &name, "applying a change to")?;
            let vm = vms::get(&ctx.conn(), &name)?;
            if p.recreate {
                drop(lock);
                let decl = p.decl.as_ref().expect("declared");
                progress.set_message(format!("{name}: recreating (project disk kept)"));
                destroy::destroy(ctx, &vm, true)?;
                create::create(ctx, &plan::request(decl)?, progress)?;
                done.push("recreated (project disk kept)".into());
                if decl.autostart {
                    start_and_wait(ctx, &vms::get(&ctx.conn(), &name)?, opts, progress, done)?;
                }
                return Ok(());
            }
            update(ctx, &vm, p, progress, done)?;
            let vm = vms::get(&ctx.conn(), &name)?;
            if p.restart {
                progress.set_message(format!("{name}: restarting"));
                let stop = power::stop(ctx, &vm, Duration::from_secs(120), false)?;
                done.push(format!("stopped ({})", stop.result));
                start_and_wait(ctx, &vm, opts, progress, done)?;
            } else if p.start {
                start_and_wait(ctx, &vm, opts, progress, done)?;
            }
            Ok(())
        }
    }
}

/// Applies the `now` and `next-restart` changes of an existing VM.
fn update(ctx: &Ctx, vm: &Vm, p: &VmPlan, progress: &Progress, done: &mut Vec<String>) -> anyhow::Result<()> {
    let desired = p.desired.as_ref().expect("desired spec");
    let mut spec = vm.spec()?;
    let applies =
        |field: &str| p.changes.iter().any(|c| c.field == field && matches!(c.class, Class::Now | Class::NextRestart));
    let mut redefine = false;
    if applies("memory") {
        spec.resources.memory = desired.resources.memory;
        redefine = true;
    }
    if applies("cpus") {
        spec.resources.cpus = desired.resources.cpus;
        redefine = true;
    }
    if applies("accel") {
        spec.accel = desired.accel;
        redefine = true;
    }
    if applies("network") {
        spec.network = desired.network.clone();
        redefine = true;
    }
    if applies("hostdevs") {
        spec.hostdevs = desired.hostdevs.clone();
        redefine = true;
    }
    if applies("shares") {
        spec.shares = desired.shares.clone();
        redefine = true;
    }
    if applies("ports") {
        spec.ports = desired.ports.clone();
        redefine = true;
    }
    let running = vm.state() == State::Running;
    let recorded = &mut spec.resources;
    for (field, volume, dev, size, wanted) in [
        ("disk", &vm.own.root_volume, "vda", &mut recorded.disk, desired.resources.disk),
        ("project_disk", &vm.own.data_volume, "vdb", &mut recorded.project_disk, desired.resources.project_disk),
    ] {
        if !applies(field) {
            continue;
        }
        let bytes = wanted.bytes();
        progress.set_message(format!("{}: growing {field}", vm.name));
        if running {
            // The running QEMU holds the image: grow it through the block layer.
            vm.dom
                .block_resize(dev, bytes, virt::sys::VIR_DOMAIN_BLOCK_RESIZE_BYTES)
                .map_err(|e| explain(e, format!("growing {volume}")))?;
            crate::fault::mutated("grew a disk");
        } else {
            let pool = ctx.vm_pool(vm)?.ok_or_else(|| anyhow::anyhow!("storage pool {} is gone", vm.own.pool))?;
            let vol = storage::find_volume(&pool, volume)?.ok_or_else(|| anyhow::anyhow!("volume {volume} is gone"))?;
            vol.resize(bytes, 0).map_err(|e| explain(e, format!("growing {volume}")))?;
            crate::fault::mutated("grew a disk");
        }
        *size = wanted;
        done.push(format!("grew {field} to {wanted}"));
    }
    if applies("autostart") {
        vm.dom.set_autostart(desired.autostart).map_err(|e| explain(e, "setting autostart"))?;
        crate::fault::mutated("set autostart");
        spec.autostart = desired.autostart;
        done.push(format!("autostart {}", if desired.autostart { "on" } else { "off" }));
    }
    let mut own = vm.own.clone();
    own.spec_json = serde_json::to_string(&spec)?;
    if redefine {
        // Same builder as create, same uuid: libvirt updates the persistent
        // definition; a running guest sees it after its next restart.
        let mut xml = domain_xml::build(&spec, &own, &super::host_files(ctx, &spec)?);
        xml.uuid = Some(vm.dom.uuid_string().map_err(|e| explain(e, "reading uuid"))?);
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
