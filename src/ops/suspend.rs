//! `suspend`: a running VM's memory and device state go to disk through
//! libvirt's managed save, and the VM is shut off. `start` resumes it where
//! it was (libvirt restores a managed save on the next start), with the same
//! boot, the same processes and the same open files.
//!
//! What libvirt cannot save is refused before anything changes (exit 2):
//! virtiofs shares (vhost-user-fs has no migration state) and PCI
//! passthrough (a device's state lives in the device). Anything else libvirt
//! itself refuses to save (UEFI variants, say) is reported in its words, also
//! exit 2: the VM keeps running.
//!
//! A kill at any point converges on re-run: libvirt's save is one job in the
//! daemon that either leaves the VM running (and `suspend` saves it again) or
//! shut off with its state saved (and `suspend` says it already is).

use std::io::{self, Write};
use std::time::Instant;

use serde::Serialize;
use virt::error::ErrorNumber;

use super::{fleet::Fleet, Ctx, Error};
use crate::libvirt::metadata::Phase;
use crate::libvirt::vms::{self, State, Vm};
use crate::output::Report;
use crate::spec::VmSpec;

#[derive(Debug, Serialize)]
pub struct SuspendReport {
    pub name: String,
    /// `suspended`, or `already-suspended`.
    pub result: &'static str,
    pub seconds: f64,
}

impl Report for SuspendReport {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        match self.result {
            "suspended" => writeln!(
                out,
                "{}: suspended in {:.1}s (`project-vm start {}` resumes it)",
                self.name, self.seconds, self.name
            ),
            _ => writeln!(out, "{}: already suspended", self.name),
        }
    }
}

/// Why a VM of this spec cannot be saved, if it cannot: said before the
/// save is tried, so nothing changes.
pub fn unsavable(spec: &VmSpec) -> Option<String> {
    if !spec.shares.is_empty() {
        return Some(
            "it has virtiofs shares, and libvirt cannot save a VM with virtiofs (the share's state lives in virtiofsd, outside the VM)"
                .into(),
        );
    }
    if !spec.hostdevs.is_empty() {
        return Some(
            "it has PCI passthrough devices, and libvirt cannot save a VM with host devices (their state lives in the hardware)"
                .into(),
        );
    }
    None
}

fn refused(vm: &Vm, why: &str) -> anyhow::Error {
    Error::Invalid(format!(
        "{} cannot be suspended: {why}; nothing was changed. Use `project-vm stop {}` instead",
        vm.name, vm.name
    ))
    .into()
}

/// The checks that change nothing: a whole VM, one libvirt can save, running.
/// `Ok(false)`: already suspended.
fn check(vm: &Vm) -> anyhow::Result<bool> {
    if vm.own.phase == Phase::Creating {
        return Err(Error::HalfMade(format!(
            "{} is half-made: its create did not finish. Run the same `project-vm create {}` again, or `project-vm destroy {}`",
            vm.name, vm.name, vm.name
        ))
        .into());
    }
    if let Some(why) = unsavable(&vm.spec()?) {
        return Err(refused(vm, &why));
    }
    match vm.state() {
        State::Running | State::Paused => Ok(true),
        State::Suspended => Ok(false),
        other => Err(Error::NotRunning { vm: vm.name.to_string(), state: other.as_str().into() }.into()),
    }
}

/// `suspend NAME`.
pub fn suspend(ctx: &Ctx, vm: &Vm) -> anyhow::Result<SuspendReport> {
    let t0 = Instant::now();
    let _lock = super::vm_lock(ctx, &vm.name, "suspending")?;
    // Re-read under the lock: the VM may have changed since the caller looked.
    let vm = vms::get(&ctx.conn(), &vm.name)?;
    let report = |result| SuspendReport { name: vm.name.to_string(), result, seconds: t0.elapsed().as_secs_f64() };
    if !check(&vm)? {
        return Ok(report("already-suspended"));
    }
    crate::fault::pause("suspend-checked");
    vm.dom.managed_save(0).map_err(|e| save_failed(&vm, e))?;
    crate::fault::mutated("saved the domain");
    tracing::info!(vm = %vm.name, "suspended");
    Ok(report("suspended"))
}

/// libvirt's refusal to save this domain is bad input (exit 2, the VM is
/// left running); any other failure is libvirt's.
fn save_failed(vm: &Vm, e: virt::error::Error) -> anyhow::Error {
    let refusal = [
        ErrorNumber::OperationInvalid,
        ErrorNumber::OperationUnsupported,
        ErrorNumber::ArgumentUnsupported,
        ErrorNumber::ConfigUnsupported,
    ];
    if refusal.iter().any(|n| e.code().is(*n)) && vm.dom.is_active().unwrap_or(false) {
        return refused(vm, &format!("libvirt refuses to save it ({})", e.message()));
    }
    crate::libvirt::errors::Error::call(format!("saving {}", vm.name.domain()), e).into()
}

/// `suspend --all`: every running VM on the hosts `only` selects (the NixOS
/// module's host shutdown). A VM that cannot be saved is named and left
/// running; the others are saved.
#[derive(Debug, Serialize)]
pub struct SuspendAll {
    pub suspended: Vec<SuspendReport>,
    /// `NAME: why`, for each VM that was not saved.
    pub failed: Vec<String>,
}

impl SuspendAll {
    /// Exit 1 when a VM was not saved (the others were).
    pub fn check(&self) -> anyhow::Result<()> {
        match self.failed.is_empty() {
            true => Ok(()),
            false => Err(anyhow::anyhow!("not suspended:\n  {}", self.failed.join("\n  "))),
        }
    }
}

impl Report for SuspendAll {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        for r in &self.suspended {
            r.human(out)?;
        }
        Ok(())
    }
}

pub fn suspend_all(fleet: &Fleet, only: Option<&str>) -> anyhow::Result<SuspendAll> {
    let mut all = SuspendAll { suspended: Vec::new(), failed: Vec::new() };
    let running = |vm: &Vm| matches!(vm.state(), State::Running | State::Paused);
    all.failed = each_vm(fleet, only, running, |ctx, vm| suspend(ctx, vm).map(|r| all.suspended.push(r)))?;
    Ok(all)
}

/// `act` on every VM `which` picks, on the hosts `only` selects; what
/// failed (a host that cannot be reached, a VM), each in a line.
fn each_vm(
    fleet: &Fleet,
    only: Option<&str>,
    which: impl Fn(&Vm) -> bool,
    mut act: impl FnMut(&Ctx, &Vm) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<String>> {
    let mut failed = Vec::new();
    for h in fleet.select(only)? {
        let ctx = match fleet.ctx(h) {
            Ok(c) => c,
            Err(e) => {
                failed.push(format!("{e:#}"));
                continue;
            }
        };
        for vm in vms::list(&ctx.conn())?.iter().filter(|vm| which(vm)) {
            if let Err(e) = act(&ctx, vm) {
                failed.push(format!("{}: {e:#}", vm.name));
            }
        }
    }
    Ok(failed)
}

/// `start --suspended`: every suspended VM on the hosts `only` selects,
/// resumed (the NixOS module's host start).
pub fn resume_all(fleet: &Fleet, only: Option<&str>) -> anyhow::Result<ResumeAll> {
    let mut all = ResumeAll { resumed: Vec::new(), failed: Vec::new() };
    let suspended = |vm: &Vm| vm.state() == State::Suspended;
    all.failed =
        each_vm(fleet, only, suspended, |ctx, vm| resume(ctx, vm).map(|()| all.resumed.push(vm.name.to_string())))?;
    Ok(all)
}

#[derive(Debug, Serialize)]
pub struct ResumeAll {
    pub resumed: Vec<String>,
    pub failed: Vec<String>,
}

impl ResumeAll {
    pub fn check(&self) -> anyhow::Result<()> {
        match self.failed.is_empty() {
            true => Ok(()),
            false => Err(anyhow::anyhow!("not resumed:\n  {}", self.failed.join("\n  "))),
        }
    }
}

impl Report for ResumeAll {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        for n in &self.resumed {
            writeln!(out, "{n}: resumed")?;
        }
        Ok(())
    }
}

/// `start` of a suspended VM: libvirt restores the managed save. One that
/// cannot be restored is left as it is, with the way out.
pub fn resume(ctx: &Ctx, vm: &Vm) -> anyhow::Result<()> {
    super::prepare_host_files(ctx, vm)?;
    vm.dom.create().map_err(|e| {
        let doing = format!(
            "resuming {} from its saved state (`project-vm stop {} --force` discards it, and the next start boots afresh)",
            vm.name, vm.name
        );
        crate::libvirt::explain_for(&ctx.settings.daemon, e, doing)
    })?;
    crate::fault::mutated("restored the domain");
    tracing::info!(vm = %vm.name, "resumed");
    Ok(())
}

/// `stop` of a suspended VM: with `force`, its saved state is removed (the
/// next start is a fresh boot); without, refused, since that state holds
/// whatever the guest had not written to disk.
pub fn discard(vm: &Vm, force: bool) -> anyhow::Result<()> {
    if !force {
        return Err(Error::Invalid(format!(
            "{} is suspended (its memory is saved): `project-vm start {}` resumes it; `project-vm stop {} --force` discards the saved state, losing what the guest had not written to disk",
            vm.name, vm.name, vm.name
        ))
        .into());
    }
    vm.dom
        .managed_save_remove(0)
        .map_err(|e| crate::libvirt::errors::Error::call(format!("discarding {}'s saved state", vm.name), e))?;
    crate::fault::mutated("removed the managed save");
    Ok(())
}
