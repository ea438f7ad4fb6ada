//! Storage pools and volumes. Every disk project-vm makes or reads goes through
//! libvirt's storage API, so the same code works on a remote libvirt host.

use std::io::Read;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use virt::connect::Connect;
use virt::error::ErrorNumber;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use super::errors::Error;
use super::{explain, is};
use crate::progress::Progress;
use crate::settings::Settings;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename = "pool")]
struct PoolXml {
    #[serde(rename = "@type")]
    kind: String,
    name: String,
    target: PoolTarget,
}

#[derive(Debug, Serialize, Deserialize)]
struct PoolTarget {
    path: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename = "volume")]
struct VolumeXml {
    name: String,
    capacity: Amount,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allocation: Option<Amount>,
    target: VolumeTarget,
    #[serde(rename = "backingStore", default, skip_serializing_if = "Option::is_none")]
    backing_store: Option<BackingStore>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Amount {
    #[serde(rename = "@unit", default = "bytes")]
    unit: String,
    #[serde(rename = "$text")]
    value: u64,
}

fn bytes() -> String {
    "bytes".into()
}

#[derive(Debug, Serialize, Deserialize, Default)]
struct VolumeTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<Format>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    permissions: Option<Permissions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timestamps: Option<Timestamps>,
}

#[derive(Debug, Serialize, Deserialize, Default)]
struct Timestamps {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mtime: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Format {
    #[serde(rename = "@type")]
    kind: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Permissions {
    mode: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct BackingStore {
    path: String,
    format: Format,
}

fn amount(value: u64) -> Amount {
    Amount { unit: "bytes".into(), value }
}

/// What project-vm needs to know about a volume.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    pub name: String,
    /// The path on the libvirt host.
    pub path: String,
    pub format: String,
    pub capacity: u64,
    pub allocation: u64,
    /// Path of the backing file, for overlays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing: Option<String>,
}

impl VolumeInfo {
    pub fn of(vol: &StorageVol) -> anyhow::Result<VolumeInfo> {
        let xml = vol.xml_desc(0).map_err(|e| explain(e, "reading volume"))?;
        let parsed: VolumeXml = quick_xml::de::from_str(&xml).context("parsing volume XML")?;
        let info = vol.info().map_err(|e| explain(e, "reading volume info"))?;
        Ok(VolumeInfo {
            name: parsed.name,
            path: vol.path().unwrap_or_default(),
            format: parsed.target.format.map(|f| f.kind).unwrap_or_else(|| "raw".into()),
            capacity: info.capacity,
            allocation: info.allocation,
            backing: parsed.backing_store.map(|b| b.path),
        })
    }
}

/// The pool, if it exists (read-only commands never create it), started.
///
/// A `dir` pool that will not start because its directory is missing (a
/// first use killed between defining the pool and building it, or a
/// directory removed by hand) is built and started: setup converges rather
/// than failing every later command.
pub fn find_pool(conn: &Connect, name: &str) -> anyhow::Result<Option<StoragePool>> {
    match conn.lookup_storage_pool_by_name(name) {
        Ok(p) => {
            if !p.is_active().unwrap_or(false) {
                // Another project-vm may be starting it right now: fine if it is up.
                if let Err(e) = p.create(0) {
                    if !p.is_active().unwrap_or(false) && !repair(&p, name) {
                        return Err(explain(e, format!("starting storage pool {name}")));
                    }
                }
            }
            Ok(Some(p))
        }
        Err(e) if is(&e, ErrorNumber::NoStoragePool) => Ok(None),
        Err(e) => Err(explain(e, format!("looking up storage pool {name}"))),
    }
}

/// Builds (makes the directory of) an inactive `dir` pool and starts it;
/// true when it is active then.
fn repair(pool: &StoragePool, name: &str) -> bool {
    let is_dir = pool
        .xml_desc(0)
        .ok()
        .and_then(|x| quick_xml::de::from_str::<PoolXml>(&x).ok())
        .is_some_and(|x| x.kind == "dir");
    if !is_dir {
        return false;
    }
    tracing::info!(pool = name, "storage pool does not start: building its directory, then starting it");
    if let Err(e) = pool.build(0) {
        tracing::debug!(pool = name, "build failed: {}", e.message());
        return false;
    }
    crate::fault::mutated(&format!("built pool {name}"));
    if pool.create(0).is_err() && !pool.is_active().unwrap_or(false) {
        return false;
    }
    crate::fault::mutated(&format!("started pool {name}"));
    let _ = pool.set_autostart(true);
    true
}

/// The directory of a defined pool (its definition's target path).
pub fn pool_dir(pool: &StoragePool) -> Option<std::path::PathBuf> {
    let xml = pool.xml_desc(0).ok()?;
    quick_xml::de::from_str::<PoolXml>(&xml).ok().map(|p| p.target.path.into())
}

/// The pool, defined (as a `dir` pool on `storage_dir`), built and started on first use.
/// `scope` (the daemon's identity) keys the lock that makes concurrent first
/// uses define it once. Each step is one change a kill can follow: a pool
/// defined but not built (or not started) is finished by [`find_pool`].
pub fn ensure_pool(conn: &Connect, scope: &str, settings: &Settings) -> anyhow::Result<StoragePool> {
    if let Some(p) = find_pool(conn, &settings.pool)? {
        return Ok(p);
    }
    let _lock = crate::lock::acquire(scope, &format!("pool:{}", settings.pool), "defining the pool", |_| {})?;
    if let Some(p) = find_pool(conn, &settings.pool)? {
        return Ok(p);
    }
    let dir = settings.storage_dir()?.to_string_lossy().into_owned();
    tracing::info!(pool = %settings.pool, %dir, "defining storage pool");
    let xml = quick_xml::se::to_string(&PoolXml {
        kind: "dir".into(),
        name: settings.pool.clone(),
        target: PoolTarget { path: dir.clone() },
    })?;
    // Failures here are the host's (a directory libvirtd cannot create or
    // write): exit 4, naming the directory.
    let env = |e: virt::error::Error, doing: String| -> anyhow::Error {
        if super::errors::permission_denied(&e) {
            return super::explain_for(&settings.daemon, e, doing);
        }
        let hint = match settings.daemon.user() {
            None => "storage_dir must be a directory libvirtd can create and write on the libvirt host; `project-vm doctor` checks it".to_owned(),
            Some(_) => format!("{}; `project-vm doctor` checks it", super::permission_hint(&settings.daemon)),
        };
        Error::Mendable { what: doing, source: e, hint }.into()
    };
    let pool = conn
        .define_storage_pool_xml(&xml, 0)
        .map_err(|e| env(e, format!("defining storage pool {} at {dir}", settings.pool)))?;
    crate::fault::mutated(&format!("defined pool {}", settings.pool));
    let started = pool
        .build(0)
        .inspect(|_| crate::fault::mutated(&format!("built pool {}", settings.pool)))
        .and_then(|_| pool.create(0))
        .map_err(|e| env(e, format!("creating storage pool {} at {dir}", settings.pool)));
    // Another project-vm's lookup (outside the lock, `find_pool`) may have
    // started the pool we just defined: then it is up, which is all we want.
    let started = started.or_else(|e| if pool.is_active().unwrap_or(false) { Ok(()) } else { Err(e) });
    if let Err(e) = started {
        let _ = pool.undefine();
        return Err(e);
    }
    crate::fault::mutated(&format!("started pool {}", settings.pool));
    let _ = pool.set_autostart(true);
    Ok(pool)
}

/// The directory of every storage pool on the connection (as its definition
/// names it): places no share may reach.
pub fn pool_dirs(conn: &Connect) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let pools = conn.list_all_storage_pools(0).map_err(|e| super::explain_on(conn, e, "listing storage pools"))?;
    Ok(pools
        .iter()
        .filter_map(|p| quick_xml::de::from_str::<PoolXml>(&p.xml_desc(0).ok()?).ok())
        .map(|x| std::path::PathBuf::from(x.target.path))
        .filter(|p| p.is_absolute())
        .collect())
}

pub fn find_volume(pool: &StoragePool, name: &str) -> anyhow::Result<Option<StorageVol>> {
    match pool.lookup_storage_vol_by_name(name) {
        Ok(v) => Ok(Some(v)),
        Err(e) if is(&e, ErrorNumber::NoStorageVolume) => Ok(None),
        Err(e) => Err(explain(e, format!("looking up volume {name}"))),
    }
}

fn create(pool: &StoragePool, xml: &VolumeXml) -> anyhow::Result<StorageVol> {
    let text = quick_xml::se::to_string(xml)?;
    tracing::debug!(xml = %text, "creating volume");
    let vol =
        StorageVol::create_xml(pool, &text, 0).map_err(|e| explain(e, format!("creating volume {}", xml.name)))?;
    crate::fault::mutated(&format!("created volume {}", xml.name));
    Ok(vol)
}

/// Mode of every volume that holds a guest's data or secrets (root and
/// project disks, seeds, saved images, markers): the owner alone. libvirt
/// sets it when it makes the file (`<permissions><mode>`), and its dynamic
/// ownership hands the file to the QEMU user while a VM runs.
pub const PRIVATE_MODE: &str = "0600";

fn private_target(format: &str) -> VolumeTarget {
    VolumeTarget {
        format: Some(Format { kind: format.into() }),
        permissions: Some(Permissions { mode: PRIVATE_MODE.into() }),
        ..Default::default()
    }
}

/// A qcow2 overlay on `base`: copy-on-write, created in milliseconds.
pub fn create_overlay(pool: &StoragePool, name: &str, capacity: u64, base: &VolumeInfo) -> anyhow::Result<StorageVol> {
    create(
        pool,
        &VolumeXml {
            name: name.into(),
            capacity: amount(capacity),
            allocation: Some(amount(0)),
            target: private_target("qcow2"),
            backing_store: Some(BackingStore { path: base.path.clone(), format: Format { kind: base.format.clone() } }),
        },
    )
}

/// An empty sparse qcow2.
pub fn create_qcow2(pool: &StoragePool, name: &str, capacity: u64) -> anyhow::Result<StorageVol> {
    create(
        pool,
        &VolumeXml {
            name: name.into(),
            capacity: amount(capacity),
            allocation: Some(amount(0)),
            target: private_target("qcow2"),
            backing_store: None,
        },
    )
}

/// A standalone qcow2 copy of `source` (an overlay is flattened: libvirt
/// copies through the backing chain), made by libvirt on its host.
pub fn clone_flat(pool: &StoragePool, name: &str, source: &StorageVol) -> anyhow::Result<StorageVol> {
    let capacity = source.info().map_err(|e| explain(e, "reading volume info"))?.capacity;
    let xml = quick_xml::se::to_string(&VolumeXml {
        name: name.into(),
        capacity: amount(capacity),
        allocation: None,
        target: private_target("qcow2"),
        backing_store: None,
    })?;
    let vol = StorageVol::create_xml_from(pool, &xml, source, 0)
        .map_err(|e| explain(e, format!("copying {} to {name}", source.name().unwrap_or_default())))?;
    crate::fault::mutated(&format!("copied a volume to {name}"));
    Ok(vol)
}

/// Reads a whole volume through a libvirt stream into `sink` (a hasher, say).
pub fn download(conn: &Connect, vol: &StorageVol, sink: &mut dyn std::io::Write) -> anyhow::Result<u64> {
    let stream = Stream::new(conn, 0).map_err(|e| super::explain_on(conn, e, "opening stream"))?;
    vol.download(&stream, 0, 0, 0).map_err(|e| explain(e, "starting download"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match stream.recv(&mut buf) {
            Ok(0) => break,
            Ok(n) if n > 0 => {
                sink.write_all(&buf[..n as usize])?;
                total += n as u64;
            }
            Ok(_) => continue,
            Err(e) => {
                let _ = stream.abort();
                return Err(explain(e, "downloading volume"));
            }
        }
    }
    stream.finish().map_err(|e| explain(e, "finishing download"))?;
    Ok(total)
}

/// A volume to be filled by [`upload`].
pub struct NewVolume<'a> {
    pub name: &'a str,
    /// `raw` or `qcow2`.
    pub format: &'a str,
    pub len: u64,
    /// File mode on the host; the seed holds secrets: `0600`.
    pub mode: &'a str,
}

/// Creates a volume and fills it from `reader` through a libvirt stream.
/// On failure the half-written volume is deleted.
pub fn upload(
    conn: &Connect,
    pool: &StoragePool,
    new: NewVolume,
    reader: &mut dyn Read,
    progress: &Progress,
) -> anyhow::Result<StorageVol> {
    let NewVolume { name, format, len, mode } = new;
    let vol = create(
        pool,
        &VolumeXml {
            name: name.into(),
            capacity: amount(len),
            allocation: None,
            target: VolumeTarget {
                format: Some(Format { kind: format.into() }),
                permissions: Some(Permissions { mode: mode.into() }),
                ..Default::default()
            },
            backing_store: None,
        },
    )?;
    if let Err(e) = send(conn, &vol, len, reader, progress) {
        // The stream was aborted: libvirtd has let go of the volume, so it can go.
        if let Err(d) = delete(pool, name) {
            crate::messages::warn(format!("could not remove the partial volume {name}: {d:#}"));
        }
        return Err(e.context(format!("uploading volume {name}")));
    }
    Ok(vol)
}

fn send(conn: &Connect, vol: &StorageVol, len: u64, reader: &mut dyn Read, progress: &Progress) -> anyhow::Result<()> {
    let stream = Stream::new(conn, 0).map_err(|e| super::explain_on(conn, e, "opening stream"))?;
    vol.upload(&stream, 0, len, 0).map_err(|e| match is(&e, ErrorNumber::NoSupport) {
        true => anyhow::Error::new(Unsupported(e.message().to_owned())),
        false => explain(e, "starting upload"),
    })?;
    let mut buf = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    let result = (|| -> anyhow::Result<()> {
        loop {
            let n = match reader.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted && !crate::interrupt::requested() => continue,
                Err(_) if crate::interrupt::requested() => return Err(crate::interrupt::Interrupted.into()),
                // The source of the bytes failed (a server that hung up): the environment's, exit 4.
                Err(e) => return Err(Error::Environment(format!("reading the data to upload: {e}")).into()),
            };
            if n == 0 {
                break;
            }
            let mut off = 0;
            while off < n {
                crate::fault::stream_write(sent + off as u64)?;
                let w = stream.send(&buf[off..n]).map_err(|e| explain(e, "sending data"))?;
                anyhow::ensure!(w > 0, "libvirt stream accepted no data");
                off += w as usize;
            }
            sent += n as u64;
            progress.set_position(sent);
        }
        if sent != len {
            return Err(Error::Environment(format!(
                "the data ended after {sent} bytes of the {len} announced (a download cut short?)"
            ))
            .into());
        }
        Ok(())
    })();
    match result {
        Ok(()) => match stream.finish() {
            Ok(()) => {
                crate::fault::mutated("uploaded a volume");
                Ok(())
            }
            // finish() consumed the stream; libvirt aborts it on failure.
            Err(e) => Err(explain(e, "finishing upload")),
        },
        Err(e) => {
            let _ = stream.abort();
            Err(e)
        }
    }
}

/// The volume file's length on its host (for a qcow2, not its virtual size).
pub fn physical_len(vol: &StorageVol) -> anyhow::Result<u64> {
    // VIR_STORAGE_VOL_GET_PHYSICAL: `allocation` holds the file's length.
    Ok(vol.info_flags(1).map_err(|e| explain(e, "reading volume info"))?.allocation)
}

/// Random access to a volume's bytes through libvirt streams (it works on a
/// remote host): what the image check reads tables with. Reads ahead in
/// windows, so a header and the tables qemu puts right after it cost one
/// download.
pub struct VolumeReader<'a> {
    conn: &'a Connect,
    vol: &'a StorageVol,
    len: u64,
    window: Option<(u64, Vec<u8>)>,
}

/// How much a [`VolumeReader`] reads at once.
const READ_AHEAD: u64 = 512 << 10;

impl<'a> VolumeReader<'a> {
    /// `len`: the volume file's length ([`physical_len`]).
    pub fn new(conn: &'a Connect, vol: &'a StorageVol, len: u64) -> Self {
        VolumeReader { conn, vol, len, window: None }
    }

    fn fetch(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let err = |e: virt::error::Error| std::io::Error::other(e.message().to_owned());
        let stream = Stream::new(self.conn, 0).map_err(err)?;
        self.vol.download(&stream, offset, buf.len() as u64, 0).map_err(err)?;
        let mut got = 0usize;
        while got < buf.len() {
            match stream.recv(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) if n > 0 => got += n as usize,
                Ok(_) => continue,
                Err(e) => {
                    let _ = stream.abort();
                    return Err(err(e));
                }
            }
        }
        if got < buf.len() {
            let _ = stream.abort();
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the volume ended early"));
        }
        // All that was asked for has come: the stream's end follows.
        let mut rest = [0u8; 1];
        match stream.recv(&mut rest) {
            Ok(0) => stream.finish().map_err(err)?,
            _ => {
                let _ = stream.abort();
            }
        }
        Ok(())
    }
}

impl crate::images::inspect::Source for VolumeReader<'_> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let want = buf.len() as u64;
        if want == 0 {
            return Ok(());
        }
        let end = offset
            .checked_add(want)
            .filter(|e| *e <= self.len)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end"))?;
        let hit = |w: &Option<(u64, Vec<u8>)>| {
            w.as_ref().is_some_and(|(start, data)| offset >= *start && end <= start + data.len() as u64)
        };
        if !hit(&self.window) {
            let size = want.max(READ_AHEAD).min(self.len - offset);
            let mut data = vec![0u8; size as usize];
            self.fetch(offset, &mut data)?;
            self.window = Some((offset, data));
        }
        let (start, data) = self.window.as_ref().expect("filled above");
        let at = (offset - start) as usize;
        buf.copy_from_slice(&data[at..at + buf.len()]);
        Ok(())
    }
}

/// Bytes the pool's filesystem has free, as libvirt sees it now.
pub fn available(pool: &StoragePool) -> anyhow::Result<u64> {
    let _ = pool.refresh(0);
    Ok(pool.info().map_err(|e| explain(e, "reading storage pool info"))?.available)
}

/// Reads a small volume (an image record) whole through a libvirt stream.
/// `None` when it is larger than `max` bytes: then it is not what we look for.
pub fn download_small(conn: &Connect, vol: &StorageVol, max: u64) -> anyhow::Result<Option<Vec<u8>>> {
    let info = vol.info().map_err(|e| explain(e, "reading volume info"))?;
    if info.capacity > max {
        return Ok(None);
    }
    let mut out = Vec::new();
    download(conn, vol, &mut out)?;
    Ok(Some(out))
}

/// The names of every volume in the pool, sorted.
pub fn volume_names(pool: &StoragePool) -> anyhow::Result<Vec<String>> {
    let mut names = pool.list_volumes().map_err(|e| explain(e, "listing volumes"))?;
    names.sort();
    Ok(names)
}

pub fn delete(pool: &StoragePool, name: &str) -> anyhow::Result<bool> {
    let Some(v) = find_volume(pool, name)? else { return Ok(false) };
    tracing::info!(volume = name, "deleting volume");
    // A client killed while libvirtd created this volume does not stop
    // libvirtd: it finishes the allocation, and refuses a delete meanwhile
    // (OPERATION_INVALID; so does a volume a stream still holds). The other
    // OPERATION_INVALID refusal here is an inactive pool, which waiting does
    // not mend: the pool's state, not the (translated) message, tells them apart.
    let t0 = std::time::Instant::now();
    loop {
        match v.delete(0) {
            Ok(()) => break,
            Err(e)
                if is(&e, ErrorNumber::OperationInvalid)
                    && pool.is_active().unwrap_or(false)
                    && t0.elapsed() < std::time::Duration::from_secs(120) =>
            {
                tracing::debug!(volume = name, "still being allocated; waiting");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(explain(e, format!("deleting volume {name}"))),
        }
    }
    crate::fault::mutated(&format!("deleted volume {name}"));
    Ok(true)
}

/// The marker `destroy --keep-data` leaves beside a kept project disk
/// (`NAME-data.qcow2.kept`). `create` reattaches a project disk only when its
/// marker is there *and* describes that very disk ([`KeptMarker`]), so a
/// volume that merely has the right name (made by hand, or by someone else),
/// with or without a hand-made marker, is never adopted, and never later
/// deleted with a VM that never owned it.
pub fn kept_marker(data_volume: &str) -> String {
    format!("{data_volume}.kept")
}

/// What a kept-disk marker says, as JSON: which VM kept which disk, and that
/// disk's identity when it was kept (libvirt's key, its size, and its
/// modification time: a disk made again under the same name, or changed,
/// does not match).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeptMarker {
    pub project_vm_kept: u32,
    /// The VM whose project disk it was.
    pub vm: String,
    /// The uuid of that VM's record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_uuid: Option<String>,
    pub volume: String,
    /// libvirt's key of the volume (its path, for a `dir` pool).
    pub key: String,
    pub capacity: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<String>,
    /// HMAC-SHA256 (hex) of the other fields, keyed by this user's secret
    /// ([`crate::secret`]), kept outside the pool: whoever can write the
    /// pool cannot write a marker that verifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl KeptMarker {
    /// The marker for `vol` as it is now, kept from VM `vm` (record `uuid`).
    pub fn of(vol: &StorageVol, vm: &str, uuid: Option<&str>) -> anyhow::Result<KeptMarker> {
        let xml = vol.xml_desc(0).map_err(|e| explain(e, "reading volume"))?;
        let parsed: VolumeXml = quick_xml::de::from_str(&xml).context("parsing volume XML")?;
        let info = vol.info().map_err(|e| explain(e, "reading volume info"))?;
        Ok(KeptMarker {
            project_vm_kept: 1,
            vm: vm.to_owned(),
            record_uuid: uuid.map(String::from),
            key: vol.key().map_err(|e| explain(e, "reading the volume's key"))?,
            volume: parsed.name,
            capacity: info.capacity,
            mtime: parsed.target.timestamps.and_then(|t| t.mtime),
            mac: None,
        })
    }

    /// What the MAC covers: every field but the MAC, as JSON.
    fn signed_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&KeptMarker { mac: None, ..self.clone() }).expect("a marker serializes")
    }

    /// This marker with its MAC under `key`.
    pub fn signed(self, key: &[u8]) -> KeptMarker {
        let mac = crate::secret::mac(key, &self.signed_bytes());
        KeptMarker { mac: Some(mac), ..self }
    }

    /// Whether its MAC verifies under `key`.
    pub fn verifies(&self, key: &[u8]) -> bool {
        self.mac.as_deref().is_some_and(|m| crate::secret::verify(key, &self.signed_bytes(), m))
    }

    /// Why this marker does not vouch for `now` (the disk as it is) as VM
    /// `vm`'s kept project disk, if it does not.
    pub fn mismatch(&self, now: &KeptMarker) -> Option<String> {
        if self.vm != now.vm {
            return Some(format!("the marker was left by VM {}, not {}", self.vm, now.vm));
        }
        if self.volume != now.volume || self.key != now.key {
            return Some(format!("the marker describes another disk ({})", self.key));
        }
        if self.capacity != now.capacity {
            return Some(format!(
                "the disk's size changed since it was kept ({} -> {} bytes)",
                self.capacity, now.capacity
            ));
        }
        if self.mtime.is_some() && now.mtime.is_some() && self.mtime != now.mtime {
            return Some("the disk was made again or written since it was kept".into());
        }
        None
    }
}

/// Marks `data_volume` (the project disk of VM `vm`, record `uuid`) kept. A
/// marker already there that describes this disk stays; any other is
/// replaced: the record says the disk is this VM's.
pub fn mark_kept(
    conn: &Connect,
    pool: &StoragePool,
    data_volume: &str,
    vm: &str,
    uuid: Option<&str>,
) -> anyhow::Result<()> {
    let Some(data) = find_volume(pool, data_volume)? else { return Ok(()) };
    let key = crate::secret::load()?;
    let want = KeptMarker::of(&data, vm, uuid)?.signed(&key);
    let name = kept_marker(data_volume);
    if let Some(m) = find_volume(pool, &name)? {
        if read_marker(conn, &m).is_some_and(|got| got.verifies(&key) && got.mismatch(&want).is_none()) {
            return Ok(());
        }
        delete(pool, &name)?;
    }
    let json = serde_json::to_vec(&want)?;
    let new = NewVolume { name: &name, format: "raw", len: json.len() as u64, mode: PRIVATE_MODE };
    match upload(conn, pool, new, &mut json.as_slice(), &Progress::hidden()) {
        Ok(_) => Ok(()),
        // A driver without uploads (libvirt's test driver): an empty marker,
        // which keeps the disk but never lets a create adopt it.
        Err(e) if e.chain().any(|c| c.is::<Unsupported>()) => {
            crate::messages::warn(format!(
                "this libvirt cannot upload: the marker of kept disk {data_volume} is empty"
            ));
            create(
                pool,
                &VolumeXml {
                    name,
                    capacity: amount(0),
                    allocation: Some(amount(0)),
                    target: private_target("raw"),
                    backing_store: None,
                },
            )
            .map(drop)
        }
        Err(e) => Err(e),
    }
}

/// The marker's content, if it is one project-vm wrote.
fn read_marker(conn: &Connect, vol: &StorageVol) -> Option<KeptMarker> {
    let bytes = download_small(conn, vol, 64 << 10).ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// Whether a marker stands beside `data_volume` (whatever it says).
pub fn is_kept(pool: &StoragePool, data_volume: &str) -> anyhow::Result<bool> {
    Ok(find_volume(pool, &kept_marker(data_volume))?.is_some())
}

/// `None` when `data_volume` is VM `vm`'s kept project disk: its marker is
/// there and describes it as it is; else why not.
pub fn kept_mismatch(
    conn: &Connect,
    pool: &StoragePool,
    data_volume: &str,
    vm: &str,
) -> anyhow::Result<Option<String>> {
    let Some(data) = find_volume(pool, data_volume)? else { return Ok(Some(format!("{data_volume} is gone"))) };
    let Some(marker) = find_volume(pool, &kept_marker(data_volume))? else {
        return Ok(Some("there is no marker".into()));
    };
    let now = KeptMarker::of(&data, vm, None)?;
    Ok(match read_marker(conn, &marker) {
        None => Some("the marker is empty or not one project-vm wrote".into()),
        Some(m) if !m.verifies(&crate::secret::load()?) => Some(format!(
            "the marker was not written by this project-vm: its MAC does not verify with this user's secret ({}), so it was made by hand, by another user, or on another machine",
            crate::secret::path()?.display()
        )),
        Some(m) => m.mismatch(&now),
    })
}

/// An upload the driver does not do (libvirt's test driver).
#[derive(Debug)]
pub struct Unsupported(String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "this libvirt cannot upload volumes: {}", self.0)
    }
}

impl std::error::Error for Unsupported {}

/// How many leading bytes [`sniff_format`] wants.
pub const SNIFF_LEN: usize = 1024;

/// The disk image format of a file from its first [`SNIFF_LEN`] bytes, or why
/// it is not a disk image: a base image that is an HTML error page or a
/// compressed archive would boot nothing, so it is refused up front.
pub fn sniff_format(head: &[u8]) -> Result<&'static str, String> {
    if head.starts_with(b"QFI\xfb") {
        return match head.get(4..8) {
            Some([0, 0, 0, 2 | 3]) => Ok("qcow2"),
            _ => Err("it has a qcow2 signature but no qcow2 version 2 or 3 header".into()),
        };
    }
    let compressed = [
        (&b"\x1f\x8b"[..], "gzip"),
        (&b"\xfd7zXZ\0"[..], "xz"),
        (&b"\x28\xb5\x2f\xfd"[..], "zstd"),
        (&b"BZh"[..], "bzip2"),
    ];
    if let Some((_, kind)) = compressed.iter().find(|(magic, _)| head.starts_with(magic)) {
        return Err(format!("it is {kind}-compressed: decompress it first"));
    }
    // A raw disk starts with a partition table: an MBR boot signature, or a GPT header.
    if head.get(510..512) == Some(&[0x55, 0xaa][..]) || head.get(512..520) == Some(&b"EFI PART"[..]) {
        return Ok("raw");
    }
    if head.iter().take(64).all(|b| b.is_ascii() && *b != 0) && !head.is_empty() {
        return Err("it is text (an error page?), not a disk image".into());
    }
    Err("it has neither a qcow2 header nor a partition table".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_xml_names_backing_store() {
        let xml = quick_xml::se::to_string(&VolumeXml {
            name: "r.qcow2".into(),
            capacity: amount(5 << 30),
            allocation: Some(amount(0)),
            target: VolumeTarget { format: Some(Format { kind: "qcow2".into() }), ..Default::default() },
            backing_store: Some(BackingStore { path: "/p/base.qcow2".into(), format: Format { kind: "qcow2".into() } }),
        })
        .unwrap();
        assert!(xml.contains(r#"<capacity unit="bytes">5368709120</capacity>"#), "{xml}");
        assert!(
            xml.contains("<backingStore><path>/p/base.qcow2</path><format type=\"qcow2\"/></backingStore>"),
            "{xml}"
        );
    }

    #[test]
    fn a_marker_vouches_only_for_the_disk_it_describes() {
        let kept = KeptMarker {
            project_vm_kept: 1,
            vm: "foo".into(),
            record_uuid: Some("u".into()),
            volume: "project-foo-data.qcow2".into(),
            key: "/p/project-foo-data.qcow2".into(),
            capacity: 1 << 30,
            mtime: Some("1700000000.1".into()),
            mac: None,
        };
        let now = KeptMarker { record_uuid: None, ..kept.clone() };
        assert_eq!(kept.mismatch(&now), None, "the record uuid is the marker's own");
        let other_vm = KeptMarker { vm: "bar".into(), ..now.clone() };
        assert!(kept.mismatch(&other_vm).unwrap().contains("left by VM foo"));
        let other_disk = KeptMarker { key: "/q/project-foo-data.qcow2".into(), ..now.clone() };
        assert!(kept.mismatch(&other_disk).unwrap().contains("another disk"));
        let grown = KeptMarker { capacity: 2 << 30, ..now.clone() };
        assert!(kept.mismatch(&grown).unwrap().contains("size changed"));
        let remade = KeptMarker { mtime: Some("1700000001.5".into()), ..now };
        assert!(kept.mismatch(&remade).unwrap().contains("made again"));
        let json = serde_json::to_string(&kept).unwrap();
        assert_eq!(serde_json::from_str::<KeptMarker>(&json).unwrap(), kept);
        assert!(serde_json::from_str::<KeptMarker>("").is_err(), "an empty marker is no marker");
        // Only a marker signed with the key verifies, and any field edited breaks it.
        let key = [7u8; 32];
        assert!(!kept.verifies(&key), "an unsigned marker does not verify");
        let signed = kept.clone().signed(&key);
        assert!(signed.verifies(&key));
        assert!(!signed.verifies(&[8u8; 32]), "another user's key");
        let json = serde_json::to_string(&signed).unwrap();
        let back: KeptMarker = serde_json::from_str(&json).unwrap();
        assert!(back.verifies(&key));
        for edited in [
            KeptMarker { vm: "bar".into(), ..signed.clone() },
            KeptMarker { record_uuid: None, ..signed.clone() },
            KeptMarker { key: "/q".into(), ..signed.clone() },
            KeptMarker { capacity: 1, ..signed.clone() },
            KeptMarker { mtime: None, ..signed.clone() },
        ] {
            assert!(!edited.verifies(&key), "{edited:?}");
        }
    }

    #[test]
    fn guest_data_volumes_are_made_private() {
        let xml = quick_xml::se::to_string(&VolumeXml {
            name: "d.qcow2".into(),
            capacity: amount(1 << 30),
            allocation: None,
            target: private_target("qcow2"),
            backing_store: None,
        })
        .unwrap();
        assert!(xml.contains("<permissions><mode>0600</mode></permissions>"), "{xml}");
    }

    #[test]
    fn parses_libvirt_volume_xml() {
        let xml = r#"<volume type='file'>
  <name>base.qcow2</name>
  <key>/var/lib/project-vm/base.qcow2</key>
  <capacity unit='bytes'>2147483648</capacity>
  <allocation unit='bytes'>290000000</allocation>
  <physical unit='bytes'>290000000</physical>
  <target>
    <path>/var/lib/project-vm/base.qcow2</path>
    <format type='qcow2'/>
    <permissions><mode>0600</mode><owner>0</owner><group>0</group></permissions>
    <timestamps><atime>1</atime></timestamps>
    <compat>1.1</compat>
    <clusterSize unit='B'>65536</clusterSize>
    <features/>
  </target>
</volume>"#;
        let v: VolumeXml = quick_xml::de::from_str(xml).unwrap();
        assert_eq!(v.target.format.unwrap().kind, "qcow2");
        assert_eq!(v.capacity.value, 2147483648);
    }

    #[test]
    fn sniffs_disk_images_and_refuses_the_rest() {
        assert_eq!(sniff_format(b"QFI\xfb\0\0\0\x03"), Ok("qcow2"));
        assert!(sniff_format(b"QFI\xfb\0\0\0\x09").is_err());
        let mut mbr = vec![0u8; 1024];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(sniff_format(&mbr), Ok("raw"));
        let mut gpt = vec![0u8; 1024];
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(sniff_format(&gpt), Ok("raw"));
        assert!(sniff_format(b"<html>404</html>").unwrap_err().contains("text"));
        assert!(sniff_format(b"\x1f\x8b\x08").unwrap_err().contains("gzip"));
        assert!(sniff_format(&[0u8; 1024]).unwrap_err().contains("partition table"));
        assert!(sniff_format(b"").is_err());
    }
}
