//! Where images come from: a built-in catalog of official cloud images, which
//! the `images` settings key extends or overrides (mirrors, local files).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::checksum::Checksum;

/// An image's origin: a URL (`https://`, `http://`, `file://` or an absolute
/// path) and how to check what arrives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSource {
    pub url: String,
    /// A checksum file (`SHA512SUMS`, `SHA256SUMS`, BSD `CHECKSUM`) listing the image by file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksums: Option<String>,
    /// The digest itself, when known in advance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Checksum>,
}

/// The official generic cloud images, each with the checksum file its
/// distribution publishes beside it. `latest`/`release` directories: a
/// `pull --refresh` follows the distribution's point releases.
const BUILTIN: &[(&str, &str, &str)] = &[
    (
        "debian-12",
        "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
        "https://cloud.debian.org/images/cloud/bookworm/latest/SHA512SUMS",
    ),
    (
        "debian-13",
        "https://cloud.debian.org/images/cloud/trixie/latest/debian-13-genericcloud-amd64.qcow2",
        "https://cloud.debian.org/images/cloud/trixie/latest/SHA512SUMS",
    ),
    (
        "ubuntu-22.04",
        "https://cloud-images.ubuntu.com/releases/jammy/release/ubuntu-22.04-server-cloudimg-amd64.img",
        "https://cloud-images.ubuntu.com/releases/jammy/release/SHA256SUMS",
    ),
    (
        "ubuntu-24.04",
        "https://cloud-images.ubuntu.com/releases/noble/release/ubuntu-24.04-server-cloudimg-amd64.img",
        "https://cloud-images.ubuntu.com/releases/noble/release/SHA256SUMS",
    ),
];

/// The image `create` uses when the settings name none.
pub const DEFAULT_IMAGE: &str = "debian-13";

/// The catalog as these settings see it: built-in entries, then `images`.
pub struct Catalog<'a> {
    overrides: &'a BTreeMap<String, ImageSource>,
}

impl<'a> Catalog<'a> {
    pub fn new(overrides: &'a BTreeMap<String, ImageSource>) -> Self {
        Catalog { overrides }
    }

    pub fn get(&self, name: &str) -> Option<ImageSource> {
        if let Some(s) = self.overrides.get(name) {
            return Some(s.clone());
        }
        BUILTIN.iter().find(|(n, _, _)| *n == name).map(|(_, url, sums)| ImageSource {
            url: (*url).into(),
            checksums: Some((*sums).into()),
            checksum: None,
        })
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = BUILTIN.iter().map(|(n, _, _)| n.to_string()).collect();
        v.extend(self.overrides.keys().cloned());
        v.sort();
        v.dedup();
        v
    }
}

/// The file name at the end of a URL or path (what checksum files list).
pub fn file_name(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path)
}

/// An image name for a URL or file: its file name without the disk-image extension.
pub fn name_for(url: &str) -> String {
    let f = file_name(url);
    for ext in [".qcow2", ".img", ".raw"] {
        if let Some(stem) = f.strip_suffix(ext) {
            if !stem.is_empty() {
                return stem.to_owned();
            }
        }
    }
    f.to_owned()
}

/// True when `what` names a location rather than a catalog entry.
pub fn is_location(what: &str) -> bool {
    what.contains("://") || what.starts_with('/') || what.starts_with("./") || what.starts_with("../")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_entries_and_overrides() {
        let none = BTreeMap::new();
        let c = Catalog::new(&none);
        for n in ["debian-12", "debian-13", "ubuntu-22.04", "ubuntu-24.04"] {
            let s = c.get(n).unwrap();
            assert!(s.url.starts_with("https://") && s.checksums.as_deref().unwrap().starts_with("https://"), "{n}");
        }
        assert!(c.get(DEFAULT_IMAGE).is_some());
        let mut o = BTreeMap::new();
        o.insert(
            "debian-13".to_string(),
            ImageSource { url: "http://127.0.0.1:1/d.qcow2".into(), checksums: None, checksum: None },
        );
        o.insert("mine".to_string(), ImageSource { url: "/srv/mine.qcow2".into(), checksums: None, checksum: None });
        let c = Catalog::new(&o);
        assert_eq!(c.get("debian-13").unwrap().url, "http://127.0.0.1:1/d.qcow2");
        assert!(c.names().contains(&"mine".to_string()));
    }

    #[test]
    fn names_from_urls() {
        assert_eq!(
            file_name("https://h/a/b/debian-13-genericcloud-amd64.qcow2?x=1"),
            "debian-13-genericcloud-amd64.qcow2"
        );
        assert_eq!(name_for("https://h/x/noble-server-cloudimg-amd64.img"), "noble-server-cloudimg-amd64");
        assert_eq!(name_for("/srv/images/base.qcow2"), "base");
        assert!(is_location("file:///x") && is_location("/x") && !is_location("debian-13"));
    }
}
