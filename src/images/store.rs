//! Images in a storage pool: finding the current one by name, listing them
//! all, and publishing a new one atomically (see [`super::record`]).

use std::io::Read;

use virt::connect::Connect;
use virt::storage_pool::StoragePool;

use super::checksum::{Algo, Checksum, HashingReader};
use super::fetch::Download;
use super::inspect::{self, Refusal};
use super::record::{self, ImageRecord, VolumeKind};
use super::Error;
use crate::interrupt::{self, Interrupted};
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
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted && interrupt::requested() => {
                return Err(std::io::Error::other(Interrupted))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
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

/// Reading `what` failed: [`Interrupted`] when Ctrl-C stopped the read
/// (carried through the `io::Error`), else [`Error::Unreadable`].
fn read_failed(what: &str, e: std::io::Error) -> anyhow::Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Interrupted>()) {
        return Interrupted.into();
    }
    Error::Unreadable { what: what.into(), why: e.to_string() }.into()
}

/// The format of an image from its first bytes ([`storage::sniff_format`]),
/// or why it is no disk image, as a [`Refusal`].
pub fn sniff(head: &[u8]) -> Result<&'static str, Refusal> {
    storage::sniff_format(head).map_err(Refusal::NotAnImage)
}

/// Room for the image in the pool, asked before the upload: a stream that
/// runs out of space part-way has taken libvirtd down, so it is never started.
/// (The record and libvirt's own bookkeeping want a little more.)
const SPACE_MARGIN: u64 = 4 << 20;

fn check_space(pool: &StoragePool, name: &str, len: u64) -> anyhow::Result<()> {
    let free = storage::available(pool)?;
    let need = len.saturating_add(SPACE_MARGIN);
    if free < need {
        let pool = pool.name().unwrap_or_default();
        return Err(Error::NoRoom { pool, image: name.into(), need, free }.into());
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
    let head = inspect::read_head(&mut src, len).map_err(|e| read_failed(what, e))?;
    let refuse = |why: Refusal| Error::Unsafe { image: what.into(), why, then: String::new() };
    let sniffed = sniff(&head).map_err(refuse)?;
    if sniffed != format {
        return Err(Error::Changed(format!("{what} is recorded as {format} but its contents are {sniffed}")).into());
    }
    Ok(inspect::check(format, &head, &mut src, len).map_err(refuse)?)
}

/// The check `create` makes on the image it builds on, just before it does:
/// the volume is still what was recorded (same length) and passes [`check_volume`].
pub fn check_image(conn: &Connect, pool: &StoragePool, image: &Image) -> anyhow::Result<()> {
    let what = format!("image {} (volume {})", image.record.name, image.record.volume);
    let vol = storage::find_volume(pool, &image.record.volume)?
        .ok_or_else(|| Error::Changed(format!("{what} is gone from the pool (removed meanwhile?)")))?;
    let len = storage::physical_len(&vol)?;
    if len != image.record.size {
        return Err(Error::Changed(format!(
            "{what} is {len} bytes, but {} were stored: it changed since it was verified, so it is not used",
            image.record.size
        ))
        .into());
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
    let head = read_head(&mut reader, len).map_err(|e| read_failed(&source, e))?;
    let format = check_before_upload(&source, &head, local, len)?;
    // Known digest: the generation is named for it, so the same release
    // pulled twice is found rather than stored twice.
    let generation = match &expected {
        Some(c) => c.hex[..12].to_owned(),
        None => new_generation(&name),
    };
    let disk_name = record::disk_volume(&name, &generation);
    let up = Upload { conn, pool, name, source, disk_name };
    if let Some(found) = up.already_stored(&record::record_volume(&up.name, &generation))? {
        return Ok(found);
    }
    // Two uploads that each fit but not together must not both start: the
    // second would run the pool full mid-stream (which has taken libvirtd
    // down). One upload into a pool at a time, the room checked under it.
    let pool_name = pool.name().unwrap_or_default();
    let _uploading = crate::lock::acquire(scope, &format!("uploads:{pool_name}"), "uploading an image", |holder| {
        let name = &up.name;
        progress.set_message(format!("{name}: waiting for another upload into pool {pool_name}{}", holder.pid_note()));
    })?;
    check_space(pool, &up.name, len)?;
    let (got, bytes) = up.stream(format, len, head, reader, expected.as_ref(), progress)?;
    let disk = up.verify(format, expected.as_ref(), &got)?;
    interrupt::check().map_err(|e| up.discard(e))?;
    up.record(format, bytes, got, expected.is_some(), disk)
}

/// The check before any byte is uploaded: the format from the first bytes,
/// the header (and, for a local file, every table). Returns the format.
fn check_before_upload(
    source: &str,
    head: &[u8],
    local: Option<std::fs::File>,
    len: u64,
) -> anyhow::Result<&'static str> {
    let refuse = |why: Refusal| Error::Unsafe { image: source.into(), why, then: "; nothing was stored".into() };
    let format = sniff(head).map_err(refuse)?;
    inspect::check_head(format, head, len).map_err(refuse)?;
    if let Some(mut file) = local {
        inspect::check(format, head, &mut file, len).map_err(refuse)?;
    }
    Ok(format)
}

/// One image on its way into one pool, as the disk volume `disk_name`.
struct Upload<'a> {
    conn: &'a Connect,
    pool: &'a StoragePool,
    name: String,
    source: String,
    disk_name: String,
}

impl Upload<'_> {
    /// The generation already complete in the pool (the same release pulled
    /// again), if it is; what a killed upload of it left is removed.
    fn already_stored(&self, record_name: &str) -> anyhow::Result<Option<Image>> {
        if let Some(disk) = storage::find_volume(self.pool, &self.disk_name)? {
            if let Some(rec) = read_record(self.conn, self.pool, record_name)? {
                return Ok(Some(Image { record: rec, disk: VolumeInfo::of(&disk)? }));
            }
            // A disk without its record: an upload that was killed part-way.
            tracing::info!(volume = %self.disk_name, "removing an interrupted upload");
            storage::delete(self.pool, &self.disk_name)?;
        }
        storage::delete(self.pool, record_name)?;
        Ok(None)
    }

    /// Streams the image (its first bytes, then the rest) into the disk
    /// volume, hashing as it goes; Ctrl-C stops it with [`Interrupted`].
    fn stream(
        &self,
        format: &str,
        len: u64,
        head: Vec<u8>,
        reader: Box<dyn Read + Send>,
        expected: Option<&Checksum>,
        progress: &Progress,
    ) -> anyhow::Result<(Checksum, u64)> {
        let algo = expected.map(|c| c.algo).unwrap_or(Algo::Sha256);
        let mut hashing = HashingReader::new(std::io::Read::chain(&head[..], reader), algo, |n| {
            progress.set_position(n);
            match interrupt::requested() {
                true => Err(std::io::Error::other(Interrupted)),
                false => Ok(()),
            }
        });
        let new = storage::NewVolume { name: &self.disk_name, format, len, mode: "0644" };
        storage::upload(self.conn, self.pool, new, &mut hashing, progress).map_err(|e| {
            let name = &self.name;
            match interrupt::requested() || e.chain().any(|c| c.is::<Interrupted>()) {
                true => anyhow::Error::new(Interrupted).context(format!("nothing of {name} was kept")),
                false => e.context(format!("storing image {name} from {} (nothing was kept)", self.source)),
            }
        })?;
        Ok(hashing.finish())
    }

    /// Removes the uploaded disk after `e`, and returns `e`.
    fn discard(&self, e: impl Into<anyhow::Error>) -> anyhow::Error {
        if let Err(d) = storage::delete(self.pool, &self.disk_name) {
            crate::messages::warn(format_args!("could not remove {}: {d:#}", self.disk_name));
        }
        e.into()
    }

    fn find_disk(&self) -> anyhow::Result<virt::storage_vol::StorageVol> {
        storage::find_volume(self.pool, &self.disk_name)?
            .ok_or_else(|| anyhow::anyhow!("volume {} vanished after its upload", self.disk_name))
    }

    /// What was stored, before it counts: the digest asked for, libvirt's
    /// reading of it, and the image check on it read back through libvirt.
    fn verify(&self, format: &str, expected: Option<&Checksum>, got: &Checksum) -> anyhow::Result<VolumeInfo> {
        if let Some(want) = expected.filter(|want| *want != got) {
            let (want, got) = (want.clone(), got.clone());
            return Err(self.discard(Error::ChecksumMismatch { image: self.source.clone(), want, got }));
        }
        // libvirt re-reads the header: the capacity becomes the virtual size.
        let _ = self.pool.refresh(0);
        let disk = VolumeInfo::of(&self.find_disk()?).map_err(|e| self.discard(e))?;
        if disk.format != format || disk.capacity == 0 {
            return Err(self.discard(Error::Invalid(format!(
                "{}: libvirt reads it as a {} image of {} bytes, not a {format} disk; it was discarded",
                self.source, disk.format, disk.capacity
            ))));
        }
        let what = format!("{} (uploaded as {}, now discarded)", self.source, self.disk_name);
        check_volume(self.conn, &self.find_disk()?, format, &what).map_err(|e| self.discard(e))?;
        Ok(disk)
    }

    /// Writes the record: the commit point that makes the disk usable.
    fn record(
        self,
        format: &str,
        size: u64,
        checksum: Checksum,
        verified: bool,
        disk: VolumeInfo,
    ) -> anyhow::Result<Image> {
        let rec = ImageRecord {
            project_vm_image: record::RECORD_VERSION,
            name: self.name.clone(),
            volume: self.disk_name.clone(),
            format: format.into(),
            size,
            checksum,
            verified,
            source: self.source.clone(),
            created: crate::clock::now_unix(),
            parent: None,
        };
        commit(self.conn, self.pool, &rec).map_err(|e| self.discard(e))?;
        tracing::info!(image = %self.name, volume = %self.disk_name, "image published");
        Ok(Image { record: rec, disk })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_read_is_interrupted_and_any_other_is_unreadable() {
        let e = read_failed("x.qcow2", std::io::Error::other(Interrupted));
        assert!(e.downcast_ref::<Interrupted>().is_some(), "{e:#}");
        assert_eq!(crate::exit::code(&e), 130);
        // The word alone is not the signal: only the typed error is.
        let e = read_failed("x.qcow2", std::io::Error::other("interrupted"));
        assert!(matches!(e.downcast_ref::<Error>(), Some(Error::Unreadable { what, .. }) if what == "x.qcow2"));
        assert_eq!(crate::exit::code(&e), 4);
    }

    #[test]
    fn an_image_that_is_not_one_is_refused_before_any_upload() {
        let html = b"<html><body>404</body></html>".repeat(40);
        let e = check_before_upload("https://x/y.img", &html, None, html.len() as u64).unwrap_err();
        let Some(Error::Unsafe { why: Refusal::NotAnImage(_), then, .. }) = e.downcast_ref::<Error>() else {
            panic!("{e:#}")
        };
        assert_eq!(then, "; nothing was stored");
        assert_eq!(crate::exit::code(&e), 2);
    }
}
