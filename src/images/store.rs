//! Images in a storage pool: finding the current one by name, listing them
//! all, and publishing a new one atomically (see [`super::record`]).

use std::io::Read;

use virt::connect::Connect;
use virt::storage_pool::StoragePool;

use super::checksum::{Algo, Checksum, HashingReader};
use super::fetch::Download;
use super::record::{self, ImageRecord, VolumeKind};
use crate::error::{failure, invalid, Kind};
use crate::interrupt;
use crate::libvirt::storage::{self, VolumeInfo};
use crate::progress::Progress;

/// Records are a few hundred bytes; anything far larger is not one.
const RECORD_MAX: u64 = 64 << 10;

/// A usable image: its record and its disk volume.
#[derive(Debug, Clone)]
pub struct Image {
    pub record: ImageRecord,
    pub disk: VolumeInfo,
}

/// One line of `image list`: a recorded image, or a volume that looks like an
/// image but has no valid record (an interrupted upload, or an image from
/// before records existed).
#[derive(Debug, Clone)]
pub struct Entry {
    pub volume: String,
    pub disk: VolumeInfo,
    pub record: Option<ImageRecord>,
    /// The newest recorded generation of its name: what `create` uses.
    pub current: bool,
}

fn read_record(conn: &Connect, pool: &StoragePool, name: &str) -> anyhow::Result<Option<ImageRecord>> {
    let Some(vol) = storage::find_volume(pool, name)? else { return Ok(None) };
    Ok(storage::download_small(conn, &vol, RECORD_MAX)?.and_then(|bytes| ImageRecord::parse(&bytes, name)))
}

/// Every image-like volume in the pool (VM disks and records aside).
pub fn list(conn: &Connect, pool: &StoragePool) -> anyhow::Result<Vec<Entry>> {
    let names = storage::volume_names(pool)?;
    let mut out: Vec<Entry> = Vec::new();
    for name in &names {
        let record = match record::classify(name) {
            VolumeKind::Record { .. } => continue,
            VolumeKind::Disk { image, generation } => {
                let rv = record::record_volume(image, generation);
                match names.binary_search(&rv) {
                    Ok(_) => read_record(conn, pool, &rv)?,
                    Err(_) => None,
                }
            }
            VolumeKind::Other if name.starts_with(crate::spec::DOMAIN_PREFIX) => continue,
            VolumeKind::Other => None,
        };
        let Some(vol) = storage::find_volume(pool, name)? else { continue };
        out.push(Entry { volume: name.clone(), disk: VolumeInfo::of(&vol)?, record, current: false });
    }
    // The current generation of each name: the newest record.
    let mut newest: std::collections::BTreeMap<String, (u64, usize)> = Default::default();
    for (i, e) in out.iter().enumerate() {
        if let Some(r) = &e.record {
            let slot = newest.entry(r.name.clone()).or_insert((r.created, i));
            if r.created >= slot.0 {
                *slot = (r.created, i);
            }
        }
    }
    for (_, i) in newest.values() {
        out[*i].current = true;
    }
    Ok(out)
}

/// The current image called `name`, if a verified one is in the pool.
pub fn find(conn: &Connect, pool: &StoragePool, name: &str) -> anyhow::Result<Option<Image>> {
    let prefix = format!("{name}@");
    let mut best: Option<Image> = None;
    for vol in storage::volume_names(pool)? {
        let VolumeKind::Record { image, generation } = record::classify(&vol) else { continue };
        if image != name || !vol.starts_with(&prefix) {
            continue;
        }
        let Some(rec) = read_record(conn, pool, &vol)? else { continue };
        let Some(disk) = storage::find_volume(pool, &record::disk_volume(image, generation))? else { continue };
        let disk = VolumeInfo::of(&disk)?;
        if best.as_ref().is_none_or(|b| rec.created >= b.record.created) {
            best = Some(Image { record: rec, disk });
        }
    }
    Ok(best)
}

/// An image on its way into the pool.
pub struct Incoming {
    pub name: String,
    /// A URL or a file path, recorded as the image's origin.
    pub source: String,
    pub download: Download,
    /// The digest the bytes must have; `None`: computed and recorded, not verified.
    pub expected: Option<Checksum>,
}

/// Reads the first bytes of `reader`, to sniff the format before uploading.
fn read_head(reader: &mut dyn Read) -> std::io::Result<Vec<u8>> {
    let mut head = vec![0u8; storage::SNIFF_LEN];
    let mut n = 0;
    while n < head.len() {
        match reader.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    head.truncate(n);
    Ok(head)
}

/// A fresh generation id, for an image whose digest is not known in advance.
pub fn new_generation(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    hex::encode(&Sha256::digest(format!("{name}:{}:{nanos}", std::process::id()).as_bytes())[..6])
}

/// Uploads an image under a fresh generation, verifies it, and only then
/// writes the record that makes it usable. Any failure (a checksum mismatch,
/// a server that hangs up, a full disk, Ctrl-C) removes what was uploaded;
/// a SIGKILL leaves a disk without a record, which nothing uses. The caller
/// holds the image's lock.
pub fn publish(conn: &Connect, pool: &StoragePool, incoming: Incoming, progress: &Progress) -> anyhow::Result<Image> {
    let Incoming { name, source, download, expected } = incoming;
    record::validate_name(&name)?;
    let Download { len, mut reader } = download;
    let head = read_head(&mut reader).map_err(|e| failure(Kind::Environment, format!("reading {source}: {e}")))?;
    let format =
        storage::sniff_format(&head).map_err(|why| invalid(format!("{source} cannot be a base image: {why}")))?;
    // Known digest: the generation is named for it, so the same release
    // pulled twice is found rather than stored twice.
    let generation = match &expected {
        Some(c) => c.hex[..12].to_owned(),
        None => new_generation(&name),
    };
    let disk_name = record::disk_volume(&name, &generation);
    let record_name = record::record_volume(&name, &generation);
    if storage::find_volume(pool, &disk_name)?.is_some() {
        if let Some(rec) = read_record(conn, pool, &record_name)? {
            let disk = VolumeInfo::of(&storage::find_volume(pool, &disk_name)?.expect("found above"))?;
            return Ok(Image { record: rec, disk });
        }
        // A disk without its record: an upload that was killed part-way.
        tracing::info!(volume = %disk_name, "removing an interrupted upload");
        storage::delete(pool, &disk_name)?;
    }
    storage::delete(pool, &record_name)?;

    let algo = expected.as_ref().map(|c| c.algo).unwrap_or(Algo::Sha256);
    let mut hashing = HashingReader::new(std::io::Read::chain(&head[..], reader), algo, |n| {
        progress.set_position(n);
        interrupt::check().map_err(|_| std::io::Error::other("interrupted"))
    });
    let new = storage::NewVolume { name: &disk_name, format, len, mode: "0644" };
    storage::upload(conn, pool, new, &mut hashing, progress).map_err(|e| {
        let interrupted = e.chain().any(|c| c.to_string() == "interrupted");
        match interrupted {
            true => anyhow::anyhow!("interrupted: nothing of {name} was kept"),
            false => e.context(format!("storing image {name} from {source} (nothing was kept)")),
        }
    })?;
    let (got, bytes) = hashing.finish();
    let discard = |e: anyhow::Error| -> anyhow::Error {
        if let Err(d) = storage::delete(pool, &disk_name) {
            eprintln!("warning: could not remove {disk_name}: {d:#}");
        }
        e
    };
    if let Some(want) = &expected {
        if *want != got {
            return Err(discard(failure(
                Kind::Environment,
                format!("{source}: checksum mismatch: expected {want}, got {got}; the download was discarded"),
            )));
        }
    }
    // libvirt re-reads the header: the capacity becomes the virtual size.
    let _ = pool.refresh(0);
    let disk = storage::find_volume(pool, &disk_name)?
        .ok_or_else(|| anyhow::anyhow!("volume {disk_name} vanished after its upload"))?;
    let disk = VolumeInfo::of(&disk).map_err(discard)?;
    if disk.format != format || disk.capacity == 0 {
        return Err(discard(invalid(format!(
            "{source}: libvirt reads it as a {} image of {} bytes, not a {format} disk; it was discarded",
            disk.format, disk.capacity
        ))));
    }
    interrupt::check().map_err(discard)?;
    let rec = ImageRecord {
        project_vm_image: record::RECORD_VERSION,
        name: name.clone(),
        volume: disk_name.clone(),
        format: format.into(),
        size: bytes,
        checksum: got,
        verified: expected.is_some(),
        source,
        created: crate::ops::now_unix(),
        parent: None,
    };
    commit(conn, pool, &rec).map_err(discard)?;
    tracing::info!(image = %name, volume = %disk_name, "image published");
    Ok(Image { record: rec, disk })
}

/// Writes `rec`, the commit point that makes its disk usable.
pub fn commit(conn: &Connect, pool: &StoragePool, rec: &ImageRecord) -> anyhow::Result<()> {
    let VolumeKind::Disk { image, generation } = record::classify(&rec.volume) else {
        anyhow::bail!("{} is not an image disk volume", rec.volume);
    };
    let record_name = record::record_volume(image, generation);
    let json = rec.to_json();
    let new = storage::NewVolume { name: &record_name, format: "raw", len: json.len() as u64, mode: "0644" };
    storage::upload(conn, pool, new, &mut json.as_slice(), &Progress::hidden())?;
    Ok(())
}

/// Removes one generation: the record first, so the disk is never usable
/// without being complete.
pub fn remove(pool: &StoragePool, volume: &str) -> anyhow::Result<()> {
    if let VolumeKind::Disk { image, generation } = record::classify(volume) {
        storage::delete(pool, &record::record_volume(image, generation))?;
    }
    storage::delete(pool, volume)?;
    Ok(())
}
