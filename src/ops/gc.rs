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
use crate::spec::DOMAIN_PREFIX;

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
    // Whatever any domain uses (its disks and their backing chains), whoever
    // made it, is never removed: a renamed or copied domain keeps its disks.
    let in_use = vms::disks_in_use(&ctx.conn(), ctx.is_local())?;
    let user_of = |n: &str| -> Option<String> {
        let path = storage::find_volume(&pool, n).ok().flatten()?.path().ok()?;
        in_use.get(&path).cloned()
    };
    let vms: Vec<_> = all_vms.iter().filter(|vm| vm.own.pool == pool_name).collect();
    let names: BTreeSet<String> = storage::volume_names(&pool)?.into_iter().collect();
    // Named disks first: a typo must not be found out after removals.
    for n in named {
        if !names.contains(n) || kept_disk_of(ctx, &pool, n)?.is_none() {
            return Err(crate::error::invalid(format!(
                "{n} is not a kept project disk in pool {pool_name}: `project-vm gc` lists what it can remove"
            )));
        }
    }
    let allocation = |n: &str| -> u64 {
        storage::find_volume(&pool, n).ok().flatten().and_then(|v| VolumeInfo::of(&v).ok()).map_or(0, |i| i.allocation)
    };
    let delete = |n: &str| storage::delete(&pool, n).map(drop);
    let mut owned: BTreeSet<String> = BTreeSet::new();
    for vm in &vms {
        owned.extend([vm.own.root_volume.clone(), vm.own.data_volume.clone()]);
        owned.extend(vm.own.seed_volume.clone());
    }

    // Half-made VMs: a create or a destroy that was killed.
    for vm in &vms {
        let Some(keep_data) = vm.own.half_made(names.contains(&vm.own.root_volume)) else { continue };
        let detail = match vm.own.phase {
            Phase::Creating => "its create did not finish",
            Phase::Ready => "its destroy did not finish (the root disk is gone)",
        };
        let kept = match keep_data {
            true => format!("project disk {} kept", vm.own.data_volume),
            false => "its project disk was new and empty".into(),
        };
        let mut f = finding("half-made-vm", vm.name.as_str(), detail, 0);
        let foreign_user = vm.own.volumes(true).into_iter().find_map(|v| {
            let path = storage::find_volume(&pool, v).ok().flatten()?.path().ok()?;
            let d = in_use.other_than(&path, &vm.name.domain())?;
            Some(format!("{v} is in use by domain {d}"))
        });
        if let Some(why) = foreign_user {
            f.action = format!("kept: {why}");
            report.findings.push(f);
            continue;
        }
        match super::vm_lock(ctx, &vm.name, "collecting garbage of") {
            Err(e) => f.action = format!("skipped: {e}"),
            Ok(_lock) if yes => match still_half_made(ctx, &pool, vm)? {
                // The create (or destroy) it was listed in finished since:
                // what is there now is not the half-made VM that was seen.
                None => f.action = "skipped: it changed since it was listed (its run finished)".into(),
                Some((now, keep_data)) => {
                    // A project disk that may hold data is kept (remove it by name).
                    super::destroy::remove(ctx, &now, keep_data)?;
                    f.action = format!("removed ({kept})");
                    report.removed += 1;
                }
            },
            Ok(_) => f.action = format!("would remove ({kept})"),
        }
        report.findings.push(f);
    }

    // Images: uploads without a record, and older generations no VM uses.
    let backing: BTreeSet<String> = all_vms
        .iter()
        .filter_map(|vm| storage::find_volume(&pool, &vm.own.root_volume).ok().flatten())
        .filter_map(|v| VolumeInfo::of(&v).ok()?.backing)
        .collect();
    for e in store::list(&ctx.conn(), &pool)? {
        let (kind, detail) = match (&e.record, e.current) {
            (None, _) => ("unverified-image", "no record: an interrupted upload; create never uses it"),
            (Some(_), false) => ("superseded-image", "an older generation of its image"),
            (Some(_), true) => continue,
        };
        if backing.contains(&e.disk.path) {
            continue;
        }
        if let Some(d) = in_use.get(&e.disk.path) {
            report.findings.push(Finding {
                action: format!("kept: in use by domain {d}"),
                ..finding(kind, &e.volume, detail, e.disk.allocation)
            });
            continue;
        }
        let image = match record::classify(&e.volume) {
            VolumeKind::Disk { image, .. } => image.to_owned(),
            // Not named as project-vm names its uploads (`NAME@GEN.img`):
            // made by hand or by another tool, and not project-vm's to remove.
            _ => {
                report.findings.push(Finding {
                    action: format!(
                        "left alone: not project-vm's to remove (`virsh vol-delete {} --pool {pool_name}` if it is yours)",
                        e.volume
                    ),
                    ..finding(
                        "unrecorded-volume",
                        &e.volume,
                        "no project-vm record names it, nor is it named like an upload of project-vm's; create never uses it",
                        e.disk.allocation,
                    )
                });
                continue;
            }
        };
        let f = finding(kind, &e.volume, detail, e.disk.allocation);
        // An upload in progress holds its image's lock.
        match lock::try_acquire(&ctx.lock_scope()?, &format!("image:{pool_name}/{image}"), "collecting garbage")? {
            Err(h) => report.findings.push(Finding {
                action: format!("skipped: another project-vm{} is storing {image}", h.pid_note()),
                ..f
            }),
            Ok(_lock) => report.collect(f, || store::remove(&pool, &e.volume))?,
        }
    }
    // Image records whose disk is gone.
    for n in &names {
        if let VolumeKind::Record { image, generation } = record::classify(n) {
            if !names.contains(&record::disk_volume(image, generation)) {
                report
                    .collect(finding("orphan-volume", n, "an image record without its disk", allocation(n)), || {
                        delete(n)
                    })?;
            }
        }
    }

    // VM volumes no record names: kept project disks (and their markers), a
    // seed whose removal after the first boot was interrupted, or volumes
    // project-vm has no record of making, which it leaves alone.
    for n in names.iter().filter(|n| n.starts_with(DOMAIN_PREFIX) && !owned.contains(*n)) {
        if let Some(d) = user_of(n) {
            report.findings.push(Finding {
                action: format!("kept: in use by domain {d}"),
                ..finding("in-use-volume", n, "no project-vm record names it, but a domain uses it", allocation(n))
            });
            continue;
        }
        if let Some(data) = n.strip_suffix(".kept") {
            if !names.contains(data) {
                // Under its VM's lock, and only if its disk is still gone
                // (a destroy --keep-data or a create may be at work).
                let owner = data.strip_prefix(DOMAIN_PREFIX).and_then(|v| v.strip_suffix("-data.qcow2"));
                let lock = owner
                    .and_then(|o| crate::spec::VmName::parse(o).ok())
                    .map(|o| super::vm_lock(ctx, &o, "collecting garbage of"));
                let f = finding("stale-marker", n, format!("marks {data}, which is gone"), 0);
                match lock {
                    Some(Err(e)) => report.findings.push(Finding { action: format!("skipped: {e}"), ..f }),
                    _ => report.collect(f, || match storage::find_volume(&pool, data)? {
                        None => delete(n),
                        Some(_) => Ok(()),
                    })?,
                }
            }
            continue; // otherwise reported with its disk
        }
        // A seed detached from its VM (the record says so) but not yet deleted.
        let seed_of = vms.iter().find(|vm| vm.name.seed_volume() == *n && vm.own.seed_volume.is_none());
        if let Some(vm) = seed_of {
            let detail = format!("the cloud-init seed of {}, detached after its first boot but not deleted", vm.name);
            let f = finding("orphan-volume", n, detail, allocation(n));
            match super::vm_lock(ctx, &vm.name, "collecting garbage of") {
                Err(e) => report.findings.push(Finding { action: format!("skipped: {e}"), ..f }),
                // Still that VM, still without its seed (a new VM of the name has one).
                Ok(_lock) => report.collect(f, || match vms::lookup(&ctx.conn(), &vm.name)? {
                    vms::Lookup::Owned(now) if now.own.uuid == vm.own.uuid && now.own.seed_volume.is_none() => {
                        delete(n)
                    }
                    _ => Ok(()),
                })?,
            }
            continue;
        }
        let kept_for = match names.contains(&storage::kept_marker(n)) {
            true => kept_disk_of(ctx, &pool, n)?,
            false => None,
        };
        let Some(vm) = kept_for else {
            let detail = match names.contains(&storage::kept_marker(n)) {
                true => "a marker stands beside it, but it does not describe this disk: project-vm did not keep it",
                false => "no project-vm record names it (made by hand, by another tool, or refused by create)",
            };
            report.findings.push(Finding {
                action: format!(
                    "left alone: not project-vm's to remove (`virsh vol-delete {n} --pool {pool_name}` if it is yours)"
                ),
                ..finding("unrecorded-volume", n, detail, allocation(n))
            });
            continue;
        };
        let f = finding(
            "kept-disk",
            n,
            format!("the project disk of {vm}, kept by `destroy --keep-data`; `create {vm}` reattaches it"),
            allocation(n),
        );
        if named.contains(n) {
            report.collect(Finding { action: String::new(), ..f }, || {
                delete(n)?;
                delete(&storage::kept_marker(n))
            })?;
            if let Some(last) = report.findings.last_mut() {
                last.action.push_str(" (named)");
            }
        } else {
            report
                .findings
                .push(Finding { action: format!("kept: name it to remove it (`project-vm gc --yes {n}`)"), ..f });
        }
    }
    Ok(report)
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
