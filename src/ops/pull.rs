//! `image pull`: bring an image from the catalog or a URL into the pool,
//! checked against its published checksum. Also how `create` gets its base
//! image on first use ([`ensure`]).

use std::io::{self, Write};
use std::time::Instant;

use serde::Serialize;
use virt::storage_pool::StoragePool;

use super::Ctx;
use super::Error;
use crate::images::catalog::{self, Catalog, ImageSource};
use crate::images::checksum::{self, Checksum};
use crate::images::fetch;
use crate::images::record;
use crate::images::store::{self, Image, Incoming};
use crate::libvirt::storage;
use crate::lock;
use crate::messages;
use crate::output::{human, Report};
use crate::progress::Progress;

#[derive(Debug, Clone, Default)]
pub struct PullRequest {
    /// A catalog name or a URL.
    pub what: String,
    /// The image name to store it under [default: the catalog name, or the URL's file name].
    pub name: Option<String>,
    pub checksum: Option<Checksum>,
    pub checksums: Option<String>,
    pub refresh: bool,
}

#[derive(Debug, Serialize)]
pub struct PullReport {
    pub name: String,
    pub volume: String,
    pub format: String,
    pub source: String,
    pub checksum: String,
    /// The checksum matched a published or given one.
    pub verified: bool,
    /// Nothing was downloaded: the pool already had it.
    pub cached: bool,
    /// Bytes of the image file.
    pub size: u64,
    /// The disk's virtual size.
    pub capacity: u64,
    pub elapsed_ms: u128,
}

impl Report for PullReport {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let how = match (self.cached, self.verified) {
            (true, _) => "already in the pool",
            (false, true) => "checksum verified",
            (false, false) => "checksum computed, not verified",
        };
        writeln!(
            out,
            "{}: {} ({}, {} virtual, {} file; {how}: {})",
            self.name,
            self.volume,
            self.format,
            human(self.capacity),
            human(self.size),
            self.checksum
        )
    }
}

impl PullReport {
    fn new(image: &Image, cached: bool, started: Instant) -> PullReport {
        PullReport {
            name: image.record.name.clone(),
            volume: image.record.volume.clone(),
            format: image.record.format.clone(),
            source: image.record.source.clone(),
            checksum: image.record.checksum.to_string(),
            verified: image.record.verified,
            cached,
            size: image.record.size,
            capacity: image.disk.capacity,
            elapsed_ms: started.elapsed().as_millis(),
        }
    }
}

/// The image name a `base_image` or `--image` value stands for: a catalog or
/// pool name as it is, a file or URL by its file name without extension.
pub fn image_name(image: &str) -> String {
    if catalog::is_location(image) {
        catalog::name_for(image)
    } else {
        image.to_owned()
    }
}

/// What the lock of image `name` in the settings' pool is called.
pub fn image_lock_name(ctx: &Ctx, name: &str) -> String {
    format!("image:{}/{name}", ctx.settings.pool)
}

/// Serialises work on one image name across project-vm processes: storing
/// and removing it take this exclusively; a `create` reading it and
/// building its overlay on it shares it ([`share_image`]).
pub fn lock_image(ctx: &Ctx, name: &str) -> anyhow::Result<lock::Lock> {
    let json = ctx.json;
    lock::acquire(&ctx.lock_scope()?, &image_lock_name(ctx, name), "storing", |holder| {
        if !json {
            messages::note(format_args!(
                "waiting for another project-vm{} that is working on image {name}",
                holder.pid_note()
            ));
        }
    })
}

/// The image's lock, shared: held by `create` from reading the image until
/// its overlay exists, so `image rm` cannot remove it in between.
pub fn share_image(ctx: &Ctx, name: &str) -> anyhow::Result<lock::Lock> {
    let json = ctx.json;
    lock::acquire_shared(&ctx.lock_scope()?, &image_lock_name(ctx, name), "using", |holder| {
        if !json {
            messages::note(format_args!(
                "waiting for another project-vm{} that is storing or removing image {name}",
                holder.pid_note()
            ));
        }
    })
}

/// The digest `source` promises, from the source itself or its checksum file.
fn expected_checksum(source: &ImageSource) -> anyhow::Result<Option<Checksum>> {
    if let Some(c) = &source.checksum {
        return Ok(Some(c.clone()));
    }
    let Some(sums) = &source.checksums else { return Ok(None) };
    let file = catalog::file_name(&source.url);
    let text = fetch::text(sums)?;
    checksum::find_in_sums(&text, file)
        .map(Some)
        .ok_or_else(|| Error::Invalid(format!("the checksum file {sums} lists no entry for {file}")).into())
}

/// Downloads `source` as `name` unless the pool has it (and, with `refresh`,
/// unless it is still the published release). Call with the image's lock held.
fn fetch_into(
    ctx: &Ctx,
    pool: &StoragePool,
    name: &str,
    source: &ImageSource,
    refresh: bool,
) -> anyhow::Result<(Image, bool)> {
    let current = store::find(&ctx.conn(), pool, name)?;
    if let (Some(img), false) = (&current, refresh) {
        return Ok((img.clone(), true));
    }
    let expected = expected_checksum(source)?;
    if let (Some(img), Some(want)) = (&current, &expected) {
        if img.record.checksum == *want {
            return Ok((img.clone(), true));
        }
    }
    if expected.is_none() && !ctx.json {
        messages::warn(format_args!(
            "{} has no checksum to verify against; its sha256 is recorded instead",
            source.url
        ));
    }
    Ok((download_into(ctx, pool, name, &source.url, expected, "pulling")?, false))
}

/// Streams `url` into the pool as image `name`, with a progress bar on a terminal.
fn download_into(
    ctx: &Ctx,
    pool: &StoragePool,
    name: &str,
    url: &str,
    expected: Option<Checksum>,
    doing: &str,
) -> anyhow::Result<Image> {
    let download = fetch::open(url)?;
    let progress = Progress::bytes(ctx.json, download.len, format!("{doing} {name}"));
    let incoming = Incoming { name: name.to_owned(), source: url.to_owned(), download, expected };
    let image = store::publish(&ctx.conn(), &ctx.lock_scope()?, pool, incoming, &progress)?;
    progress.finish();
    Ok(image)
}

pub fn pull(ctx: &Ctx, req: &PullRequest) -> anyhow::Result<PullReport> {
    let started = Instant::now();
    let (name, source) = resolve(&Catalog::new(&ctx.settings.images), req)?;
    let pool = storage::ensure_pool(&ctx.conn(), &ctx.lock_scope()?, &ctx.settings)?;
    let _lock = lock_image(ctx, &name)?;
    let (image, cached) = fetch_into(ctx, &pool, &name, &source, req.refresh)?;
    Ok(PullReport::new(&image, cached, started))
}

/// What `image pull` asks for: the image's name and where it comes from (a
/// URL or file, or the catalog's entry), with the request's checksums.
fn resolve(catalog: &Catalog, req: &PullRequest) -> anyhow::Result<(String, ImageSource)> {
    let (name, mut source) = if catalog::is_location(&req.what) {
        let url = match req.what.contains("://") {
            true => req.what.clone(),
            false => absolute(&req.what)?,
        };
        (
            req.name.clone().unwrap_or_else(|| catalog::name_for(&url)),
            ImageSource { url, checksums: None, checksum: None },
        )
    } else {
        let source = catalog.get(&req.what).ok_or_else(|| {
            Error::NotFound(format!(
                "no image {:?} in the catalog{}: known images are {}; pull a URL instead, or add it under \"images\" in the settings",
                req.what,
                crate::suggest::did_you_mean(&req.what, &catalog.names().iter().map(String::as_str).collect::<Vec<_>>()),
                catalog.names().join(", ")
            ))
        })?;
        (req.name.clone().unwrap_or_else(|| req.what.clone()), source)
    };
    record::validate_name(&name)?;
    if req.checksum.is_some() {
        source.checksum = req.checksum.clone();
    }
    if req.checksums.is_some() {
        source.checksums = req.checksums.clone();
    }
    Ok((name, source))
}

fn absolute(path: &str) -> anyhow::Result<String> {
    std::path::absolute(path)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| Error::Invalid(format!("{path}: {e}")).into())
}

/// `image import FILE [--name N]`: a local file, stored like a pull (verified
/// upload, then the record), refused if the name is taken.
pub fn import(ctx: &Ctx, file: &str, name: Option<&str>, checksum: Option<Checksum>) -> anyhow::Result<PullReport> {
    let started = Instant::now();
    let path = absolute(file)?;
    let name = name.map(str::to_owned).unwrap_or_else(|| catalog::name_for(&path));
    record::validate_name(&name)?;
    let pool = storage::ensure_pool(&ctx.conn(), &ctx.lock_scope()?, &ctx.settings)?;
    let _lock = lock_image(ctx, &name)?;
    if store::find(&ctx.conn(), &pool, &name)?.is_some() {
        return Err(Error::Invalid(format!(
            "image {name} already exists: remove it with `project-vm image rm {name}` or pick another --name"
        ))
        .into());
    }
    let image = download_into(ctx, &pool, &name, &path, checksum, "importing")?;
    Ok(PullReport::new(&image, false, started))
}

/// Where an image a VM asks for stands.
enum Located {
    /// In the pool, complete and verified.
    Stored(StoragePool, Image),
    /// Not in the pool yet: fetched on first use (the pool, if it exists yet).
    Fetch(Option<StoragePool>, String, ImageSource),
    /// Nowhere to be had, and why (a message that names the fix).
    Missing(String),
}

/// `image`: a name (in the pool, or in the catalog), a URL or a file.
fn locate(ctx: &Ctx, image: &str) -> anyhow::Result<Located> {
    let name = image_name(image);
    record::validate_name(&name)?;
    let pool = ctx.pool(&ctx.settings.pool)?;
    if let Some(pool) = &pool {
        if let Some(found) = store::find(&ctx.conn(), pool, &name)? {
            return Ok(Located::Stored(pool.clone(), found));
        }
        if let Some(found) = test_driver_image(ctx, pool, &name)? {
            return Ok(Located::Stored(pool.clone(), found));
        }
    }
    let catalog = Catalog::new(&ctx.settings.images);
    if catalog::is_location(image) {
        let url = match image.contains("://") {
            true => image.to_owned(),
            false => absolute(image)?,
        };
        if let Some(path) = url.strip_prefix("file://").or((!url.contains("://")).then_some(url.as_str())) {
            let p = std::path::Path::new(path);
            if !p.is_file() {
                return Ok(Located::Missing(match p.exists() {
                    true => format!("image file {path} is not a regular file"),
                    false => format!("image file {path} does not exist"),
                }));
            }
        }
        return Ok(Located::Fetch(pool, name, ImageSource { url, checksums: None, checksum: None }));
    }
    if let Some(source) = catalog.get(&name) {
        return Ok(Located::Fetch(pool, name, source));
    }
    let pool_name = &ctx.settings.pool;
    if let Some(p) = &pool {
        if storage::find_volume(p, &name)?.is_some() {
            return Ok(Located::Missing(format!(
                "volume {name} in pool {pool_name} has no project-vm image record, so nothing vouches that it is complete (it may be an interrupted upload, or an image imported by an older project-vm): import the file again with `project-vm image import FILE --name {name}`"
            )));
        }
    }
    Ok(Located::Missing(format!(
        "no image {name} in pool {pool_name} and none in the catalog: pull one with `project-vm image pull NAME|URL`, import a file with `project-vm image import FILE --name {name}`, or add it under \"images\" in the settings (catalog: {})",
        catalog.names().join(", ")
    )))
}

/// What `plan` needs to know about a VM's image before `apply` runs: its
/// virtual size when the pool has it, `None` when it will be fetched on
/// first use, or why it cannot be had.
pub fn check(ctx: &Ctx, image: &str) -> anyhow::Result<Result<Option<u64>, String>> {
    if let Err(e) = record::validate_name(&image_name(image)) {
        return Ok(Err(e.to_string()));
    }
    Ok(match locate(ctx, image)? {
        Located::Stored(_, found) => Ok(Some(found.disk.capacity)),
        // A file on this machine: the same check `image import` makes, before anything is imported.
        Located::Fetch(_, name, source) if local_file(&source.url).is_some() => {
            inspect_file(&name, &local_file(&source.url).expect("matched above")).map(Some)
        }
        // URLs the user gave (a URL or file, an `images` entry) are probed;
        // the built-in catalog's are project-vm's own, and not asked here.
        Located::Fetch(_, name, source) if catalog::is_location(image) || ctx.settings.images.contains_key(&name) => {
            probe(ctx, &name, &source).map(|()| None)
        }
        Located::Fetch(..) => Ok(None),
        Located::Missing(why) => Err(why),
    })
}

/// The path of a `file://` URL or a plain path.
fn local_file(url: &str) -> Option<std::path::PathBuf> {
    url.strip_prefix("file://").or((!url.contains("://")).then_some(url)).map(std::path::PathBuf::from)
}

/// What `image import` would find in the file `path`, read here (bounded by
/// the file's tables): why it cannot be a base image, or its virtual size.
pub fn inspect_file(name: &str, path: &std::path::Path) -> Result<u64, String> {
    use crate::images::inspect;
    let refuse = |why: String| format!("image {name}: {} cannot be a base image: {why}", path.display());
    let mut file = std::fs::File::open(path).map_err(|e| refuse(format!("cannot open it: {e}")))?;
    let len = file.metadata().map_err(|e| refuse(format!("cannot stat it: {e}")))?.len();
    let head = inspect::read_head(&mut file, len).map_err(|e| refuse(format!("cannot read it: {e}")))?;
    let refused = |why: inspect::Refusal| refuse(why.to_string());
    let format = store::sniff(&head).map_err(refused)?;
    inspect::check_head(format, &head, len).map_err(refused)?;
    inspect::check(format, &head, &mut file, len).map_err(refused)?;
    match format {
        "qcow2" => inspect::check_header(&head, len).map(|q| q.size).map_err(refused),
        _ => Ok(len),
    }
}

/// `plan`'s look at an image still to be fetched: its URL (and its checksum
/// file) must answer. A URL that answers with an error (404) is a problem;
/// one that cannot be reached now is said, not counted: the host that runs
/// `apply` may well reach it.
fn probe(ctx: &Ctx, name: &str, source: &ImageSource) -> Result<(), String> {
    for url in std::iter::once(&source.url).chain(source.checksums.as_ref()) {
        match fetch::probe(url) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(format!("image {name}: {why}")),
            Err(why) => {
                if !ctx.json {
                    messages::warn(format_args!("image {name}: {why}; plan could not check that it can be fetched"));
                }
            }
        }
    }
    Ok(())
}

/// The image `create` builds on, and the pool it lives in: the pool's
/// current image of that name, or, on first use, pulled from the catalog (or
/// imported from a file) with progress. Concurrent first uses wait for the
/// one pull. Nothing (not even the pool) is made when there is nothing to pull.
pub fn ensure(ctx: &Ctx, image: &str, progress: &Progress) -> anyhow::Result<(StoragePool, Image)> {
    // apply creates many VMs from one image: locate it once per run.
    if let Some(hit) = ctx.cache.images.lock().expect("image cache").get(image) {
        return Ok(hit.clone());
    }
    let found = ensure_uncached(ctx, image, progress)?;
    ctx.cache.images.lock().expect("image cache").insert(image.to_owned(), found.clone());
    Ok(found)
}

fn ensure_uncached(ctx: &Ctx, image: &str, progress: &Progress) -> anyhow::Result<(StoragePool, Image)> {
    let (pool, name, source) = match locate(ctx, image)? {
        Located::Stored(pool, found) => return Ok((pool, found)),
        Located::Missing(why) => return Err(Error::Invalid(why).into()),
        Located::Fetch(pool, name, source) => (pool, name, source),
    };
    let pool = match pool {
        Some(p) => p,
        None => storage::ensure_pool(&ctx.conn(), &ctx.lock_scope()?, &ctx.settings)?,
    };
    let lock = lock_image(ctx, &name)?;
    // fetch_into looks again under the lock: another process may have just stored it.
    let (found, cached) = progress.suspend(|| {
        if !ctx.json {
            messages::note(format_args!(
                "base image {name} is not in pool {} yet: fetching it from {}",
                ctx.settings.pool, source.url
            ));
        }
        fetch_into(ctx, &pool, &name, &source, false)
    })?;
    drop(lock);
    tracing::info!(image = %name, cached, "base image ready");
    Ok((pool, found))
}

/// libvirt's test driver cannot stream volume contents, so no image record
/// can exist there; its tests (logic only, never the end-to-end path) stand a
/// plain volume in for an image. Real connections never take this path.
fn test_driver_image(ctx: &Ctx, pool: &StoragePool, name: &str) -> anyhow::Result<Option<Image>> {
    if !crate::libvirt::uri::is_test(&ctx.uri) {
        return Ok(None);
    }
    let Some(vol) = storage::find_volume(pool, name)? else { return Ok(None) };
    let disk = crate::libvirt::storage::VolumeInfo::of(&vol)?;
    let record = crate::images::record::ImageRecord {
        project_vm_image: record::RECORD_VERSION,
        name: name.to_owned(),
        volume: name.to_owned(),
        format: disk.format.clone(),
        size: disk.allocation,
        checksum: Checksum::parse(&format!("sha256:{}", "0".repeat(64))).expect("valid"),
        verified: false,
        source: ctx.uri.clone(),
        created: 0,
        parent: None,
    };
    Ok(Some(Image { record, disk }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_in_no_catalog_is_not_found_and_a_bad_scheme_invalid() {
        let none = Default::default();
        let catalog = Catalog::new(&none);
        let req = PullRequest { what: "no-such-distro".into(), ..Default::default() };
        let e = resolve(&catalog, &req).unwrap_err();
        assert!(matches!(e.downcast_ref::<Error>(), Some(Error::NotFound(_))), "{e:#}");
        assert_eq!(crate::exit::code(&e), 3);
        // A URL resolves to itself, named for its file.
        let req = PullRequest { what: "https://example.invalid/d/tiny.qcow2".into(), ..Default::default() };
        let (name, source) = resolve(&catalog, &req).unwrap();
        assert_eq!((name.as_str(), source.url.as_str()), ("tiny", "https://example.invalid/d/tiny.qcow2"));
    }
}
