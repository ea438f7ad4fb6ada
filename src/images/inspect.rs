//! Is this image sound and self-contained? Our own reader of the two formats
//! project-vm accepts, run before an image counts (on a local file before its
//! upload, on a download's first bytes before any byte is streamed, on the
//! stored volume before its record is written) and again at `create` on the
//! volume a VM is built on.
//!
//! A qcow2 is refused when its header names a backing file or an external
//! data file (the guest would read a host file through it), when it is
//! encrypted, marked corrupt or dirty, or uses features we do not know, and
//! when any of its tables points past the end of the file: the L1 table, the
//! refcount table, the snapshot table and each snapshot's L1 table, every L2
//! table and refcount block the tables name, and every data cluster the L2
//! tables name. That is what a truncated file or a short download looks like.
//!
//! A raw image has no tables of its own; "sound" means its partition table
//! describes a disk that fits in the file: every MBR partition ends within it,
//! and with GPT the primary header's backup header, last usable block and
//! every partition end within it. The file is a whole number of 512-byte
//! sectors. (A raw file cut inside free space after its last partition is
//! not detectable, and loses nothing.)

use std::io;

/// Random access to an image's bytes: a local file, a libvirt volume, or memory.
pub trait Source {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl Source for &[u8] {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl Source for std::fs::File {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// The first bytes read of an image: enough to sniff its format (the same
/// as `libvirt::storage::SNIFF_LEN`, which a test holds it to) and to find
/// a qcow2's cluster size. Kept here so this checker needs nothing of libvirt.
pub const FIRST_READ: usize = 1024;
/// The largest cluster qemu makes (2 MiB): the header and its extensions fit in the first cluster.
pub const MAX_CLUSTER: u64 = 2 << 20;
/// qemu's own limits on the tables it will load.
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
const MAX_SNAPSHOTS: u32 = 65536;
/// Incompatible feature bits: dirty, corrupt, external data file, compression type, extended L2.
const INCOMPAT_DIRTY: u64 = 1;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const EXT_END: u32 = 0;
const EXT_DATA_FILE: u32 = 0x4441_5441;
/// Host cluster offset bits of an L1/L2/refcount table entry (bits 9..55).
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

/// What a qcow2 header says, once it has been found self-contained and
/// its tables found within the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2 {
    pub version: u32,
    pub cluster_bits: u32,
    /// Virtual size, bytes.
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub extended_l2: bool,
}

impl Qcow2 {
    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
}

/// Where a qcow2 header (its first 24 bytes at least) says its backing
/// file's name lies: `(offset, length)`, the length at most 1023 bytes as
/// qemu allows; `None` when it is no qcow2 or names no backing file.
pub fn qcow2_backing_ref(head: &[u8]) -> Option<(u64, usize)> {
    if head.len() < 24 || !head.starts_with(QCOW2_MAGIC) || !matches!(be32(head, 4), 2 | 3) {
        return None;
    }
    let (offset, len) = (be64(head, 8), be32(head, 16) as usize);
    (offset != 0 && (1..=1023).contains(&len)).then_some((offset, len))
}

/// How many bytes of the file's start [`check_header`] wants: the first
/// cluster, which holds the header and its extensions (at most 2 MiB).
pub fn header_len(head: &[u8]) -> usize {
    if head.len() >= 24 && head.starts_with(QCOW2_MAGIC) {
        let bits = be32(head, 20);
        if (9..=21).contains(&bits) {
            return 1 << bits;
        }
    }
    FIRST_READ.max(64 << 10)
}

/// Why an image is not a base image project-vm will build on: what the
/// checker found. Each reads as the end of "X cannot be a base image: ...".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The first bytes are no disk image at all (an HTML page, an archive).
    #[error("{0}")]
    NotAnImage(String),
    /// The qcow2 header names a backing file (its name, when within the bytes read).
    #[error("its qcow2 header names a backing file{}: a VM built on it would read that file from the host; flatten it first (`qemu-img convert -O qcow2 IN OUT`)", paren(.name))]
    BackingFile { name: Option<String> },
    /// The data lives in an external data file: the feature bit (no name)
    /// or the header extension that names it.
    #[error("{}", data_file(.name))]
    DataFile { name: Option<String> },
    #[error("it is an encrypted qcow2: project-vm has no key for it")]
    Encrypted,
    #[error("its qcow2 header marks it corrupt (`qemu-img check -r all` may repair it)")]
    Corrupt,
    #[error("its qcow2 header marks it dirty (not closed cleanly): repair it with `qemu-img check -r all` first")]
    Dirty,
    #[error("its qcow2 header uses incompatible features project-vm does not know (bits {0:#x})")]
    UnknownFeatures(u64),
    /// The L1 table cannot map the whole virtual size.
    #[error("its qcow2 L1 table has {entries} entries, too few for its virtual size ({needed} needed)")]
    L1TooSmall { entries: u32, needed: u64 },
    /// A table or cluster offset that is not a multiple of the cluster size.
    #[error("its qcow2 {what} is not cluster-aligned")]
    Misaligned { what: String },
    /// A table or cluster lies (partly) past the end of the file: a truncated file.
    #[error("its qcow2 {what} points past the end of the file ({len} bytes): the file is truncated or damaged")]
    PastEnd { what: String, len: u64 },
    /// A raw image's partition table describes a disk longer than the file.
    #[error("its partition table puts {what} past the end of the file ({len} bytes): the file is truncated")]
    PartitionPastEnd { what: String, len: u64 },
    #[error("it is {len} bytes, not a whole number of 512-byte sectors: truncated?")]
    NotWholeSectors { len: u64 },
    /// Reading a table failed.
    #[error("cannot read its qcow2 {what} at {at:#x}: {why}")]
    Unreadable { what: String, at: u64, why: String },
    /// Anything else the format does not allow (a version, a size, a limit).
    #[error("{0}")]
    Malformed(String),
}

fn paren(name: &Option<String>) -> String {
    name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
}

fn data_file(name: &Option<String>) -> String {
    match name {
        None => "its qcow2 header says its data lives in an external data file: a VM built on it would read that file from the host".into(),
        Some(n) => format!("its qcow2 header names an external data file ({n}): a VM built on it would read that file from the host"),
    }
}

fn malformed(why: impl Into<String>) -> Refusal {
    Refusal::Malformed(why.into())
}

/// `a + b <= len`, without overflow.
fn within(a: u64, b: u64, len: u64) -> bool {
    a.checked_add(b).is_some_and(|end| end <= len)
}

/// Checks a qcow2 header from the file's first bytes (at least the first
/// cluster, or the whole file if shorter) against the file's length `len`.
pub fn check_header(head: &[u8], len: u64) -> Result<Qcow2, Refusal> {
    let mut q = check_fixed_header(head)?;
    let header_length = match q.version {
        3 => check_v3_header(head, &mut q)?,
        _ => 72,
    };
    check_extensions(head, header_length, q.cluster_size(), len)?;
    check_l1_and_refcount(&q, len)?;
    check_snapshot_table(&q, len)?;
    Ok(q)
}

/// The header fields every qcow2 version has: self-contained (no backing
/// file), a sane cluster size and virtual size, not encrypted.
fn check_fixed_header(head: &[u8]) -> Result<Qcow2, Refusal> {
    if head.len() < 72 {
        return Err(malformed(format!("its qcow2 header is cut short ({} bytes)", head.len())));
    }
    let version = be32(head, 4);
    if version != 2 && version != 3 {
        return Err(malformed(format!("qcow2 version {version} is not 2 or 3")));
    }
    let backing_file_offset = be64(head, 8);
    if backing_file_offset != 0 {
        let size = be32(head, 16) as usize;
        let name = usize::try_from(backing_file_offset)
            .ok()
            .and_then(|at| head.get(at..at.checked_add(size.min(1023))?))
            .map(|b| String::from_utf8_lossy(b).into_owned());
        return Err(Refusal::BackingFile { name });
    }
    let cluster_bits = be32(head, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(malformed(format!("its qcow2 cluster size 2^{cluster_bits} is not between 512 bytes and 2 MiB")));
    }
    let size = be64(head, 24);
    if size == 0 {
        return Err(malformed("its qcow2 header gives a virtual size of 0"));
    }
    if be32(head, 32) != 0 {
        return Err(Refusal::Encrypted);
    }
    Ok(Qcow2 {
        version,
        cluster_bits,
        size,
        l1_size: be32(head, 36),
        l1_table_offset: be64(head, 40),
        refcount_table_offset: be64(head, 48),
        refcount_table_clusters: be32(head, 56),
        nb_snapshots: be32(head, 60),
        snapshots_offset: be64(head, 64),
        extended_l2: false,
    })
}

/// A version 3 header's feature bits, refcount order and length; returns
/// where its extensions start.
fn check_v3_header(head: &[u8], q: &mut Qcow2) -> Result<usize, Refusal> {
    if head.len() < 104 {
        return Err(malformed(format!("its qcow2 v3 header is cut short ({} bytes)", head.len())));
    }
    let incompatible = be64(head, 72);
    if incompatible & INCOMPAT_DATA_FILE != 0 {
        return Err(Refusal::DataFile { name: None });
    }
    if incompatible & INCOMPAT_CORRUPT != 0 {
        return Err(Refusal::Corrupt);
    }
    if incompatible & INCOMPAT_DIRTY != 0 {
        return Err(Refusal::Dirty);
    }
    let unknown = incompatible & !(INCOMPAT_COMPRESSION | INCOMPAT_EXTL2);
    if unknown != 0 {
        return Err(Refusal::UnknownFeatures(unknown));
    }
    q.extended_l2 = incompatible & INCOMPAT_EXTL2 != 0;
    let refcount_order = be32(head, 96);
    if refcount_order > 6 {
        return Err(malformed(format!("its qcow2 refcount order {refcount_order} is over 6")));
    }
    let header_length = be32(head, 100) as usize;
    if header_length < 104 || header_length as u64 > q.cluster_size() || header_length % 8 != 0 {
        return Err(malformed(format!(
            "its qcow2 header length {header_length} is not a multiple of 8 in 104..cluster size"
        )));
    }
    Ok(header_length)
}

/// The L1 table covers the virtual size; it and the refcount table are
/// aligned, within qemu's limits and within the file.
fn check_l1_and_refcount(q: &Qcow2, len: u64) -> Result<(), Refusal> {
    let cluster = q.cluster_size();
    let aligned = |off: u64| off % cluster == 0 && off != 0;
    let past = |what: &str| Refusal::PastEnd { what: what.into(), len };
    let l2_entries = cluster / if q.extended_l2 { 16 } else { 8 };
    let needed = q.size.div_ceil(cluster * l2_entries);
    if (q.l1_size as u64) < needed {
        return Err(Refusal::L1TooSmall { entries: q.l1_size, needed });
    }
    let l1_bytes = q.l1_size as u64 * 8;
    if l1_bytes > MAX_L1_BYTES {
        return Err(malformed(format!("its qcow2 L1 table is {l1_bytes} bytes, over qemu's limit")));
    }
    if q.l1_size > 0 && !aligned(q.l1_table_offset) {
        return Err(Refusal::Misaligned { what: format!("L1 table offset {:#x}", q.l1_table_offset) });
    }
    if q.l1_size > 0 && !within(q.l1_table_offset, l1_bytes, len) {
        return Err(past("L1 table"));
    }
    let rt_bytes = q.refcount_table_clusters as u64 * cluster;
    if q.refcount_table_clusters == 0 || rt_bytes > MAX_REFTABLE_BYTES.max(cluster) {
        return Err(malformed(format!(
            "its qcow2 refcount table of {} clusters is out of range",
            q.refcount_table_clusters
        )));
    }
    if !aligned(q.refcount_table_offset) {
        return Err(Refusal::Misaligned { what: format!("refcount table offset {:#x}", q.refcount_table_offset) });
    }
    if !within(q.refcount_table_offset, rt_bytes, len) {
        return Err(past("refcount table"));
    }
    Ok(())
}

/// The snapshot table, if any: within qemu's limit, aligned, and (each
/// entry at least 40 bytes) within the file.
fn check_snapshot_table(q: &Qcow2, len: u64) -> Result<(), Refusal> {
    if q.nb_snapshots > MAX_SNAPSHOTS {
        return Err(malformed(format!("its qcow2 header lists {} snapshots, over qemu's limit", q.nb_snapshots)));
    }
    if q.nb_snapshots == 0 {
        return Ok(());
    }
    if q.snapshots_offset % q.cluster_size() != 0 || q.snapshots_offset == 0 {
        return Err(Refusal::Misaligned { what: format!("snapshot table offset {:#x}", q.snapshots_offset) });
    }
    if !within(q.snapshots_offset, q.nb_snapshots as u64 * 40, len) {
        return Err(Refusal::PastEnd { what: "snapshot table".into(), len });
    }
    Ok(())
}

/// Header extensions: refused when one names an external data file; each
/// must lie within the first cluster (and the file).
fn check_extensions(head: &[u8], start: usize, cluster: u64, len: u64) -> Result<(), Refusal> {
    let end = (cluster.min(len) as usize).min(head.len());
    let mut at = start;
    loop {
        if at + 8 > end {
            // No end marker within the first cluster: only an error when we had the whole cluster.
            return match head.len() as u64 >= cluster.min(len) {
                true => Err(malformed("its qcow2 header extensions run past the first cluster")),
                false => Ok(()),
            };
        }
        let (kind, size) = (be32(head, at), be32(head, at + 4) as usize);
        match kind {
            EXT_END => return Ok(()),
            EXT_DATA_FILE => {
                let name = head.get(at + 8..at + 8 + size).map(String::from_utf8_lossy).unwrap_or_default();
                return Err(Refusal::DataFile { name: Some(name.into_owned()) });
            }
            _ => {}
        }
        at = at.saturating_add(8).saturating_add(size.div_ceil(8) * 8);
    }
}

/// One L1 table to walk: what to call it, where, how many entries.
struct L1 {
    what: String,
    offset: u64,
    size: u32,
}

/// Reading a qcow2's tables through `src`, each entry checked against the file's length.
struct Tables<'a> {
    q: &'a Qcow2,
    src: &'a mut dyn Source,
    len: u64,
    /// Tables lie within the file, so an honest image never makes us read
    /// much more than its length; a hostile one (snapshots whose tables
    /// overlap) is cut off at this many bytes.
    budget: u64,
    spent: u64,
}

/// Checks the tables the header names: every entry of the L1 table (and of
/// each snapshot's), of the refcount table and of every L2 table must point
/// within the file.
pub fn check_tables(q: &Qcow2, src: &mut dyn Source, len: u64) -> Result<(), Refusal> {
    let budget = len.saturating_mul(2).saturating_add(64 << 20);
    let mut t = Tables { q, src, len, budget, spent: 0 };
    t.check_refcount_blocks()?;
    let l1s = t.l1_tables()?;
    t.check_l2_tables(l1s)
}

impl Tables<'_> {
    fn cluster(&self) -> u64 {
        self.q.cluster_size()
    }

    fn read(&mut self, off: u64, n: u64, what: &str) -> Result<Vec<u8>, Refusal> {
        let mut buf = vec![0u8; n as usize];
        self.src.read_at(off, &mut buf).map_err(|e| Refusal::Unreadable {
            what: what.into(),
            at: off,
            why: e.to_string(),
        })?;
        Ok(buf)
    }

    fn past(&self, what: String) -> Refusal {
        Refusal::PastEnd { what, len: self.len }
    }

    /// Counts `n` more bytes to read against the budget.
    fn spend(&mut self, n: u64) -> Result<(), Refusal> {
        self.spent += n;
        match self.spent > self.budget {
            true => Err(malformed("its qcow2 tables overlap implausibly (more to read than twice the file)")),
            false => Ok(()),
        }
    }

    /// A table entry's cluster offset (0: unallocated), aligned and within the file.
    fn check_entry(&self, entry: u64, what: &dyn Fn() -> String) -> Result<u64, Refusal> {
        let off = entry & OFFSET_MASK;
        if off == 0 {
            return Ok(0);
        }
        if off % self.cluster() != 0 {
            return Err(Refusal::Misaligned { what: what() });
        }
        if !within(off, self.cluster(), self.len) {
            return Err(self.past(what()));
        }
        Ok(off)
    }

    fn check_refcount_blocks(&mut self) -> Result<(), Refusal> {
        let n = self.q.refcount_table_clusters as u64 * self.cluster();
        let rt = self.read(self.q.refcount_table_offset, n, "refcount table")?;
        for (i, e) in rt.chunks_exact(8).enumerate() {
            self.check_entry(u64::from_be_bytes(e.try_into().expect("8")), &|| format!("refcount block {i}"))?;
        }
        Ok(())
    }

    /// The active L1 table, then each snapshot's (read from the snapshot table).
    fn l1_tables(&mut self) -> Result<Vec<L1>, Refusal> {
        let mut l1s = vec![L1 { what: "L1 table".into(), offset: self.q.l1_table_offset, size: self.q.l1_size }];
        let mut at = self.q.snapshots_offset;
        for n in 0..self.q.nb_snapshots {
            let (l1, entry) = self.snapshot(n, at)?;
            l1s.push(l1);
            at += entry;
        }
        Ok(l1s)
    }

    /// Snapshot `n`'s entry at `at`: its L1 table, and the entry's length.
    fn snapshot(&mut self, n: u32, at: u64) -> Result<(L1, u64), Refusal> {
        if !within(at, 40, self.len) {
            return Err(self.past(format!("snapshot table entry {n}")));
        }
        let fixed = self.read(at, 40, "snapshot table")?;
        let (offset, size) = (be64(&fixed, 0), be32(&fixed, 8));
        let (id_len, name_len, extra) = (be16(&fixed, 12) as u64, be16(&fixed, 14) as u64, be32(&fixed, 36) as u64);
        let entry = (40 + extra + id_len + name_len).div_ceil(8) * 8;
        if !within(at, entry, self.len) {
            return Err(self.past(format!("snapshot table entry {n}")));
        }
        if size as u64 * 8 > MAX_L1_BYTES {
            return Err(malformed(format!("its qcow2 snapshot {n} has an L1 table over qemu's limit")));
        }
        if size > 0 && offset % self.cluster() != 0 {
            return Err(Refusal::Misaligned { what: format!("snapshot {n}'s L1 table") });
        }
        if size > 0 && !within(offset, size as u64 * 8, self.len) {
            return Err(self.past(format!("snapshot {n}'s L1 table")));
        }
        Ok((L1 { what: format!("snapshot {n}'s L1 table"), offset, size }, entry))
    }

    /// Every L2 table the L1 tables name, each read once (clusters shared
    /// between snapshots' tables are read once).
    fn check_l2_tables(&mut self, l1s: Vec<L1>) -> Result<(), Refusal> {
        let mut seen = std::collections::BTreeSet::new();
        let mut seen_l1 = std::collections::BTreeSet::new();
        for L1 { what, offset, size } in l1s {
            if size == 0 || !seen_l1.insert((offset, size)) {
                continue;
            }
            self.spend(size as u64 * 8)?;
            let l1 = self.read(offset, size as u64 * 8, &what)?;
            for (i, e) in l1.chunks_exact(8).enumerate() {
                let entry = u64::from_be_bytes(e.try_into().expect("8"));
                let l2_off = self.check_entry(entry, &|| format!("{what} entry {i}"))?;
                if l2_off == 0 || !seen.insert(l2_off) {
                    continue;
                }
                self.spend(self.cluster())?;
                self.check_l2(l2_off)?;
            }
        }
        Ok(())
    }

    /// Every data cluster the L2 table at `l2_off` names lies within the file.
    fn check_l2(&mut self, l2_off: u64) -> Result<(), Refusal> {
        let entry_bytes = if self.q.extended_l2 { 16 } else { 8 };
        let cbits = self.q.cluster_bits;
        let l2 = self.read(l2_off, self.cluster(), "L2 table")?;
        for (j, e) in l2.chunks_exact(entry_bytes).enumerate() {
            let entry = be64(e, 0);
            let what = || format!("data cluster (L2 table at {l2_off:#x}, entry {j})");
            if entry & L2_COMPRESSED == 0 {
                self.check_entry(entry, &what)?;
                continue;
            }
            // Compressed: the offset takes the low 62 - (cluster_bits - 8) bits.
            let off = entry & ((1u64 << (62 - (cbits - 8))) - 1);
            if off >= self.len {
                return Err(self.past(format!("compressed cluster (L2 table at {l2_off:#x}, entry {j})")));
            }
        }
        Ok(())
    }
}

/// Checks a raw image's partition table against the file's length, from
/// the file's first bytes (at least 64 KiB, or the whole file).
pub fn check_raw(head: &[u8], len: u64) -> Result<(), Refusal> {
    if len % 512 != 0 {
        return Err(Refusal::NotWholeSectors { len });
    }
    let protective = check_mbr(head, len)?;
    if protective || head.get(512..520) == Some(&b"EFI PART"[..]) {
        check_gpt(head, len)?;
    }
    Ok(())
}

fn past_partition(what: String, len: u64) -> Refusal {
    Refusal::PartitionPastEnd { what, len }
}

/// The MBR's partitions end within the file; true when it is a protective
/// MBR (it announces a GPT).
fn check_mbr(head: &[u8], len: u64) -> Result<bool, Refusal> {
    let mut gpt = false;
    if head.get(510..512) != Some(&[0x55, 0xaa][..]) {
        return Ok(false);
    }
    for i in 0..4 {
        let e = &head[446 + 16 * i..462 + 16 * i];
        match e[4] {
            0 => continue,
            0xee => gpt = true,
            _ => {
                let start = u32::from_le_bytes(e[8..12].try_into().expect("4")) as u64;
                let count = u32::from_le_bytes(e[12..16].try_into().expect("4")) as u64;
                if (start + count) * 512 > len {
                    return Err(past_partition(format!("partition {}", i + 1), len));
                }
            }
        }
    }
    Ok(gpt)
}

/// The primary GPT header's backup header and last usable sector, and every
/// partition in the entries within the bytes read, end within the file.
fn check_gpt(head: &[u8], len: u64) -> Result<(), Refusal> {
    let h = head.get(512..604).ok_or_else(|| malformed("its GPT header is cut short"))?;
    if &h[..8] != b"EFI PART" {
        return Err(malformed("its protective MBR announces a GPT, but there is no GPT header"));
    }
    let le64 = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8"));
    let le32 = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4")) as u64;
    let (backup, last_usable, entries_lba) = (le64(32), le64(48), le64(72));
    let (n, entry_size) = (le32(80), le32(84));
    let beyond = |lba: u64| lba.saturating_add(1).saturating_mul(512) > len;
    if beyond(backup) {
        return Err(past_partition("the backup GPT header".into(), len));
    }
    if beyond(last_usable) {
        return Err(past_partition("the last usable sector".into(), len));
    }
    if !(128..=4096).contains(&entry_size) || n > 1024 {
        return Err(malformed(format!(
            "its GPT has {n} partition entries of {entry_size} bytes: not a GPT we can read"
        )));
    }
    let at = entries_lba.saturating_mul(512);
    // Entries beyond the first bytes read (an unusual layout): the headers' checks stand alone.
    let Some(table) = usize::try_from(at).ok().and_then(|at| head.get(at..at.checked_add((n * entry_size) as usize)?))
    else {
        return Ok(());
    };
    for (i, e) in table.chunks_exact(entry_size as usize).enumerate() {
        if !e[..16].iter().all(|b| *b == 0) && beyond(u64::from_le_bytes(e[40..48].try_into().expect("8"))) {
            return Err(past_partition(format!("partition {}", i + 1), len));
        }
    }
    Ok(())
}

/// The whole check of an image of `format` (as sniffed) and length `len`:
/// the header from `head`, then (qcow2) the tables through `src`.
pub fn check(format: &str, head: &[u8], src: &mut dyn Source, len: u64) -> Result<(), Refusal> {
    match format {
        "qcow2" => {
            let q = check_header(head, len)?;
            check_tables(&q, src, len)
        }
        _ => check_raw(head, len),
    }
}

/// The check before any byte is uploaded, from the first bytes alone.
pub fn check_head(format: &str, head: &[u8], len: u64) -> Result<(), Refusal> {
    match format {
        "qcow2" => check_header(head, len).map(|_| ()),
        _ => check_raw(head, len),
    }
}

/// Reads the first [`header_len`] bytes of `src` (fewer if the file is shorter).
pub fn read_head(src: &mut dyn Source, len: u64) -> io::Result<Vec<u8>> {
    let mut first = vec![0u8; (FIRST_READ as u64).min(len) as usize];
    src.read_at(0, &mut first)?;
    let want = (header_len(&first) as u64).min(len) as usize;
    if want > first.len() {
        let mut rest = vec![0u8; want - first.len()];
        src.read_at(first.len() as u64, &mut rest)?;
        first.extend_from_slice(&rest);
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A qcow2 v3 like `qemu-img create -f qcow2 X 1G` makes: 64 KiB clusters,
    /// refcount table at cluster 1, a refcount block at 2, the L1 table at 3.
    fn image() -> Vec<u8> {
        let c = 65536usize;
        let mut b = vec![0u8; 3 * c + 16];
        b[..4].copy_from_slice(QCOW2_MAGIC);
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        b[36..40].copy_from_slice(&2u32.to_be_bytes());
        b[40..48].copy_from_slice(&(3 * c as u64).to_be_bytes());
        b[48..56].copy_from_slice(&(c as u64).to_be_bytes());
        b[56..60].copy_from_slice(&1u32.to_be_bytes());
        b[96..100].copy_from_slice(&4u32.to_be_bytes());
        b[100..104].copy_from_slice(&112u32.to_be_bytes());
        // Refcount table entry 0 -> block at cluster 2.
        b[c..c + 8].copy_from_slice(&(2 * c as u64).to_be_bytes());
        b
    }

    fn full(b: &[u8]) -> Result<(), Refusal> {
        let len = b.len() as u64;
        let head = &b[..(header_len(b) as u64).min(len) as usize];
        check("qcow2", head, &mut &b[..], len)
    }

    #[test]
    fn the_first_read_is_what_the_format_sniff_wants() {
        assert_eq!(FIRST_READ, crate::libvirt::storage::SNIFF_LEN);
    }

    #[test]
    fn a_plain_qcow2_passes() {
        let b = image();
        assert_eq!(full(&b), Ok(()));
        assert_eq!(check_header(&b, b.len() as u64).unwrap().size, 1 << 30);
    }

    #[test]
    fn a_backing_file_is_refused_and_named() {
        let mut b = image();
        b[8..16].copy_from_slice(&0x200u64.to_be_bytes());
        b[16..20].copy_from_slice(&11u32.to_be_bytes());
        b[0x200..0x20b].copy_from_slice(b"/etc/shadow");
        let e = full(&b).unwrap_err();
        assert_eq!(e, Refusal::BackingFile { name: Some("/etc/shadow".into()) });
        assert!(e.to_string().contains("backing file (/etc/shadow)"), "{e}");
    }

    #[test]
    fn an_external_data_file_is_refused() {
        let mut b = image();
        b[72..80].copy_from_slice(&INCOMPAT_DATA_FILE.to_be_bytes());
        assert_eq!(full(&b), Err(Refusal::DataFile { name: None }));
        // The extension alone, without the feature bit, is refused as well.
        let mut b = image();
        b[112..116].copy_from_slice(&EXT_DATA_FILE.to_be_bytes());
        b[116..120].copy_from_slice(&8u32.to_be_bytes());
        b[120..128].copy_from_slice(b"/dev/sda");
        assert_eq!(full(&b), Err(Refusal::DataFile { name: Some("/dev/sda".into()) }));
    }

    #[test]
    fn flags_and_unknown_features_are_refused() {
        for (bit, refused) in [
            (INCOMPAT_DIRTY, Refusal::Dirty),
            (INCOMPAT_CORRUPT, Refusal::Corrupt),
            (1 << 9, Refusal::UnknownFeatures(1 << 9)),
        ] {
            let mut b = image();
            b[72..80].copy_from_slice(&bit.to_be_bytes());
            assert_eq!(full(&b), Err(refused));
        }
        let mut b = image();
        b[32..36].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(full(&b), Err(Refusal::Encrypted));
    }

    #[test]
    fn truncation_is_found_in_every_table() {
        let past = |what: &str, len: usize| Err(Refusal::PastEnd { what: what.into(), len: len as u64 });
        let b = image();
        // Cut inside the L1 table.
        assert_eq!(full(&b[..b.len() - 8]), past("L1 table", b.len() - 8));
        // Cut before the refcount table.
        let mut c = image();
        c[40..48].copy_from_slice(&65536u64.to_be_bytes());
        assert_eq!(full(&c[..65536 + 16]), past("refcount table", 65536 + 16));
        // A refcount block past the end.
        let mut c = image();
        c[65536..65544].copy_from_slice(&(9 * 65536u64).to_be_bytes());
        assert_eq!(full(&c), past("refcount block 0", c.len()));
        // An L2 table past the end, then a data cluster past the end.
        let mut c = image();
        let l1 = 3 * 65536;
        c[l1..l1 + 8].copy_from_slice(&((1u64 << 63) | (9 * 65536)).to_be_bytes());
        assert_eq!(full(&c), past("L1 table entry 0", c.len()));
        let mut c = image();
        c.resize(5 * 65536, 0);
        c[l1..l1 + 8].copy_from_slice(&(4 * 65536u64).to_be_bytes());
        assert_eq!(full(&c), Ok(()));
        c[4 * 65536 + 8..4 * 65536 + 16].copy_from_slice(&(7 * 65536u64).to_be_bytes());
        assert_eq!(full(&c), past("data cluster (L2 table at 0x40000, entry 1)", c.len()));
        // Snapshots: the table, then a snapshot's L1 table.
        let mut c = image();
        c[60..64].copy_from_slice(&1u32.to_be_bytes());
        c[64..72].copy_from_slice(&(8 * 65536u64).to_be_bytes());
        assert_eq!(full(&c), past("snapshot table", c.len()));
        let mut c = image();
        c.resize(5 * 65536, 0);
        c[60..64].copy_from_slice(&1u32.to_be_bytes());
        c[64..72].copy_from_slice(&(4 * 65536u64).to_be_bytes());
        let s = 4 * 65536;
        c[s..s + 8].copy_from_slice(&(9 * 65536u64).to_be_bytes());
        c[s + 8..s + 12].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(full(&c), past("snapshot 0's L1 table", c.len()));
        // The message says what it means.
        let e = full(&b[..b.len() - 8]).unwrap_err().to_string();
        assert!(e.contains("L1 table points past the end of the file"), "{e}");
    }

    #[test]
    fn a_misaligned_table_and_an_unreadable_one_are_their_own_cases() {
        let mut c = image();
        c[3 * 65536..3 * 65536 + 8].copy_from_slice(&(4 * 65536u64 + 512).to_be_bytes());
        c.resize(6 * 65536, 0);
        assert_eq!(full(&c), Err(Refusal::Misaligned { what: "L1 table entry 0".into() }));
        // A source that fails to read: said as such, not as a damaged image.
        struct Failing;
        impl Source for Failing {
            fn read_at(&mut self, _: u64, _: &mut [u8]) -> io::Result<()> {
                Err(io::Error::other("gone"))
            }
        }
        let b = image();
        let q = check_header(&b, b.len() as u64).unwrap();
        let e = check_tables(&q, &mut Failing, b.len() as u64).unwrap_err();
        assert!(matches!(&e, Refusal::Unreadable { what, at: 65536, .. } if what == "refcount table"), "{e:?}");
    }

    #[test]
    fn nonsense_headers_are_refused_without_panicking() {
        let b = image();
        for cut in [0, 10, 71, 80, 103] {
            assert!(check_header(&b[..cut], b.len() as u64).is_err(), "{cut}");
        }
        let mut c = image();
        c[36..40].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(full(&c), Err(Refusal::L1TooSmall { entries: 0, needed: 2 }));
        let mut c = image();
        c[20..24].copy_from_slice(&40u32.to_be_bytes());
        assert!(full(&c).is_err());
        let mut c = image();
        c[40..48].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(full(&c).is_err());
    }

    #[test]
    fn damaged_headers_and_tables_never_panic() {
        // Random corruption of the header, the tables and the cut point: the
        // reader answers Ok or Err, never panics, loops or allocates wildly.
        let base = {
            let mut b = image();
            b.resize(5 * 65536, 0);
            b[3 * 65536..3 * 65536 + 8].copy_from_slice(&(4 * 65536u64).to_be_bytes());
            b
        };
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut b = base.clone();
            for _ in 0..(next() % 8 + 1) {
                // Mostly the header, sometimes the tables.
                let at = match next() % 4 {
                    0 => (3 * 65536 + next() % 16) as usize,
                    1 => (65536 + next() % 16) as usize,
                    2 => (4 * 65536 + next() % 64) as usize,
                    _ => (next() % 128) as usize,
                };
                b[at] = next() as u8;
            }
            let cut = match next() % 3 {
                0 => (next() % b.len() as u64) as usize,
                _ => b.len(),
            };
            let _ = full(&b[..cut]);
            let _ = check_raw(&b[..cut.min(65536)], cut as u64);
        }
    }

    #[test]
    fn raw_partition_tables_must_fit_the_file() {
        let mut mbr = vec![0u8; 65536];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        mbr[446 + 4] = 0x83;
        mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&2048u32.to_le_bytes());
        let len = 4096 * 512;
        assert_eq!(check_raw(&mbr, len), Ok(()));
        let short = len - 512;
        assert_eq!(check_raw(&mbr, short), Err(Refusal::PartitionPastEnd { what: "partition 1".into(), len: short }));
        assert_eq!(check_raw(&mbr, len - 1), Err(Refusal::NotWholeSectors { len: len - 1 }));

        // GPT: protective MBR, header at LBA 1, entries at LBA 2, backup at the last sector.
        let sectors = 4096u64;
        let mut g = vec![0u8; 65536];
        g[510] = 0x55;
        g[511] = 0xaa;
        g[446 + 4] = 0xee;
        g[512..520].copy_from_slice(b"EFI PART");
        g[512 + 32..512 + 40].copy_from_slice(&(sectors - 1).to_le_bytes());
        g[512 + 48..512 + 56].copy_from_slice(&(sectors - 34).to_le_bytes());
        g[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        g[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        g[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        g[1024] = 1; // a partition type GUID
        g[1024 + 32..1024 + 40].copy_from_slice(&2048u64.to_le_bytes());
        g[1024 + 40..1024 + 48].copy_from_slice(&(sectors - 34).to_le_bytes());
        assert_eq!(check_raw(&g, sectors * 512), Ok(()));
        let short = (sectors - 1) * 512;
        let backup = Refusal::PartitionPastEnd { what: "the backup GPT header".into(), len: short };
        assert_eq!(check_raw(&g, short), Err(backup));
        // Damaged tables never panic.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..3000 {
            let mut d = g.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = [446, 512, 1024][(x % 3) as usize] + (x >> 8) as usize % 96;
                d[at] = (x >> 32) as u8;
            }
            let _ = check_raw(&d, sectors * 512);
        }
    }
}
