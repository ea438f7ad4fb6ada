//! `image import|list|rm`: base images are volumes in the pool, uploaded
//! through a libvirt stream (so a remote host works the same).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::Serialize;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;

use super::Ctx;
use crate::error::{invalid, not_found};
use crate::libvirt::storage::{self, VolumeInfo};
use crate::libvirt::vms;
use crate::progress::Progress;
use crate::spec::DOMAIN_PREFIX;

#[derive(Debug, Serialize)]
pub struct ImageEntry {
    pub name: String,
    pub format: String,
    /// Virtual size, bytes.
    pub capacity: u64,
    /// Bytes used on the host.
    pub allocation: u64,
    /// VMs whose root disk is an overlay on this image.
    pub used_by: Vec<String>,
}

/// The volume name an image file gets in the pool: its file name. (A bare
/// volume name maps to itself.)
pub fn volume_name(image: &Path) -> String {
    image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

pub fn validate_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') || name.starts_with(DOMAIN_PREFIX) {
        return Err(invalid(format!(
            "invalid image name {name:?}: use a file name without '/', not starting with '.' or \"{DOMAIN_PREFIX}\" (reserved for VM disks)"
        )));
    }
    Ok(())
}

pub fn import(
    ctx: &Ctx,
    pool: &StoragePool,
    path: &Path,
    name: &str,
    progress: &Progress,
) -> anyhow::Result<StorageVol> {
    validate_name(name)?;
    if storage::find_volume(pool, name)?.is_some() {
        return Err(invalid(format!(
            "image {name} already exists: remove it with `project-vm image rm {name}` or pick another --name"
        )));
    }
    let mut file = File::open(path).map_err(|e| invalid(format!("cannot open image {}: {e}", path.display())))?;
    let len = file.metadata()?.len();
    let mut head = [0u8; 4];
    let got = file.read(&mut head)?;
    let format = storage::sniff_format(&head[..got]);
    let mut reader = std::io::Read::chain(&head[..got], file);
    tracing::info!(image = name, format, len, "importing image");
    let new = storage::NewVolume { name, format, len, mode: "0644" };
    let vol = storage::upload(&ctx.conn, pool, new, &mut reader, progress)?;
    // libvirt re-reads the volume after upload; refresh the pool so the
    // capacity is the image's virtual size.
    let _ = pool.refresh(0);
    Ok(pool.lookup_storage_vol_by_name(name).unwrap_or(vol))
}

pub fn list(ctx: &Ctx) -> anyhow::Result<Vec<ImageEntry>> {
    let Some(pool) = storage::find_pool(&ctx.conn, &ctx.settings.pool)? else {
        return Ok(Vec::new());
    };
    let _ = pool.refresh(0);
    let vms = vms::list(&ctx.conn)?;
    // Root overlays name their backing file; that is what "used by" means.
    let mut backing: Vec<(String, String)> = Vec::new();
    for vm in &vms {
        if let Some(v) = storage::find_volume(&pool, &vm.own.root_volume)? {
            if let Some(b) = VolumeInfo::of(&v)?.backing {
                backing.push((b, vm.name.to_string()));
            }
        }
    }
    let mut out = Vec::new();
    let mut names = pool.list_volumes().map_err(|e| crate::libvirt::explain(e, "listing volumes"))?;
    names.sort();
    for name in names.into_iter().filter(|n| !n.starts_with(DOMAIN_PREFIX)) {
        let Some(vol) = storage::find_volume(&pool, &name)? else { continue };
        let info = VolumeInfo::of(&vol)?;
        let used_by = backing.iter().filter(|(b, _)| *b == info.path).map(|(_, vm)| vm.clone()).collect();
        out.push(ImageEntry {
            name,
            format: info.format,
            capacity: info.capacity,
            allocation: info.allocation,
            used_by,
        });
    }
    Ok(out)
}

pub fn remove(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    validate_name(name)?;
    let entry = list(ctx)?.into_iter().find(|e| e.name == name).ok_or_else(|| {
        not_found(format!("no image {name} in pool {}: see `project-vm image list`", ctx.settings.pool))
    })?;
    if !entry.used_by.is_empty() {
        return Err(invalid(format!(
            "image {name} is the base of {}: their root disks are overlays on it; destroy them first",
            entry.used_by.join(", ")
        )));
    }
    let pool = storage::find_pool(&ctx.conn, &ctx.settings.pool)?.expect("listed above");
    storage::delete(&pool, name)?;
    Ok(())
}
