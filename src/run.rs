//! Dispatch: one arm per verb, each calls its op and prints the report.

use std::time::Duration;

use clap::CommandFactory;

use crate::cli::{Cli, Command, ImageCommand, WaitArgs};
use crate::libvirt::{self, vms};
use crate::ops::{self, create::CreateRequest, Ctx};
use crate::output::{self, human};
use crate::progress::Progress;
use crate::settings::HostSettings;
use crate::spec::Resources;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "project-vm", &mut std::io::stdout());
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
    let conn = libvirt::connect(&uri)?;
    let ctx = Ctx { conn, uri, settings, json: cli.json };
    match (cli.command, declared) {
        (Command::Plan(a), Some(d)) => plan(&ctx, &d, &a),
        (Command::Apply(a), Some(d)) => apply(ctx, &d, &a),
        (command, _) => dispatch(&ctx, command),
    }
}

fn plan_options(a: &crate::cli::PlanArgs) -> ops::plan::Options {
    ops::plan::Options { prune: a.prune, restart: a.restart, recreate: a.recreate }
}

fn plan(ctx: &Ctx, declared: &crate::config::Declared, a: &crate::cli::PlanArgs) -> anyhow::Result<()> {
    let plan = ops::plan::plan(ctx, declared, plan_options(a))?;
    if ctx.json {
        return output::json(&plan);
    }
    for p in &plan.vms {
        for line in ops::plan::describe(p) {
            println!("{line}");
        }
    }
    println!(
        "{} change{}, {} not applied, {} impossible",
        plan.changes,
        if plan.changes == 1 { "" } else { "s" },
        plan.not_applied,
        plan.impossible
    );
    Ok(())
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
    let report = ops::apply::apply(std::sync::Arc::new(ctx), declared, opts)?;
    if json {
        output::json(&report)?;
    } else {
        for p in report.plan.vms.iter() {
            let lines = ops::plan::describe(p);
            let result = report.results.iter().find(|r| r.name == p.name);
            match result {
                Some(r) if r.error.is_some() => {
                    println!("{}: FAILED: {}", p.name, r.error.as_deref().unwrap_or_default())
                }
                Some(r) if !r.done.is_empty() => println!("{}: {} ({:.1}s)", p.name, r.done.join(", "), r.seconds),
                _ => println!("{}", lines[0]),
            }
            for l in lines.iter().skip(1) {
                println!("{l}");
            }
        }
        println!("{} change{}, {} failed", report.changes, if report.changes == 1 { "" } else { "s" }, report.failed);
    }
    if report.failed > 0 {
        anyhow::bail!("{} of the VMs failed to apply (see above)", report.failed);
    }
    Ok(())
}

fn wait_ready(ctx: &Ctx, vm: &vms::Vm, wait: &WaitArgs) -> anyhow::Result<Option<ops::ready::ReadyReport>> {
    if !wait.wait {
        return Ok(None);
    }
    let progress = Progress::spinner(ctx.json, format!("{}: booting", vm.name));
    let report = ops::ready::wait(ctx, vm, Duration::from_secs(wait.timeout), &progress)?;
    progress.finish();
    Ok(Some(report))
}

fn print_ready(ctx: &Ctx, report: &Option<ops::ready::ReadyReport>) {
    if let (false, Some(r)) = (ctx.json, report) {
        let latency =
            r.report_latency_s.map(|l| format!(", reported {l:.2}s after cloud-init finished")).unwrap_or_default();
        eprintln!("{}: ready (cloud-init {}) after {:.1}s{latency}", r.name, r.cloud_init_status, r.waited_s);
    }
}

fn print_pulled(ctx: &Ctx, r: &ops::pull::PullReport) -> anyhow::Result<()> {
    if ctx.json {
        return output::json(r);
    }
    let how = match (r.cached, r.verified) {
        (true, _) => "already in the pool",
        (false, true) => "checksum verified",
        (false, false) => "checksum computed, not verified",
    };
    println!(
        "{}: {} ({}, {} virtual, {} file; {how}: {})",
        r.name,
        r.volume,
        r.format,
        human(r.capacity),
        human(r.size),
        r.checksum
    );
    Ok(())
}

fn dispatch(ctx: &Ctx, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Create(a) => {
            crate::interrupt::install();
            let user_data = a.user_data.as_deref().map(CreateRequest::load_user_data).transpose()?;
            let req = CreateRequest {
                name: a.name,
                resources: Resources { memory: a.memory, cpus: a.cpus, disk: a.disk, project_disk: a.project_disk },
                image: a.image,
                user_data,
                features: a.features,
                autostart: a.autostart,
            };
            let progress = Progress::spinner(ctx.json, format!("creating {}", req.name));
            let report = ops::create::create(ctx, &req, &progress)?;
            progress.finish();
            let mut ready = None;
            if a.start || a.wait.wait {
                let vm = vms::get(&ctx.conn, &req.name)?;
                ops::power::start(ctx, &vm)?;
                ready = wait_ready(ctx, &vm, &a.wait)?;
            }
            if ctx.json {
                output::json(&serde_json::json!({ "create": report, "ready": ready }))?;
            } else {
                let data = if report.data_reattached {
                    format!("reattached {} ({})", report.data_volume, human(report.data_capacity))
                } else {
                    format!("{} ({})", report.data_volume, human(report.data_capacity))
                };
                println!(
                    "created {} in {} ms: root {} on {}, project disk {data}",
                    report.domain, report.elapsed_ms, report.root_volume, report.base_image
                );
                print_ready(ctx, &ready);
            }
            if let Some(r) = &ready {
                ops::ready::check(r)?;
            }
        }
        Command::Start(a) => {
            let vm = vms::get(&ctx.conn, &a.name)?;
            let report = ops::power::start(ctx, &vm)?;
            let ready = wait_ready(ctx, &vm, &a.wait)?;
            if ctx.json {
                output::json(&serde_json::json!({ "start": report, "ready": ready }))?;
            } else {
                println!("{}: {}", report.name, report.result.replace('-', " "));
                print_ready(ctx, &ready);
            }
            if let Some(r) = &ready {
                ops::ready::check(r)?;
            }
        }
        Command::Stop(a) => {
            let vm = vms::get(&ctx.conn, &a.name)?;
            let progress = Progress::spinner(ctx.json, format!("stopping {}", vm.name));
            let report = ops::power::stop(ctx, &vm, Duration::from_secs(a.timeout), a.force)?;
            progress.finish();
            if ctx.json {
                output::json(&report)?;
            } else {
                let how = match report.result {
                    "graceful" => "shut down gracefully",
                    "forced" => "powered off (forced)",
                    _ => "already stopped",
                };
                println!("{}: {how} in {:.1}s", report.name, report.seconds);
            }
        }
        Command::Restart(a) => {
            let vm = vms::get(&ctx.conn, &a.name)?;
            let stop = ops::power::stop(ctx, &vm, Duration::from_secs(a.stop_timeout), false)?;
            let start = ops::power::start(ctx, &vm)?;
            let ready = wait_ready(ctx, &vm, &a.wait)?;
            if ctx.json {
                output::json(&serde_json::json!({ "stop": stop, "start": start, "ready": ready }))?;
            } else {
                println!("{}: restarted (stop: {})", vm.name, stop.result);
                print_ready(ctx, &ready);
            }
            if let Some(r) = &ready {
                ops::ready::check(r)?;
            }
        }
        Command::Destroy(a) => {
            let vm = vms::get(&ctx.conn, &a.name)?;
            let report = ops::destroy::destroy(ctx, &vm, a.keep_data)?;
            if ctx.json {
                output::json(&report)?;
            } else {
                println!("destroyed {} (deleted {})", a.name.domain(), report.deleted_volumes.join(", "));
                if let Some(kept) = &report.kept_data_volume {
                    println!("kept project disk {kept}: `project-vm create {}` reattaches it", a.name);
                }
            }
        }
        Command::List => {
            let entries = ops::list::list(ctx)?;
            if ctx.json {
                output::json(&entries)?;
            } else {
                let rows: Vec<Vec<String>> = entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.name.clone(),
                            e.state.as_str().into(),
                            e.vcpus.to_string(),
                            human(e.memory),
                            human(e.disk_usage),
                            e.address.clone().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "STATE", "CPUS", "MEMORY", "DISK", "ADDRESS"], &rows);
            }
        }
        Command::Status(a) => {
            let vm = vms::get(&ctx.conn, &a.name)?;
            let s = ops::status::status(ctx, &vm)?;
            if ctx.json {
                output::json(&s)?;
            } else {
                println!("{} ({})", s.name, s.domain);
                println!(
                    "  state:     {}{}",
                    s.state.as_str(),
                    if s.phase == libvirt::metadata::Phase::Creating { " (create did not finish)" } else { "" }
                );
                println!("  cpus:      {}", s.vcpus);
                println!("  memory:    {}", human(s.memory));
                println!("  autostart: {}", if s.autostart { "yes" } else { "no" });
                println!("  image:     {} (pool {})", s.base_image, s.pool);
                for d in &s.disks {
                    if d.exists {
                        println!(
                            "  disk {:<5} {}: {} used of {}",
                            d.role,
                            d.volume,
                            human(d.allocation),
                            human(d.capacity)
                        );
                    } else {
                        println!("  disk {:<5} {}: missing", d.role, d.volume);
                    }
                }
                for addr in &s.addresses {
                    println!("  address:   {}/{} on {} ({})", addr.address, addr.prefix, addr.interface, addr.source);
                }
                if let Some(t) = &s.tailnet_name {
                    println!("  tailnet:   {t}");
                }
                match &s.ssh {
                    Some(t) => println!("  ssh:       {}@{} port {} (via {})", t.user, t.host, t.port, t.via),
                    None => println!("  ssh:       no address yet"),
                }
            }
        }
        Command::Ssh(a) => {
            let vm = vms::get(&ctx.conn, &a.name)?;
            ops::ssh::exec(&vm, a.identity.as_deref(), &a.command)?;
        }
        Command::SshConfig(a) => {
            let vms = match a.name {
                Some(n) => vec![vms::get(&ctx.conn, &n)?],
                None => vms::list(&ctx.conn)?,
            };
            for vm in &vms {
                match ops::ssh::config_block(vm) {
                    Ok(block) => println!("{block}"),
                    Err(e) => eprintln!("# {}: {e:#}", vm.name),
                }
            }
        }
        Command::Console(a) => {
            let vm = vms::get(&ctx.conn, &a.name)?;
            ops::console::console(ctx, &vm)?;
        }
        Command::Logs(a) => {
            let vm = vms::get(&ctx.conn, &a.name)?;
            ops::logs::logs(ctx, &vm, a.follow)?;
        }
        Command::Image(ImageCommand::Pull(a)) => {
            crate::interrupt::install();
            let req = ops::pull::PullRequest {
                what: a.what,
                name: a.name,
                checksum: a.checksum,
                checksums: a.checksums,
                refresh: a.refresh,
            };
            let report = ops::pull::pull(ctx, &req)?;
            print_pulled(ctx, &report)?;
        }
        Command::Image(ImageCommand::Import { file, name, checksum }) => {
            crate::interrupt::install();
            let report = ops::pull::import(ctx, &file.to_string_lossy(), name.as_deref(), checksum)?;
            print_pulled(ctx, &report)?;
        }
        Command::Image(ImageCommand::List) => {
            let images = ops::image::list(ctx)?;
            if ctx.json {
                output::json(&images)?;
            } else {
                let rows: Vec<Vec<String>> = images
                    .iter()
                    .map(|i| {
                        vec![
                            i.name.clone().unwrap_or_else(|| format!("({})", i.volume)),
                            i.status.into(),
                            i.format.clone(),
                            human(i.capacity),
                            human(i.allocation),
                            i.checksum
                                .as_deref()
                                .map(|c| {
                                    let short = format!("{}…", &c[..c.find(':').map_or(0, |p| p + 13).min(c.len())]);
                                    if i.verified {
                                        short
                                    } else {
                                        format!("{short} (computed)")
                                    }
                                })
                                .unwrap_or_else(|| "-".into()),
                            i.source.clone().unwrap_or_else(|| "-".into()),
                            i.used_by.join(","),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "STATUS", "FORMAT", "SIZE", "ON DISK", "CHECKSUM", "SOURCE", "USED BY"], &rows);
            }
        }
        Command::Image(ImageCommand::Rm { name }) => {
            let removed = ops::image::remove(ctx, &name)?;
            if ctx.json {
                output::json(&serde_json::json!({ "removed": name, "volumes": removed }))?;
            } else {
                println!("removed image {name} ({})", removed.join(", "));
            }
        }
        Command::Completions { .. } | Command::Plan(_) | Command::Apply(_) => unreachable!("handled in run"),
    }
    Ok(())
}
