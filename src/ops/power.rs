//! `start`, `stop`, `restart`.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::Ctx;
use crate::libvirt::explain;
use crate::libvirt::vms::{State, Vm};

#[derive(Debug, Serialize)]
pub struct StartReport {
    pub name: String,
    /// `started` or `already-running`.
    pub result: &'static str,
}

pub fn start(_ctx: &Ctx, vm: &Vm) -> anyhow::Result<StartReport> {
    if vm.own.phase == crate::libvirt::metadata::Phase::Creating {
        return Err(crate::error::invalid(format!(
            "{} is half-made: its create did not finish. Run the same `project-vm create {}` again (it undoes what was left and starts over), or `project-vm destroy {}`",
            vm.name, vm.name, vm.name
        )));
    }
    match vm.state() {
        State::Running => return Ok(StartReport { name: vm.name.to_string(), result: "already-running" }),
        State::Paused => {
            vm.dom.resume().map_err(|e| explain(e, format!("resuming {}", vm.name)))?;
            return Ok(StartReport { name: vm.name.to_string(), result: "resumed" });
        }
        _ => {}
    }
    vm.dom.create().map_err(|e| explain(e, format!("starting {}", vm.name.domain())))?;
    crate::fault::mutated("started the domain");
    tracing::info!(vm = %vm.name, "started");
    Ok(StartReport { name: vm.name.to_string(), result: "started" })
}

#[derive(Debug, Serialize)]
pub struct StopReport {
    pub name: String,
    /// `graceful`: the guest shut itself down after the ACPI request;
    /// `forced`: it did not within the timeout (or --force) and was powered off;
    /// `already-stopped`.
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
    if vm.state() == State::Shutoff {
        return Ok(report("already-stopped"));
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
        tracing::warn!(vm = %vm.name, "no graceful shutdown within {timeout:?}; powering off");
    }
    match vm.dom.destroy() {
        Ok(()) => Ok(report("forced")),
        // It stopped between our last look and the destroy.
        Err(_) if !vm.dom.is_active().unwrap_or(true) => Ok(report("graceful")),
        Err(e) => Err(explain(e, format!("powering off {}", vm.name))),
    }
}
