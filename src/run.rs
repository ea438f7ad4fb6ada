//! Wiring: settings and connection, then one line or two per verb. What a
//! verb does lives in its `ops` module, and its report prints itself.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clap::CommandFactory;

use crate::cli::{Cli, Command, ImageCommand, SnapshotCommand, WaitArgs};
use crate::libvirt::{self, vms};
use crate::ops::{self, create::CreateRequest, Ctx};
use crate::output::emit;
use crate::settings::HostSettings;
use crate::spec::Resources;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Completions { shell } = cli.command {
        // Into a buffer: clap_complete panics on a closed stdout.
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "project-vm", &mut buf);
        std::io::stdout().lock().write_all(&buf)?;
        return Ok(());
    }
    let mut host = HostSettings::load(cli.config.as_deref())?;
    // A declarative file may carry host settings; they win over the settings file.
    let declared = match &cli.command {
        Command::Plan(a) => Some(crate::config::load(&a.file)?),
        Command::Apply(a) => Some(crate::config::load(&a.plan.file)?),
        _ => None,
    };
    if let Some(d) = &declared {
        host = host.overlay(d.settings.clone());
    }
    let settings = host.resolve()?;
    let uri = cli.connect.clone().unwrap_or_else(|| libvirt::default_uri().to_owned());
    if let Command::Doctor = cli.command {
        // Connects by itself: an unreachable libvirtd is a finding, not an error.
        let report = ops::doctor::doctor(&uri, &settings);
        return checked(emit(cli.json, &report), report.check());
    }
    let conn = libvirt::connect(&uri)?;
    let ctx = Ctx::new(conn, uri, settings, cli.json);
    match (cli.command, declared) {
        (Command::Plan(a), Some(d)) => emit(ctx.json, &ops::plan::plan(&ctx, &d, plan_options(&a))?),
        (Command::Apply(a), Some(d)) => apply(ctx, &d, &a),
        (command, _) => dispatch(&ctx, command),
    }
}

fn plan_options(a: &crate::cli::PlanArgs) -> ops::plan::Options {
    ops::plan::Options { prune: a.prune, all_pools: a.all_pools, restart: a.restart, recreate: a.recreate }
}

fn wait(w: &WaitArgs) -> Option<Duration> {
    w.wait.then(|| Duration::from_secs(w.timeout))
}

fn apply(ctx: Ctx, declared: &crate::config::Declared, a: &crate::cli::ApplyArgs) -> anyhow::Result<()> {
    crate::interrupt::install();
    let opts = ops::apply::ApplyOptions {
        plan: plan_options(&a.plan),
        jobs: a.jobs as usize,
        wait: a.wait.wait,
        timeout: Duration::from_secs(a.wait.timeout),
        delete_data: a.delete_data,
    };
    let json = ctx.json;
    let report = ops::apply::apply(Arc::new(ctx), declared, opts)?;
    checked(emit(json, &report), report.check())
}

/// The verdict of a report (cloud-init's result, failed VMs) wins over a
/// closed stdout: `create --wait | head -1` still exits 5 when it failed.
fn checked(printed: anyhow::Result<()>, verdict: anyhow::Result<()>) -> anyhow::Result<()> {
    verdict?;
    printed
}

fn dispatch(ctx: &Ctx, command: Command) -> anyhow::Result<()> {
    let json = ctx.json;
    match command {
        Command::Create(a) => {
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
                },
            };
            let report = ops::create::run(ctx, &req, a.start, wait(&a.wait))?;
            checked(emit(json, &report), report.check())?;
        }
        Command::Start(a) => {
            let report = ops::power::start_and_wait(ctx, &vms::get(&ctx.conn, &a.name)?, wait(&a.wait))?;
            checked(emit(json, &report), report.check())?;
        }
        Command::Stop(a) => {
            let vm = vms::get(&ctx.conn, &a.name)?;
            emit(json, &ops::power::stop_reporting(ctx, &vm, Duration::from_secs(a.timeout), a.force)?)?;
        }
        Command::Restart(a) => {
            let vm = vms::get(&ctx.conn, &a.name)?;
            let report = ops::power::restart(ctx, &vm, Duration::from_secs(a.stop_timeout), wait(&a.wait))?;
            checked(emit(json, &report), report.check())?;
        }
        Command::Destroy(a) => {
            crate::interrupt::install();
            emit(json, &ops::destroy::destroy(ctx, &vms::get(&ctx.conn, &a.name)?, a.keep_data)?)?;
        }
        Command::List(a) => emit(json, &ops::list::list(ctx, a.all_pools)?)?,
        Command::Status(a) => emit(json, &ops::status::status(ctx, &vms::get(&ctx.conn, &a.name)?)?)?,
        Command::Ssh(a) => ops::ssh::exec(&vms::get(&ctx.conn, &a.name)?, a.identity.as_deref(), &a.command)?,
        Command::SshConfig(a) => {
            let vms = match a.name {
                Some(n) => vec![vms::get(&ctx.conn, &n)?],
                None => vms::list(&ctx.conn)?,
            };
            ops::ssh::write_config(&mut std::io::stdout().lock(), &vms)?;
        }
        Command::Console(a) => ops::console::console(ctx, &vms::get(&ctx.conn, &a.name)?)?,
        Command::Logs(a) => ops::logs::logs(ctx, &vms::get(&ctx.conn, &a.name)?, a.follow)?,
        Command::Image(ImageCommand::Pull(a)) => {
            crate::interrupt::install();
            let req = ops::pull::PullRequest {
                what: a.what,
                name: a.name,
                checksum: a.checksum,
                checksums: a.checksums,
                refresh: a.refresh,
            };
            emit(json, &ops::pull::pull(ctx, &req)?)?;
        }
        Command::Image(ImageCommand::Import { file, name, checksum }) => {
            crate::interrupt::install();
            emit(json, &ops::pull::import(ctx, &file.to_string_lossy(), name.as_deref(), checksum)?)?;
        }
        Command::Image(ImageCommand::Save { vm, name, stop, identity }) => {
            crate::interrupt::install();
            let vm = vms::get(&ctx.conn, &vm)?;
            let progress = crate::progress::Progress::spinner(json, format!("saving {}", vm.name));
            let report = ops::save::save(ctx, &vm, &name, stop, identity.as_deref(), &progress)?;
            progress.finish();
            emit(json, &report)?;
        }
        Command::Image(ImageCommand::List) => emit(json, &ops::image::listing(ctx)?)?,
        Command::Image(ImageCommand::Rm { name }) => emit(json, &ops::image::remove(ctx, &name)?)?,
        Command::Snapshot(SnapshotCommand::Create { name, snapshot, description }) => {
            let vm = vms::get(&ctx.conn, &name)?;
            emit(json, &ops::snapshot::create(ctx, &vm, snapshot.as_deref(), description.as_deref())?)?;
        }
        Command::Snapshot(SnapshotCommand::List { name }) => {
            emit(json, &ops::snapshot::list(ctx, &vms::get(&ctx.conn, &name)?)?)?
        }
        Command::Snapshot(SnapshotCommand::Revert { name, snapshot }) => {
            emit(json, &ops::snapshot::revert(ctx, &vms::get(&ctx.conn, &name)?, &snapshot)?)?
        }
        Command::Snapshot(SnapshotCommand::Delete { name, snapshot }) => {
            emit(json, &ops::snapshot::delete(ctx, &vms::get(&ctx.conn, &name)?, &snapshot)?)?
        }
        Command::Gc(a) => emit(json, &ops::gc::gc(ctx, a.yes, &a.kept_disks)?)?,
        Command::Completions { .. } | Command::Plan(_) | Command::Apply(_) | Command::Doctor => {
            unreachable!("handled in run")
        }
    }
    Ok(())
}
