//! `start`, `stop`, `restart`.

use std::time::{Duration, Instant};

use serde::Serialize;

use std::io::{self, Write};

use super::ready::{self, ReadyReport};
use super::Ctx;
use crate::libvirt::explain;
use crate::libvirt::vms::{State, Vm};
use crate::output::Report;

#[derive(Debug, Serialize)]
pub struct StartReport {
    pub name: String,
    /// `started` or `already-running`.
    pub result: &'static str,
}

pub fn start(ctx: &Ctx, vm: &Vm) -> anyhow::Result<StartReport> {
    if vm.own.phase == crate::libvirt::metadata::Phase::Creating {
        return Err(super::Error::HalfMade(format!(
            "{} is half-made: its create did not finish. Run the same `project-vm create {}` again (it undoes what was left and starts over), or `project-vm destroy {}`",
            vm.name, vm.name, vm.name
        ))
        .into());
    }
    match vm.state() {
        State::Running => return Ok(StartReport { name: vm.name.to_string(), result: "already-running" }),
        State::Paused => {
            vm.dom.resume().map_err(|e| explain(e, format!("resuming {}", vm.name)))?;
            return Ok(StartReport { name: vm.name.to_string(), result: "resumed" });
        }
        State::Suspended => {
            super::suspend::resume(ctx, vm)?;
            return Ok(StartReport { name: vm.name.to_string(), result: "resumed" });
        }
        _ => {}
    }
    super::prepare_host_files(ctx, vm)?;
    vm.dom
        .create()
        .map_err(|e| crate::libvirt::explain_for(&ctx.settings.daemon, e, format!("starting {}", vm.name.domain())))?;
    crate::fault::mutated("started the domain");
    tracing::info!(vm = %vm.name, "started");
    Ok(StartReport { name: vm.name.to_string(), result: "started" })
}

#[derive(Debug, Serialize)]
pub struct StopReport {
    pub name: String,
    /// `graceful`: the guest shut itself down when asked (guest agent, else ACPI);
    /// `forced`: it did not within the timeout (or --force) and was powered off;
    /// `already-stopped`; `discarded`: a suspended VM's saved state was
    /// removed (`--force`).
    pub result: &'static str,
    pub seconds: f64,
}

/// Asks the guest to shut down: through the guest agent when it answers (the
/// most reliable: it needs no ACPI button handling in the guest), else the
/// ACPI power button. libvirt tries the methods in that order.
fn ask_shutdown(vm: &Vm) -> anyhow::Result<()> {
    let flags = virt::sys::VIR_DOMAIN_SHUTDOWN_GUEST_AGENT | virt::sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN;
    match vm.dom.shutdown_flags(flags) {
        Ok(_) => Ok(()),
        // Drivers without shutdown methods (libvirt's test driver) take the default.
        Err(_) => vm.dom.shutdown().map(|_| ()).map_err(|e| explain(e, format!("asking {} to shut down", vm.name))),
    }
}

pub fn stop(_ctx: &Ctx, vm: &Vm, timeout: Duration, force: bool) -> anyhow::Result<StopReport> {
    let t0 = Instant::now();
    let report = |result| StopReport { name: vm.name.to_string(), result, seconds: t0.elapsed().as_secs_f64() };
    match vm.state() {
        State::Shutoff => return Ok(report("already-stopped")),
        State::Suspended => return super::suspend::discard(vm, force).map(|()| report("discarded")),
        _ => {}
    }
    if !force && vm.state() == State::Running {
        ask_shutdown(vm)?;
        let mut asked = Instant::now();
        while t0.elapsed() < timeout {
            if !vm.dom.is_active().unwrap_or(false) {
                tracing::info!(vm = %vm.name, "stopped gracefully");
                return Ok(report("graceful"));
            }
            std::thread::sleep(Duration::from_millis(250));
            // A guest still booting may miss the first ACPI event: repeat it.
            if asked.elapsed() >= Duration::from_secs(10) {
                let _ = ask_shutdown(vm);
                asked = Instant::now();
            }
        }
        crate::messages::warn(format!(
            "{}: no graceful shutdown within {}; powering off",
            vm.name,
            humantime::format_duration(timeout)
        ));
    }
    match vm.dom.destroy() {
        Ok(()) => Ok(report("forced")),
        // It stopped between our last look and the destroy.
        Err(_) if !vm.dom.is_active().unwrap_or(true) => Ok(report("graceful")),
        Err(e) => Err(explain(e, format!("powering off {}", vm.name))),
    }
}

/// `start [--wait]`.
#[derive(Debug, Serialize)]
pub struct Started {
    pub start: StartReport,
    pub ready: Option<ReadyReport>,
}

impl Started {
    pub fn check(&self) -> anyhow::Result<()> {
        ready::check_opt(&self.ready)
    }
}

impl Report for Started {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}: {}", self.start.name, self.start.result.replace('-', " "))?;
        match (&self.ready, self.start.result) {
            // The same boot, restored: cloud-init's timings are the first boot's.
            (Some(r), "resumed") => crate::messages::note(r.note_resumed()),
            _ => ready::announce(&self.ready),
        }
        Ok(())
    }
}

pub fn start_and_wait(ctx: &Ctx, vm: &Vm, wait: Option<Duration>) -> anyhow::Result<Started> {
    let start = start(ctx, vm)?;
    // A first boot's wait takes the stage snapshots it wants (announced).
    let (ready, _stage_snapshots) = super::stages::wait_if(ctx, vm, wait)?;
    Ok(Started { start, ready })
}

impl Report for StopReport {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let how = match self.result {
            "graceful" => "shut down gracefully",
            "forced" => "powered off (forced)",
            "discarded" => "saved state discarded (the next start boots afresh)",
            _ => "already stopped",
        };
        writeln!(out, "{}: {how} in {:.1}s", self.name, self.seconds)
    }
}

/// `stop`, with a spinner on a terminal.
pub fn stop_reporting(ctx: &Ctx, vm: &Vm, timeout: Duration, force: bool) -> anyhow::Result<StopReport> {
    let progress = crate::progress::Progress::spinner(ctx.json, format!("stopping {}", vm.name));
    let report = stop(ctx, vm, timeout, force)?;
    progress.finish();
    Ok(report)
}

/// `restart [--wait]`.
#[derive(Debug, Serialize)]
pub struct Restarted {
    pub stop: StopReport,
    pub start: StartReport,
    pub ready: Option<ReadyReport>,
}

impl Restarted {
    pub fn check(&self) -> anyhow::Result<()> {
        ready::check_opt(&self.ready)
    }
}

impl Report for Restarted {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}: restarted (stop: {})", self.start.name, self.stop.result)?;
        ready::announce(&self.ready);
        Ok(())
    }
}

pub fn restart(ctx: &Ctx, vm: &Vm, stop_timeout: Duration, wait: Option<Duration>) -> anyhow::Result<Restarted> {
    let stop = stop(ctx, vm, stop_timeout, false)?;
    let Started { start, ready } = start_and_wait(ctx, vm, wait)?;
    Ok(Restarted { stop, start, ready })
}
