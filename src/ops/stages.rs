//! Stage snapshots (`"stage_snapshots": true`, `create --stage-snapshots`):
//! the first provisioning's `--wait` takes a snapshot `pre-configured` once
//! the features are done and `final-form` once the application script and
//! the checks pass. Only then: never on a later boot, a re-apply or a
//! `reconfigure`, and never over a snapshot of that name.
//!
//! **How a moment of the first boot is caught.** The host takes the
//! snapshot of the running domain when the wait learns the stage was
//! reached: libvirt's internal snapshot of a running QEMU (the same as
//! `snapshot create` on a running VM) pauses the guest for the save and
//! resumes it, so the snapshot holds both disks and the memory at that
//! moment, consistent without any help from the guest, and a revert
//! resumes the guest exactly there. The guest does not wait for the host:
//! a guest that paused itself would hang whenever nobody waits (`create`
//! without `--wait`), and the host would need a channel back into it.
//!
//! Before the first stage snapshot the seed is removed (detached and
//! deleted, as the wait does at its end): cloud-init read it in its first
//! stage, long before the features ran, and it holds the guest's private
//! host key, which no snapshot may carry; a snapshot whose definition named
//! the deleted seed could not be reverted to either.
//!
//! **Where the stages come from.** The readiness wait's events
//! (`ready::Event`): `FeaturesDone` (cloud-init's final stage is over, the
//! features with it) is `pre-configured`; `ChecksPassed` (the application
//! script, if any, exited 0 and every check passed) is `final-form`. A
//! failed application script or check takes no `final-form`. The guest
//! sends both as stage lines while it works, so the snapshots are taken at
//! those moments; a host that connected late gets them from the report.

use std::time::Duration;

use super::ready::{self, ReadyReport};
use super::{seed, snapshot, Ctx};
use crate::libvirt::vms::{self, Vm};
use crate::progress::Progress;
use crate::spec::VmName;

pub use super::snapshot::Stage;

/// The line a guest sends on the readiness channel when it reaches a stage
/// before its final report: `{"project_vm_stage":"pre-configured","boot_id":"..."}`
/// once the last feature is done and before the application script starts
/// (`final-form` is the final report itself, when the application script and
/// checks passed; a guest may send it as a line of its own too). The stage
/// and the boot it came from; `None` for any other line.
pub fn parse_stage_line(line: &str) -> Option<(Stage, String)> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    let stage = Stage::named(v.get("project_vm_stage")?.as_str()?)?;
    Some((stage, v.get("boot_id")?.as_str()?.to_owned()))
}

/// What the readiness wait tells about the stages of a first provisioning.
pub trait StageObserver {
    /// The guest reached `stage` (each is reported at most once, in order).
    fn reached(&mut self, stage: Stage) -> anyhow::Result<()>;
}

/// Takes the stage snapshots of one VM's first provisioning.
pub struct StageSnapshots<'a> {
    ctx: &'a Ctx,
    name: VmName,
    progress: &'a Progress,
    /// The stages seen so far (each is acted on once).
    seen: Vec<Stage>,
    /// The snapshots taken, by name.
    pub taken: Vec<String>,
}

/// Whether a VM wants stage snapshots from this wait: it asked for them,
/// and it was never provisioned (its seed is still there; the first wait
/// removes it, so later boots, re-applies and `reconfigure`'s own wait, which
/// does not use this, take none).
pub fn due(vm: &Vm) -> bool {
    vm.own.seed_volume.is_some() && vm.spec().is_ok_and(|s| s.stage_snapshots)
}

impl<'a> StageSnapshots<'a> {
    /// The snapshotter for `vm`'s wait, when stage snapshots are due.
    pub fn of(ctx: &'a Ctx, vm: &Vm, progress: &'a Progress) -> Option<StageSnapshots<'a>> {
        due(vm).then(|| StageSnapshots { ctx, name: vm.name.clone(), progress, seen: Vec::new(), taken: Vec::new() })
    }

    fn take(&mut self, stage: Stage) -> anyhow::Result<()> {
        let name = stage.snapshot_name();
        let vm = vms::get(&self.ctx.conn(), &self.name)?;
        snapshot::snapshottable(&vm)?;
        if snapshot::exists(&vm, name)? {
            crate::messages::warn(format!("{}: a snapshot {name} exists already: kept, not taken again", vm.name));
            return Ok(());
        }
        // The seed (the private host key) is read and done with: in no snapshot.
        seed::remove(self.ctx, &vm)?;
        let vm = vms::get(&self.ctx.conn(), &self.name)?;
        self.progress.set_message(format!("{}: taking snapshot {name}", vm.name));
        snapshot::take(&vm, name, Some(&format!("stage snapshot, taken {}", stage.moment())))?;
        self.progress.suspend(|| crate::messages::note(format!("{}: took stage snapshot {name}", vm.name)));
        self.taken.push(name.to_owned());
        Ok(())
    }
}

impl StageObserver for StageSnapshots<'_> {
    fn reached(&mut self, stage: Stage) -> anyhow::Result<()> {
        if self.seen.contains(&stage) {
            return Ok(());
        }
        self.seen.push(stage);
        self.take(stage)
    }
}

/// Refuses, before anything is made, stage snapshots of a VM that cannot
/// have any: libvirt takes no internal snapshot of a UEFI VM's firmware
/// variables (see `snapshot`).
pub fn check_request(name: &VmName, stage_snapshots: bool, devices: &crate::spec::Devices) -> anyhow::Result<()> {
    if stage_snapshots && devices.firmware() == crate::spec::Firmware::Efi {
        return Err(super::Error::Invalid(format!(
            "VM {}: stage_snapshots needs a BIOS VM (it boots UEFI{}, and libvirt takes no internal snapshot of its firmware variables): drop stage_snapshots, or boot it bios",
            name,
            if devices.hostdevs.is_empty() { "" } else { ": passthrough implies it" }
        ))
        .into());
    }
    Ok(())
}

/// The readiness wait of a VM's start, with its stage snapshots when they
/// are due: the report, and the snapshots taken (none when provisioning
/// did not end `done`: the report's check fails the command then).
pub fn wait(ctx: &Ctx, vm: &Vm, timeout: Duration, progress: &Progress) -> anyhow::Result<(ReadyReport, Vec<String>)> {
    let mut stages = StageSnapshots::of(ctx, vm, progress);
    // The moments come from the readiness wait's events: features done,
    // then the application script and every check passed.
    let mut on_event = |e: &ready::Event| match (stages.as_mut(), e) {
        (Some(s), ready::Event::FeaturesDone) => s.reached(Stage::PreConfigured),
        (Some(s), ready::Event::ChecksPassed { .. }) => s.reached(Stage::FinalForm),
        _ => Ok(()),
    };
    let report = ready::wait_with(ctx, vm, timeout, progress, &mut on_event)?;
    Ok((report, stages.map(|mut s| std::mem::take(&mut s.taken)).unwrap_or_default()))
}

/// [`wait`] with a spinner, when `timeout` is given (`create --wait`).
pub fn wait_if(ctx: &Ctx, vm: &Vm, timeout: Option<Duration>) -> anyhow::Result<(Option<ReadyReport>, Vec<String>)> {
    let Some(timeout) = timeout else { return Ok((None, Vec::new())) };
    let progress = Progress::spinner(ctx.json, format!("{}: booting", vm.name));
    let (report, taken) = wait(ctx, vm, timeout, &progress)?;
    progress.finish();
    Ok((Some(report), taken))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_are_valid_snapshot_names_in_order_and_reserved() {
        assert_eq!(Stage::ALL.map(Stage::snapshot_name), ["pre-configured", "final-form"]);
        for s in Stage::ALL {
            assert_eq!(Stage::named(s.snapshot_name()), Some(s));
            assert!(crate::ops::snapshot::tests::valid(s.snapshot_name()), "{s:?}");
        }
        assert_eq!(Stage::named("snap-1"), None);
        assert_eq!(Stage::named("Final-Form"), None);
        assert_eq!(serde_json::to_value(Stage::PreConfigured).unwrap(), "pre-configured");
    }

    /// An observer that records what the wait told it.
    struct Seen(Vec<Stage>);
    impl StageObserver for Seen {
        fn reached(&mut self, stage: Stage) -> anyhow::Result<()> {
            self.0.push(stage);
            Ok(())
        }
    }

    #[test]
    fn an_observer_is_a_trait_object_the_wait_can_hold() {
        let mut seen = Seen(Vec::new());
        let o: &mut dyn StageObserver = &mut seen;
        o.reached(Stage::PreConfigured).unwrap();
        o.reached(Stage::FinalForm).unwrap();
        assert_eq!(seen.0, Stage::ALL);
    }

    #[test]
    fn the_guests_stage_line_names_a_stage_and_its_boot() {
        let line = r#"{"project_vm_stage":"pre-configured","boot_id":"b-1"}"#;
        assert_eq!(parse_stage_line(line), Some((Stage::PreConfigured, "b-1".into())));
        assert_eq!(
            parse_stage_line(&format!("  {}\n", line.replace("pre-configured", "final-form"))).unwrap().0,
            Stage::FinalForm
        );
        for other in [
            r#"{"project_vm_stage":"snap-1","boot_id":"b"}"#,
            r#"{"project_vm_stage":"pre-configured"}"#,
            r#"{"project_vm_ready":3,"boot_id":"b"}"#,
            "pre-configured",
        ] {
            assert_eq!(parse_stage_line(other), None, "{other}");
        }
    }

    #[test]
    fn a_uefi_vm_cannot_have_stage_snapshots() {
        let s = crate::ops::plan::change::tests::base();
        let mut req = crate::ops::create::CreateRequest {
            name: s.name.clone(),
            resources: s.resources,
            image: None,
            user_data: None,
            features: vec![],
            autostart: false,
            devices: Default::default(),
            stage_snapshots: true,
            provision: Default::default(),
        };
        check_request(&req.name, req.stage_snapshots, &req.devices).unwrap();
        req.devices.firmware = crate::spec::Firmware::Efi;
        let e = check_request(&req.name, req.stage_snapshots, &req.devices).unwrap_err();
        assert!(matches!(e.downcast_ref::<crate::ops::Error>(), Some(crate::ops::Error::Invalid(_))), "{e:#}");
        assert!(e.to_string().contains("stage_snapshots needs a BIOS VM"), "{e}");
        req.stage_snapshots = false;
        check_request(&req.name, req.stage_snapshots, &req.devices).unwrap();
    }
}
