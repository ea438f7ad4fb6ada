//! Images in a storage pool: finding the current one by name, listing them
//! all, and publishing a new one atomically (see [`super::record`]).

use std::io::Read;

use virt::connect::Connect;
use virt::storage_pool::StoragePool;

use super::checksum::{Algo, Checksum, HashingReader};
use super::fetch::Download;
use super::inspect;
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
                    // A record removed while we read it: as if it were not there.
                    Ok(_) => match read_record(conn, pool, &rv) {
                        Ok(r) => r,
                        Err(_) if storage::find_volume(pool, &rv)?.is_none() => None,
                        Err(e) => return Err(e),
                    },
                    Err(_) => None,
                }
            }
            VolumeKind::Other if name.starts_with(crate::spec::DOMAIN_PREFIX) => continue,
            VolumeKind::Other => None,
        };
        let Some(vol) = storage::find_volume(pool, name)? else { continue };
        let disk = match VolumeInfo::of(&vol) {
            Ok(d) => d,
            Err(_) if storage::find_volume(pool, name)?.is_none() => continue,
            Err(e) => return Err(e),
        };
        out.push(Entry { volume: name.clone(), disk, record, current: false });
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
        let disk_name = record::disk_volume(image, generation);
        let read = || -> anyhow::Result<Option<(ImageRecord, VolumeInfo)>> {
            let Some(rec) = read_record(conn, pool, &vol)? else { return Ok(None) };
            let Some(disk) = storage::find_volume(pool, &disk_name)? else { return Ok(None) };
            Ok(Some((rec, VolumeInfo::of(&disk)?)))
        };
        let (rec, disk) = match read() {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            // Removed while we read it (`image rm`, gc): as if it were not there.
            Err(_)
                if storage::find_volume(pool, &vol)?.is_none() || storage::find_volume(pool, &disk_name)?.is_none() =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
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

/// Fills `head` from `reader` up to `want` bytes (fewer at its end).
fn fill(reader: &mut dyn Read, head: &mut Vec<u8>, want: usize) -> std::io::Result<()> {
    let mut n = head.len();
    head.resize(want.max(n), 0);
    while n < head.len() {
        match reader.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                interrupt::check().map_err(std::io::Error::other)?
            }
            Err(e) => return Err(e),
        }
    }
    head.truncate(n);
    Ok(())
}

/// Reads the first bytes of `reader`: enough to sniff the format, and for a
/// qcow2 its whole first cluster (the header and its extensions), so the
/// image is checked before any byte is uploaded.
fn read_head(reader: &mut dyn Read, len: u64) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    fill(reader, &mut head, storage::SNIFF_LEN)?;
    let want = (inspect::header_len(&head) as u64).min(len) as usize;
    fill(reader, &mut head, want)?;
    Ok(head)
}

/// Room for the image in the pool, asked before the upload: a stream that
/// runs out of space part-way has taken libvirtd down, so it is never started.
/// (The record and libvirt's own bookkeeping want a little more.)
const SPACE_MARGIN: u64 = 4 << 20;

fn check_space(pool: &StoragePool, name: &str, len: u64) -> anyhow::Result<()> {
    let free = storage::available(pool)?;
    if free < len.saturating_add(SPACE_MARGIN) {
        let pool_name = pool.name().unwrap_or_default();
        return Err(failure(
            Kind::Environment,
            format!(
                "not enough space in pool {pool_name} for image {name}: it needs {} ({len} bytes) and {} ({free} bytes) are free; nothing was uploaded",
                crate::output::human(len.saturating_add(SPACE_MARGIN)),
                crate::output::human(free)
            ),
        ));
    }
    Ok(())
}

/// Checks a stored image volume as [`inspect`] describes: self-contained
/// (no backing or external data file) and sound (its tables within the file).
/// `what` names it in the message; exit 2.
pub fn check_volume(
    conn: &Connect,
    vol: &virt::storage_vol::StorageVol,
    format: &str,
    what: &str,
) -> anyhow::Result<()> {
    let len = storage::physical_len(vol)?;
    let mut src = storage::VolumeReader::new(conn, vol, len);
    let head =
        inspect::read_head(&mut src, len).map_err(|e| failure(Kind::Environment, format!("reading {what}: {e}")))?;
    let sniffed =
        storage::sniff_format(&head).map_err(|why| invalid(format!("{what} cannot be a base image: {why}")))?;
    if sniffed != format {
        return Err(invalid(format!("{what} is recorded as {format} but its contents are {sniffed}")));
    }
    inspect::check(format, &head, &mut src, len).map_err(|why| invalid(format!("{what} cannot be a base image: {why}")))
}

/// The check `create` makes on the image it builds on, just before it does:
/// the volume is still what was recorded (same length) and passes [`check_volume`].
pub fn check_image(conn: &Connect, pool: &StoragePool, image: &Image) -> anyhow::Result<()> {
    let what = format!("image {} (volume {})", image.record.name, image.record.volume);
    let vol = storage::find_volume(pool, &image.record.volume)?
        .ok_or_else(|| invalid(format!("{what} is gone from the pool (removed meanwhile?)")))?;
    let len = storage::physical_len(&vol)?;
    if len != image.record.size {
        return Err(invalid(format!(
            "{what} is {len} bytes, but {} were stored: it changed since it was verified, so it is not used",
            image.record.size
        )));
    }
    check_volume(conn, &vol, &image.record.format, &what)
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
/// holds the image's lock; `scope` (the daemon's identity) keys the pool's
/// upload lock, which makes the room check and the upload one step among
/// concurrent uploads into the same pool.
pub fn publish(
    conn: &Connect,
    scope: &str,
    pool: &StoragePool,
    incoming: Incoming,
    progress: &Progress,
) -> anyhow::Result<Image> {
    let Incoming { name, source, download, expected } = incoming;
    record::validate_name(&name)?;
    let Download { len, mut reader, local } = download;
    let head = read_head(&mut reader, len).map_err(|e| failure(Kind::Environment, format!("reading {source}: {e}")))?;
    let refuse = |why: String| invalid(format!("{source} cannot be a base image: {why}; nothing was stored"));
    let format = storage::sniff_format(&head).map_err(refuse)?;
    // Before any byte is uploaded: the header (and, for a local file, every table).
    inspect::check_head(format, &head, len).map_err(refuse)?;
    if let Some(mut file) = local {
        inspect::check(format, &head, &mut file, len).map_err(refuse)?;
    }
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
    // Two uploads that each fit but not together must not both start: the
    // second would run the pool full mid-stream (which has taken libvirtd
    // down). One upload into a pool at a time, the room checked under it.
    let pool_name = pool.name().unwrap_or_default();
    let _uploading = crate::lock::acquire(scope, &format!("uploads:{pool_name}"), "uploading an image", |holder| {
        progress.set_message(format!("{name}: waiting for another upload into pool {pool_name}{}", holder.pid_note()));
    })?;
    check_space(pool, &name, len)?;

    let algo = expected.as_ref().map(|c| c.algo).unwrap_or(Algo::Sha256);
    let mut hashing = HashingReader::new(std::io::Read::chain(&head[..], reader), algo, |n| {
        progress.set_position(n);
        interrupt::check().map_err(|_| std::io::Error::other("interrupted"))
    });
    let new = storage::NewVolume { name: &disk_name, format, len, mode: "0644" };
    storage::upload(conn, pool, new, &mut hashing, progress).map_err(|e| {
        let interrupted = interrupt::requested() || e.chain().any(|c| c.to_string() == "interrupted");
        match interrupted {
            true => failure(Kind::Interrupted, format!("interrupted: nothing of {name} was kept")),
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
    // What was stored, read back through libvirt, before it counts.
    let vol = storage::find_volume(pool, &disk_name)?
        .ok_or_else(|| anyhow::anyhow!("volume {disk_name} vanished after its upload"))?;
    check_volume(conn, &vol, format, &format!("{source} (uploaded as {disk_name}, now discarded)")).map_err(discard)?;
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
        created: crate::clock::now_unix(),
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
