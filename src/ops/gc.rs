//! `gc`: what crashes, kills and full disks can leave in the pool, listed and
//! (with `--yes`) removed. It never removes a kept project disk unless that
//! disk is named, never touches a VM another project-vm is working on, nor an
//! image that is being uploaded, and stays within the settings' pool.

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
    /// `stale-marker`, `kept-disk`.
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

/// `keep_named`: kept project disks the user named for removal.
pub fn gc(ctx: &Ctx, yes: bool, named: &[String]) -> anyhow::Result<GcReport> {
    let pool_name = ctx.settings.pool.clone();
    let mut report = GcReport { pool: pool_name.clone(), findings: Vec::new(), removed: 0, dry_run: !yes };
    let Some(pool) = storage::find_pool(&ctx.conn, &pool_name)? else { return Ok(report) };
    let _ = pool.refresh(0);
    let all_vms = vms::list(&ctx.conn)?;
    let vms: Vec<_> = all_vms.iter().filter(|vm| vm.own.pool == pool_name).collect();
    let names: BTreeSet<String> = storage::volume_names(&pool)?.into_iter().collect();
    // Named disks first: a typo must not be found out after removals.
    for n in named {
        if !names.contains(n) || !names.contains(&storage::kept_marker(n)) {
            return Err(crate::error::invalid(format!(
                "{n} is not a kept project disk in pool {pool_name}: `project-vm gc` lists what it can remove"
            )));
        }
    }
    let info = |n: &str| -> u64 {
        storage::find_volume(&pool, n).ok().flatten().and_then(|v| VolumeInfo::of(&v).ok()).map_or(0, |i| i.allocation)
    };
    let mut owned: BTreeSet<String> = BTreeSet::new();
    for vm in &vms {
        owned.extend([vm.own.root_volume.clone(), vm.own.data_volume.clone()]);
        owned.extend(vm.own.seed_volume.clone());
    }

    // Half-made VMs: a create or a destroy that was killed.
    for vm in &vms {
        let root_gone = !names.contains(&vm.own.root_volume);
        if vm.own.phase != Phase::Creating && !root_gone {
            continue;
        }
        let detail = match vm.own.phase {
            Phase::Creating => "its create did not finish",
            Phase::Ready => "its destroy did not finish (the root disk is gone)",
        };
        let mut f = Finding {
            kind: "half-made-vm",
            name: vm.name.to_string(),
            detail: detail.into(),
            bytes: 0,
            action: String::new(),
        };
        match super::vm_lock(ctx, &vm.name, "collecting garbage of") {
            Err(e) => f.action = format!("skipped: {e}"),
            Ok(_lock) if yes => {
                // Its project disk is kept: it may hold data (remove it by name).
                super::destroy::remove(ctx, vm, true)?;
                f.action = format!("removed (project disk {} kept)", vm.own.data_volume);
                report.removed += 1;
            }
            Ok(_) => f.action = "would remove (keeping its project disk)".into(),
        }
        report.findings.push(f);
    }

    // Images: uploads without a record, and older generations no VM uses.
    let backing: BTreeSet<String> = all_vms
        .iter()
        .filter_map(|vm| storage::find_volume(&pool, &vm.own.root_volume).ok().flatten())
        .filter_map(|v| VolumeInfo::of(&v).ok()?.backing)
        .collect();
    for e in store::list(&ctx.conn, &pool)? {
        let (kind, detail) = match (&e.record, e.current) {
            (None, _) => {
                ("unverified-image", "no record: an interrupted upload, or made by hand; create never uses it")
            }
            (Some(_), false) => ("superseded-image", "an older generation of its image"),
            (Some(_), true) => continue,
        };
        if backing.contains(&e.disk.path) {
            continue;
        }
        let image = match record::classify(&e.volume) {
            VolumeKind::Disk { image, .. } => image.to_owned(),
            _ => e.volume.clone(),
        };
        let mut f = Finding {
            kind,
            name: e.volume.clone(),
            detail: detail.into(),
            bytes: e.disk.allocation,
            action: String::new(),
        };
        // An upload in progress holds its image's lock.
        match lock::try_acquire(&ctx.uri, &format!("image:{pool_name}/{image}"), "collecting garbage")? {
            Err(h) => f.action = format!("skipped: another project-vm{} is storing {image}", h.pid_note()),
            Ok(_lock) if yes => {
                store::remove(&pool, &e.volume)?;
                f.action = "removed".into();
                report.removed += 1;
            }
            Ok(_) => f.action = "would remove".into(),
        }
        report.findings.push(f);
    }
    // Image records whose disk is gone.
    for n in &names {
        if let VolumeKind::Record { image, generation } = record::classify(n) {
            if !names.contains(&record::disk_volume(image, generation)) {
                let mut f = Finding {
                    kind: "orphan-volume",
                    name: n.clone(),
                    detail: "an image record without its disk".into(),
                    bytes: info(n),
                    action: String::new(),
                };
                f.action = if yes {
                    storage::delete(&pool, n)?;
                    report.removed += 1;
                    "removed".into()
                } else {
                    "would remove".into()
                };
                report.findings.push(f);
            }
        }
    }

    // VM volumes no record names: kept project disks (and their markers), or orphans.
    for n in names.iter().filter(|n| n.starts_with(DOMAIN_PREFIX) && !owned.contains(*n)) {
        if let Some(data) = n.strip_suffix(".kept") {
            if names.contains(data) {
                continue; // reported with its disk
            }
            let mut f = Finding {
                kind: "stale-marker",
                name: n.clone(),
                detail: format!("marks {data}, which is gone"),
                bytes: 0,
                action: String::new(),
            };
            f.action = if yes {
                storage::delete(&pool, n)?;
                report.removed += 1;
                "removed".into()
            } else {
                "would remove".into()
            };
            report.findings.push(f);
            continue;
        }
        let bytes = info(n);
        if names.contains(&storage::kept_marker(n)) {
            let wanted = named.iter().any(|w| w == n);
            let mut f = Finding {
                kind: "kept-disk",
                name: n.clone(),
                detail: "a project disk kept by `destroy --keep-data`; `create` of its VM reattaches it".into(),
                bytes,
                action: String::new(),
            };
            f.action = match (wanted, yes) {
                (true, true) => {
                    storage::delete(&pool, n)?;
                    storage::delete(&pool, &storage::kept_marker(n))?;
                    report.removed += 1;
                    "removed (named)".into()
                }
                (true, false) => "would remove (named)".into(),
                (false, _) => format!("kept: name it to remove it (`project-vm gc --yes {n}`)"),
            };
            report.findings.push(f);
            continue;
        }
        // A VM volume without a record: a VM being created has its record
        // before any volume, so nothing live can own this.
        let mut f = Finding {
            kind: "orphan-volume",
            name: n.clone(),
            detail: "a VM disk that no VM's record names".into(),
            bytes,
            action: String::new(),
        };
        f.action = if yes {
            storage::delete(&pool, n)?;
            report.removed += 1;
            "removed".into()
        } else {
            "would remove".into()
        };
        report.findings.push(f);
    }
    Ok(report)
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
