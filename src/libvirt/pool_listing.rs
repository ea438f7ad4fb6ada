//! The volumes of one pool, read for many VMs at once: which exist, and
//! their sizes.
//!
//! libvirt has no bulk call for volume sizes: one `virStorageVolGetInfo` per
//! volume would make `list` and `plan` cost two calls per disk. When the
//! libvirt host is this machine and the pool is a directory, the volumes are
//! plain files whose sizes the kernel and the qcow2 header state exactly as
//! libvirt reports them (allocation: the file's blocks; capacity: the
//! header's virtual size), so they are read from there. Anything else (a
//! remote host, another pool type, a file this user cannot read) goes through
//! libvirt, one volume at a time.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use serde::Deserialize;
use virt::storage_pool::StoragePool;

use super::storage;

pub struct PoolListing {
    pool: StoragePool,
    names: BTreeSet<String>,
    /// The pool's directory when its files can be read here.
    dir: Option<PathBuf>,
}

#[derive(Deserialize)]
struct PoolXml {
    #[serde(rename = "@type")]
    kind: String,
    target: Target,
}

#[derive(Deserialize)]
struct Target {
    path: String,
}

/// Sizes of one volume, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sizes {
    pub capacity: u64,
    pub allocation: u64,
}

impl PoolListing {
    /// Two calls: the volume names and the pool's definition. `local`: the
    /// libvirt host is this machine.
    pub fn read(pool: StoragePool, local: bool) -> anyhow::Result<PoolListing> {
        let names = storage::volume_names(&pool)?.into_iter().collect();
        let dir = match local {
            true => pool
                .xml_desc(0)
                .ok()
                .and_then(|x| quick_xml::de::from_str::<PoolXml>(&x).ok())
                .filter(|p| matches!(p.kind.as_str(), "dir" | "fs" | "netfs"))
                .map(|p| PathBuf::from(p.target.path)),
            false => None,
        };
        Ok(PoolListing { pool, names, dir })
    }

    pub fn exists(&self, volume: &str) -> bool {
        self.names.contains(volume)
    }

    /// `None` when there is no such volume.
    pub fn sizes(&self, volume: &str) -> anyhow::Result<Option<Sizes>> {
        if !self.exists(volume) {
            return Ok(None);
        }
        if let Some(s) = self.dir.as_ref().and_then(|d| from_file(&d.join(volume))) {
            return Ok(Some(s));
        }
        Ok(storage::find_volume(&self.pool, volume)?
            .and_then(|v| v.info().ok())
            .map(|i| Sizes { capacity: i.capacity, allocation: i.allocation }))
    }
}

/// A volume's sizes from its file: qcow2's virtual size is the big-endian
/// u64 at byte 24 of its header; any other file's capacity is its length.
fn from_file(path: &std::path::Path) -> Option<Sizes> {
    // Never blocks: a FIFO someone left in the pool directory is not a volume to size.
    let mut f = crate::files::open_regular(path, "volume").ok()?;
    let meta = f.metadata().ok()?;
    let allocation = meta.blocks() * 512;
    let mut head = [0u8; 32];
    let capacity = match f.read_exact(&mut head) {
        Ok(()) if head[..4] == *b"QFI\xfb" => u64::from_be_bytes(head[24..32].try_into().ok()?),
        _ => meta.len(),
    };
    Some(Sizes { capacity, allocation })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_qcow2_header_as_qemu_img_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.qcow2");
        // The first 32 bytes of a qcow2 v3 header of a 5 GiB image.
        let mut head = b"QFI\xfb\0\0\0\x03".to_vec();
        head.extend([0u8; 16]);
        head.extend((5u64 << 30).to_be_bytes());
        head.extend([0u8; 100]);
        std::fs::write(&path, &head).unwrap();
        let s = from_file(&path).unwrap();
        assert_eq!(s.capacity, 5 << 30);
        let raw = dir.path().join("seed.iso");
        std::fs::write(&raw, vec![1u8; 3000]).unwrap();
        assert_eq!(from_file(&raw).unwrap().capacity, 3000);
        assert!(from_file(&dir.path().join("missing")).is_none());
    }
}
