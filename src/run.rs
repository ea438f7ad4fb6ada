//! Wiring: settings and connection, then one line or two per verb. What a
//! verb does lives in its `ops` module, and its report prints itself.

use std::io::Write;
use std::time::Duration;

use clap::CommandFactory;

use crate::cli::{Cli, Command, FeatureCommand, ImageCommand, SnapshotCommand, WaitArgs};
use crate::libvirt::vms;
use crate::ops::{self, create::CreateRequest, fleet::Fleet};
use crate::output::emit;
use crate::settings::HostSettings;
use crate::spec::{Resources, VmName};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    crate::messages::set_json(cli.json);
    crate::progress::set_events(cli.progress);
    if let Command::Completions { shell } = cli.command {
        // Into a buffer: clap_complete panics on a closed stdout.
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "project-vm", &mut buf);
        std::io::stdout().lock().write_all(&buf)?;
        return Ok(());
    }
    let mut host = HostSettings::load(cli.config.as_deref())?;
    crate::features::use_dirs(&host.feature_dirs.clone().unwrap_or_else(crate::features::default_dirs));
    if let Command::Feature(c) = &cli.command {
        return feature(c, cli.json);
    }
    // A declarative file may carry host settings; they win over the settings file.
    let declared = match &cli.command {
        Command::Plan(a) => Some(crate::config::load(&a.file)?),
        Command::Apply(a) => Some(crate::config::load(&a.plan.file)?),
        _ => None,
    };
    if let Some(d) = &declared {
        host = host.overlay(d.settings.clone());
    } else if let Some(settings) = declared_settings()? {
        // Every other verb sees the hosts (and settings) plan and apply see.
        host = host.overlay(settings);
    }
    let mut fleet = Fleet::new(host, cli.connect.clone(), cli.json)?;
    fleet.looking = only_looks(&cli.command);
    let only = cli.host.as_deref();
    if let Command::Doctor = cli.command {
        // Connects by itself: an unreachable libvirtd is a finding, not an error.
        let h = match only {
            Some(n) => fleet.host(n)?,
            None => &fleet.hosts[0],
        };
        let report = ops::doctor::doctor(&h.uri, &h.settings);
        return checked(emit(cli.json, &report), report.check());
    }
    match (cli.command, declared) {
        (Command::Plan(a), Some(d)) => {
            let plan = ops::fleet_plan::plan_fleet(&fleet, &d, plan_options(&a), only)?;
            checked(emit(cli.json, &plan), plan.check())
        }
        (Command::Apply(a), Some(d)) => apply(&fleet, &d, &a, only, cli.json),
        (command, _) => dispatch(&fleet, only, cli.json, command),
    }
}

/// Verbs that change nothing may look through a read-only connection
/// where a system daemon refuses this user a read-write one.
fn only_looks(command: &Command) -> bool {
    matches!(
        command,
        Command::List(_)
            | Command::Status(_)
            | Command::Ssh(_)
            | Command::Check(_)
            | Command::SshConfig(_)
            | Command::Logs(_)
            | Command::Forward(_)
            | Command::Watch(_)
            | Command::Snapshot(SnapshotCommand::List { .. })
            | Command::Image(ImageCommand::List)
    )
}

/// The settings of the declarative file `plan` and `apply` read when given
/// no `--file`: `PROJECT_VM_FILE`, or `./project-vm.json` where there is one.
/// A file that cannot be read is an error here too, naming it: a verb that
/// went on without its `hosts` would not see the VMs placed there.
fn declared_settings() -> anyhow::Result<Option<HostSettings>> {
    let path = match std::env::var_os("PROJECT_VM_FILE").filter(|v| !v.is_empty()) {
        Some(p) => std::path::PathBuf::from(p),
        None => match std::path::Path::new("project-vm.json") {
            p if p.exists() => p.to_path_buf(),
            _ => return Ok(None),
        },
    };
    let declared = crate::config::load(&path).map_err(|e| {
        e.context(format!(
            "the declarative file {} (its settings, \"hosts\" among them, apply to every verb, as to plan and apply: fix it, or point PROJECT_VM_FILE at another file)",
            path.display()
        ))
    })?;
    Ok(Some(declared.settings))
}

/// `feature list|show`: the library the settings name; no connection.
fn feature(command: &FeatureCommand, json: bool) -> anyhow::Result<()> {
    match command {
        FeatureCommand::List => emit(json, &ops::feature::list()),
        FeatureCommand::Show { name } => emit(json, &ops::feature::show_in_use(name)?),
    }
}

fn plan_options(a: &crate::cli::PlanArgs) -> ops::plan::Options {
    ops::plan::Options {
        prune: a.prune,
        all_pools: a.all_pools,
        restart: a.restart,
        recreate: a.recreate,
        reconfigure: a.reconfigure,
    }
}

fn wait(w: &WaitArgs) -> Option<Duration> {
    w.wait.then(|| Duration::from_secs(w.timeout))
}

fn apply(
    fleet: &Fleet,
    declared: &crate::config::Declared,
    a: &crate::cli::ApplyArgs,
    only: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    crate::interrupt::install();
    let opts = ops::apply::ApplyOptions {
        plan: plan_options(&a.plan),
        jobs: a.jobs as usize,
        wait: a.wait.wait,
        timeout: Duration::from_secs(a.wait.timeout),
        delete_data: a.delete_data,
    };
    let report = ops::apply::apply(fleet, declared, opts, only)?;
    checked(emit(json, &report), report.check())
}

/// The verdict of a report (cloud-init's result, failed VMs) wins over a
/// closed stdout: `create --wait | head -1` still exits 5 when it failed.
fn checked(printed: anyhow::Result<()>, verdict: anyhow::Result<()>) -> anyhow::Result<()> {
    verdict?;
    printed
}

/// `only`: `--host`. A verb on a VM finds it across the hosts; a verb that
/// makes something needs one host. One small function per verb (a verb is
/// one file in `src/ops/`).
fn dispatch(fleet: &Fleet, only: Option<&str>, json: bool, command: Command) -> anyhow::Result<()> {
    let v = Verbs { fleet, only, json };
    match command {
        Command::Create(a) => v.create(a),
        Command::Start(a) => v.start(a),
        Command::Stop(a) => v.stop(a),
        Command::Restart(a) => v.restart(a),
        Command::Suspend(a) => v.suspend(a),
        Command::Clone(a) => v.clone_vm(a),
        Command::Destroy(a) => v.destroy(a),
        Command::List(a) => {
            let listing = ops::list::list_fleet(fleet, only, a.all_pools)?;
            checked(emit(json, &listing), listing.check())
        }
        Command::Status(a) => {
            let (ctx, vm) = v.find(&a.name)?;
            emit(json, &ops::status::status(&ctx, &vm)?)
        }
        Command::Check(a) => {
            let (ctx, vm) = v.find(&a.name)?;
            let report = ops::check::check(&ctx, &vm, a.identity.as_deref())?;
            checked(emit(json, &report), report.check())
        }
        Command::Ssh(a) => {
            let (ctx, vm) = v.find(&a.name)?;
            ops::ssh::exec(&ctx, &vm, a.identity.as_deref(), &a.command)
        }
        Command::SshConfig(a) => v.ssh_config(a.name, a.identity.as_deref()),
        Command::Console(a) => {
            let (ctx, vm) = v.find(&a.name)?;
            ops::console::console(&ctx, &vm)
        }
        Command::Logs(a) => {
            let (ctx, vm) = v.find(&a.name)?;
            ops::logs::logs(&ctx, &vm, a.follow)
        }
        Command::Forward(a) => {
            // Bad input first: a port taken here needs no VM looked up.
            ops::forward::check_tunnels(&a.ports)?;
            let (ctx, vm) = v.find(&a.name)?;
            ops::forward::forward(&ctx, &vm, &a.ports, a.identity.as_deref(), json)
        }
        Command::Watch(a) => ops::watch::watch(fleet, only, &a.names, json),
        Command::Reconfigure(a) => v.reconfigure(a),
        Command::Image(c) => v.image(c),
        Command::Snapshot(c) => v.snapshot(c),
        Command::Gc(a) => emit(json, &ops::gc::gc(&*v.one()?, a.yes, &a.kept_disks)?),
        Command::Completions { .. }
        | Command::Man
        | Command::Plan(_)
        | Command::Apply(_)
        | Command::Doctor
        | Command::Feature(_) => {
            unreachable!("handled in run")
        }
    }
}

/// The fleet a verb runs on, `--host` and `--json`.
struct Verbs<'a> {
    fleet: &'a Fleet,
    only: Option<&'a str>,
    json: bool,
}

type Found = (std::sync::Arc<ops::Ctx>, vms::Vm);

impl Verbs<'_> {
    /// A VM, for verbs that only look.
    fn find(&self, name: &VmName) -> anyhow::Result<Found> {
        self.fleet.find(name, self.only, false)
    }

    /// A VM, for verbs that change it.
    fn find_acting(&self, name: &VmName) -> anyhow::Result<Found> {
        self.fleet.find(name, self.only, true)
    }

    /// The one host a verb that makes something runs on.
    fn one(&self) -> anyhow::Result<std::sync::Arc<ops::Ctx>> {
        self.fleet.one(self.only).map(|(_, ctx)| ctx)
    }

    fn create(&self, a: crate::cli::CreateArgs) -> anyhow::Result<()> {
        crate::interrupt::install();
        let req = CreateRequest {
            name: a.name,
            resources: Resources { memory: a.memory, cpus: a.cpus, disk: a.disk, project_disk: a.project_disk },
            image: a.image,
            user_data: a.user_data.as_deref().map(CreateRequest::load_user_data).transpose()?,
            features: a.features,
            autostart: a.autostart,
            devices: ops::create::Devices {
                firmware: a.firmware.into(),
                network_config: a.ip.map(|address| crate::spec::StaticNetwork {
                    address,
                    gateway: a.gateway,
                    dns: a.dns.clone(),
                }),
                hostdevs: a.hostdevs,
                shares: a.shares,
                ports: a.ports,
            },
            stage_snapshots: a.stage_snapshots,
            provision: ops::create::Provision::load(a.application_script.as_deref(), Vec::new())?,
        };
        let report = ops::create::run(&*self.one()?, &req, a.start, wait(&a.wait))?;
        checked(emit(self.json, &report), report.check())
    }

    /// `start NAME`, or `start --suspended` (every suspended VM).
    fn start(&self, a: crate::cli::StartArgs) -> anyhow::Result<()> {
        let Some(name) = a.name else {
            let report = ops::suspend::resume_all(self.fleet, self.only)?;
            return checked(emit(self.json, &report), report.check());
        };
        let (ctx, vm) = self.find_acting(&name)?;
        let report = ops::power::start_and_wait(&ctx, &vm, wait(&a.wait))?;
        checked(emit(self.json, &report), report.check())
    }

    fn reconfigure(&self, a: crate::cli::ReconfigureArgs) -> anyhow::Result<()> {
        crate::interrupt::install();
        let (ctx, vm) = self.find_acting(&a.name)?;
        let features = match a.features.is_empty() {
            true => vm.spec()?.features,
            false => a.features,
        };
        let user_data = a.user_data.as_deref().map(CreateRequest::load_user_data).transpose()?;
        let provision = ops::create::Provision::load(a.application_script.as_deref(), Vec::new())?;
        let wanted = ops::reconfigure::Wanted { features, user_data, provision };
        let progress = crate::progress::Progress::spinner(self.json, format!("reconfiguring {}", vm.name));
        let timeout = Duration::from_secs(a.timeout);
        let report = ops::reconfigure::reconfigure(&ctx, &vm, &wanted, a.identity.as_deref(), timeout, &progress)?;
        progress.finish();
        checked(emit(self.json, &report), report.check())
    }

    fn stop(&self, a: crate::cli::StopArgs) -> anyhow::Result<()> {
        let (ctx, vm) = self.find_acting(&a.name)?;
        if a.save {
            return emit(self.json, &ops::suspend::suspend(&ctx, &vm)?);
        }
        emit(self.json, &ops::power::stop_reporting(&ctx, &vm, Duration::from_secs(a.timeout), a.force)?)
    }

    /// `suspend NAME`, or `suspend --all` (every running VM).
    fn suspend(&self, a: crate::cli::SuspendArgs) -> anyhow::Result<()> {
        let Some(name) = a.name else {
            let report = ops::suspend::suspend_all(self.fleet, self.only)?;
            return checked(emit(self.json, &report), report.check());
        };
        let (ctx, vm) = self.find_acting(&name)?;
        emit(self.json, &ops::suspend::suspend(&ctx, &vm)?)
    }

    fn clone_vm(&self, a: crate::cli::CloneArgs) -> anyhow::Result<()> {
        crate::interrupt::install();
        let (ctx, vm) = self.find_acting(&a.source)?;
        let req = ops::clone::CloneRequest { name: a.name, with_data: a.with_data, stop: a.stop, identity: a.identity };
        emit(self.json, &ops::clone::run(&ctx, &vm, &req)?)
    }

    fn restart(&self, a: crate::cli::RestartArgs) -> anyhow::Result<()> {
        let (ctx, vm) = self.find_acting(&a.name)?;
        let report = ops::power::restart(&ctx, &vm, Duration::from_secs(a.stop_timeout), wait(&a.wait))?;
        checked(emit(self.json, &report), report.check())
    }

    fn destroy(&self, a: crate::cli::DestroyArgs) -> anyhow::Result<()> {
        crate::interrupt::install();
        let (ctx, vm) = self.find_acting(&a.name)?;
        emit(self.json, &ops::destroy::destroy(&ctx, &vm, a.keep_data)?)
    }

    /// `ssh-config [NAME]`: one VM, or every VM on the selected hosts.
    fn ssh_config(&self, name: Option<VmName>, identity: Option<&std::path::Path>) -> anyhow::Result<()> {
        let vms = match name {
            Some(n) => vec![self.find(&n)?],
            None => {
                let mut all = Vec::new();
                for h in self.fleet.select(self.only)? {
                    let ctx = self.fleet.ctx(h)?;
                    all.extend(vms::list(&ctx.conn())?.into_iter().map(|vm| (ctx.clone(), vm)));
                }
                all
            }
        };
        emit(self.json, &ops::ssh::config_report(&vms, identity))
    }

    fn image(&self, command: ImageCommand) -> anyhow::Result<()> {
        let json = self.json;
        match command {
            ImageCommand::Pull(a) => {
                crate::interrupt::install();
                let req = ops::pull::PullRequest {
                    what: a.what,
                    name: a.name,
                    checksum: a.checksum,
                    checksums: a.checksums,
                    refresh: a.refresh,
                };
                emit(json, &ops::pull::pull(&*self.one()?, &req)?)
            }
            ImageCommand::Import { file, name, checksum } => {
                crate::interrupt::install();
                emit(json, &ops::pull::import(&*self.one()?, &file.to_string_lossy(), name.as_deref(), checksum)?)
            }
            ImageCommand::Save { vm, name, stop, identity } => {
                crate::interrupt::install();
                let (ctx, vm) = self.find_acting(&vm)?;
                let progress = crate::progress::Progress::spinner(json, format!("saving {}", vm.name));
                let report = ops::save::save(&ctx, &vm, &name, stop, identity.as_deref(), &progress)?;
                progress.finish();
                emit(json, &report)
            }
            ImageCommand::List => emit(json, &ops::image::listing(&*self.one()?)?),
            ImageCommand::Rm { name } => emit(json, &ops::image::remove(&*self.one()?, &name)?),
        }
    }

    fn snapshot(&self, command: SnapshotCommand) -> anyhow::Result<()> {
        let json = self.json;
        match command {
            SnapshotCommand::Create { name, snapshot, description } => {
                let (ctx, vm) = self.find_acting(&name)?;
                emit(json, &ops::snapshot::create(&ctx, &vm, snapshot.as_deref(), description.as_deref())?)
            }
            SnapshotCommand::List { name } => {
                let (ctx, vm) = self.find(&name)?;
                emit(json, &ops::snapshot::list(&ctx, &vm)?)
            }
            SnapshotCommand::Revert { name, snapshot } => {
                let (ctx, vm) = self.find_acting(&name)?;
                emit(json, &ops::snapshot::revert(&ctx, &vm, &snapshot)?)
            }
            SnapshotCommand::Delete { name, snapshot } => {
                let (ctx, vm) = self.find_acting(&name)?;
                emit(json, &ops::snapshot::delete(&ctx, &vm, &snapshot)?)
            }
        }
    }
}
