//! `gc`: what crashes, kills and full disks can leave in the pool, listed and
//! (with `--yes`) removed. It never removes a kept project disk unless that
//! disk is named, never touches a VM another project-vm is working on (and
//! re-reads a VM under its lock before undoing it), nor an image that is
//! being uploaded, and stays within the settings' pool. It never removes a
//! volume that any domain on the connection uses (whoever made it, renamed
//! or copied), nor one project-vm has no record of making: those are listed
//! and left alone.

use std::collections::BTreeSet;
use std::io::{self, Write};

use serde::Serialize;

use super::Ctx;
use crate::images::record::{self, VolumeKind};
use crate::images::store;
use crate::libvirt::metadata::Phase;
use crate::libvirt::storage::{self, VolumeInfo};
use crate::libvirt::vms;
use crate::lock;
use crate::output::{human, table, Report};
use crate::spec::{VmName, DOMAIN_PREFIX};
use virt::storage_pool::StoragePool;

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// `orphan-volume`, `half-made-vm`, `unverified-image`, `superseded-image`,
    /// `stale-marker`, `kept-disk` (all removable), `unrecorded-volume` and
    /// `in-use-volume` (never removed).
    pub kind: &'static str,
    /// The volume, or the VM for `half-made-vm`.
    pub name: String,
    pub detail: String,
    /// Bytes it holds on the host.
    pub bytes: u64,
    /// Removed (`--yes`), or why not.
    pub action: String,
}

#[derive(Debug, Serialize)]
pub struct GcReport {
    pub pool: String,
    pub findings: Vec<Finding>,
    pub removed: usize,
    pub dry_run: bool,
}

impl GcReport {
    /// Records `f`, removing it first unless this is a dry run.
    fn collect(&mut self, mut f: Finding, remove: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
        if self.dry_run {
            f.action = "would remove".into();
        } else {
            remove()?;
            f.action = "removed".into();
            self.removed += 1;
        }
        self.findings.push(f);
        Ok(())
    }
}

fn finding(kind: &'static str, name: &str, detail: impl Into<String>, bytes: u64) -> Finding {
    Finding { kind, name: name.to_owned(), detail: detail.into(), bytes, action: String::new() }
}

/// `named`: kept project disks the user named for removal.
pub fn gc(ctx: &Ctx, yes: bool, named: &[String]) -> anyhow::Result<GcReport> {
    let pool_name = ctx.settings.pool.clone();
    let mut report = GcReport { pool: pool_name.clone(), findings: Vec::new(), removed: 0, dry_run: !yes };
    let Some(pool) = storage::find_pool(&ctx.conn(), &pool_name)? else { return Ok(report) };
    let _ = pool.refresh(0);
    let all_vms = vms::list(&ctx.conn())?;
    let scan = Scan::read(ctx, &pool, &all_vms, yes, named)?;
    // Named disks first: a typo must not be found out after removals.
    scan.check_named()?;
    scan.half_made_vms(&mut report)?;
    scan.images(&mut report)?;
    scan.orphan_records(&mut report)?;
    scan.vm_volumes(&mut report)?;
    Ok(report)
}

/// What one gc run reads once: the pool, its VMs and volumes, and what every
/// domain uses.
struct Scan<'a> {
    ctx: &'a Ctx,
    pool: &'a StoragePool,
    pool_name: String,
    yes: bool,
    named: &'a [String],
    all_vms: &'a [vms::Vm],
    /// The VMs whose volumes live in this pool.
    vms: Vec<&'a vms::Vm>,
    /// Whatever any domain uses (its disks and their backing chains), whoever
    /// made it, is never removed: a renamed or copied domain keeps its disks.
    in_use: vms::InUse,
    names: BTreeSet<String>,
    /// The volumes the VMs' records name.
    owned: BTreeSet<String>,
}

/// Taking a VM's lock for gc: `Ok(None)` when another project-vm holds it
/// (the finding is skipped, saying why); any other failure ends the run.
fn vm_lock_or_skip(ctx: &Ctx, name: &VmName) -> anyhow::Result<Result<lock::Lock, String>> {
    skip_if_busy(super::vm_lock(ctx, name, "collecting garbage of"))
}

fn skip_if_busy<T>(taken: anyhow::Result<T>) -> anyhow::Result<Result<T, String>> {
    match taken {
        Ok(l) => Ok(Ok(l)),
        Err(e) if e.downcast_ref::<lock::Busy>().is_some() => Ok(Err(format!("skipped: {e}"))),
        Err(e) => Err(e),
    }
}

impl<'a> Scan<'a> {
    fn read(
        ctx: &'a Ctx,
        pool: &'a StoragePool,
        all_vms: &'a [vms::Vm],
        yes: bool,
        named: &'a [String],
    ) -> anyhow::Result<Scan<'a>> {
        let pool_name = ctx.settings.pool.clone();
        let in_use = vms::disks_in_use(&ctx.conn(), ctx.is_local())?;
        let vms: Vec<_> = all_vms.iter().filter(|vm| vm.own.pool == pool_name).collect();
        let names: BTreeSet<String> = storage::volume_names(pool)?.into_iter().collect();
        let mut owned: BTreeSet<String> = BTreeSet::new();
        for vm in &vms {
            owned.extend([vm.own.root_volume.clone(), vm.own.data_volume.clone()]);
            owned.extend(vm.own.seed_volume.clone());
        }
        Ok(Scan { ctx, pool, pool_name, yes, named, all_vms, vms, in_use, names, owned })
    }

    fn user_of(&self, n: &str) -> Option<String> {
        let path = storage::find_volume(self.pool, n).ok().flatten()?.path().ok()?;
        self.in_use.get(&path).cloned()
    }

    fn allocation(&self, n: &str) -> u64 {
        storage::find_volume(self.pool, n)
            .ok()
            .flatten()
            .and_then(|v| VolumeInfo::of(&v).ok())
            .map_or(0, |i| i.allocation)
    }

    fn delete(&self, n: &str) -> anyhow::Result<()> {
        storage::delete(self.pool, n).map(drop)
    }

    fn left_alone(&self, n: &str) -> String {
        format!(
            "left alone: not project-vm's to remove (`virsh vol-delete {n} --pool {}` if it is yours)",
            self.pool_name
        )
    }

    /// Every disk the user named is a kept project disk of this pool.
    fn check_named(&self) -> anyhow::Result<()> {
        for n in self.named {
            if !self.names.contains(n) || kept_disk_of(self.ctx, self.pool, n)?.is_none() {
                return Err(super::Error::Invalid(format!(
                    "{n} is not a kept project disk in pool {}: `project-vm gc` lists what it can remove",
                    self.pool_name
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Half-made VMs: a create or a destroy that was killed.
    fn half_made_vms(&self, report: &mut GcReport) -> anyhow::Result<()> {
        for vm in &self.vms {
            let Some(keep_data) = vm.own.half_made(self.names.contains(&vm.own.root_volume)) else { continue };
            let f = self.half_made_vm(report, vm, keep_data)?;
            report.findings.push(f);
        }
        Ok(())
    }

    fn half_made_vm(&self, report: &mut GcReport, vm: &vms::Vm, keep_data: bool) -> anyhow::Result<Finding> {
        let detail = match vm.own.phase {
            Phase::Creating => "its create did not finish",
            Phase::Ready => "its destroy did not finish (the root disk is gone)",
        };
        let kept = match keep_data {
            true => format!("project disk {} kept", vm.own.data_volume),
            false => "its project disk was new and empty".into(),
        };
        let mut f = finding("half-made-vm", vm.name.as_str(), detail, 0);
        if let Some(why) = self.foreign_user(vm) {
            f.action = format!("kept: {why}");
            return Ok(f);
        }
        f.action = match vm_lock_or_skip(self.ctx, &vm.name)? {
            Err(skipped) => skipped,
            Ok(_lock) if self.yes => match still_half_made(self.ctx, self.pool, vm)? {
                // The create (or destroy) it was listed in finished since:
                // what is there now is not the half-made VM that was seen.
                None => "skipped: it changed since it was listed (its run finished)".into(),
                Some((now, keep_data)) => {
                    // A project disk that may hold data is kept (remove it by name).
                    super::destroy::remove(self.ctx, &now, keep_data)?;
                    report.removed += 1;
                    format!("removed ({kept})")
                }
            },
            Ok(_) => format!("would remove ({kept})"),
        };
        Ok(f)
    }

    /// One of `vm`'s volumes that another domain uses, said as a reason to keep it.
    fn foreign_user(&self, vm: &vms::Vm) -> Option<String> {
        vm.own.volumes(true).into_iter().find_map(|v| {
            let path = storage::find_volume(self.pool, v).ok().flatten()?.path().ok()?;
            let d = self.in_use.other_than(&path, &vm.name.domain())?;
            Some(format!("{v} is in use by domain {d}"))
        })
    }

    /// Images: uploads without a record, and older generations no VM uses.
    fn images(&self, report: &mut GcReport) -> anyhow::Result<()> {
        let backing: BTreeSet<String> = self
            .all_vms
            .iter()
            .filter_map(|vm| storage::find_volume(self.pool, &vm.own.root_volume).ok().flatten())
            .filter_map(|v| VolumeInfo::of(&v).ok()?.backing)
            .collect();
        for e in store::list(&self.ctx.conn(), self.pool)? {
            let (kind, detail) = match (&e.record, e.current) {
                (None, _) => ("unverified-image", "no record: an interrupted upload; create never uses it"),
                (Some(_), false) => ("superseded-image", "an older generation of its image"),
                (Some(_), true) => continue,
            };
            if !backing.contains(&e.disk.path) {
                self.image(report, &e, finding(kind, &e.volume, detail, e.disk.allocation))?;
            }
        }
        Ok(())
    }

    fn image(&self, report: &mut GcReport, e: &store::Entry, f: Finding) -> anyhow::Result<()> {
        if let Some(d) = self.in_use.get(&e.disk.path) {
            report.findings.push(Finding { action: format!("kept: in use by domain {d}"), ..f });
            return Ok(());
        }
        let image = match record::classify(&e.volume) {
            VolumeKind::Disk { image, .. } => image.to_owned(),
            // Not named as project-vm names its uploads (`NAME@GEN.img`):
            // made by hand or by another tool, and not project-vm's to remove.
            _ => {
                let detail = "no project-vm record names it, nor is it named like an upload of project-vm's; create never uses it";
                report.findings.push(Finding {
                    action: self.left_alone(&e.volume),
                    ..finding("unrecorded-volume", &e.volume, detail, e.disk.allocation)
                });
                return Ok(());
            }
        };
        // An upload in progress holds its image's lock.
        let what = format!("image:{}/{image}", self.pool_name);
        match lock::try_acquire(&self.ctx.lock_scope()?, &what, "collecting garbage")? {
            Err(h) => report.findings.push(Finding {
                action: format!("skipped: another project-vm{} is storing {image}", h.pid_note()),
                ..f
            }),
            Ok(_lock) => report.collect(f, || store::remove(self.pool, &e.volume))?,
        }
        Ok(())
    }

    /// Image records whose disk is gone.
    fn orphan_records(&self, report: &mut GcReport) -> anyhow::Result<()> {
        for n in &self.names {
            if let VolumeKind::Record { image, generation } = record::classify(n) {
                if !self.names.contains(&record::disk_volume(image, generation)) {
                    let f = finding("orphan-volume", n, "an image record without its disk", self.allocation(n));
                    report.collect(f, || self.delete(n))?;
                }
            }
        }
        Ok(())
    }

    /// VM volumes no record names: kept project disks (and their markers), a
    /// seed whose removal after the first boot was interrupted, or volumes
    /// project-vm has no record of making, which it leaves alone.
    fn vm_volumes(&self, report: &mut GcReport) -> anyhow::Result<()> {
        for n in self.names.iter().filter(|n| n.starts_with(DOMAIN_PREFIX) && !self.owned.contains(*n)) {
            if let Some(d) = self.user_of(n) {
                let detail = "no project-vm record names it, but a domain uses it";
                report.findings.push(Finding {
                    action: format!("kept: in use by domain {d}"),
                    ..finding("in-use-volume", n, detail, self.allocation(n))
                });
            } else if let Some(data) = n.strip_suffix(".kept") {
                // Otherwise reported with its disk.
                if !self.names.contains(data) {
                    self.stale_marker(report, n, data)?;
                }
            } else if let Some(vm) =
                self.vms.iter().find(|vm| vm.name.seed_volume() == *n && vm.own.seed_volume.is_none())
            {
                self.detached_seed(report, n, vm)?;
            } else {
                self.kept_or_unrecorded(report, n)?;
            }
        }
        Ok(())
    }

    /// A kept disk's marker whose disk is gone: removed under its VM's lock,
    /// and only if its disk is still gone (a destroy --keep-data or a create
    /// may be at work).
    fn stale_marker(&self, report: &mut GcReport, n: &str, data: &str) -> anyhow::Result<()> {
        let owner = data.strip_prefix(DOMAIN_PREFIX).and_then(|v| v.strip_suffix("-data.qcow2"));
        let lock = owner.and_then(|o| VmName::parse(o).ok()).map(|o| vm_lock_or_skip(self.ctx, &o)).transpose()?;
        let f = finding("stale-marker", n, format!("marks {data}, which is gone"), 0);
        match lock {
            Some(Err(skipped)) => report.findings.push(Finding { action: skipped, ..f }),
            _ => report.collect(f, || match storage::find_volume(self.pool, data)? {
                None => self.delete(n),
                Some(_) => Ok(()),
            })?,
        }
        Ok(())
    }

    /// A seed detached from its VM (the record says so) but not yet deleted.
    fn detached_seed(&self, report: &mut GcReport, n: &str, vm: &vms::Vm) -> anyhow::Result<()> {
        let detail = format!("the cloud-init seed of {}, detached after its first boot but not deleted", vm.name);
        let f = finding("orphan-volume", n, detail, self.allocation(n));
        match vm_lock_or_skip(self.ctx, &vm.name)? {
            Err(skipped) => report.findings.push(Finding { action: skipped, ..f }),
            // Still that VM, still without its seed (a new VM of the name has one).
            Ok(_lock) => report.collect(f, || match vms::lookup(&self.ctx.conn(), &vm.name)? {
                vms::Lookup::Owned(now) if now.own.uuid == vm.own.uuid && now.own.seed_volume.is_none() => {
                    self.delete(n)
                }
                _ => Ok(()),
            })?,
        }
        Ok(())
    }

    /// A kept project disk (removed only when named), or a volume project-vm
    /// did not make (left alone).
    fn kept_or_unrecorded(&self, report: &mut GcReport, n: &str) -> anyhow::Result<()> {
        let marked = self.names.contains(&storage::kept_marker(n));
        let kept_for = match marked {
            true => kept_disk_of(self.ctx, self.pool, n)?,
            false => None,
        };
        let Some(vm) = kept_for else {
            let detail = match marked {
                true => "a marker stands beside it, but it does not describe this disk: project-vm did not keep it",
                false => "no project-vm record names it (made by hand, by another tool, or refused by create)",
            };
            report.findings.push(Finding {
                action: self.left_alone(n),
                ..finding("unrecorded-volume", n, detail, self.allocation(n))
            });
            return Ok(());
        };
        let detail = format!("the project disk of {vm}, kept by `destroy --keep-data`; `create {vm}` reattaches it");
        let f = finding("kept-disk", n, detail, self.allocation(n));
        if !self.named.iter().any(|m| m == n) {
            let action = format!("kept: name it to remove it (`project-vm gc --yes {n}`)");
            report.findings.push(Finding { action, ..f });
            return Ok(());
        }
        report.collect(f, || {
            self.delete(n)?;
            self.delete(&storage::kept_marker(n))
        })?;
        if let Some(last) = report.findings.last_mut() {
            last.action.push_str(" (named)");
        }
        Ok(())
    }
}

/// `vm` as it is now (read under its lock), with what undoing it must keep,
/// if it is still the half-made VM that was listed; `None` when its run
/// finished (or it went) since.
fn still_half_made(
    ctx: &Ctx,
    pool: &virt::storage_pool::StoragePool,
    vm: &vms::Vm,
) -> anyhow::Result<Option<(vms::Vm, bool)>> {
    let vms::Lookup::Owned(now) = vms::lookup(&ctx.conn(), &vm.name)? else { return Ok(None) };
    if now.own.uuid != vm.own.uuid {
        return Ok(None);
    }
    let root_exists = storage::find_volume(pool, &now.own.root_volume)?.is_some();
    Ok(now.own.half_made(root_exists).map(|keep| (*now, keep)))
}

/// The VM whose kept project disk `volume` is: its name says whose, and its
/// marker describes it as it is now.
fn kept_disk_of(ctx: &Ctx, pool: &virt::storage_pool::StoragePool, volume: &str) -> anyhow::Result<Option<String>> {
    let Some(vm) = volume.strip_prefix(DOMAIN_PREFIX).and_then(|v| v.strip_suffix("-data.qcow2")) else {
        return Ok(None);
    };
    if crate::spec::VmName::parse(vm).is_err() {
        return Ok(None);
    }
    Ok(storage::kept_mismatch(&ctx.conn(), pool, volume, vm)?.is_none().then(|| vm.to_owned()))
}

impl Report for GcReport {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        if self.findings.is_empty() {
            return writeln!(out, "pool {}: nothing to collect", self.pool);
        }
        let rows: Vec<Vec<String>> = self
            .findings
            .iter()
            .map(|f| vec![f.kind.into(), f.name.clone(), human(f.bytes), f.action.clone(), f.detail.clone()])
            .collect();
        table(out, &["KIND", "NAME", "SIZE", "ACTION", "WHY"], &rows)?;
        if self.dry_run {
            writeln!(out, "nothing was removed: run `project-vm gc --yes` to remove what is marked \"would remove\"")?;
        } else {
            writeln!(out, "removed {}", self.removed)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_vm_is_skipped_and_any_other_lock_failure_ends_the_run() {
        let holder = lock::Holder { pid: Some(42), doing: Some("creating".into()) };
        let busy = lock::Busy { what: "web".into(), holder, hint: String::new() };
        let skipped = skip_if_busy::<()>(Err(busy.into())).unwrap().unwrap_err();
        assert_eq!(skipped, "skipped: web is busy: another project-vm (pid 42) is creating");
        let unusable = skip_if_busy::<()>(Err(lock::Unusable("cannot lock vm:web".into()).into())).unwrap_err();
        assert!(unusable.downcast_ref::<lock::Unusable>().is_some());
        assert_eq!(crate::exit::code(&unusable), 4);
        assert_eq!(skip_if_busy(Ok(1)).unwrap(), Ok(1));
    }
}
