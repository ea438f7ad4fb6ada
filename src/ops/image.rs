//! `image list|rm` (and `import`, in [`super::pull`], which shares the
//! verified upload with `pull`). Images are volumes in the pool with a record
//! beside each (see `images::record`).

use std::io::{self, Write};

use serde::Serialize;

use super::Ctx;
use super::Error;
use crate::images::record;
use crate::images::store;
use crate::libvirt::storage::{self, VolumeInfo};
use crate::libvirt::vms;
use crate::output::{human, table, Report};

#[derive(Debug, Serialize)]
pub struct ImageEntry {
    /// The image name (`None` for a volume without a record).
    pub name: Option<String>,
    pub volume: String,
    pub format: String,
    /// Virtual size, bytes.
    pub capacity: u64,
    /// Bytes used on the host.
    pub allocation: u64,
    /// `current`, `superseded` (an older generation VMs may still use) or
    /// `unverified` (no record: an interrupted upload, or made by hand; `create` never uses it).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// The checksum matched a published or given one.
    pub verified: bool,
    /// For an image saved from a VM: the image that VM was built on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// VMs whose root disk is an overlay on this volume.
    pub used_by: Vec<String>,
}

/// `image list`: a JSON array, or a table.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct ImageListing(pub Vec<ImageEntry>);

impl Report for ImageListing {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let rows: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|i| {
                let checksum = match (&i.checksum, i.verified) {
                    (Some(c), true) => short(c),
                    (Some(c), false) => format!("{} (computed)", short(c)),
                    (None, _) => "-".into(),
                };
                vec![
                    i.name.clone().unwrap_or_else(|| format!("({})", i.volume)),
                    i.status.into(),
                    i.format.clone(),
                    human(i.capacity),
                    human(i.allocation),
                    checksum,
                    match (&i.source, &i.parent) {
                        (Some(s), Some(p)) => format!("{s} (from {p})"),
                        (Some(s), None) => s.clone(),
                        (None, _) => "-".into(),
                    },
                    i.used_by.join(","),
                ]
            })
            .collect();
        table(out, &["NAME", "STATUS", "FORMAT", "SIZE", "ON DISK", "CHECKSUM", "SOURCE", "USED BY"], &rows)
    }
}

/// `sha512:0123456789ab…`
fn short(checksum: &str) -> String {
    match checksum.split_once(':') {
        Some((algo, hex)) if hex.len() > 12 => format!("{algo}:{}…", &hex[..12]),
        _ => checksum.to_owned(),
    }
}

/// `image rm`.
#[derive(Debug, Serialize)]
pub struct Removed {
    pub removed: String,
    pub volumes: Vec<String>,
}

impl Report for Removed {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "removed image {} ({})", self.removed, self.volumes.join(", "))
    }
}

pub fn listing(ctx: &Ctx) -> anyhow::Result<ImageListing> {
    list(ctx).map(ImageListing)
}

pub fn list(ctx: &Ctx) -> anyhow::Result<Vec<ImageEntry>> {
    let Some(pool) = storage::find_pool(&ctx.conn(), &ctx.settings.pool)? else {
        return Ok(Vec::new());
    };
    let _ = pool.refresh(0);
    // Root overlays name their backing file; that is what "used by" means.
    let mut backing: Vec<(String, String)> = Vec::new();
    for vm in vms::list(&ctx.conn())?.iter().filter(|vm| vm.own.pool == ctx.settings.pool) {
        if let Some(v) = storage::find_volume(&pool, &vm.own.root_volume)? {
            if let Some(b) = VolumeInfo::of(&v)?.backing {
                backing.push((b, vm.name.to_string()));
            }
        }
    }
    let mut out: Vec<ImageEntry> = store::list(&ctx.conn(), &pool)?
        .into_iter()
        .map(|e| {
            let used_by = backing.iter().filter(|(b, _)| *b == e.disk.path).map(|(_, vm)| vm.clone()).collect();
            let status = match (&e.record, e.current) {
                (None, _) => "unverified",
                (Some(_), true) => "current",
                (Some(_), false) => "superseded",
            };
            ImageEntry {
                name: e.record.as_ref().map(|r| r.name.clone()),
                volume: e.volume,
                format: e.disk.format,
                capacity: e.disk.capacity,
                allocation: e.disk.allocation,
                status,
                source: e.record.as_ref().map(|r| r.source.clone()),
                checksum: e.record.as_ref().map(|r| r.checksum.to_string()),
                verified: e.record.as_ref().is_some_and(|r| r.verified),
                parent: e.record.as_ref().and_then(|r| r.parent.clone()),
                used_by,
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.name, &a.volume).cmp(&(&b.name, &b.volume)));
    Ok(out)
}

/// Removes every generation of image `name` (or one volume, by its volume
/// name), refusing while a VM's root disk is an overlay on it.
pub fn remove(ctx: &Ctx, name: &str) -> anyhow::Result<Removed> {
    let matching = |ctx: &Ctx| -> anyhow::Result<Vec<ImageEntry>> {
        Ok(list(ctx)?.into_iter().filter(|e| e.name.as_deref() == Some(name) || e.volume == name).collect())
    };
    let found = matching(ctx)?;
    if found.is_empty() {
        record::validate_name(name)?;
        let why = format!("no image {name} in pool {}: see `project-vm image list`", ctx.settings.pool);
        return Err(Error::NotFound(why).into());
    }
    // The image's lock (by its name: a volume name stands for its image),
    // then its users again: a `create` holds the lock from reading the image
    // until its overlay exists, so no VM can start using it after this look.
    let mut image_names: Vec<String> = found
        .iter()
        .filter_map(|e| match (&e.name, record::classify(&e.volume)) {
            (Some(n), _) => Some(n.clone()),
            (None, record::VolumeKind::Disk { image, .. }) => Some(image.to_owned()),
            (None, _) => None,
        })
        .collect();
    image_names.sort();
    image_names.dedup();
    let _locks = image_names.iter().map(|n| super::pull::lock_image(ctx, n)).collect::<anyhow::Result<Vec<_>>>()?;
    let entries = matching(ctx)?;
    if entries.is_empty() {
        let why = format!("no image {name} in pool {} (removed meanwhile)", ctx.settings.pool);
        return Err(Error::NotFound(why).into());
    }
    let users: Vec<String> = entries.iter().flat_map(|e| e.used_by.iter().cloned()).collect();
    if !users.is_empty() {
        return Err(Error::Invalid(format!(
            "image {name} is the base of {}: their root disks are overlays on it; destroy them first",
            users.join(", ")
        ))
        .into());
    }
    let pool = storage::find_pool(&ctx.conn(), &ctx.settings.pool)?.expect("listed above");
    let mut removed = Vec::new();
    for e in entries {
        store::remove(&pool, &e.volume)?;
        removed.push(e.volume);
    }
    Ok(Removed { removed: name.to_owned(), volumes: removed })
}
