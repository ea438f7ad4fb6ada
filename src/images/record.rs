//! Image records: what project-vm knows about an image volume, kept in the
//! pool itself as a small JSON volume beside it, so every libvirt client (a
//! remote CLI included) sees the same thing.
//!
//! An image is stored as a pair of volumes named for the image and a
//! generation: `NAME@GEN.img` (the disk) and `NAME@GEN.json` (the record).
//! The record is written last, after the disk has been uploaded and its
//! checksum verified, so it is the commit point: a disk without a record is
//! an interrupted upload that nothing will use, and `gc` removes it.
//! Generations let `pull --refresh` bring in a new release while existing
//! VMs keep the overlay backing they were created on.

use serde::{Deserialize, Serialize};

use super::checksum::Checksum;
use crate::spec::DOMAIN_PREFIX;

pub const RECORD_VERSION: u32 = 1;
const DISK_SUFFIX: &str = ".img";
const RECORD_SUFFIX: &str = ".json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Marks the file as ours and its layout version.
    pub project_vm_image: u32,
    pub name: String,
    /// The disk volume this record vouches for.
    pub volume: String,
    /// `qcow2` or `raw`.
    pub format: String,
    /// Bytes uploaded (the file's size, not the virtual size).
    pub size: u64,
    /// Digest of exactly those bytes.
    pub checksum: Checksum,
    /// True when the digest matched a published or given one, not merely computed here.
    pub verified: bool,
    /// Where it came from: a URL, or the imported file's path.
    pub source: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// For an image saved from a VM: the image that VM was built on. The
    /// saved image is a standalone copy; this is where it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// What a volume name says about itself.
#[derive(Debug, PartialEq, Eq)]
pub enum VolumeKind<'a> {
    Disk {
        image: &'a str,
        generation: &'a str,
    },
    Record {
        image: &'a str,
        generation: &'a str,
    },
    /// Anything else: VM disks, hand-made volumes, images from before records.
    Other,
}

fn split(stem: &str) -> Option<(&str, &str)> {
    let (image, generation) = stem.rsplit_once('@')?;
    (validate_name(image).is_ok() && !generation.is_empty()).then_some((image, generation))
}

/// The record volume of image disk volume `volume` (`None` if it is not one).
pub fn record_volume_of(volume: &str) -> Option<String> {
    match classify(volume) {
        VolumeKind::Disk { image, generation } => Some(record_volume(image, generation)),
        _ => None,
    }
}

pub fn classify(volume: &str) -> VolumeKind<'_> {
    if let Some((image, generation)) = volume.strip_suffix(DISK_SUFFIX).and_then(split) {
        return VolumeKind::Disk { image, generation };
    }
    if let Some((image, generation)) = volume.strip_suffix(RECORD_SUFFIX).and_then(split) {
        return VolumeKind::Record { image, generation };
    }
    VolumeKind::Other
}

pub fn disk_volume(image: &str, generation: &str) -> String {
    format!("{image}@{generation}{DISK_SUFFIX}")
}

pub fn record_volume(image: &str, generation: &str) -> String {
    format!("{image}@{generation}{RECORD_SUFFIX}")
}

/// Image names: what users type after `--image` and in `base_image`.
pub fn validate_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 100
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with(DOMAIN_PREFIX);
    if !ok {
        return Err(super::Error::Invalid(format!(
            "invalid image name {name:?}: use up to 100 letters, digits, '.', '_' and '-', starting with a letter or digit, and not starting with \"{DOMAIN_PREFIX}\" (reserved for VM disks)"
        ))
        .into());
    }
    Ok(())
}

impl ImageRecord {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("record serializes");
        v.push(b'\n');
        v
    }

    /// A record that parses and belongs to `record_volume`; anything else
    /// (a truncated write, a stranger's file) is no record at all.
    pub fn parse(bytes: &[u8], record_volume_name: &str) -> Option<ImageRecord> {
        let r: ImageRecord = serde_json::from_slice(bytes).ok()?;
        let VolumeKind::Record { image, generation } = classify(record_volume_name) else { return None };
        (r.project_vm_image == RECORD_VERSION && r.name == image && r.volume == disk_volume(image, generation))
            .then_some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> ImageRecord {
        ImageRecord {
            project_vm_image: 1,
            name: "debian-13".into(),
            volume: "debian-13@abc.img".into(),
            format: "qcow2".into(),
            size: 10,
            checksum: Checksum::parse(&format!("sha256:{}", "a".repeat(64))).unwrap(),
            verified: true,
            source: "https://x/y.qcow2".into(),
            created: 1,
            parent: None,
        }
    }

    #[test]
    fn volume_names_classify() {
        assert_eq!(classify("debian-13@abc.img"), VolumeKind::Disk { image: "debian-13", generation: "abc" });
        assert_eq!(classify("debian-13@abc.json"), VolumeKind::Record { image: "debian-13", generation: "abc" });
        assert_eq!(classify("project-foo-root.qcow2"), VolumeKind::Other);
        assert_eq!(classify("debian.qcow2"), VolumeKind::Other);
        assert_eq!(classify("@abc.img"), VolumeKind::Other);
        assert_eq!(classify("x@.img"), VolumeKind::Other);
    }

    #[test]
    fn records_parse_only_whole_and_matching() {
        let r = rec();
        let bytes = r.to_json();
        assert_eq!(ImageRecord::parse(&bytes, "debian-13@abc.json"), Some(r.clone()));
        assert_eq!(ImageRecord::parse(&bytes[..bytes.len() / 2], "debian-13@abc.json"), None, "truncated");
        assert_eq!(ImageRecord::parse(&bytes, "debian-13@other.json"), None, "names another disk");
        assert_eq!(ImageRecord::parse(b"", "debian-13@abc.json"), None);
    }

    #[test]
    fn image_names() {
        for ok in ["debian-13", "ubuntu-24.04", "debian.qcow2", "a"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "a/b", "a@b", "project-x", "a b", &"a".repeat(101)] {
            let e = validate_name(bad).unwrap_err();
            assert!(
                matches!(e.downcast_ref::<crate::images::Error>(), Some(crate::images::Error::Invalid(_))),
                "{bad}"
            );
            assert_eq!(crate::exit::code(&e), 2, "{bad}");
        }
    }
}
